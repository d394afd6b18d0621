//! Faults and throttling (SPEC §1): injected status with Retry-After, `times`, latency, a real connection
//! reset, start-up unavailability, the general and identity rate limits and the identity concurrency limit.
//! Timing assertions are lower bounds only (no benchmarks in tests).

mod common;

use std::time::{Duration, Instant};

use common::*;
use mock_imds::MockImds;
use mock_imds::config::Fault;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn mock() -> MockImds {
    start_with_clock(seeded_config(3), manual_clock()).await
}

/// The seeded config with the real service's rate limits on.
fn rate_limited() -> mock_imds::config::Config {
    let mut c = seeded_config(3);
    c.rate_limits.enabled = true;
    c
}

#[tokio::test]
async fn injected_status_with_retry_after_and_times() {
    let m = mock().await;
    m.set_fault(
        "/metadata/instance",
        Fault {
            status: Some(503),
            retry_after: Some(7),
            times: Some(2),
            ..Fault::default()
        },
    );
    for _ in 0..2 {
        let r = get(&m, INSTANCE, &[]).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after").as_deref(), Some("7"));
        assert_eq!(r.text(), r#"{"error":"Service unavailable"}"#);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json; charset=utf-8")
        );
    }
    assert_eq!(
        get(&m, INSTANCE, &[]).await.status,
        200,
        "times=2 exhausted"
    );
    m.set_fault(
        "/metadata/identity",
        Fault {
            status: Some(429),
            ..Fault::default()
        },
    );
    let r = get(&m, TOKEN, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.text(),
        r#"{"error":"too_many_requests","error_description":"Too many requests"}"#
    );
    assert!(r.header("retry-after").is_none());
    m.clear_faults();
    assert_eq!(get(&m, TOKEN, &[]).await.status, 200);
}

/// Injects `status` on every `/metadata` path and returns the answer to an instance request (IMDS headers
/// checked).
async fn inject_status(m: &MockImds, status: u16) -> Reply {
    m.set_fault(
        "/metadata",
        Fault {
            status: Some(status),
            ..Fault::default()
        },
    );
    let r = get(m, INSTANCE, &[]).await;
    assert_imds_headers(&r);
    r
}

#[tokio::test]
async fn every_documented_status_can_be_injected() {
    let m = mock().await;
    for status in [404u16, 410, 429, 500, 503] {
        let r = inject_status(&m, status).await;
        assert_eq!(r.status, status);
        assert!(r.json()["error"].is_string());
    }
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let m = mock().await;
    m.set_fault(
        "/metadata/instance",
        Fault {
            latency_ms: 300,
            ..Fault::default()
        },
    );
    let start = Instant::now();
    let r = get(&m, INSTANCE, &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn reset_drops_the_connection() {
    let m = mock().await;
    m.set_fault(
        "/metadata/identity",
        Fault {
            reset: true,
            ..Fault::default()
        },
    );
    let mut s = tokio::net::TcpStream::connect(m.addr())
        .await
        .expect("connect");
    s.write_all(format!("GET {TOKEN} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("no hang");
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!(
            "expected a reset, read {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    // Clients see a transport error, not an HTTP answer.
    let err = client()
        .get(format!("{}{TOKEN}", m.uri()))
        .header("Metadata", "true")
        .send()
        .await;
    assert!(err.is_err());
    let j = m.journal();
    assert!(
        j.iter().all(|e| e.status == 0),
        "reset requests journaled with status 0"
    );
    // Other paths are unaffected.
    assert_eq!(get(&m, INSTANCE, &[]).await.status, 200);
}

#[tokio::test]
async fn unavailable_for_the_first_seconds() {
    let clock = manual_clock();
    let mut c = seeded_config(3);
    c.faults.startup_unavailable_secs = 20;
    let m = start_with_clock(c, clock.clone()).await;
    let r = get(&m, INSTANCE, &[]).await;
    assert_eq!(r.status, 410);
    assert_eq!(get(&m, TOKEN, &[]).await.status, 410);
    clock.advance(chrono::Duration::seconds(20));
    assert_eq!(get(&m, INSTANCE, &[]).await.status, 200);
}

#[tokio::test]
async fn general_rate_limit_is_5_per_second() {
    let clock = manual_clock();
    let m = start_with_clock(rate_limited(), clock.clone()).await;
    for i in 0..5 {
        assert_eq!(get(&m, INSTANCE, &[]).await.status, 200, "request {i}");
    }
    let r = get(&m, INSTANCE, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), r#"{"error":"Too many requests"}"#);
    assert_imds_headers(&r);
    // Identity has its own budget.
    assert_eq!(get(&m, TOKEN, &[]).await.status, 200);
    clock.advance(chrono::Duration::milliseconds(1001));
    assert_eq!(get(&m, INSTANCE, &[]).await.status, 200);
    // Switchable at run time.
    m.set_rate_limits(false);
    for _ in 0..10 {
        assert_eq!(get(&m, INSTANCE, &[]).await.status, 200);
    }
}

#[tokio::test]
async fn identity_rate_limit_is_20_per_second() {
    let mut c = rate_limited();
    c.rate_limits.retry_after_secs = Some(1);
    let m = start_with_clock(c, manual_clock()).await;
    for i in 0..20 {
        assert_eq!(get(&m, TOKEN, &[]).await.status, 200, "request {i}");
    }
    let r = get(&m, TOKEN, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(r.json()["error"], "too_many_requests");
}

#[tokio::test]
async fn identity_concurrency_is_5() {
    let m = start_with_clock(rate_limited(), manual_clock()).await;
    // Warm the key cache so all requests take the same path.
    assert_eq!(get(&m, TOKEN, &[]).await.status, 200);
    m.set_fault(
        "/metadata/identity",
        Fault {
            latency_ms: 3000,
            ..Fault::default()
        },
    );
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = format!("{}{TOKEN}", m.uri());
        tasks.push(tokio::spawn(async move {
            client()
                .get(url)
                .header("Metadata", "true")
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    // Give the five time to be admitted (they then hold their slots for 3 s; generous for a loaded machine).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sixth = get(&m, TOKEN, &[]).await;
    assert_eq!(sixth.status, 429, "sixth concurrent identity request");
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("request"), 200);
    }
}

#[tokio::test]
async fn only_4xx_and_5xx_can_be_injected() {
    let m = mock().await;
    // Control API: refused, the faults stay as they were.
    let put = client()
        .put(format!("{}/_mock/faults", m.uri()))
        .json(&serde_json::json!({"rules": [{"path_prefix": "/metadata", "status": 200}]}))
        .send()
        .await
        .expect("PUT /_mock/faults");
    assert_eq!(put.status().as_u16(), 400);
    assert_eq!(get(&m, INSTANCE, &[]).await.status, 200);
    // Configuration file: refused with the reason.
    let err = mock_imds::config::Config::from_toml_str(
        "[[faults.rules]]\npath_prefix = \"/metadata\"\nstatus = 302\n",
        "test.toml",
        Some(3),
    )
    .expect_err("302 is not injectable");
    assert!(err.to_string().contains("302"), "{err}");
    // Library handle (cannot report an error): a non-error status answers 500, IMDS-shaped.
    for status in [101u16, 200, 302, 600] {
        let r = inject_status(&m, status).await;
        assert_eq!(r.status, 500, "injected {status}");
        assert_eq!(r.text(), r#"{"error":"Internal server error"}"#);
    }
}
