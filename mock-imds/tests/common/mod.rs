//! Helpers shared by the mock-imds integration tests: a fixed clock, seeded mocks, small HTTP helpers (over a
//! real socket with reqwest or raw bytes, or in-process with `tower::ServiceExt::oneshot`), the check that an
//! answer carries the IMDS headers, and token verification through the discovery document and JWKS the mock
//! publishes over HTTP. One piece of code per piece of logic: test files hold only their cases.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use chrono::{DateTime, TimeZone, Utc};
use http_body_util::BodyExt as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mock_imds::MockImds;
use mock_imds::clock::ManualClock;
use mock_imds::config::{Config, UserAssignedIdentity};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

/// Instance metadata at a version every field test uses.
pub const INSTANCE: &str = "/metadata/instance?api-version=2021-02-01";
/// A system-assigned token request (resource unencoded, as azure-identity sends it).
pub const TOKEN: &str =
    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/";

/// 2024-03-08T12:00:00Z: a fixed instant for deterministic snapshots.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 8, 12, 0, 0)
        .single()
        .expect("valid date")
}

pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(t0()))
}

/// A response reduced to what the tests look at.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Starts a mock on a random port with `config` and the system clock.
pub async fn start(config: Config) -> MockImds {
    MockImds::builder()
        .config(config)
        .start()
        .await
        .expect("mock starts")
}

/// Starts a mock on a random port with `config` and an injected clock.
pub async fn start_with_clock(config: Config, clock: Arc<ManualClock>) -> MockImds {
    MockImds::builder()
        .config(config)
        .clock(clock)
        .start()
        .await
        .expect("mock starts")
}

/// Starts a mock with the generated default VM and keys of `seed` (rate limits on, as the real service).
pub async fn start_seeded(seed: u64) -> MockImds {
    MockImds::builder()
        .seed(seed)
        .start()
        .await
        .expect("mock starts")
}

/// The first configured user-assigned identity (the default VM has one).
pub fn first_uami(mock: &MockImds) -> UserAssignedIdentity {
    mock.config()
        .identities
        .user_assigned
        .first()
        .expect("default config has a user-assigned identity")
        .clone()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// GET over the socket with `Metadata: true` and extra headers.
pub async fn get(mock: &MockImds, path_and_query: &str, extra: &[(&str, &str)]) -> Reply {
    request(
        mock,
        reqwest::Method::GET,
        path_and_query,
        true,
        extra,
        None,
    )
    .await
}

/// GET over the socket without a `Metadata` header (`extra` may carry one with another value).
pub async fn get_bare(mock: &MockImds, path_and_query: &str, extra: &[(&str, &str)]) -> Reply {
    request(
        mock,
        reqwest::Method::GET,
        path_and_query,
        false,
        extra,
        None,
    )
    .await
}

/// POST `body` over the socket with `Metadata: true`.
pub async fn post(mock: &MockImds, path_and_query: &str, body: &str) -> Reply {
    request(
        mock,
        reqwest::Method::POST,
        path_and_query,
        true,
        &[],
        Some(body.to_string()),
    )
    .await
}

pub async fn request(
    mock: &MockImds,
    method: reqwest::Method,
    path_and_query: &str,
    metadata: bool,
    extra: &[(&str, &str)],
    body: Option<String>,
) -> Reply {
    let mut req = client().request(method, format!("{}{}", mock.uri(), path_and_query));
    if metadata {
        req = req.header("Metadata", "true");
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {path_and_query}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// In-process request through the router.
pub async fn oneshot(router: &axum::Router, req: http::Request<Body>) -> Reply {
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .expect("router is infallible");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// In-process GET with `Metadata: true`.
pub async fn oneshot_get(router: &axum::Router, path_and_query: &str) -> Reply {
    let req = http::Request::get(path_and_query)
        .header("Metadata", "true")
        .body(Body::empty())
        .expect("request");
    oneshot(router, req).await
}

/// The seeded default config with rate limits off (tests that test rate limits turn them on).
pub fn seeded_config(seed: u64) -> Config {
    let mut c = Config::generate(Some(seed));
    c.rate_limits.enabled = false;
    c
}

/// Decodes the claims of a JWT without verifying it (verification is tests/jwks_verify.rs's job).
pub fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    use base64::Engine as _;
    let mut it = token.split('.');
    let mut part = || {
        let p = it.next().expect("JWT part");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON part")
    };
    let header = part();
    let claims = part();
    (header, claims)
}

/// Asserts the headers every IMDS answer carries (REFERENCE B.1): the JSON content type, `Server:
/// IMDS/150.870.65.<build>`, a UUID `x-ms-request-id` and a `Date`.
pub fn assert_imds_headers(reply: &Reply) {
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json; charset=utf-8"),
        "Content-Type; headers {:?}",
        reply.headers
    );
    let server = reply.header("server").unwrap_or_default();
    assert!(
        server.starts_with("IMDS/150.870.65."),
        "Server header {server:?}"
    );
    let id = reply.header("x-ms-request-id").unwrap_or_default();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "x-ms-request-id {id:?}");
    assert!(reply.header("date").is_some(), "Date header");
}

/// Sends raw bytes over a fresh connection and reads the answer until the server closes or the response is
/// complete (10 s at most). For requests HTTP clients refuse to send.
pub async fn raw(mock: &MockImds, bytes: &[u8]) -> Reply {
    let mut s = tokio::net::TcpStream::connect(mock.addr())
        .await
        .expect("connect");
    // The server may answer (and close) before reading everything; a failed write is fine then.
    let _ = s.write_all(bytes).await;
    let head_only = bytes.starts_with(b"HEAD ");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if raw_complete(&buf, head_only) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no complete response within 10 s: {:?}",
        String::from_utf8_lossy(&buf)
    );
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&buf[..i], buf[i + 4..].to_vec()),
        None => (&buf[..], Vec::new()),
    };
    let head = String::from_utf8_lossy(head);
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers = http::HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((n, v)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(n, v);
        }
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// Whether `buf` holds a complete response (head, and `Content-Length` bytes of body unless `head_only`).
fn raw_complete(buf: &[u8], head_only: bool) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    if head_only {
        return true;
    }
    let len = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
    });
    len.is_some_and(|n| body.len() >= n)
}

/// GET `url` (with `Metadata: true` when `imds`), asserting success; the body as JSON.
pub async fn get_json(url: &str, imds: bool) -> Value {
    let mut req = client().get(url);
    if imds {
        req = req.header("Metadata", "true");
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("body of {url}: {e}"));
    assert!(status.is_success(), "GET {url} -> {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON of {url}: {e}: {body}"))
}

/// Discovery → jwks_uri → JWKS over HTTP, the way a relying party bootstraps. Returns (issuer, JWKS).
pub async fn discover(mock: &MockImds) -> (String, JwkSet) {
    let doc = get_json(
        &format!("{}/_mock/.well-known/openid-configuration", mock.uri()),
        false,
    )
    .await;
    let issuer = doc["issuer"]
        .as_str()
        .expect("issuer is a string")
        .to_owned();
    let jwks_uri = doc["jwks_uri"].as_str().expect("jwks_uri is a string");
    assert!(
        jwks_uri.starts_with(&mock.uri()),
        "jwks_uri {jwks_uri} must point at the mock {}",
        mock.uri()
    );
    assert!(
        doc["id_token_signing_alg_values_supported"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "RS256")),
        "discovery must advertise RS256: {doc}"
    );
    let jwks: JwkSet =
        serde_json::from_value(get_json(jwks_uri, false).await).expect("JWKS parses");
    (issuer, jwks)
}

/// RS256 validation for audience `aud` and issuer `iss`, requiring and checking `exp`, `aud`, `iss`, `nbf`.
pub fn validation(aud: &str, iss: &str) -> Validation {
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[aud]);
    v.set_issuer(&[iss]);
    v.set_required_spec_claims(&["exp", "aud", "iss", "nbf"]);
    v.validate_nbf = true;
    v
}

/// Verifies `token` with the key its `kid` names in `jwks`; the claims on success.
pub fn verify(token: &str, jwks: &JwkSet, v: &Validation) -> jsonwebtoken::errors::Result<Value> {
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header
        .kid
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidToken)?;
    let jwk = jwks
        .find(&kid)
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidToken)?;
    let key = DecodingKey::from_jwk(jwk)?;
    Ok(jsonwebtoken::decode::<Value>(token, &key, v)?.claims)
}
