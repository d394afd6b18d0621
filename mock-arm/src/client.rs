//! How mock-arm reaches other mocks (mock-imds's JWKS and its `/_mock/identities` control API): the
//! workspace's one bounded client (crate `bounded-http`), plain http, with mock-arm's limits.

use std::time::Duration;

pub use bounded_http::{CallError as ClientError, Client};

/// Deadline of one call and bound of its answer (a JWKS or a control answer is a few KiB).
pub const LIMITS: bounded_http::Limits = bounded_http::Limits {
    call_timeout: Duration::from_secs(5),
    connect_timeout: Duration::from_secs(5),
    max_answer_bytes: 1024 * 1024,
};

/// The client mock-arm uses.
pub fn client() -> Client {
    Client::http(LIMITS)
}
