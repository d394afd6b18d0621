//! Connection bounds of every listener (README "Limits"): thousands of idle connections from one source
//! cost that source its own connections and never starve another source, the total limit takes from the
//! heaviest source, busy connections are never evicted, idle connections and slow request heads or bodies
//! are closed, and shutdown drains requests in flight up to the grace and reports what it cut. Clients bind
//! distinct loopback sources (127.0.0.x, all local on Linux). Waits are bounded (never timing assertions).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{seeded_config, start};
use mock_imds::MockImds;
use mock_imds::config::{Config, Fault};
use mock_imds::server::{self, ConnectionLimits};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};

/// The longest any wait in this file may take before the test fails.
const BOUND: Duration = Duration::from_secs(20);

fn config(limits: ConnectionLimits) -> Config {
    let mut c = seeded_config(5);
    c.server.limits = limits;
    c
}

/// Long timeouts, so that only the connection limits are at work.
fn long_timeouts(max: usize, per_source: usize) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout_secs: 600,
        idle_timeout_secs: 600,
        max_connections: max,
        max_connections_per_source: per_source,
        shutdown_grace_secs: 0,
    }
}

/// Raises the soft open-file limit to the hard one; returns the soft limit now in force.
fn raise_fd_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        if l.rlim_cur < l.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                l.rlim_cur = l.rlim_max;
            }
        }
    }
    l.rlim_cur
}

/// A connection to `to` from the loopback address `127.0.0.<last>`.
async fn connect_from(last: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))
        .expect("bind a loopback source");
    tokio::time::timeout(BOUND, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Whether the server closed `s` (EOF or reset), without blocking.
fn closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.try_read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Waits (bounded) until at most `max` of `conns` are still open; returns how many are.
async fn settle_open(conns: &[TcpStream], max: usize) -> usize {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let open = conns.iter().filter(|s| !closed(s)).count();
        if open <= max || tokio::time::Instant::now() > deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `request` from `127.0.0.<last>` and returns the status line's code, or `None` when the connection
/// closed without an answer.
async fn request_from(last: u8, to: SocketAddr, request: &str) -> Option<u16> {
    let mut s = connect_from(last, to).await;
    let _ = s.write_all(request.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(BOUND, s.read_to_end(&mut buf))
        .await
        .expect("answer or close in time");
    std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()
}

const VERSIONS: &str =
    "GET /metadata/versions HTTP/1.1\r\nHost: imds\r\nMetadata: true\r\nConnection: close\r\n\r\n";

async fn versions_from(last: u8, mock: &MockImds) -> Option<u16> {
    request_from(last, mock.addr(), VERSIONS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_from_one_source_do_not_starve_another() {
    let fds = raise_fd_limit();
    // The flood's client ends and the mock's server ends live in this one process.
    let flood = 3000.min(usize::try_from(fds).unwrap_or(1024).saturating_sub(300));
    if flood < 3000 {
        eprintln!("NOTE: open-file limit {fds}: flooding with {flood} connections instead of 3000");
    }
    let mock = start(config(long_timeouts(64, 16))).await;
    let mut idle = Vec::with_capacity(flood);
    for _ in 0..flood {
        idle.push(connect_from(2, mock.addr()).await);
    }
    assert_eq!(versions_from(3, &mock).await, Some(200), "another source");
    assert_eq!(
        versions_from(2, &mock).await,
        Some(200),
        "the flooding source itself, in place of one of its idle connections"
    );
    let open = settle_open(&idle, 16).await;
    assert!(open <= 16, "{open} of the flood's connections still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_limit_takes_from_the_heaviest_source() {
    let mock = start(config(long_timeouts(64, 32))).await;
    let mut heavy = Vec::new();
    for _ in 0..32 {
        heavy.push(connect_from(2, mock.addr()).await);
    }
    let mut light = Vec::new();
    for source in 10..50 {
        light.push(connect_from(source, mock.addr()).await);
    }
    // 72 connections asked for, 64 allowed: the 8 over the limit came out of the heavy source.
    assert!(settle_open(&heavy, 24).await <= 24);
    assert_eq!(
        settle_open(&light, 40).await,
        40,
        "light sources keep theirs"
    );
    assert_eq!(versions_from(200, &mock).await, Some(200), "a new source");
    assert_eq!(
        light.iter().filter(|s| !closed(s)).count(),
        40,
        "the new source's connection was taken from the heavy source too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_are_never_evicted() {
    let mut c = config(long_timeouts(64, 3));
    // Token requests in flight are visible from outside: the identity concurrency limit answers 429.
    c.rate_limits.enabled = true;
    c.rate_limits.general_per_sec = 10_000;
    c.rate_limits.identity_per_sec = 10_000;
    c.rate_limits.identity_concurrent = 3;
    let mock = start(c).await;
    mock.set_fault(
        "/metadata/identity",
        Fault {
            latency_ms: 600_000,
            ..Fault::default()
        },
    );
    let token = format!(
        "GET {} HTTP/1.1\r\nHost: imds\r\nMetadata: true\r\n\r\n",
        common::TOKEN
    );
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(2, mock.addr()).await;
        s.write_all(token.as_bytes()).await.expect("write");
        busy.push(s);
    }
    let close = format!(
        "GET {} HTTP/1.1\r\nHost: imds\r\nMetadata: true\r\nConnection: close\r\n\r\n",
        common::TOKEN
    );
    let deadline = tokio::time::Instant::now() + BOUND;
    while request_from(3, mock.addr(), &close).await != Some(429) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the three token requests never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The source holds three busy connections: a fourth finds nothing idle to replace and is refused.
    assert_eq!(
        versions_from(2, &mock).await,
        None,
        "refused without an answer"
    );
    assert!(
        busy.iter().all(|s| !closed(s)),
        "requests in flight kept their connections"
    );
    assert_eq!(versions_from(3, &mock).await, Some(200), "another source");
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let mock = start(config(ConnectionLimits {
        idle_timeout_secs: 1,
        header_read_timeout_secs: 600,
        ..ConnectionLimits::default()
    }))
    .await;
    // Never a byte sent.
    let silent = connect_from(2, mock.addr()).await;
    // Idle after a keep-alive request.
    let mut kept = connect_from(3, mock.addr()).await;
    kept.write_all(b"GET /metadata/versions HTTP/1.1\r\nHost: imds\r\nMetadata: true\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    assert_eq!(settle_open(&[silent, kept], 0).await, 0);
}

#[tokio::test]
async fn a_head_trickling_in_is_cut_at_the_header_read_timeout() {
    let mock = start(config(ConnectionLimits {
        idle_timeout_secs: 600,
        header_read_timeout_secs: 1,
        ..ConnectionLimits::default()
    }))
    .await;
    let mut s = connect_from(2, mock.addr()).await;
    s.write_all(b"GET /metadata/versions HTTP/1.1\r\nHost: imds\r\n")
        .await
        .expect("write");
    // One header line every 100 ms: never idle, never complete.
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut cut = false;
    while tokio::time::Instant::now() < deadline {
        if s.write_all(b"X-Slow: 1\r\n").await.is_err() || closed(&s) {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cut, "a head trickling in for {BOUND:?} was not cut");
}

#[tokio::test]
async fn a_body_trickling_in_is_cut_at_the_header_read_timeout() {
    let mock = start(config(ConnectionLimits {
        idle_timeout_secs: 600,
        header_read_timeout_secs: 1,
        ..ConnectionLimits::default()
    }))
    .await;
    let status = request_from(
        2,
        mock.addr(),
        "POST /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: imds\r\nMetadata: true\r\n\
         Content-Length: 100\r\n\r\n{\"StartRequests\"",
    )
    .await;
    // The handler sees the body fail and answers its IMDS-shaped 400.
    assert_eq!(status, Some(400));
}

/// A bare server (no mock) whose `/slow` handler says when it started and then waits for `release`.
fn slow_app(started: Arc<Notify>, release: Arc<Notify>) -> Router {
    Router::new().route(
        "/slow",
        get(move || {
            let (started, release) = (started.clone(), release.clone());
            async move {
                started.notify_one();
                release.notified().await;
                "done"
            }
        }),
    )
}

async fn serve_slow(
    grace_secs: u64,
) -> (
    SocketAddr,
    Arc<Notify>,
    Arc<Notify>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<server::ShutdownReport>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (tx, rx) = watch::channel(false);
    let limits = ConnectionLimits {
        shutdown_grace_secs: grace_secs,
        ..ConnectionLimits::default()
    };
    let task = tokio::spawn(server::serve(
        listener,
        slow_app(started.clone(), release.clone()),
        http::HeaderValue::from_static("IMDS/test"),
        limits,
        rx,
    ));
    (addr, started, release, tx, task)
}

const SLOW: &str = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let (addr, started, release, stop, task) = serve_slow(60).await;
    let answer = tokio::spawn(request_from(2, addr, SLOW));
    // An idle connection does not hold the shutdown up.
    let idle = connect_from(3, addr).await;
    started.notified().await;
    stop.send(true).expect("server running");
    // Release the handler only once the server has stopped accepting (its listener is closed), so that the
    // request is in flight when shutdown begins.
    let deadline = tokio::time::Instant::now() + BOUND;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::task::yield_now().await;
    }
    release.notify_one();
    let report = tokio::time::timeout(BOUND, task)
        .await
        .expect("shutdown in time")
        .expect("server task");
    assert_eq!(answer.await.expect("client"), Some(200));
    assert_eq!(report.in_flight_at_shutdown, 1);
    assert!(report.cut.is_empty(), "{report:?}");
    assert!(closed(&idle) || settle_open(&[idle], 0).await == 0);
}

#[tokio::test]
async fn shutdown_cuts_what_outlives_the_grace_and_reports_it() {
    let (addr, started, _release, stop, task) = serve_slow(1).await;
    let answer = tokio::spawn(request_from(2, addr, SLOW));
    started.notified().await;
    stop.send(true).expect("server running");
    let report = tokio::time::timeout(BOUND, task)
        .await
        .expect("shutdown in time")
        .expect("server task");
    assert_eq!(report.cut.len(), 1, "{report:?}");
    assert!(
        report.cut[0].starts_with("GET /slow from 127.0.0.2:"),
        "{:?}",
        report.cut
    );
    assert_eq!(answer.await.expect("client"), None, "cut without an answer");
}
