//! The HTTP client to IMDS: managed-identity token requests with adal's retry semantics (REFERENCE A.7) and
//! the pass-through of every other request.
//!
//! Token requests go to `--metadata-ip:--metadata-port` (NMI hard-codes 169.254.169.254:80), as
//! `GET /metadata/identity/oauth2/token?api-version=2018-02-01[&client_id=..]&resource=..` with
//! `Metadata: true`; up to 5 attempts, retrying transport errors and adal's status set with cumulative
//! back-off 2, 6, 14, 30 s (unit configurable for tests). Responses are normalised into NMI's token object
//! (every field a string). Pass-through copies method, canonical path, raw query, headers and body, minus
//! hop-by-hop headers and any client `X-Forwarded-For`/`Forwarded` (IMDS rejects proxied requests, and a
//! caller must not be able to claim another address). This module decides nothing about who may ask.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

pub use crate::errors::TokenError;
use crate::errors::{UpstreamCause, UpstreamError};
use crate::metrics::Metrics;

/// adal's IMDS retry status set.
pub const RETRY_STATUSES: &[u16] = &[
    404, 408, 410, 429, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];
/// adal's attempt count for IMDS.
pub const MAX_ATTEMPTS: u32 = 5;
/// Upper bound of a single request (connect + response); keeps a hung IMDS from pinning a handler forever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body we read from IMDS or a client.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Go's `url.QueryEscape` keeps `A-Za-z0-9-_.~` and encodes space as `+`.
const QUERY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn query_escape(s: &str) -> String {
    utf8_percent_encode(s, QUERY_ESCAPE)
        .to_string()
        .replace("%20", "+")
}

/// NMI's token object (A.4): field order as NMI marshals it, every value a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MsiToken {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: String,
    pub expires_on: String,
    pub not_before: String,
    pub resource: String,
    pub token_type: String,
}

/// Cumulative back-off before retry `attempt` (1-based): `sum 2^k` for k = 1..=attempt, capped at 60 units.
pub fn backoff(attempt: u32, unit: Duration) -> Duration {
    let mut total: u64 = 0;
    for k in 1..=attempt.min(10) {
        total += 1u64 << k;
    }
    unit.saturating_mul(total.min(60) as u32)
}

/// The IMDS client. Cheap to clone: one reference count (handlers get a clone of the state per request).
#[derive(Clone, Debug)]
pub struct Upstream(Arc<UpstreamInner>);

#[derive(Debug)]
struct UpstreamInner {
    client: Client<HttpConnector, Full<Bytes>>,
    imds: SocketAddr,
    /// `http://IP:PORT` and the `Host` value of forwarded requests, formatted once.
    base_url: String,
    host: HeaderValue,
    user_agent: HeaderValue,
    backoff_unit: Duration,
    metrics: Metrics,
}

fn json_string(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Turns IMDS's token JSON into NMI's shape: numbers-or-strings become strings, `expires_on` becomes epoch
/// seconds when it is numeric, a missing `refresh_token` becomes `""`.
pub fn normalise_token(body: &[u8]) -> Result<MsiToken, TokenError> {
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|source| TokenError::Decode {
            source,
            json: String::from_utf8_lossy(body).into_owned(),
        })?;
    let expires_on = json_string(v.get("expires_on"));
    let expires_on = expires_on
        .trim()
        .parse::<i64>()
        .map(|n| n.to_string())
        .unwrap_or(expires_on);
    Ok(MsiToken {
        access_token: json_string(v.get("access_token")),
        refresh_token: json_string(v.get("refresh_token")),
        expires_in: json_string(v.get("expires_in")),
        expires_on,
        not_before: json_string(v.get("not_before")),
        resource: json_string(v.get("resource")),
        token_type: json_string(v.get("token_type")),
    })
}

/// Headers never copied between hops (RFC 9110 §7.6.1), plus the forwarding headers a client must not set.
fn strip_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "host"
            | "content-length"
    )
}

fn strip_client_header(name: &HeaderName) -> bool {
    strip_header(name)
        || (matches!(name.as_str(), "x-forwarded-for" | "forwarded" | "x-real-ip")
            && !crate::mutant!(ForwardedForForwarded))
}

impl Upstream {
    pub fn new(
        imds: SocketAddr,
        user_agent: &str,
        backoff_unit: Duration,
        metrics: Metrics,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let user_agent = HeaderValue::from_str(user_agent)
            .unwrap_or_else(|_| HeaderValue::from_static("imds-proxy"));
        let host = HeaderValue::from_str(&imds.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("169.254.169.254"));
        Self(Arc::new(UpstreamInner {
            client,
            imds,
            base_url: format!("http://{imds}"),
            host,
            user_agent,
            backoff_unit,
            metrics,
        }))
    }

    pub fn imds(&self) -> SocketAddr {
        self.0.imds
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(http::response::Parts, Bytes), UpstreamError> {
        let method = req.method().clone();
        // Shares the URI's bytes; rendered only for an error message.
        let uri = req.uri().clone();
        let fut = async {
            let resp = self.0.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    UpstreamCause::Connect {
                        addr: self.0.imds,
                        source: e,
                    }
                } else {
                    UpstreamCause::Transport(e)
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(UpstreamCause::Body)?
                .to_bytes();
            Ok((parts, body))
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, fut)
            .await
            .unwrap_or(Err(UpstreamCause::Timeout))
            .map_err(|cause| UpstreamError::new(&method, uri.to_string(), cause))
    }

    /// The token URL, query keys sorted as Go's `url.Values.Encode` does.
    pub fn token_url(&self, client_id: Option<&str>, resource: &str) -> String {
        let mut q = String::from("api-version=2018-02-01");
        if let Some(id) = client_id.filter(|s| !s.is_empty()) {
            q.push_str("&client_id=");
            q.push_str(&query_escape(id));
        }
        q.push_str("&resource=");
        q.push_str(&query_escape(resource));
        format!("http://{}/metadata/identity/oauth2/token?{q}", self.0.imds)
    }

    /// Fetches a managed-identity token (user-assigned when `client_id` is given, else system-assigned).
    pub async fn token(
        &self,
        client_id: Option<&str>,
        resource: &str,
    ) -> Result<MsiToken, TokenError> {
        let url = self.token_url(client_id, resource);
        let op = if client_id.is_some_and(|s| !s.is_empty()) {
            "adal_token_msi_userassignedid"
        } else {
            "adal_token_msi"
        };
        let started = Instant::now();
        let result = self.token_with_retries(&url).await;
        self.0
            .metrics
            .imds_token(op, result.is_ok(), started.elapsed().as_secs_f64());
        result
    }

    async fn token_with_retries(&self, url: &str) -> Result<MsiToken, TokenError> {
        let mut attempt = 0;
        loop {
            let req = Request::builder()
                .method(Method::GET)
                .uri(url)
                .header("Metadata", "true")
                .header(header::USER_AGENT, self.0.user_agent.clone())
                .body(Full::new(Bytes::new()))
                .map_err(|e| {
                    TokenError::Transport(UpstreamError::new(
                        &Method::GET,
                        url,
                        UpstreamCause::Request(e),
                    ))
                })?;
            let outcome = self.send(req).await;
            attempt += 1;
            let retry = match &outcome {
                Err(_) => true,
                Ok((parts, _)) => RETRY_STATUSES.contains(&parts.status.as_u16()),
            };
            if !retry || attempt >= MAX_ATTEMPTS {
                return match outcome {
                    Err(e) => Err(TokenError::Transport(e)),
                    Ok((parts, body)) if parts.status == StatusCode::OK => normalise_token(&body),
                    Ok((parts, body)) => Err(TokenError::Refresh {
                        status: parts.status.as_u16(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                        endpoint: url.to_string(),
                    }),
                };
            }
            let wait = backoff(attempt, self.0.backoff_unit);
            tracing::debug!(
                attempt,
                wait_ms = wait.as_millis() as u64,
                "retrying IMDS token request"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Forwards a request to IMDS and returns its answer verbatim (status, headers, body), or why IMDS gave
    /// none (displayed as NMI's Go client error).
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Full<Bytes>>, UpstreamError> {
        let mut uri = String::with_capacity(self.0.base_url.len() + path_and_query.len());
        uri.push_str(&self.0.base_url);
        uri.push_str(path_and_query);
        let parsed = Uri::try_from(uri.as_str())
            .map_err(|e| UpstreamError::new(&method, &uri, UpstreamCause::Request(e.into())))?;
        // Header maps built directly (not header by header through `http`'s builders), order kept.
        let mut out = HeaderMap::with_capacity(headers.len() + 1);
        for (name, value) in headers {
            if !strip_client_header(name) {
                out.append(name.clone(), value.clone());
            }
        }
        out.append(header::HOST, self.0.host.clone());
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method.clone();
        *req.uri_mut() = parsed;
        *req.headers_mut() = out;
        let (parts, body) = self.send(req).await?;
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        let mut current: Option<HeaderName> = None;
        // Owned iteration: a name is given once, followed by `None` for its further values.
        for (name, value) in parts.headers {
            if let Some(name) = name {
                current = Some(name);
            }
            if let Some(name) = current.as_ref().filter(|n| !strip_header(n)) {
                headers.append(name.clone(), value);
            }
        }
        // A fresh response (status and headers only), as before: nothing else of the upstream's is kept.
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = parts.status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adal_backoff_sequence() {
        let unit = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=5).map(|a| backoff(a, unit).as_secs()).collect();
        assert_eq!(waits, vec![2, 6, 14, 30, 60]);
        assert_eq!(backoff(9, unit).as_secs(), 60);
    }

    #[test]
    fn token_url_is_go_encoded_and_sorted() {
        let up = Upstream::new(
            "127.0.0.1:80".parse().unwrap_or_else(|_| unreachable!()),
            "ua",
            Duration::from_millis(1),
            Metrics::new(),
        );
        assert_eq!(
            up.token_url(Some("abc"), "https://management.azure.com/"),
            "http://127.0.0.1:80/metadata/identity/oauth2/token?api-version=2018-02-01&client_id=abc&resource=https%3A%2F%2Fmanagement.azure.com%2F"
        );
        assert_eq!(
            up.token_url(None, "a b"),
            "http://127.0.0.1:80/metadata/identity/oauth2/token?api-version=2018-02-01&resource=a+b"
        );
    }

    #[test]
    fn normalises_imds_token_into_nmi_shape() -> Result<(), TokenError> {
        let t = normalise_token(
            br#"{"access_token":"eyJ","client_id":"c","expires_in":"86399","expires_on":1700000000,"ext_expires_in":"86399","not_before":"1699913600","resource":"https://r/","token_type":"Bearer"}"#,
        )?;
        let json = serde_json::to_string(&t).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"access_token":"eyJ","refresh_token":"","expires_in":"86399","expires_on":"1700000000","not_before":"1699913600","resource":"https://r/","token_type":"Bearer"}"#
        );
        assert!(normalise_token(b"not json").is_err());
        assert!(normalise_token(b"[1]").is_err());
        Ok(())
    }

    /// A local IMDS stand-in answering each request with the next status of `statuses` (then 200).
    async fn scripted(
        statuses: Vec<u16>,
    ) -> std::io::Result<(SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let status = statuses.get(n).copied().unwrap_or(200);
            async move {
                let body = r#"{"access_token":"t","expires_in":3599,"expires_on":"1700000000","not_before":"1699996400","resource":"r","token_type":"Bearer"}"#;
                (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((addr, hits))
    }

    #[tokio::test]
    async fn retries_adal_statuses_then_succeeds() -> Result<(), Box<dyn std::error::Error>> {
        let (addr, hits) = scripted(vec![500, 429, 404]).await?;
        let up = Upstream::new(addr, "ua", Duration::from_millis(1), Metrics::new());
        let t = up.token(Some("c"), "r").await?;
        assert_eq!(t.expires_in, "3599");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 4);
        Ok(())
    }

    #[tokio::test]
    async fn gives_up_after_five_attempts_with_a_refresh_error()
    -> Result<(), Box<dyn std::error::Error>> {
        let (addr, hits) = scripted(vec![503; 10]).await?;
        let up = Upstream::new(addr, "ua", Duration::from_millis(1), Metrics::new());
        let err = up.token(None, "r").await.err().ok_or("expected an error")?;
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(err.status(), 403);
        assert!(
            err.to_string()
                .starts_with("adal: Refresh request failed. Status Code = '503'."),
            "{err}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn non_retryable_status_is_not_retried_and_transport_errors_are_503()
    -> Result<(), Box<dyn std::error::Error>> {
        let (addr, hits) = scripted(vec![400]).await?;
        let up = Upstream::new(addr, "ua", Duration::from_millis(1), Metrics::new());
        assert_eq!(
            up.token(None, "r").await.err().map(|e| e.status()),
            Some(403)
        );
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Nothing listens on a just-closed port: connection refused, retried, then 503.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let up = Upstream::new(closed, "ua", Duration::from_millis(1), Metrics::new());
        assert_eq!(
            up.token(None, "r").await.err().map(|e| e.status()),
            Some(503)
        );
        Ok(())
    }

    #[test]
    fn forwarding_headers_are_stripped() {
        for h in [
            "x-forwarded-for",
            "forwarded",
            "connection",
            "transfer-encoding",
            "host",
        ] {
            assert!(strip_client_header(&HeaderName::from_static(h)), "{h}");
        }
        assert!(!strip_client_header(&HeaderName::from_static("metadata")));
        assert!(
            !strip_header(&HeaderName::from_static("x-forwarded-for")),
            "responses keep their headers"
        );
    }
}
