//! `/metadata/attested/document` (REFERENCE B.6): builds the signed content (nonce, plan, timestamps, vmId and
//! the version-dependent fields) and wraps it in the PKCS#7 signature `keys::SigningKeys::sign_attested`
//! produces. Owns nonce rules and the content's shape; never touches key material.

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::error::{ErrorKind, ImdsError, Surface};
use crate::rules::ImdsQuery;
use crate::state::AppState;

/// Validity of an attested document (the documentation's samples show a six-hour window).
pub const VALIDITY_HOURS: i64 = 6;

pub fn router() -> Router<AppState> {
    Router::new().route("/metadata/attested/document", get(document))
}

/// A caller-supplied nonce must be 1–32 ASCII alphanumerics (Swagger; the prose doc's 10 digits fit).
pub fn valid_nonce(n: &str) -> bool {
    (1..=32).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%m/%d/%y %H:%M:%S -0000").to_string()
}

/// The JSON that gets signed, fields in the documented order, version-dependent ones only when introduced.
pub fn signed_content(config: &Config, version: &str, nonce: &str, now: DateTime<Utc>) -> Value {
    let c = &config.compute;
    let mut m = Map::new();
    m.insert("nonce".into(), Value::String(nonce.to_string()));
    m.insert(
        "plan".into(),
        json!({"name": c.plan.name, "product": c.plan.product, "publisher": c.plan.publisher}),
    );
    m.insert(
        "timeStamp".into(),
        json!({
            "createdOn": timestamp(now),
            "expiresOn": timestamp(
                now.checked_add_signed(chrono::Duration::hours(VALIDITY_HOURS))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            ),
        }),
    );
    m.insert("vmId".into(), Value::String(c.vm_id.clone()));
    if version >= "2019-04-30" {
        m.insert(
            "subscriptionId".into(),
            Value::String(c.subscription_id.clone()),
        );
    }
    if version >= "2019-11-01" {
        m.insert("sku".into(), Value::String(c.sku.clone()));
    }
    if version >= "2020-09-01" && !c.license_type.is_empty() {
        m.insert("licenseType".into(), Value::String(c.license_type.clone()));
    }
    Value::Object(m)
}

async fn document(
    State(state): State<AppState>,
    Extension(q): Extension<ImdsQuery>,
) -> Result<Response, ImdsError> {
    let now = state.now();
    let nonce = match q.get("nonce") {
        Some(n) if valid_nonce(n) => n.to_string(),
        Some(_) => return Err(ImdsError::metadata(ErrorKind::InvalidNonce)),
        // Default nonce: the current UTC time, as the service does.
        None => now.format("%Y%m%d-%H%M%S").to_string(),
    };
    let version = q.get("api-version").unwrap_or_default();
    let content = signed_content(&state.config, version, &nonce, now);
    let bytes = serde_json::to_vec(&content)
        .map_err(|e| ImdsError::metadata(ErrorKind::Internal(e.to_string())))?;
    let keys = state.keys(Surface::Metadata).await?;
    let der = keys
        .sign_attested(&bytes)
        .map_err(|e| ImdsError::metadata(ErrorKind::Internal(e.to_string())))?;
    let signature = base64::engine::general_purpose::STANDARD.encode(der);
    let mut body = Map::new();
    body.insert("encoding".into(), Value::String("pkcs7".into()));
    body.insert("signature".into(), Value::String(signature));
    Ok(Json(Value::Object(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_rules() {
        assert!(valid_nonce("1234567890"));
        assert!(valid_nonce("abcDEF123"));
        assert!(!valid_nonce(""));
        assert!(!valid_nonce("a-b"));
        assert!(!valid_nonce(&"a".repeat(33)));
    }

    #[test]
    fn content_fields_follow_version() {
        let c = Config::generate(Some(1));
        let now = Utc::now();
        let old = signed_content(&c, "2018-10-01", "1", now);
        assert!(old.get("subscriptionId").is_none() && old.get("sku").is_none());
        let new = signed_content(&c, "2025-04-07", "1", now);
        assert!(new.get("subscriptionId").is_some() && new.get("sku").is_some());
        assert!(
            new.get("licenseType").is_none(),
            "only AHB VMs carry licenseType"
        );
    }
}
