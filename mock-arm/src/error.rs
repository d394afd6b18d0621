//! ARM's error answers: one [`ArmError`] value per refusal, rendered through a single `IntoResponse` impl
//! to ARM's shape `{"error":{"code","message"[,"target"][,"details"]}}` with its status and headers
//! (`Retry-After` on 429, `WWW-Authenticate` on 401). Messages follow the texts ARM and the Compute resource
//! provider send (README "Decisions" lists where they are inferred). This module only builds answers; who
//! is refused and why is decided elsewhere.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// `{"error": …}`, the envelope of every ARM error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// ARM's error object (field order as ARM sends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorBody>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.into(),
            message: message.into(),
            target: None,
            details: Vec::new(),
        }
    }
}

/// One error answer: status, body and the headers that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmError {
    pub status: StatusCode,
    /// Boxed: errors travel in `Result`s on every request path and should stay small.
    pub body: Box<ErrorBody>,
    pub retry_after: Option<u64>,
    pub www_authenticate: Option<String>,
}

/// The audiences ARM accepts (its own 401 message lists them in this order).
pub const ARM_AUDIENCES: [&str; 4] = [
    "https://management.core.windows.net/",
    "https://management.core.windows.net",
    "https://management.azure.com/",
    "https://management.azure.com",
];

impl ArmError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ArmError {
            status,
            body: Box::new(ErrorBody::new(code, message)),
            retry_after: None,
            www_authenticate: None,
        }
    }

    fn with_target(mut self, target: &str) -> Self {
        self.body.target = Some(target.to_string());
        self
    }

    /// 404 for a VM, scale set or identity that does not exist (`rtype` e.g. `Microsoft.Compute/virtualMachines`).
    pub fn resource_not_found(rtype: &str, name: &str, resource_group: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!(
                "The Resource '{rtype}/{name}' under resource group '{resource_group}' was not found. \
                 For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        )
    }

    pub fn resource_group_not_found(resource_group: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            format!("Resource group '{resource_group}' could not be found."),
        )
    }

    pub fn subscription_not_found(subscription: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            format!("The subscription '{subscription}' could not be found."),
        )
    }

    /// A path that names no resource type mock-arm serves.
    pub fn invalid_resource_type(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!("The resource type of '{path}' could not be found."),
        )
    }

    /// An operation id that does not exist (or expired).
    pub fn operation_not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("The operation '{name}' could not be found."),
        )
    }

    pub fn missing_api_version() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    }

    pub fn invalid_api_version(version: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{version}' is invalid. The supported versions are 'yyyy-mm-dd' dates, \
                 optionally followed by '-preview'."
            ),
        )
    }

    /// A well-formed api-version older than the map form of `userAssignedIdentities` (2018-06-01).
    pub fn no_registered_provider(version: &str, rtype: &str, location: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for location '{location}' and API version '{version}' \
                 for type '{rtype}'. The supported api-versions are '2018-06-01' and later."
            ),
        )
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "The requested method '{method}' is not supported on this resource by mock-arm."
            ),
        )
    }

    /// A body that is not JSON (or not a JSON object).
    pub fn invalid_request_content(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: '{detail}'."),
        )
    }

    pub fn request_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestContentTooLarge",
            format!("The request content size exceeds the maximum of '{limit}' bytes."),
        )
    }

    /// Compute's 400 for a parameter of the wrong type or value.
    pub fn invalid_parameter(target: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidParameter", message).with_target(target)
    }

    /// 400 naming every identity id that is malformed, does not exist, or has a value other than `{}`/`null`.
    pub fn invalid_identity_values(ids: &[String]) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityValues",
            format!(
                "Invalid value for the identities '{}'. The 'userAssignedIdentities' property keys should only \
                 be empty json objects, null or the resource exisiting property.",
                ids.join(",")
            ),
        )
    }

    /// More user-assigned identities than a VM or scale set may carry.
    pub fn too_many_identities(count: usize, limit: usize) -> Self {
        Self::invalid_parameter(
            "identity.userAssignedIdentities",
            format!(
                "The number of user assigned identities '{count}' exceeds the maximum of '{limit}' allowed \
                 for this resource."
            ),
        )
    }

    /// 403: the caller may write the VM/VMSS but not assign these identities.
    pub fn linked_authorization_failed(
        caller_oid: &str,
        action: &str,
        scope: &str,
        ids: &[String],
    ) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "LinkedAuthorizationFailed",
            format!(
                "The client '{caller_oid}' with object id '{caller_oid}' has permission to perform action \
                 '{action}' on scope '{scope}'; however, it does not have permission to perform action \
                 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '{}' \
                 or the linked scope(s) are invalid.",
                ids.join(",")
            ),
        )
    }

    /// 409: another operation runs on the scale set.
    pub fn conflict() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            "The request failed due to conflict with a concurrent request. To resolve it, please refer to \
             https://aka.ms/activitylog to get more details on the conflicting requests.",
        )
    }

    /// 429 from ARM's subscription token bucket.
    pub fn subscription_throttled(
        subscription: &str,
        actor: &str,
        kind: &str,
        retry_after: u64,
    ) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "SubscriptionRequestsThrottled",
            format!(
                "Number of '{kind}' requests for subscription '{subscription}' actor '{actor}' exceeded. \
                 Please try again after '{retry_after}' seconds after additional tokens are available. \
                 Refer to https://aka.ms/arm-throttling"
            ),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 429 from a Compute resource policy (`policy` e.g. `HighCostGet30Min`); `details.message` is the JSON
    /// string Compute puts there.
    pub fn compute_throttled(policy: &str, detail: String, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "OperationNotAllowed",
            "The server rejected the request because too many requests have been received for this \
             subscription.",
        );
        let mut d = ErrorBody::new("TooManyRequests", detail);
        d.target = Some(policy.to_string());
        e.body.details.push(d);
        e.retry_after = Some(retry_after);
        e
    }

    /// The managed-identity service's failure, wrapped by Compute the way the field saw it (aad-pod-identity
    /// #676): `Status=<status> Code="FailedIdentityOperation"`.
    pub fn failed_identity_operation(resource_id: &str, status: u16, retry_after: u64) -> Self {
        let inner = if status == 429 {
            format!(
                "{{\\\"error\\\":{{\\\"code\\\":\\\"429\\\",\\\"message\\\":\\\"Request is temporarily \
                 throttled because resource {resource_id} has issued too many requests. Retry after \
                 {retry_after} seconds.\\\"}}}}"
            )
        } else {
            format!(
                "{{\\\"error\\\":{{\\\"code\\\":\\\"{status}\\\",\\\"message\\\":\\\"The identity operation \
                 failed.\\\"}}}}"
            )
        };
        let http = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut e = Self::new(
            http,
            "FailedIdentityOperation",
            format!(
                "Identity operation for resource '{resource_id}' failed with error 'Failed to perform \
                 resource identity operation. Status: '{status}'. Response: '{inner}'.'."
            ),
        );
        if status == 429 || status == 503 {
            e.retry_after = Some(retry_after);
        }
        e
    }

    pub fn missing_authorization(tenant: &str) -> Self {
        Self::unauthorized(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.".into(),
            tenant,
            "The authentication failed because of missing 'Authorization' header.",
        )
    }

    pub fn invalid_authentication_header(tenant: &str) -> Self {
        Self::unauthorized(
            "AuthenticationFailedInvalidHeader",
            "Authentication failed. The 'Authorization' header is provided in an invalid format."
                .into(),
            tenant,
            "The authentication failed because of invalid 'Authorization' header.",
        )
    }

    pub fn invalid_token(tenant: &str) -> Self {
        Self::unauthorized(
            "InvalidAuthenticationToken",
            "The access token is invalid.".into(),
            tenant,
            "The access token is invalid.",
        )
    }

    pub fn wrong_audience(audience: &str, tenant: &str) -> Self {
        let allowed = ARM_AUDIENCES
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(",");
        Self::unauthorized(
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{audience}'. It should \
                 exactly match with one of the allowed audiences {allowed}."
            ),
            tenant,
            "The access token has been obtained for wrong audience or resource.",
        )
    }

    /// `exp` and `now` formatted as ARM does (`M/d/yyyy h:mm:ss tt`).
    pub fn expired_token(exp: &str, now: &str, tenant: &str) -> Self {
        Self::unauthorized(
            "ExpiredAuthenticationToken",
            format!(
                "The access token expiry UTC time '{exp}' is earlier than current UTC time '{now}'."
            ),
            tenant,
            "The access token expiry UTC time is earlier than current UTC time.",
        )
    }

    fn unauthorized(code: &str, message: String, tenant: &str, description: &str) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, code, message);
        e.www_authenticate = Some(format!(
            "Bearer authorization_uri=\"https://login.windows.net/{tenant}\", error=\"invalid_token\", \
             error_description=\"{description}\""
        ));
        e
    }

    /// An injected fault's answer (any 4xx/5xx): ARM's code for the status and a generic message.
    pub fn injected(status: u16, retry_after: Option<u64>) -> Self {
        let status = if (400..=599).contains(&status) {
            status
        } else {
            500
        };
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (name, message) = match status {
            429 => ("TooManyRequests", "Too many requests. Retry later."),
            500 => (
                "InternalServerError",
                "Encountered internal server error. Diagnostic information: mock-arm injected fault.",
            ),
            502 => (
                "BadGateway",
                "The gateway did not receive a response in time.",
            ),
            503 => (
                "ServiceUnavailable",
                "The service is currently unavailable. Please try again later.",
            ),
            504 => (
                "GatewayTimeout",
                "The gateway did not receive a response within the specified time period.",
            ),
            _ => (
                code.canonical_reason().unwrap_or("Error"),
                "mock-arm injected fault.",
            ),
        };
        let mut e = Self::new(code, &name.replace(' ', ""), message);
        e.retry_after = retry_after;
        e
    }

    /// Serialised body (never fails for these plain structs).
    pub fn body_json(&self) -> String {
        serde_json::to_string(&ErrorResponse {
            error: (*self.body).clone(),
        })
        .unwrap_or_default()
    }
}

impl std::fmt::Display for ArmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.body.code,
            self.body.message
        )
    }
}

impl std::error::Error for ArmError {}

impl IntoResponse for ArmError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::headers::JSON_CONTENT_TYPE),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(v) = self
            .www_authenticate
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_identity_throttling_matches_the_field_text() {
        let e =
            ArmError::failed_identity_operation("/subscriptions/s/resourceGroups/rg/x", 429, 20);
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.body.message.contains(
            "Failed to perform resource identity operation. Status: '429'. Response: '{\\\"error\\\""
        ));
        assert!(
            e.body
                .message
                .ends_with("Retry after 20 seconds.\\\"}}'.'.")
        );
    }

    #[test]
    fn injected_status_outside_errors_becomes_500() {
        assert_eq!(ArmError::injected(200, None).status.as_u16(), 500);
        assert_eq!(
            ArmError::injected(503, Some(3)).body.code,
            "ServiceUnavailable"
        );
    }
}
