//! The soak's hostile-request corpus: raw byte requests of every class the issue 10 review tried
//! (malformed and oversized heads, bad encodings, unknown verbs, HTTP/0.9 and h2c, request smuggling,
//! spellings of `/metadata/instance`, the mock's control paths, a head that never ends), each sent on a
//! fresh connection to imds-proxy (as a pod) and to mock-imds (directly), while the load runs.
//!
//! The exact answer each input deserves is asserted by the test suites (mock-imds/tests/bad_input.rs,
//! proptest_router.rs, proxy/tests/loopback.rs `blk_001_every_spelling_of_instance_is_blocked`, the
//! conformance BLK and ISO cases); here only survival is counted: answered, closed, or held open past the
//! soak's 3 s read window, and whether both servers still answer afterwards.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use imds_conformance::backend::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Shared;

/// How long the soak waits for an answer to one hostile input.
const READ_WINDOW: Duration = Duration::from_secs(3);

/// The corpus: (name, bytes).
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let get = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n{extra}\r\n")
            .into_bytes()
    };
    let long = "a".repeat(40 * 1024);
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut c: Vec<(&'static str, Vec<u8>)> = vec![
        ("bad percent-encoding", get("/metadata/instance?api-version=%zz%", "")),
        ("query of 40 KiB", get(&format!("/metadata/versions?x={long}"), "")),
        ("path of 70 KiB", get(&format!("/{}", "p".repeat(70 * 1024)), "")),
        ("header of 40 KiB", get("/metadata/versions", &format!("X-Big: {long}\r\n"))),
        ("200 header fields", get("/metadata/versions", &many_headers)),
        ("unknown verb", b"BREW /metadata/versions HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".to_vec()),
        ("PATCH on the token path", b"PATCH /metadata/identity/oauth2/token?api-version=2018-02-01&resource=x HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("HTTP/0.9 request", b"GET /metadata/versions\r\n".to_vec()),
        ("h2c preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("h2c upgrade", get("/metadata/versions", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n")),
        ("binary garbage", vec![0, 1, 2, 0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']),
        ("non-UTF-8 path", [b"GET /metadata/\xff\xfe HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".as_slice()].concat()),
        ("non-UTF-8 Metadata value", b"GET /metadata/versions HTTP/1.1\r\nHost: x\r\nMetadata: \xff\r\n\r\n".to_vec()),
        ("CL + TE smuggling", b"POST /metadata/versions HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".to_vec()),
        ("two Content-Lengths", b"POST /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}".to_vec()),
        ("bad chunk size", b"POST /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec()),
        ("absolute-form target", get("http://169.254.169.254/metadata/instance?api-version=2021-02-01", "")),
        ("no Host header", b"GET /metadata/versions HTTP/1.1\r\nMetadata: true\r\n\r\n".to_vec()),
        ("spoofed X-Forwarded-For token request", get("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F", "X-Forwarded-For: 10.244.1.10\r\npodname: app\r\npodns: default\r\n")),
        ("control API: GET /_mock/journal", get("/_mock/journal", "")),
        ("control API: DELETE /_mock/journal", b"DELETE /_mock/journal HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".to_vec()),
        ("head that never ends", b"GET /metadata/versions HTTP/1.1\r\nHost: x\r\nMetadata: tr".to_vec()),
    ];
    for (name, target) in [
        (
            "spelling //metadata/instance",
            "//metadata/instance?api-version=2021-02-01",
        ),
        (
            "spelling /metadata/./instance",
            "/metadata/./instance?api-version=2021-02-01",
        ),
        (
            "spelling /%6detadata/instance",
            "/%6detadata/instance?api-version=2021-02-01",
        ),
        (
            "spelling /METADATA/INSTANCE",
            "/METADATA/INSTANCE?api-version=2021-02-01",
        ),
        (
            "spelling /metadata/instance;x",
            "/metadata/instance;x?api-version=2021-02-01",
        ),
        (
            "spelling /metadata/instance/../instance",
            "/metadata/instance/../instance?api-version=2021-02-01",
        ),
    ] {
        c.push((name, get(target, "")));
    }
    c
}

/// What happened to one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Status(u16),
    Closed,
    Held,
    NoConnection,
}

/// Counts of the corpus run.
#[derive(Debug, Default)]
pub struct Summary {
    inputs: usize,
    per_target: BTreeMap<&'static str, BTreeMap<Fate, u64>>,
    /// Both servers answered `/metadata/versions` with 200 after the corpus.
    pub serving_after: bool,
}

impl Summary {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Hostile corpus: {} distinct inputs ([bench/src/soak/hostile.rs](../bench/src/soak/hostile.rs)), \
             each on a fresh connection, every round, to both servers.\n\n\
             | target | sent | answered (by status) | closed without answer | held open > 3 s | no connection |\n\
             | --- | ---: | --- | ---: | ---: | ---: |",
            self.inputs
        );
        for (target, fates) in &self.per_target {
            let sent: u64 = fates.values().sum();
            let statuses: Vec<String> = fates
                .iter()
                .filter_map(|(f, n)| match f {
                    Fate::Status(s) => Some(format!("{s}×{n}")),
                    _ => None,
                })
                .collect();
            let get = |f: Fate| fates.get(&f).copied().unwrap_or(0);
            let _ = writeln!(
                md,
                "| {target} | {sent} | {} | {} | {} | {} |",
                statuses.join(", "),
                get(Fate::Closed),
                get(Fate::Held),
                get(Fate::NoConnection)
            );
        }
        md
    }
}

/// Sends the corpus `rounds` times to the proxy (as `pod`) and to the mock (from `host`), then checks
/// that both still answer.
pub async fn fire(
    shared: Arc<Shared>,
    pod: String,
    host: String,
    rounds: usize,
) -> Result<Summary> {
    let corpus = corpus();
    let mut summary = Summary {
        inputs: corpus.len(),
        ..Summary::default()
    };
    let targets = [
        ("imds-proxy (from a pod)", pod.as_str(), Target::Imds),
        ("mock-imds (directly)", host.as_str(), Target::DirectImds),
    ];
    for _ in 0..rounds {
        for (_, bytes) in &corpus {
            for (label, from, to) in targets {
                let fate = send_raw(&shared, from, to, bytes).await;
                *summary
                    .per_target
                    .entry(label)
                    .or_default()
                    .entry(fate)
                    .or_default() += 1;
            }
        }
    }
    let versions = b"GET /metadata/versions HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nConnection: close\r\n\r\n";
    let mut ok = true;
    for (_, from, to) in targets {
        ok &= send_raw(&shared, from, to, versions).await == Fate::Status(200);
    }
    summary.serving_after = ok;
    Ok(summary)
}

async fn send_raw(shared: &Shared, from: &str, to: Target, bytes: &[u8]) -> Fate {
    let Ok(mut s) = shared
        .env
        .backend()
        .connect(from, to, Duration::from_secs(5))
        .await
    else {
        return Fate::NoConnection;
    };
    // The server may answer and close before reading everything; a failed write is fine then.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let read = tokio::time::timeout(READ_WINDOW, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 256 * 1024 {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let status = buf
        .strip_prefix(b"HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok());
    match (status, read) {
        (Some(code), _) => Fate::Status(code),
        (None, Ok(())) => Fate::Closed,
        (None, Err(_)) => Fate::Held,
    }
}
