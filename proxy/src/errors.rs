//! Typed errors of the request path, each with its source, and how each is shown to the caller.
//!
//! `UpstreamError` is a request to IMDS that got no answer. Its text is the one NMI's Go client shows (a
//! `*url.Error`: `Get "http://169.254.169.254:80/metadata/instance?…": dial tcp 169.254.169.254:80: connect:
//! connection refused`), so the pass-through's 500 body and the token path's 503 body read as NMI's do and
//! never carry Rust debug text. `ViewUnavailable`, `CallerError` (with `PodMatchError` and `Unconfirmed`),
//! `SelectError` (with `NoIdentity`) and `FetchError` (with the upstream's `TokenError`) are the token handlers' refusals: the cluster view
//! cannot be trusted, the caller is not exactly one pod, no identity was found, or IMDS gave no token. Their
//! `Display` is the NMI message that goes into the `http.Error` body; `server` maps each to its status and
//! `policy::Decision`. `policy` and `cluster` build them; this module decides nothing.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A request to IMDS that got no answer, displayed as Go's `*url.Error`: `<Op> "<url>": <cause>`.
#[derive(Debug, thiserror::Error)]
#[error("{op} \"{url}\": {cause}")]
pub struct UpstreamError {
    /// Go's `urlErrorOp`: the method with only its first letter upper-case (`Get`, `Post`).
    op: String,
    url: String,
    #[source]
    cause: Box<UpstreamCause>,
}

impl UpstreamError {
    pub fn new(method: &http::Method, url: impl Into<String>, cause: UpstreamCause) -> Self {
        Self {
            op: go_url_error_op(method.as_str()),
            url: url.into(),
            cause: Box::new(cause),
        }
    }

    /// What went wrong, without the request line.
    pub fn cause(&self) -> &UpstreamCause {
        &self.cause
    }
}

/// The reason behind an [`UpstreamError`], each variant displayed as Go's net/http would say it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamCause {
    /// The TCP connection to IMDS could not be made (`dial tcp <addr>: connect: connection refused`).
    #[error("dial tcp {addr}: {}", dial_text(.source))]
    Connect {
        addr: SocketAddr,
        source: hyper_util::client::legacy::Error,
    },
    /// IMDS closed the connection or broke the exchange before its answer's header (`EOF`, or the socket error).
    #[error("{}", transport_text(.0))]
    Transport(#[source] hyper_util::client::legacy::Error),
    /// No answer within the per-attempt bound (Go's `http.Client.Timeout` text).
    #[error("context deadline exceeded (Client.Timeout exceeded while awaiting headers)")]
    Timeout,
    /// The answer's body could not be read (broken off, or larger than the proxy reads).
    #[error("reading response body: {0}")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
    /// The outgoing request could not be built from what the client sent.
    #[error("invalid request: {0}")]
    Request(#[source] http::Error),
    /// IMDS's answer could not be copied into a response.
    #[error("invalid response: {0}")]
    Response(#[source] http::Error),
}

/// Go's `urlErrorOp`: `GET` → `Get`.
fn go_url_error_op(method: &str) -> String {
    let mut chars = method.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// The innermost `std::io::Error` in `err`'s source chain.
fn io_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    let mut found = None;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            found = Some(io);
        }
        cur = e.source();
    }
    found
}

/// The first `hyper::Error` in `err`'s source chain.
fn hyper_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a hyper::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return Some(h);
        }
        cur = e.source();
    }
    None
}

/// An errno as Go's syscall package names it: the C library's text with a lower-case first letter
/// (`connection refused`, `no route to host`, `network is unreachable`).
fn errno_text(io: &std::io::Error) -> String {
    let text = match io.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => io.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

fn dial_text(err: &hyper_util::client::legacy::Error) -> String {
    match io_error(err) {
        Some(io) if io.kind() == std::io::ErrorKind::TimedOut => "i/o timeout".to_string(),
        Some(io) => format!("connect: {}", errno_text(io)),
        None => "connect: connection failed".to_string(),
    }
}

fn transport_text(err: &hyper_util::client::legacy::Error) -> String {
    if let Some(io) = io_error(err) {
        return format!("read: {}", errno_text(io));
    }
    match hyper_error(err) {
        // Go's client reports a connection closed before the answer as `EOF`.
        Some(h) if h.is_incomplete_message() => "EOF".to_string(),
        Some(h) => h.to_string(),
        None => "connection closed".to_string(),
    }
}

/// Why a token could not be obtained. `Refresh` is adal's `TokenRefreshError` (final non-200: NMI 403);
/// `Decode` is an answer that is not a token (403); `Transport` is a connectivity problem (NMI 503).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "adal: Refresh request failed. Status Code = '{status}'. Response body: {body} Endpoint {endpoint}"
    )]
    Refresh {
        status: u16,
        body: String,
        endpoint: String,
    },
    #[error("adal: Failed to execute the refresh request. Error = '{0}'")]
    Transport(#[source] UpstreamError),
    #[error(
        "adal: Failed to unmarshal the service principal token during refresh. Error = '{source}' JSON = '{json}'"
    )]
    Decode {
        source: serde_json::Error,
        json: String,
    },
}

impl TokenError {
    /// NMI maps `TokenRefreshError` to 403 and other failures to 503 (A.3.1 step 8).
    pub fn status(&self) -> u16 {
        match self {
            TokenError::Refresh { .. } | TokenError::Decode { .. } => 403,
            TokenError::Transport(_) => 503,
        }
    }
}

/// The cluster view cannot be trusted right now (not synced, or its source failing): which resource and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewUnavailable {
    /// The resource's first list has not completed.
    #[error("cluster view not yet synced ({resource})")]
    NotSynced { resource: &'static str },
    /// The resource's list or watch failed and no fresh list has succeeded since.
    #[error("cluster view unavailable: watch of {resource} is failing")]
    Failing { resource: &'static str },
    /// The resource has shown no proof of currency within the staleness bound.
    #[error(
        "cluster view unavailable: no word from the API server about {resource} for {age_ms} ms (staleness bound {bound_ms} ms)"
    )]
    Stale {
        resource: &'static str,
        age_ms: u64,
        bound_ms: u64,
    },
}

/// No single Running/Pending pod of this node has the caller's address (A.5); NMI's messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodMatchError {
    /// No pod has the address.
    #[error("pod list is empty")]
    Empty,
    /// More than one pod claims the address (`namespace/name` of each, sorted): refused, never guessed.
    #[error("failed to match pod IP {ip} with [{}]", .pods.join(" "))]
    Ambiguous { ip: IpAddr, pods: Vec<String> },
}

/// The API server did not confirm that the pod found in the cached view holds the caller's address.
#[derive(Debug, thiserror::Error)]
#[error(
    "cluster view unavailable: cannot confirm that pod {namespace}/{name} holds {ip}: {reason}"
)]
pub struct Unconfirmed {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
    #[source]
    pub reason: UnconfirmedReason,
}

/// Why a caller could not be confirmed against the API server.
#[derive(Debug, thiserror::Error)]
pub enum UnconfirmedReason {
    /// The consistent GET got no answer within the request deadline.
    #[error("no answer from the API server within {0:?}")]
    Deadline(Duration),
    /// The consistent GET failed.
    #[error("{0}")]
    Api(#[source] kube::Error),
    /// The pod was deleted.
    #[error("the pod no longer exists")]
    Gone,
    /// The live pod does not hold the address (or is not Running/Pending): its address and phase.
    #[error("the API server gives it address {ip:?}, phase {phase:?}")]
    Moved {
        ip: Option<String>,
        phase: Option<String>,
    },
}

/// The caller could not be identified as exactly one pod of this node (A.5): 500 with the lookup message.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// The view failed while looking (fail closed).
    #[error(transparent)]
    View(#[from] ViewUnavailable),
    /// No pod, or more than one, has the caller's IP (`pod list is empty`, `failed to match pod IP …`).
    #[error(transparent)]
    NoMatch(#[from] PodMatchError),
    /// The source of truth did not confirm that the matched pod still holds the caller's IP.
    #[error(transparent)]
    NotConfirmed(#[from] Unconfirmed),
}

/// No identity for the pod (A.6): NMI's messages, client ids already redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoIdentity {
    /// No candidate matches the request (or there is none).
    #[error("no azure identity found for request clientID {client_id}")]
    NoMatch {
        /// The requested client id, redacted.
        client_id: String,
    },
    /// Standard mode: nothing usable even in `Created` state once the created budget is spent. With a
    /// requested client id (redacted), NMI prefixes the message with it.
    #[error(
        "{}getting assigned identities for pod {namespace}/{name} in CREATED state failed after {attempts} attempts, retry duration [{interval_secs}]s, error: <nil>. Check MIC pod logs for identity assignment errors",
        requested_prefix(.client_id.as_deref())
    )]
    NotCreated {
        client_id: Option<String>,
        namespace: String,
        name: String,
        attempts: u32,
        interval_secs: u64,
    },
    /// Standard mode with `--identity-wait-bound-sec`: the bound passed without a usable identity (an
    /// opt-in beyond NMI; the same requests fail as with NMI's loop, only sooner).
    #[error(
        "{}no identity is assigned to pod {namespace}/{name}: {state} after waiting {bound_secs}s (--identity-wait-bound-sec). Check MIC pod logs for identity assignment errors",
        requested_prefix(.client_id.as_deref())
    )]
    WaitBound {
        client_id: Option<String>,
        namespace: String,
        name: String,
        bound_secs: u64,
        state: WaitState,
    },
    /// Standard mode: the whole budget spent without an `Assigned` identity.
    #[error(
        "getting assigned identities for pod {namespace}/{name} in ASSIGNED state failed after {attempts} attempts, retry duration [{interval_secs}]s, error: <nil>. Check MIC pod logs for identity assignment errors"
    )]
    NotAssigned {
        namespace: String,
        name: String,
        attempts: u32,
        interval_secs: u64,
    },
}

/// What the identity wait saw last when its bound passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitState {
    /// No AzureAssignedIdentity names the pod (none was ever created for it).
    #[error("no AzureAssignedIdentity names the pod")]
    NoneForPod,
    /// The pod has AzureAssignedIdentities, none of them usable (not Assigned, or not the one requested).
    #[error("none of its AzureAssignedIdentities is ASSIGNED and matches the request")]
    NotAssigned,
}

fn requested_prefix(client_id: Option<&str>) -> String {
    client_id.map_or_else(String::new, |id| format!("clientID in request: {id}, "))
}

/// Identity selection failed (A.6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The cluster view cannot be trusted: 500, never a token.
    #[error(transparent)]
    View(#[from] ViewUnavailable),
    /// No identity (404, or 503 + Retry-After on the token path when enabled); NMI's message.
    #[error(transparent)]
    NotFound(#[from] NoIdentity),
}

/// The identity was found but no token was obtained for it (A.3.1 steps 8–9).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// IMDS refused or could not be reached (403 for adal's refresh error, else 503).
    #[error("failed to refresh token, error: {0}")]
    Token(#[source] TokenError),
    /// A service principal (`type: 1/2`): imds-proxy serves managed identities only.
    #[error(
        "identity {namespace}/{name} is a service principal (type {kind}); imds-proxy serves managed identities only"
    )]
    ServicePrincipal {
        namespace: String,
        name: String,
        kind: i64,
    },
    /// Any other identity type.
    #[error("unsupported identity type {0}")]
    UnsupportedType(i64),
}

impl FetchError {
    /// The status NMI answers with.
    pub fn status(&self) -> u16 {
        match self {
            FetchError::Token(e) => e.status(),
            FetchError::ServicePrincipal { .. } | FetchError::UnsupportedType(_) => 403,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_op_names() {
        assert_eq!(go_url_error_op("GET"), "Get");
        assert_eq!(go_url_error_op("POST"), "Post");
        assert_eq!(go_url_error_op("x"), "X");
        assert_eq!(go_url_error_op(""), "");
    }

    #[test]
    fn errno_texts_are_go_like() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(errno_text(&refused), "connection refused");
        let unreachable = std::io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(errno_text(&unreachable), "no route to host");
    }

    #[test]
    fn timeout_text_is_gos() {
        let e = UpstreamError::new(
            &http::Method::GET,
            "http://127.0.0.1:80/metadata/instance",
            UpstreamCause::Timeout,
        );
        assert_eq!(
            e.to_string(),
            "Get \"http://127.0.0.1:80/metadata/instance\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        );
    }
}
