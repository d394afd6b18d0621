//! The client against a local axum server: headers and bodies pass, every limit holds and names itself.

use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post};

use super::*;

const LIMITS: Limits = Limits {
    call_timeout: Duration::from_millis(500),
    connect_timeout: Duration::from_millis(500),
    max_answer_bytes: 1024,
};

async fn serve() -> String {
    let app = Router::new()
        .route(
            "/echo",
            post(|headers: HeaderMap, body: Bytes| async move {
                let tag = headers
                    .get("x-tag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                ([("x-echo", tag)], body)
            }),
        )
        .route("/big", get(|| async { vec![b'x'; 4096] }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn headers_and_body_make_the_round_trip() {
    let base = serve().await;
    let client = Client::http(LIMITS);
    let answer = client
        .call(
            Method::POST,
            &format!("{base}/echo"),
            &[("x-tag", "seven".into())],
            Some(b"payload".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-echo"], "seven");
    assert_eq!(&answer.body[..], b"payload");
}

#[tokio::test]
async fn an_answer_over_the_bound_is_an_error_not_a_truncation() {
    let base = serve().await;
    let err = Client::http(LIMITS)
        .call(Method::GET, &format!("{base}/big"), &[], None)
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Read { .. }), "{err}");
}

#[tokio::test]
async fn a_slow_answer_times_out_at_the_deadline() {
    let base = serve().await;
    let err = Client::http(LIMITS)
        .call(Method::GET, &format!("{base}/slow"), &[], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Timeout { limit, .. } if limit == LIMITS.call_timeout),
        "{err}"
    );
    assert!(err.to_string().contains("/slow"), "{err}");
}

#[tokio::test]
async fn a_refused_connection_and_a_bad_uri_are_named() {
    // A port just released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::http(LIMITS);
    let err = client
        .call(Method::GET, &format!("http://127.0.0.1:{port}/"), &[], None)
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Send { .. }), "{err}");
    let err = client
        .call(Method::GET, "http://bad uri/", &[], None)
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Request { .. }), "{err}");
}

#[tokio::test]
async fn the_plain_client_refuses_https() {
    let err = Client::http(LIMITS)
        .call(Method::GET, "https://127.0.0.1:1/", &[], None)
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Send { .. }), "{err}");
}

#[test]
fn a_missing_or_invalid_ca_file_is_an_error() {
    let err = Client::https(LIMITS, Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
    assert!(matches!(err, TlsError::CaFile { .. }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Client::https(LIMITS, Some(&bad)).unwrap_err();
    assert!(
        matches!(err, TlsError::CaCert { .. } | TlsError::CaFile { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn the_https_client_also_speaks_http() {
    let base = serve().await;
    // Platform roots may be absent in a minimal container: then the error says so, which is also what
    // the client promises.
    match Client::https(LIMITS, None) {
        Ok(client) => {
            let answer = client
                .call(
                    Method::POST,
                    &format!("{base}/echo"),
                    &[],
                    Some(b"x".to_vec()),
                )
                .await
                .unwrap();
            assert_eq!(&answer.body[..], b"x");
        }
        Err(TlsError::NoRoots) => eprintln!("SKIP: no platform CA roots on this machine"),
        Err(e) => panic!("{e}"),
    }
}
