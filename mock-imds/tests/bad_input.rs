//! Acceptance (issue 2): bad input over a real TCP socket — malformed percent-encoding, long query strings,
//! huge headers, non-UTF-8 bytes, unknown verbs — each gets a clear IMDS-style JSON error (never a panic, never
//! a bare hyper answer) and the server keeps serving afterwards. Raw bytes, because HTTP clients refuse to
//! send most of these.

mod common;

use std::time::Duration;

use common::*;
use mock_imds::MockImds;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes, reads until the server closes or the response is complete, returns (status, head, body).
async fn raw(mock: &MockImds, bytes: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(mock.addr()).await.expect("connect");
    // The server may answer (and close) before reading everything; a failed write is fine then.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if complete(&buf, bytes.starts_with(b"HEAD ")) {
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
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn complete(buf: &[u8], head_only: bool) -> bool {
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

fn assert_imds_error(status: u16, head: &str, body: &str, expected_status: u16) {
    assert_eq!(status, expected_status, "head {head}\nbody {body}");
    assert!(
        head.contains("content-type: application/json; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("server: imds/150.870.65."), "{head}");
    assert!(head.contains("x-ms-request-id: "), "{head}");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(v["error"].is_string(), "{body}");
}

async fn mock() -> MockImds {
    MockImds::builder()
        .config(seeded_config(11))
        .start()
        .await
        .expect("start")
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
        let req =
            format!("GET /metadata/instance?{q} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n");
        let (s, h, b) = raw(&m, req.as_bytes()).await;
        assert_imds_error(s, &h, &b, 400);
        assert_eq!(
            b,
            r#"{"error":"Bad request. The query string is malformed"}"#
        );
    }
    still_serving(&m).await;
}

#[tokio::test]
async fn long_query_strings() {
    let m = mock().await;
    // 40 KiB: reaches the rules layer, which caps queries at 32 KiB.
    let q = format!("api-version=2021-02-01&pad={}", "a".repeat(40 * 1024));
    let req = format!("GET /metadata/instance?{q} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n");
    let (s, h, b) = raw(&m, req.as_bytes()).await;
    assert_imds_error(s, &h, &b, 400);
    assert_eq!(
        b,
        r#"{"error":"Bad request. The query string exceeds 32768 bytes"}"#
    );
    // 64 KiB: beyond the URI limit, refused while parsing; still an IMDS-shaped answer.
    let q = format!("api-version=2021-02-01&pad={}", "a".repeat(64 * 1024));
    let req = format!("GET /metadata/instance?{q} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n");
    let (s, h, b) = raw(&m, req.as_bytes()).await;
    assert_imds_error(s, &h, &b, 414);
    still_serving(&m).await;
}

#[tokio::test]
async fn huge_headers() {
    let m = mock().await;
    // 40 KiB of headers: accepted by the parser, refused by the rules layer.
    let req = format!(
        "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40 * 1024)
    );
    let (s, h, b) = raw(&m, req.as_bytes()).await;
    assert_imds_error(s, &h, &b, 400);
    assert_eq!(
        b,
        r#"{"error":"Bad request. The request headers exceed 32768 bytes"}"#
    );
    // 512 KiB: beyond the server's head buffer.
    let req = format!(
        "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(512 * 1024)
    );
    let (s, h, b) = raw(&m, req.as_bytes()).await;
    assert_imds_error(s, &h, &b, 431);
    // Too many header fields.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!(
        "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n{many}\r\n"
    );
    let (s, h, b) = raw(&m, req.as_bytes()).await;
    assert_imds_error(s, &h, &b, 431);
    still_serving(&m).await;
}

#[tokio::test]
async fn non_utf8_bytes() {
    let m = mock().await;
    // Raw non-UTF-8 in the request target: not a valid URI.
    let mut req = b"GET /metadata/instance/\xff\xfe?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".to_vec();
    let (s, h, b) = raw(&m, &req).await;
    assert_imds_error(s, &h, &b, 400);
    // Non-UTF-8 in a header value (obs-text is legal HTTP): the Metadata header is not "true".
    req = b"GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: tr\xffue\r\n\r\n".to_vec();
    let (s, h, b) = raw(&m, &req).await;
    assert_imds_error(s, &h, &b, 400);
    assert_eq!(
        b,
        r#"{"error":"Bad request: . Required metadata header not specified"}"#
    );
    // ...and in an unrelated header: ignored, request served.
    req = b"GET /metadata/instance/compute/vmId?api-version=2021-02-01&format=text HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nX-Junk: \xc3\x28\xa0\r\n\r\n".to_vec();
    let (s, _h, b) = raw(&m, &req).await;
    assert_eq!(s, 200);
    assert_eq!(b, m.config().compute.vm_id);
    // Percent-encoded non-UTF-8 in the path: no such element.
    req = b"GET /metadata/instance/%ff?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".to_vec();
    let (s, h, b) = raw(&m, &req).await;
    assert_imds_error(s, &h, &b, 404);
    // Garbage instead of HTTP.
    let (s, h, b) = raw(&m, b"\x00\x01\x02\xff garbage\r\n\r\n").await;
    assert_imds_error(s, &h, &b, 400);
    still_serving(&m).await;
}

#[tokio::test]
async fn unknown_verbs() {
    let m = mock().await;
    for verb in ["BREW", "PROPFIND", "PATCH", "TRACE", "HEAD"] {
        let req = format!(
            "{verb} /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n"
        );
        let (s, h, b) = raw(&m, req.as_bytes()).await;
        if verb == "HEAD" {
            // A HEAD answer has no body by definition; status and headers still say 405.
            assert_eq!(s, 405, "{h}");
            assert!(h.contains("server: imds/150.870.65."));
            continue;
        }
        assert_imds_error(s, &h, &b, 405);
        assert!(b.contains(&format!("Method = \\\"{verb}\\\"")), "{b}");
    }
    still_serving(&m).await;
}

#[tokio::test]
async fn journal_records_source_and_status() {
    let m = mock().await;
    let req = b"GET /metadata/instance?api-version=2021-02-01&x=%zz HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n";
    let (s, _, _) = raw(&m, req).await;
    assert_eq!(s, 400);
    let j = m.journal();
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].status, 400);
    assert_eq!(j[0].query, "api-version=2021-02-01&x=%zz");
    assert!(j[0].source.starts_with("127.0.0.1:"), "{}", j[0].source);
    assert_eq!(j[0].headers[0], ("host".to_string(), "x".to_string()));
}
