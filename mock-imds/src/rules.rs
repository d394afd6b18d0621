//! The cross-cutting request rules of the real service (REFERENCE B.1, B.2), applied once as a single tower
//! layer around every IMDS route: fault injection and start-up unavailability, 405 for unsupported verbs,
//! header size limit, the `Metadata: true` header, `X-Forwarded-For` rejection, strict query parsing (malformed
//! percent-encoding, length limit, duplicate keys), api-version validation per category, rate limits, the
//! exact response headers, and the journal entry. Handlers behind it may assume a well-formed request and read
//! the decoded query from the [`ImdsQuery`] extension. Control-API requests never pass through here.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use tower::{Service, ServiceExt as _};

pub use crate::clock::HttpDate;
pub use crate::error::JSON_CONTENT_TYPE;
use crate::error::{ApiVersionStyle, ErrorKind, ImdsError, Surface};
use crate::faults::Bucket;
use crate::journal::RequestRecord;
use crate::server::ConnInfo;
use crate::state::{AppState, lock};
use crate::versions::Category;

/// Content type of `format=text` answers.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// Longest accepted query string (bytes, raw). Longer → 400 (beyond ~64 KiB hyper answers 414 first).
pub const MAX_QUERY_BYTES: usize = 32 * 1024;
/// Largest accepted header block (sum of names and values). Larger → 400 (beyond the server's buffer hyper
/// answers 431 first; see `server`).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The decoded query string of an IMDS request: pairs in order, keys unique (duplicates were rejected).
/// Shared, not copied, when cloned: axum's `Extension` extractor clones it for every handler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImdsQuery {
    pairs: std::sync::Arc<[(String, String)]>,
}

impl ImdsQuery {
    /// Parses a raw query strictly: `+` is a space, every `%` must start a two-hex-digit escape, decoded bytes
    /// must be UTF-8, and a key may appear once. Empty segments (`a=1&&b=2`) are ignored.
    ///
    /// Linear in the query's length: up to [`LINEAR_KEYS`] keys are compared directly, beyond that through a
    /// hash index (a query of 4,000 keys — the most 32 KiB allows — took 28 ms with pairwise comparison).
    /// Errors come in input order, as with pairwise comparison: the first malformed or repeated segment wins.
    pub fn parse(raw: &str) -> Result<ImdsQuery, ErrorKind> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut index = KeyIndex::default();
        for segment in raw.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = segment.split_once('=').unwrap_or((segment, ""));
            let key = decode(k)?;
            let value = decode(v)?;
            if index.contains_then_insert(&pairs, &key) {
                return Err(ErrorKind::DuplicateQuery(key));
            }
            pairs.push((key, value));
        }
        Ok(ImdsQuery {
            pairs: pairs.into(),
        })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

/// Up to this many keys the duplicate check compares directly (cheaper than hashing for typical queries).
pub const LINEAR_KEYS: usize = 16;

/// Hash index over the keys parsed so far, built once a query has more than [`LINEAR_KEYS`] keys: key hash →
/// position of the first key with that hash (a colliding hash falls back to comparing every key).
#[derive(Default)]
struct KeyIndex {
    hasher: std::hash::RandomState,
    first: std::collections::HashMap<u64, usize>,
}

impl KeyIndex {
    /// Whether `key` is among `pairs`' keys; records it as the next key when it is not.
    fn contains_then_insert(&mut self, pairs: &[(String, String)], key: &str) -> bool {
        use std::hash::BuildHasher as _;
        if pairs.len() < LINEAR_KEYS {
            return pairs.iter().any(|(k, _)| k == key);
        }
        if self.first.is_empty() {
            for (i, (k, _)) in pairs.iter().enumerate() {
                self.first
                    .entry(self.hasher.hash_one(k.as_str()))
                    .or_insert(i);
            }
        }
        let h = self.hasher.hash_one(key);
        match self.first.get(&h) {
            None => {
                self.first.insert(h, pairs.len());
                false
            }
            Some(&i) if pairs.get(i).is_some_and(|(k, _)| k == key) => true,
            // A different key with the same hash: rare enough to compare with all.
            Some(_) => pairs.iter().any(|(k, _)| k == key),
        }
    }
}

fn decode(s: &str) -> Result<String, ErrorKind> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(ErrorKind::MalformedQuery)?;
                let hex = std::str::from_utf8(hex).map_err(|_| ErrorKind::MalformedQuery)?;
                let byte = u8::from_str_radix(hex, 16).map_err(|_| ErrorKind::MalformedQuery)?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ErrorKind::MalformedQuery)
}

/// `/metadata/instance/` and `/metadata/identity/oauth2/token/` (Node's spelling) route like their
/// slash-less forms.
pub fn normalize_path(path: &str) -> &str {
    if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    }
}

/// Whether the `Metadata` header allows the request on this surface.
fn metadata_ok(headers: &HeaderMap, surface: Surface, identity_case_sensitive: bool) -> bool {
    let Some(value) = headers.get("metadata").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let value = value.trim();
    if surface == Surface::Identity && identity_case_sensitive {
        value == "true"
    } else {
        value.eq_ignore_ascii_case("true")
    }
}

fn looks_like_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// Validation that needs no state besides the behaviour switches: returns the decoded query on success.
pub fn validate(
    method: &Method,
    path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    surface: Surface,
    behavior: &crate::config::Behavior,
) -> Result<ImdsQuery, ImdsError> {
    let err = |kind| ImdsError::new(surface, kind);
    let category = Category::of_path(path);
    let allowed = *method == Method::GET
        || (*method == Method::POST && category == Some(Category::ScheduledEvents));
    if !allowed {
        return Err(err(ErrorKind::MethodNotAllowed {
            path: path.to_string(),
            method: method.to_string(),
        }));
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(err(ErrorKind::HeadersTooLarge(MAX_HEADER_BYTES)));
    }
    if !metadata_ok(headers, surface, behavior.identity_metadata_case_sensitive) {
        return Err(err(ErrorKind::MissingMetadataHeader));
    }
    if headers.contains_key("x-forwarded-for") {
        return Err(err(ErrorKind::ForwardedFor));
    }
    if raw_query.len() > MAX_QUERY_BYTES {
        return Err(err(ErrorKind::QueryTooLong(MAX_QUERY_BYTES)));
    }
    let query = ImdsQuery::parse(raw_query).map_err(err)?;
    // `/metadata/versions` is unversioned; paths outside any category fall through to a 404.
    if let Some(category) = category.filter(|c| c.introduced().is_some()) {
        match query.get("api-version") {
            None | Some("") => return Err(err(ErrorKind::ApiVersionMissing)),
            Some(v) if !category.accepts(v) => {
                // The legacy "Not found" style only applies to well-formed dates (open question 1).
                let style = if looks_like_version(v) {
                    behavior.api_version_style
                } else {
                    ApiVersionStyle::NewestVersions
                };
                return Err(err(ErrorKind::ApiVersionInvalid(v.to_string(), style)));
            }
            Some(_) => {}
        }
    }
    Ok(query)
}

/// The rules as a tower service around `inner` (the IMDS router). Hand-written rather than
/// `axum::middleware::from_fn`, which boxes the inner service and a `Next` for every request on top of the
/// future (a per-request cost `just bench` measured); this boxes the future only.
#[derive(Clone)]
pub struct Rules<S> {
    state: AppState,
    inner: S,
}

impl<S> Rules<S> {
    pub fn new(state: AppState, inner: S) -> Self {
        Rules { state, inner }
    }
}

impl<S> Service<Request> for Rules<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is driven with `oneshot`, which waits for its readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let state = self.state.clone();
        let inner = self.inner.clone();
        Box::pin(async move { Ok(enforce(state, req, inner).await) })
    }
}

/// The rules applied to one request; `inner` (the IMDS router) answers it when every rule lets it through.
pub async fn enforce<S>(state: AppState, mut req: Request, inner: S) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let conn = req.extensions().get::<ConnInfo>().cloned();
    let arrival = state.now();
    let method = req.method().clone();
    // A clone of the URI is a reference count, not a copy; it outlives the request moved into `next`.
    let uri = req.uri().clone();
    let raw_path = uri.path();
    let raw_query = uri.query().unwrap_or("");
    let path = normalize_path(raw_path);
    let surface = Surface::of_path(path);
    let entry = RequestRecord::new(
        arrival,
        &method,
        raw_path,
        raw_query,
        req.headers(),
        conn.as_ref().map(|c| c.peer),
    );

    // Faults first: a broken or starting service is broken for every request. Latency delays every answer
    // except a 429 (throttling answers at once) and, for admitted requests, holds the concurrency slot.
    let decision = lock(&state.faults).decide(path, arrival, state.started);
    let latency = Duration::from_millis(decision.latency_ms);
    if decision.reset {
        delay(latency).await;
        if let Some(conn) = &conn {
            state.journal.record_request(entry);
            conn.reset.notify_one();
            // The connection task drops this future together with the socket.
            return std::future::pending().await;
        }
        // In-process (no socket to drop): the closest observable answer.
        let response =
            ImdsError::new(surface, ErrorKind::Internal("connection reset".into())).into_response();
        return finish(&state, response, entry);
    }
    if let Some((status, retry_after)) = decision.status {
        delay(latency).await;
        let response = ImdsError::new(
            surface,
            ErrorKind::Injected {
                status,
                retry_after,
            },
        )
        .into_response();
        return finish(&state, response, entry);
    }

    let query = match validate(
        &method,
        path,
        raw_query,
        req.headers(),
        surface,
        &state.config.behavior,
    ) {
        Ok(q) => q,
        Err(e) => {
            delay(latency).await;
            return finish(&state, e.into_response(), entry);
        }
    };
    let bucket = if surface == Surface::Identity {
        Bucket::Identity
    } else {
        Bucket::General
    };
    let _slot = match state.limiter.admit(bucket, arrival) {
        Ok(slot) => slot,
        Err(_throttled) => {
            let e = ImdsError::new(
                surface,
                ErrorKind::TooManyRequests {
                    retry_after: state.limiter.retry_after(),
                },
            );
            return finish(&state, e.into_response(), entry);
        }
    };

    // Only a trailing slash is ever removed: when nothing was, the URI is already normal and is not
    // rebuilt and re-parsed (a per-request cost found by `just bench`).
    if path.len() != raw_path.len() {
        let normalized = if raw_query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{raw_query}")
        };
        if let Ok(uri) = normalized.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    req.extensions_mut().insert(query);
    delay(latency).await;
    let response = match inner.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    finish(&state, response, entry)
}

/// Waits out an injected latency. Zero means no wait at all: tokio's timer has a 1 ms granularity, so even
/// `sleep(0)` would cost every request about a millisecond (measured by `just bench`).
async fn delay(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// Adds the headers every IMDS response carries and journals the request.
fn finish(state: &AppState, mut response: Response, mut entry: RequestRecord) -> Response {
    entry.status = response.status().as_u16();
    apply_headers(state, response.headers_mut());
    tracing::debug!(
        method = %entry.method(),
        path = %entry.path(),
        source = %entry.source(),
        status = entry.status,
        "imds request"
    );
    state.journal.record_request(entry);
    response
}

/// `Content-Type` (JSON unless the handler chose text), `Server: IMDS/...`, `x-ms-request-id`, `Date`.
pub fn apply_headers(state: &AppState, headers: &mut HeaderMap) {
    // axum's `Json` says `application/json`; the real service always adds `; charset=utf-8`.
    let is_text = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if !is_text {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(JSON_CONTENT_TYPE),
        );
    }
    headers.insert(header::SERVER, state.server_header.clone());
    headers.insert("x-ms-request-id", request_id());
    if let Some(v) = state.http_date.get(state.now()) {
        headers.insert(header::DATE, v);
    }
}

/// A fresh random (version 4) request id. Drawn from the thread-local `rand` generator rather than
/// `Uuid::new_v4`, which asks the OS (`getrandom`, a system call) for every id: ~2% of a request's CPU.
fn request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(text)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-0000-0000-000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strict_decoding() {
        let q = ImdsQuery::parse("api-version=2018-02-01&resource=https://management.azure.com/")
            .expect("ok");
        assert_eq!(q.get("resource"), Some("https://management.azure.com/"));
        let q = ImdsQuery::parse("resource=https%3A%2F%2Fvault.azure.net&x=a+b").expect("ok");
        assert_eq!(q.get("resource"), Some("https://vault.azure.net"));
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(ImdsQuery::parse("a=%zz"), Err(ErrorKind::MalformedQuery));
        assert_eq!(ImdsQuery::parse("a=%4"), Err(ErrorKind::MalformedQuery));
        assert_eq!(ImdsQuery::parse("a=%ff"), Err(ErrorKind::MalformedQuery));
        assert_eq!(
            ImdsQuery::parse("a=1&a=2"),
            Err(ErrorKind::DuplicateQuery("a".into()))
        );
        assert_eq!(ImdsQuery::parse("a=1&&b").expect("ok").get("b"), Some(""));
        // Beyond LINEAR_KEYS the hash index finds duplicates, also when spelled differently.
        let many = (0..40)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(ImdsQuery::parse(&many).map(|q| q.pairs().len()), Ok(40));
        assert_eq!(
            ImdsQuery::parse(&format!("{many}&k%33=again")),
            Err(ErrorKind::DuplicateQuery("k3".into()))
        );
        // The first error in input order wins: a malformed segment before a repeated key, and after.
        assert_eq!(
            ImdsQuery::parse(&format!("{many}&%zz&k1=x")),
            Err(ErrorKind::MalformedQuery)
        );
        assert_eq!(
            ImdsQuery::parse(&format!("{many}&k1=x&%zz")),
            Err(ErrorKind::DuplicateQuery("k1".into()))
        );
    }

    #[test]
    fn request_ids_are_v4_and_dates_follow_the_clock() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.to_str().expect("ascii")).expect("uuid");
        assert_eq!(parsed.get_version_num(), 4);
        let cache = HttpDate::default();
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.250Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        assert_eq!(cache.get(t).expect("date"), "Fri, 02 Jan 2026 03:04:05 GMT");
        // Same second: the cached value; next second and a jump back: re-formatted.
        assert_eq!(
            cache
                .get(t + chrono::Duration::milliseconds(500))
                .expect("date"),
            "Fri, 02 Jan 2026 03:04:05 GMT"
        );
        assert_eq!(
            cache.get(t + chrono::Duration::seconds(1)).expect("date"),
            "Fri, 02 Jan 2026 03:04:06 GMT"
        );
        assert_eq!(
            cache.get(t - chrono::Duration::days(1)).expect("date"),
            "Thu, 01 Jan 2026 03:04:05 GMT"
        );
    }

    proptest! {
        /// Percent-encoding any string and parsing it back yields the string.
        #[test]
        fn decode_inverts_encode(s in ".*") {
            let enc = percent_encoding::utf8_percent_encode(&s, percent_encoding::NON_ALPHANUMERIC).to_string();
            prop_assert_eq!(decode(&enc), Ok(s));
        }

        /// Parsing never panics on arbitrary input.
        #[test]
        fn parse_total(s in "[ -~]{0,200}") {
            let _ = ImdsQuery::parse(&s);
        }
    }
}
