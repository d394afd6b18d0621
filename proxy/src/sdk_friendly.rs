//! Opt-ins beyond NMI that make what Azure SDKs see in a pod good, both off by default so that imds-proxy
//! stays NMI-exact unless asked: IMDS-shaped JSON errors on the token path (`--sdk-friendly-errors`) and a
//! bound on the identity wait loop (`--identity-wait-bound-sec`).
//!
//! NMI answers token errors in Go's `http.Error` plain text (REFERENCE A.3). msal and msal-node read the
//! body as JSON and fail with `token_parsing_error`, and azure-identity retries NMI's 404 as "IMDS is
//! updating" (REFERENCE B.4), so with NMI's 16 × 5 s loop a pod without identity waits minutes for an error
//! that does not say why. With `--sdk-friendly-errors` every error the token handler produces is real IMDS's
//! shape — `{"error":"<code>","error_description":"<text>"}`, `application/json; charset=utf-8`, no trailing
//! newline — and an identity that is not assigned is IMDS's own answer for that, 400 `invalid_request`
//! `Identity not found`, with NMI's explanation appended so the SDK's exception names the cause. An error
//! IMDS itself returned for the pod's identity is relayed with IMDS's status and error code. The decisions
//! are unchanged: the same requests get an error, and no answer carries a token it would not carry
//! otherwise. This module only renders; `server` decides when to use it.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::errors::{FetchError, TokenError};

/// IMDS's `error_description` for an identity the VM does not have (REFERENCE B.4); kept at the start of
/// ours so that code matching IMDS's text keeps working.
pub const IDENTITY_NOT_FOUND: &str = "Identity not found";

/// An IMDS error body (REFERENCE B.4): compact JSON, `error` first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImdsError {
    /// One of IMDS's codes (`invalid_request`, `forbidden`, `not_found`, `server_error`, …).
    pub error: String,
    /// What went wrong, for people.
    pub error_description: String,
}

/// IMDS's error code for a status (the codes of its Swagger `error` enum).
pub fn error_code(status: u16) -> &'static str {
    match status {
        400 => "invalid_request",
        401 => "unauthorized_client",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        429 => "too_many_requests",
        503 => "service_unavailable",
        _ if status >= 500 => "server_error",
        _ => "bad_request",
    }
}

/// The JSON an IMDS error answer carries.
pub fn body(error: &ImdsError) -> String {
    // Two strings always serialise; the fallback only keeps this total.
    serde_json::to_string(error).unwrap_or_else(|_| {
        format!(
            "{{\"error\":\"{}\",\"error_description\":\"\"}}",
            error.error
        )
    })
}

/// An IMDS-shaped error answer: `status`, `application/json; charset=utf-8`, [`body`].
pub fn response(status: u16, error: &ImdsError) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, body(error)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Any token-handler error in IMDS's shape: NMI's status, the code for it, NMI's message as description.
pub fn generic(status: u16, message: &str) -> (u16, ImdsError) {
    (
        status,
        ImdsError {
            error: error_code(status).to_string(),
            error_description: message.to_string(),
        },
    )
}

/// No identity for the pod (token handler step 7): IMDS's 400 `invalid_request` `Identity not found`,
/// NMI's explanation appended. With `--set-retry-after-header` the status stays 503 + `Retry-After` (the
/// operator asked SDKs to come back later), only the body is IMDS-shaped.
pub fn identity_not_found(message: &str, retry_after: bool) -> (u16, ImdsError) {
    let status = if retry_after { 503 } else { 400 };
    (
        status,
        ImdsError {
            error: error_code(status).to_string(),
            error_description: format!("{IDENTITY_NOT_FOUND}: {message}"),
        },
    )
}

/// No token for an identity that was found (steps 8–9). When IMDS refused with its own JSON error, its
/// status and code reach the pod (what the SDK would see without an interceptor) with the description
/// saying it came from IMDS; anything else is [`generic`] with NMI's status.
pub fn fetch_failed(e: &FetchError) -> (u16, ImdsError) {
    if let FetchError::Token(TokenError::Refresh { status, body, .. }) = e
        && let Ok(imds) = serde_json::from_str::<ImdsError>(body.trim())
        && (400..600).contains(status)
    {
        return (
            *status,
            ImdsError {
                error: imds.error,
                error_description: format!(
                    "{} (IMDS's answer for the pod's identity, relayed by imds-proxy)",
                    imds.error_description
                ),
            },
        );
    }
    generic(e.status(), &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::server::tests::render;

    fn rendered(parts: (u16, ImdsError)) -> Response {
        response(parts.0, &parts.1)
    }

    /// The bodies a pod gets with `--sdk-friendly-errors`, pinned.
    #[tokio::test]
    async fn imds_shaped_bodies() {
        let not_assigned = "getting assigned identities for pod default/app in CREATED state failed after 1 attempts, retry duration [1]s, error: <nil>. Check MIC pod logs for identity assignment errors";
        insta::assert_snapshot!(
            "identity_not_found",
            render(rendered(identity_not_found(not_assigned, false))).await
        );
        insta::assert_snapshot!(
            "identity_not_found_retry_after",
            render(rendered(identity_not_found(not_assigned, true))).await
        );
        insta::assert_snapshot!(
            "resource_missing",
            render(rendered(generic(400, "parameter resource cannot be empty"))).await
        );
        insta::assert_snapshot!(
            "unknown_caller",
            render(rendered(generic(500, "pod list is empty"))).await
        );
        let refused = FetchError::Token(TokenError::Refresh {
            status: 400,
            body: "{\"error\":\"invalid_request\",\"error_description\":\"Identity not found\"}"
                .into(),
            endpoint: "http://169.254.169.254/metadata/identity/oauth2/token".into(),
        });
        insta::assert_snapshot!(
            "imds_refused",
            render(rendered(fetch_failed(&refused))).await
        );
        let plain = FetchError::Token(TokenError::Refresh {
            status: 500,
            body: "oops".into(),
            endpoint: "http://169.254.169.254/metadata/identity/oauth2/token".into(),
        });
        insta::assert_snapshot!(
            "imds_plain_error",
            render(rendered(fetch_failed(&plain))).await
        );
    }

    #[test]
    fn bodies_are_json_with_the_code_first() {
        let b = body(&ImdsError {
            error: "invalid_request".into(),
            error_description: "quote \" and newline \n".into(),
        });
        assert!(b.starts_with("{\"error\":\"invalid_request\",\"error_description\":"));
        let back: ImdsError = serde_json::from_str(&b).expect("round trip");
        assert_eq!(back.error_description, "quote \" and newline \n");
        assert!(!b.ends_with('\n'), "IMDS sends no trailing newline");
    }

    proptest::proptest! {
        /// Whatever NMI's message says (client ids, quotes, control characters), the body is one JSON
        /// object with exactly IMDS's two fields, and the description carries the message unchanged.
        #[test]
        fn any_message_gives_an_imds_body(msg in ".*", status in 400u16..600, retry_after: bool) {
            for (status, e) in [generic(status, &msg), identity_not_found(&msg, retry_after)] {
                let v: serde_json::Value = serde_json::from_str(&body(&e)).expect("JSON");
                let o = v.as_object().expect("an object");
                proptest::prop_assert_eq!(o.len(), 2);
                proptest::prop_assert_eq!(o["error"].as_str(), Some(error_code(status)));
                proptest::prop_assert!(o["error_description"].as_str().is_some_and(|d| d.ends_with(msg.as_str())));
            }
        }
    }

    #[test]
    fn codes_follow_imds() {
        assert_eq!(error_code(400), "invalid_request");
        assert_eq!(error_code(403), "forbidden");
        assert_eq!(error_code(404), "not_found");
        assert_eq!(error_code(500), "server_error");
        assert_eq!(error_code(502), "server_error");
        assert_eq!(error_code(503), "service_unavailable");
        assert_eq!(error_code(418), "bad_request");
    }

    #[test]
    fn identity_not_found_keeps_imds_text_first() {
        let (status, e) =
            identity_not_found("no azure identity found for request clientID x", false);
        assert_eq!(status, 400);
        assert_eq!(e.error, "invalid_request");
        assert!(
            e.error_description
                .starts_with("Identity not found: no azure identity")
        );
    }
}
