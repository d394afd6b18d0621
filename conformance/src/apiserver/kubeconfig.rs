//! Kubeconfig documents pointing at a test API server. The user token is the per-client accounting
//! key: every client given `kubeconfig_yaml(url, "node-1")` is counted as `node-1` in the stats.
//!
//! Plain http, no CA, no client certificates: the test API server never serves TLS.

use std::path::Path;

use serde_json::json;

/// Kubeconfig YAML for `server_url` whose user authenticates with bearer token `key`.
pub fn kubeconfig_yaml(server_url: &str, key: &str) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "imds-conformance", "cluster": {"server": server_url}}],
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
