//! Acceptance (issue 2): bad input over a real TCP socket — malformed percent-encoding, long query strings,
//! huge headers, non-UTF-8 bytes, unknown verbs — each gets a clear IMDS-style JSON error (never a panic, never
//! a bare hyper answer) and the server keeps serving afterwards. Raw bytes, because HTTP clients refuse to
//! send most of these.

mod common;

use common::*;
use mock_imds::MockImds;

/// An IMDS-shaped error: the expected status, the IMDS headers and a JSON `{"error": <string>, ...}` body.
fn assert_imds_error(r: &Reply, expected_status: u16) {
    assert_eq!(
        r.status,
        expected_status,
        "headers {:?}\nbody {}",
        r.headers,
        r.text()
    );
    assert_imds_headers(r);
    assert!(r.json()["error"].is_string(), "{}", r.text());
}

/// A raw HTTP/1.1 GET of `target` with `headers` (each line ending in CRLF), preceded by `Metadata: true`
/// unless `headers` starts with a `Metadata` line of its own.
fn get_request(target: &[u8], headers: &[u8]) -> Vec<u8> {
    let metadata: &[u8] = if headers.starts_with(b"Metadata:") {
        b""
    } else {
        b"Metadata: true\r\n"
    };
    [
        b"GET ",
        target,
        b" HTTP/1.1\r\nHost: x\r\n",
        metadata,
        headers,
        b"\r\n",
    ]
    .concat()
}

async fn mock() -> MockImds {
    start(seeded_config(11)).await
}

async fn still_serving(m: &MockImds) {
    let r = get(
        m,
        "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn malformed_percent_encoding() {
    let m = mock().await;
    for q in [
        "api-version=2021-02-01&x=%zz",
        "api-version=2021-02-01&x=%4",
        "api-version=2021-02-01&x=%ff%fe",
    ] {
        let target = format!("/metadata/instance?{q}");
        let r = raw(&m, &get_request(target.as_bytes(), b"")).await;
        assert_imds_error(&r, 400);
        assert_eq!(
            r.text(),
            r#"{"error":"Bad request. The query string is malformed"}"#
        );
    }
    still_serving(&m).await;
}

#[tokio::test]
async fn long_query_strings() {
    let m = mock().await;
    // 40 KiB: reaches the rules layer, which caps queries at 32 KiB.
    let target = format!(
        "/metadata/instance?api-version=2021-02-01&pad={}",
        "a".repeat(40 * 1024)
    );
    let r = raw(&m, &get_request(target.as_bytes(), b"")).await;
    assert_imds_error(&r, 400);
    assert_eq!(
        r.text(),
        r#"{"error":"Bad request. The query string exceeds 32768 bytes"}"#
    );
    // 64 KiB: beyond the URI limit, refused while parsing; still an IMDS-shaped answer.
    let target = format!(
        "/metadata/instance?api-version=2021-02-01&pad={}",
        "a".repeat(64 * 1024)
    );
    assert_imds_error(&raw(&m, &get_request(target.as_bytes(), b"")).await, 414);
    still_serving(&m).await;
}

#[tokio::test]
async fn huge_headers() {
    let m = mock().await;
    let instance = INSTANCE.as_bytes();
    // 40 KiB of headers: accepted by the parser, refused by the rules layer.
    let big = format!("X-Big: {}\r\n", "b".repeat(40 * 1024));
    let r = raw(&m, &get_request(instance, big.as_bytes())).await;
    assert_imds_error(&r, 400);
    assert_eq!(
        r.text(),
        r#"{"error":"Bad request. The request headers exceed 32768 bytes"}"#
    );
    // 512 KiB: beyond the server's head buffer.
    let huge = format!("X-Huge: {}\r\n", "h".repeat(512 * 1024));
    assert_imds_error(&raw(&m, &get_request(instance, huge.as_bytes())).await, 431);
    // Too many header fields.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_imds_error(&raw(&m, &get_request(instance, many.as_bytes())).await, 431);
    still_serving(&m).await;
}

#[tokio::test]
async fn non_utf8_bytes() {
    let m = mock().await;
    // Raw non-UTF-8 in the request target: not a valid URI.
    let r = raw(
        &m,
        &get_request(b"/metadata/instance/\xff\xfe?api-version=2021-02-01", b""),
    )
    .await;
    assert_imds_error(&r, 400);
    // Non-UTF-8 in a header value (obs-text is legal HTTP): the Metadata header is not "true".
    let r = raw(
        &m,
        &get_request(INSTANCE.as_bytes(), b"Metadata: tr\xffue\r\n"),
    )
    .await;
    assert_imds_error(&r, 400);
    assert_eq!(
        r.text(),
        r#"{"error":"Bad request: . Required metadata header not specified"}"#
    );
    // ...and in an unrelated header: ignored, request served.
    let r = raw(
        &m,
        &get_request(
            b"/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
            b"X-Junk: \xc3\x28\xa0\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), m.config().compute.vm_id);
    // Percent-encoded non-UTF-8 in the path: no such element.
    let r = raw(
        &m,
        &get_request(b"/metadata/instance/%ff?api-version=2021-02-01", b""),
    )
    .await;
    assert_imds_error(&r, 404);
    // Garbage instead of HTTP.
    assert_imds_error(&raw(&m, b"\x00\x01\x02\xff garbage\r\n\r\n").await, 400);
    still_serving(&m).await;
}

#[tokio::test]
async fn unknown_verbs() {
    let m = mock().await;
    for verb in ["BREW", "PROPFIND", "PATCH", "TRACE", "HEAD"] {
        let req = format!("{verb} {INSTANCE} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n");
        let r = raw(&m, req.as_bytes()).await;
        if verb == "HEAD" {
            // A HEAD answer has no body by definition; status and headers still say 405.
            assert_eq!(r.status, 405, "{:?}", r.headers);
            assert_imds_headers(&r);
            continue;
        }
        assert_imds_error(&r, 405);
        assert!(
            r.text().contains(&format!("Method = \\\"{verb}\\\"")),
            "{}",
            r.text()
        );
    }
    still_serving(&m).await;
}

#[tokio::test]
async fn journal_records_source_and_status() {
    let m = mock().await;
    let r = raw(
        &m,
        &get_request(b"/metadata/instance?api-version=2021-02-01&x=%zz", b""),
    )
    .await;
    assert_eq!(r.status, 400);
    let j = m.journal();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].status, 400);
    assert_eq!(j[0].query, "api-version=2021-02-01&x=%zz");
    assert!(j[0].source.starts_with("127.0.0.1:"), "{}", j[0].source);
    assert_eq!(j[0].headers[0], ("host".to_string(), "x".to_string()));
}

#[tokio::test]
async fn oversized_scheduled_events_acknowledgement() {
    let m = mock().await;
    // 3 MiB: larger than any acknowledgement (and than axum's default body limit).
    let body = format!(
        r#"{{"StartRequests":[{{"EventId":"{}"}}]}}"#,
        "a".repeat(3 << 20)
    );
    let r = post(
        &m,
        "/metadata/scheduledevents?api-version=2020-07-01",
        &body,
    )
    .await;
    assert_imds_error(&r, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Bad Request. Invalid payload")),
        "{}",
        r.text()
    );
    still_serving(&m).await;
}
