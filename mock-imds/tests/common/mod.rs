//! Helpers shared by the mock-imds integration tests: a fixed clock, seeded mocks, and small HTTP helpers
//! (over a real socket with reqwest, or in-process with `tower::ServiceExt::oneshot`).
#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use chrono::{DateTime, TimeZone, Utc};
use http_body_util::BodyExt as _;
use mock_imds::MockImds;
use mock_imds::clock::ManualClock;
use mock_imds::config::Config;
use tower::ServiceExt as _;

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
