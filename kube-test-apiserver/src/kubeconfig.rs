//! Kubeconfig documents pointing at a test API server. The client key (server URL path prefix and
//! user token) is the per-client accounting key: every client given
//! `kubeconfig_yaml(url, "node-1")` is counted as `node-1` in the stats.
//!
//! Plain http, no CA, no client certificates: the test API server never serves TLS.

use std::path::Path;

use serde_json::json;

/// Kubeconfig YAML for `server_url` whose user authenticates with bearer token `key`.
///
/// The server URL carries the key too (`{server_url}/clients/{key}`): client-go never sends a
/// bearer token to a plain-http server, so for client-go-based interceptors the path is what
/// names the client. kube-rs sends both; the path wins.
pub fn kubeconfig_yaml(server_url: &str, key: &str) -> String {
    let server = client_url(server_url, key);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "imds-conformance", "cluster": {"server": server}}],
        "users": [{"name": key, "user": {"token": key}}],
        "contexts": [{
            "name": "imds-conformance",
            "context": {"cluster": "imds-conformance", "user": key, "namespace": "default"}
        }],
        "current-context": "imds-conformance",
        "preferences": {}
    });
    // A JSON value always serialises to YAML; fall back to JSON (valid YAML) just in case.
    serde_norway::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}

/// Characters escaped in the key's path segment: all but RFC 3986 unreserved ones.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Base URL of the API server for client `key` (see [`kubeconfig_yaml`]).
pub fn client_url(server_url: &str, key: &str) -> String {
    let key = percent_encoding::utf8_percent_encode(key, PATH_SEGMENT);
    format!(
        "{}{}{key}",
        server_url.trim_end_matches('/'),
        super::serve::CLIENT_PREFIX
    )
}

/// Write [`kubeconfig_yaml`] to `path` (mode 0600 like kubectl does; it carries a token).
pub fn write_kubeconfig(path: &Path, server_url: &str, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(kubeconfig_yaml(server_url, key).as_bytes())
}
