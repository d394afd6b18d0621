//! Every error the emulated service can answer with, as one enum, and the single place that turns it into the
//! exact status, JSON body and headers of the real service (REFERENCE B.1, B.2, B.4, B.8). Handlers and the
//! rules layer return [`ImdsError`]; they never build error bodies themselves. Byte-exact bodies are the point:
//! clients parse them (MSAL reads `newest-versions`, SDKs match "Identity not found").

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

pub use crate::config::ApiVersionStyle;
use crate::versions;

/// Which family of error body a path uses: the identity endpoints speak OAuth
/// (`{"error":code,"error_description":text}`), everything else `{"error":text}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Metadata,
    Identity,
}

impl Surface {
    /// The surface of a (normalised) request path.
    pub fn of_path(path: &str) -> Surface {
        if path == "/metadata/identity" || path.starts_with("/metadata/identity/") {
            Surface::Identity
        } else {
            Surface::Metadata
        }
    }
}

/// Content type of every JSON answer, exactly as the real service sends it.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// What went wrong. Rendering depends on the [`Surface`], carried alongside.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("required metadata header not specified")]
    MissingMetadataHeader,
    #[error("X-Forwarded-For header present")]
    ForwardedFor,
    #[error("api-version missing")]
    ApiVersionMissing,
    #[error("api-version {0:?} invalid")]
    ApiVersionInvalid(String, ApiVersionStyle),
    #[error("duplicate query parameter {0:?}")]
    DuplicateQuery(String),
    #[error("malformed query string")]
    MalformedQuery,
    #[error("query string longer than {0} bytes")]
    QueryTooLong(usize),
    #[error("request headers larger than {0} bytes")]
    HeadersTooLarge(usize),
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed { path: String, method: String },
    #[error("not found")]
    NotFound,
    #[error("leaf node queried without format=text")]
    LeafRequiresText,
    #[error("invalid format {0:?}")]
    InvalidFormat(String),
    #[error("identity not found")]
    IdentityNotFound,
    #[error("multiple user-assigned identities and no selector")]
    MultipleUserAssigned,
    #[error("resource missing")]
    MissingResource,
    #[error("more than one identity selector")]
    ConflictingSelectors,
    #[error("unknown resource {resource:?}")]
    UnknownResource { resource: String, tenant: String },
    #[error("too many requests")]
    TooManyRequests { retry_after: Option<u64> },
    #[error("injected status {status}")]
    Injected {
        status: u16,
        retry_after: Option<u64>,
    },
    #[error("invalid nonce")]
    InvalidNonce,
    #[error("no load balancer metadata")]
    LoadBalancerNotFound,
    #[error("bad scheduled events request: {0}")]
    BadScheduledEventsRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// An error answer of the emulated service: what went wrong and on which surface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} ({surface:?})")]
pub struct ImdsError {
    pub surface: Surface,
    pub kind: ErrorKind,
}

impl ImdsError {
    pub fn new(surface: Surface, kind: ErrorKind) -> Self {
        ImdsError { surface, kind }
    }
    pub fn metadata(kind: ErrorKind) -> Self {
        Self::new(Surface::Metadata, kind)
    }
    pub fn identity(kind: ErrorKind) -> Self {
        Self::new(Surface::Identity, kind)
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        use ErrorKind::*;
        match &self.kind {
            NotFound | LoadBalancerNotFound => StatusCode::NOT_FOUND,
            ApiVersionInvalid(_, ApiVersionStyle::LegacyNotFound)
                if self.surface == Surface::Metadata =>
            {
                StatusCode::NOT_FOUND
            }
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Injected { status, .. } => {
                StatusCode::from_u16(injected(*status)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The exact body bytes (compact JSON).
    pub fn body(&self) -> String {
        let value = match self.surface {
            Surface::Metadata => self.metadata_body(),
            Surface::Identity => self.identity_body(),
        };
        // serde_json never fails to serialise a Value.
        serde_json::to_string(&value).unwrap_or_default()
    }

    fn metadata_body(&self) -> Value {
        use ErrorKind::*;
        let text = match &self.kind {
            MissingMetadataHeader => {
                "Bad request: . Required metadata header not specified".to_string()
            }
            ForwardedFor => "Bad request. X-Forwarded-For header is not allowed".to_string(),
            ApiVersionMissing | ApiVersionInvalid(_, ApiVersionStyle::NewestVersions) => {
                let mut m = Map::new();
                m.insert(
                    "error".into(),
                    Value::String(
                        "Bad request. api-version is invalid or was not specified in the request. \
                         For more information refer to aka.ms/azureimds"
                            .into(),
                    ),
                );
                m.insert(
                    "newest-versions".into(),
                    Value::Array(
                        versions::newest_three()
                            .iter()
                            .map(|v| Value::String((*v).into()))
                            .collect(),
                    ),
                );
                return Value::Object(m);
            }
            ApiVersionInvalid(_, ApiVersionStyle::LegacyNotFound) => {
                "Not found. Invalid version requested".into()
            }
            DuplicateQuery(name) => format!("Bad request. Duplicate query parameter '{name}'"),
            MalformedQuery => "Bad request. The query string is malformed".into(),
            QueryTooLong(limit) => format!("Bad request. The query string exceeds {limit} bytes"),
            HeadersTooLarge(limit) => {
                format!("Bad request. The request headers exceed {limit} bytes")
            }
            MethodNotAllowed { path, method } => {
                format!("Http method isn't allowed: Path = \"{path}\", Method = \"{method}\"")
            }
            NotFound => "Not found".into(),
            LeafRequiresText => "Bad request. Querying a leaf node requires format=text".into(),
            InvalidFormat(f) => format!("Bad request. Invalid format '{f}' requested"),
            InvalidNonce => "Bad request. The nonce must be 1 to 32 alphanumeric characters".into(),
            LoadBalancerNotFound => {
                "No load balancer metadata is found. Please check if your VM is using any \
                                     non-basic SKU load balancer and retry later."
                    .into()
            }
            BadScheduledEventsRequest(detail) => format!("Bad Request. {detail}"),
            TooManyRequests { .. } => "Too many requests".into(),
            Injected { status, .. } => reason(injected(*status)),
            Internal(_) => "Internal server error".into(),
            // Identity-only kinds, should they surface on a metadata path, keep their OAuth wording.
            IdentityNotFound
            | MultipleUserAssigned
            | MissingResource
            | ConflictingSelectors
            | UnknownResource { .. } => {
                return self.identity_body();
            }
        };
        let mut m = Map::new();
        m.insert("error".into(), Value::String(text));
        Value::Object(m)
    }

    fn identity_body(&self) -> Value {
        use ErrorKind::*;
        let (code, text): (&str, String) = match &self.kind {
            MissingMetadataHeader => ("invalid_request", "Required metadata header not specified".into()),
            ForwardedFor => ("invalid_request", "X-Forwarded-For header is not allowed".into()),
            ApiVersionMissing => ("invalid_request", "Required query variable 'api-version' is missing".into()),
            ApiVersionInvalid(..) => ("invalid_request", "Invalid 'api-version' requested".into()),
            DuplicateQuery(name) => ("invalid_request", format!("Duplicate query variable '{name}'")),
            MalformedQuery => ("invalid_request", "The query string is malformed".into()),
            QueryTooLong(limit) => ("invalid_request", format!("The query string exceeds {limit} bytes")),
            HeadersTooLarge(limit) => ("invalid_request", format!("The request headers exceed {limit} bytes")),
            MethodNotAllowed { path, method } => (
                "method_not_allowed",
                format!("Http method isn't allowed: Path = \"{path}\", Method = \"{method}\""),
            ),
            NotFound => ("not_found", "Not found".into()),
            LeafRequiresText | InvalidFormat(_) | InvalidNonce | BadScheduledEventsRequest(_) => {
                ("invalid_request", "Bad request".into())
            }
            IdentityNotFound => ("invalid_request", "Identity not found".into()),
            MultipleUserAssigned => (
                "invalid_request",
                "Multiple user assigned identities exist, please specify the clientId / resourceId of the \
                 identity in the token request"
                    .into(),
            ),
            MissingResource => ("invalid_request", "Required query variable 'resource' is missing".into()),
            ConflictingSelectors => (
                "invalid_request",
                "Only one of client_id, object_id and msi_res_id can be specified".into(),
            ),
            UnknownResource { resource, tenant } => (
                "invalid_resource",
                format!(
                    "AADSTS500011: The resource principal named {resource} was not found in the tenant named \
                     {tenant}. This can happen if the application has not been installed by the administrator \
                     of the tenant or consented to by any user in the tenant. You might have sent your \
                     authentication request to the wrong tenant."
                ),
            ),
            TooManyRequests { .. } => ("too_many_requests", "Too many requests".into()),
            Injected { status, .. } => {
                let status = injected(*status);
                (oauth_code(status), reason(status))
            }
            LoadBalancerNotFound => ("not_found", "Not found".into()),
            Internal(_) => ("server_error", "Internal server error".into()),
        };
        let mut m = Map::new();
        m.insert("error".into(), Value::String(code.into()));
        m.insert("error_description".into(), Value::String(text));
        Value::Object(m)
    }

    fn retry_after(&self) -> Option<u64> {
        match self.kind {
            ErrorKind::TooManyRequests { retry_after }
            | ErrorKind::Injected { retry_after, .. } => retry_after,
            _ => None,
        }
    }
}

/// The status an injected fault answers with: itself when 4xx/5xx, else 500. Configuration files and the
/// control API refuse other statuses ([`crate::config::Faults::validate`]); this covers faults set through
/// the library handle, which cannot report an error.
fn injected(status: u16) -> u16 {
    if crate::config::injectable_status(status) {
        status
    } else {
        500
    }
}

fn reason(status: u16) -> String {
    match status {
        404 => "Not found".into(),
        410 => "Gone. The service is being updated, retry later".into(),
        429 => "Too many requests".into(),
        500 => "Internal server error".into(),
        503 => "Service unavailable".into(),
        other => StatusCode::from_u16(other)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
            .to_string(),
    }
}

fn oauth_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        429 => "too_many_requests",
        503 | 410 => "service_unavailable",
        _ => "server_error",
    }
}

impl IntoResponse for ImdsError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(JSON_CONTENT_TYPE),
        );
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // Lets the rules layer and the journal know the handler's verdict without re-parsing the body.
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_identity_bodies_have_documented_lengths() {
        assert_eq!(
            ImdsError::identity(ErrorKind::IdentityNotFound)
                .body()
                .len(),
            68
        );
        assert_eq!(
            ImdsError::identity(ErrorKind::MultipleUserAssigned)
                .body()
                .len(),
            168
        );
        assert_eq!(
            ImdsError::identity(ErrorKind::MissingMetadataHeader)
                .body()
                .len(),
            88
        );
    }
}
