//! The headers ARM puts on every answer (request, correlation and routing ids, no-cache, HSTS, `Date` from
//! the injected clock), the `Content-Type` of its JSON, and where a client reached us (for the operation
//! URLs, which point back at the request's own host). Formatting only.

use axum::http::{HeaderMap, HeaderValue, header};
use chrono::{DateTime, Utc};

use crate::server::ConnInfo;

pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Adds ARM's standard answer headers; `correlation` is the client's `x-ms-correlation-request-id` if it
/// sent one (ARM echoes it), `region` goes into `x-ms-routing-request-id`.
pub fn add_standard(
    headers: &mut HeaderMap,
    now: DateTime<Utc>,
    region: &str,
    correlation: Option<&HeaderValue>,
) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let set = |h: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::EXPIRES, HeaderValue::from_static("-1"));
    set(headers, "x-ms-request-id", request_id.clone());
    match correlation {
        Some(c) => {
            headers.insert("x-ms-correlation-request-id", c.clone());
        }
        None => set(headers, "x-ms-correlation-request-id", request_id.clone()),
    }
    let region: String = region
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_uppercase();
    set(
        headers,
        "x-ms-routing-request-id",
        format!("{region}:{}:{request_id}", now.format("%Y%m%dT%H%M%SZ")),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    set(
        headers,
        "date",
        httpdate::fmt_http_date(std::time::SystemTime::from(now)),
    );
}

/// Where the client reached us: its `Host`, else the address the connection reached, else loopback.
pub fn authority(headers: &HeaderMap, conn: Option<&ConnInfo>) -> String {
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host)
            if !host.is_empty() && host.is_ascii() && !host.contains(['/', ' ', '?', '#']) =>
        {
            host.to_string()
        }
        _ => conn.map_or_else(|| "127.0.0.1".to_string(), |c| c.local.to_string()),
    }
}
