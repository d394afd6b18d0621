//! The controller's outbound HTTP — to ARM, to Azure AD and to the node's IMDS — is the workspace's one
//! bounded client (crate `bounded-http`) with the controller's limits: https with the platform's roots plus
//! an optional CA file (`--arm-ca-file`, e.g. mock-arm's), http for IMDS.

use std::path::Path;
use std::time::Duration;

pub use bounded_http::{Answer, CallError as HttpError, HttpsClient as HttpClient, TlsError};

/// Deadline of one call and bound of its answer (ARM's LRO answers and token answers are small; 4 MiB is
/// far above any of them).
pub const LIMITS: bounded_http::Limits = bounded_http::Limits {
    call_timeout: Duration::from_secs(30),
    connect_timeout: Duration::from_secs(10),
    max_answer_bytes: 4 * 1024 * 1024,
};

/// The client, trusting the platform's roots and the PEM certificates in `extra_ca`.
pub fn client(extra_ca: Option<&Path>) -> Result<HttpClient, TlsError> {
    HttpClient::https(LIMITS, extra_ca)
}
