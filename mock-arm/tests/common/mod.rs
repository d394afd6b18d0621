//! Helpers shared by the mock-arm integration tests: a fixed clock, the in-process router driven with
//! `tower::ServiceExt::oneshot`, a response reduced to what tests look at, ids of the generated estate, and
//! a rendering of an answer (status, headers, body) for insta snapshots with the per-request ids masked.
#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use chrono::{DateTime, TimeZone, Utc};
use http_body_util::BodyExt as _;
use mock_arm::config::Config;
use mock_imds::clock::ManualClock;
use tower::ServiceExt as _;

pub const API: &str = "api-version=2019-12-01";

/// 2024-03-08T12:00:00Z.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 8, 12, 0, 0)
        .single()
        .expect("valid date")
}

pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(t0()))
}

/// The generated estate of `seed` with short operations (VM 15 s, scale set 50 s as defaults) and auth off.
pub fn config(seed: u64) -> Config {
    let mut c = Config::generate(Some(seed));
    c.auth.enabled = false;
    c
}

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

/// Sends one request through the router in-process (`Host: management.azure.com`).
pub async fn call(
    app: &Router,
    method: &str,
    path_and_query: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", "management.azure.com");
    if body.is_some() {
        req = req.header("content-type", "application/json; charset=utf-8");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Body::from(body.unwrap_or_default().to_string()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
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

/// `{"identity":{"type":TYPE,"userAssignedIdentities":{id: {} | null}}}`.
pub fn identity_patch(kind: &str, entries: &[(&str, bool)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(id, add)| {
            (
                (*id).to_string(),
                if *add {
                    serde_json::json!({})
                } else {
                    serde_json::Value::Null
                },
            )
        })
        .collect();
    serde_json::json!({"identity": {"type": kind, "userAssignedIdentities": map}}).to_string()
}

/// Status line, headers (sorted; per-request ids masked) and pretty body, for snapshots.
pub fn render(r: &Reply) -> String {
    let mut out = format!("HTTP {}\n", r.status);
    let mut names: Vec<&str> = r.headers.keys().map(http::HeaderName::as_str).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        for v in r.headers.get_all(name) {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            let v = match name {
                "x-ms-request-id" | "x-ms-correlation-request-id" => "[request-id]".to_string(),
                "x-ms-routing-request-id" => match v.rsplit_once(':') {
                    Some((head, _)) => format!("{head}:[request-id]"),
                    None => v,
                },
                _ => v,
            };
            out.push_str(&format!("{name}: {v}\n"));
        }
    }
    out.push('\n');
    match serde_json::from_slice::<serde_json::Value>(&r.body) {
        Ok(v) => out.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(_) => out.push_str(&r.text()),
    }
    out
}
