//! The listeners' bounds and manners, on loopback: a flood of idle connections from one source (thousands,
//! from one 127.x address) neither exhausts the proxy nor keeps another pod from its token; silent, idle and
//! slowly-trickling connections are closed by their timeouts; HTTP/0.9 is answered at once and h2c is not
//! spoken; pass-through errors read as NMI's Go client errors; request-derived metric labels stay bounded;
//! shutdown drains in-flight requests and counts the ones it has to cut. No assertion is timed beyond
//! generous "completes within N s" bounds.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use imds_proxy::cluster::memory::MemoryView;
use imds_proxy::cluster::model::{AssignedIdentityInfo, IdentityInfo, PodInfo};
use imds_proxy::{Proxy, Settings};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const INSTANCE: &str = "/metadata/instance?api-version=2021-02-01";

/// A TCP connection to `to` from source address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(
        from.parse().map_err(std::io::Error::other)?,
        0,
    ))?;
    sock.connect(to).await
}

/// Reads until the peer closes (or resets) the connection, at most `bound`; `None` when it stayed open.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    match tokio::time::timeout(bound, stream.read_to_end(&mut buf)).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

/// Reads one HTTP/1.1 response with a `content-length` from a kept-alive connection: (status, body).
async fn read_response(
    stream: &mut TcpStream,
) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await??;
        if n == 0 {
            return Err("closed before the response header".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no content-length")?;
    while buf.len() < head_end + len {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await??;
        if n == 0 {
            return Err("closed inside the body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((
        status,
        String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
    ))
}

async fn metrics_text(addr: SocketAddr) -> reqwest::Result<String> {
    reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await
}

/// The value of the sample `name{labels}` (labels as encoded, e.g. `listener="imds",reason="x"`).
fn sample(metrics: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Pod `p1` at 127.0.0.2 with one Assigned identity, and the proxy tuned by `tweak`.
async fn one_pod(
    tweak: impl FnOnce(&mut Settings),
) -> Result<Fixture, Box<dyn std::error::Error + Send + Sync>> {
    let f = Fixture::start(tweak).await?;
    let a = f.mock.assign_identity(uami(0xa1, "id-a"));
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.aai("p1", &a, NODE, "Assigned")?;
    f.wait_for_pod("127.0.0.2").await?;
    f.wait_for_aais("p1", 1, "Assigned").await?;
    Ok(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flood_from_one_source_does_not_starve_another_pod() -> TestResult {
    const FLOOD: usize = 5000;
    let (soft, _) = imds_proxy::listener::raise_nofile_limit()?;
    // This process holds both ends of the accepted connections plus the fixture.
    if soft < (FLOOD as u64) + 2048 {
        eprintln!("SKIP: RLIMIT_NOFILE {soft} is too low for {FLOOD} connections in one process");
        return Ok(());
    }
    // Header timeout far beyond the test: the flood stays open while the other pod asks.
    let f = one_pod(|s| s.header_read_timeout_sec = 600).await?;
    let per_ip = Settings::default().max_connections_per_ip as usize;
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(connect_from("127.0.0.50", f.proxy.addr()).await?);
    }
    // Another pod still gets its token, and the other listeners still answer.
    let c = client_from("127.0.0.2")?;
    let resp = tokio::time::timeout(Duration::from_secs(30), f.token(&c, "")).await??;
    assert_eq!(resp.status(), 200, "{}", resp.text().await?);
    let health = reqwest::get(format!("http://{}/healthz", f.proxy.probe_addr())).await?;
    assert_eq!(health.text().await?, "Active");
    // Connections over the per-source limit were answered 503 and closed at once, not queued.
    for stream in flood.iter_mut().rev().take(100) {
        let got = read_until_closed(stream, Duration::from_secs(10))
            .await
            .ok_or("a connection over the limit was left open")?;
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 503"), "{text}");
    }
    let m = metrics_text(f.proxy.metrics_addr()).await?;
    let refused = sample(
        &m,
        "imds_proxy_connections_refused_total",
        "listener=\"imds\",reason=\"max_connections_per_ip\"",
    );
    assert!(refused >= (FLOOD - per_ip) as f64, "refused {refused}\n{m}");
    let open = sample(&m, "imds_proxy_connections_open", "listener=\"imds\"");
    assert!(open <= (per_ip + 8) as f64, "open {open}");
    drop(flood);
    // And the pod is still served once the flood is gone.
    assert_eq!(f.token(&c, "").await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn silent_trickling_and_idle_connections_are_closed_by_their_timeouts() -> TestResult {
    let f = one_pod(|s| {
        s.header_read_timeout_sec = 1;
        s.idle_timeout_sec = 2;
    })
    .await?;
    let addr = f.proxy.addr();
    // Silent connections: closed by the header-read timeout.
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(connect_from("127.0.0.51", addr).await?);
    }
    // A header trickled one byte at a time: the header time runs from the first byte, more bytes do not
    // extend it.
    let mut slow = connect_from("127.0.0.52", addr).await?;
    let trickle = async {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .chain([b'a'; 200].iter())
        {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut probe = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
            {
                return true;
            }
        }
        false
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(30), trickle).await?,
        "a trickled header was never cut"
    );
    for s in &mut silent {
        read_until_closed(s, Duration::from_secs(30))
            .await
            .ok_or("a silent connection stayed open")?;
    }
    // A kept-alive connection after its answer: closed by the idle timeout.
    let mut kept = connect_from("127.0.0.2", addr).await?;
    kept.write_all(
        format!("GET {INSTANCE} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n").as_bytes(),
    )
    .await?;
    let (status, _) = read_response(&mut kept).await?;
    assert_eq!(status, 200);
    read_until_closed(&mut kept, Duration::from_secs(30))
        .await
        .ok_or("an idle kept-alive connection stayed open")?;
    let m = metrics_text(f.proxy.metrics_addr()).await?;
    let header = sample(
        &m,
        "imds_proxy_connection_timeouts_total",
        "listener=\"imds\",timeout=\"header_read\"",
    );
    let idle = sample(
        &m,
        "imds_proxy_connection_timeouts_total",
        "listener=\"imds\",timeout=\"idle\"",
    );
    assert!(header >= 101.0, "header_read timeouts {header}\n{m}");
    assert!(idle >= 1.0, "idle timeouts {idle}\n{m}");
    Ok(())
}

#[tokio::test]
async fn http09_is_answered_at_once_and_h2c_is_not_spoken() -> TestResult {
    let f = one_pod(|s| s.header_read_timeout_sec = 600).await?;
    let addr = f.proxy.addr();
    let mut s = connect_from("127.0.0.2", addr).await?;
    s.write_all(b"GET /\r\n").await?;
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .ok_or("an HTTP/0.9 request was held open")?;
    assert!(
        got.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // HTTP/2 with prior knowledge: closed, never an HTTP/2 SETTINGS frame.
    let mut s = connect_from("127.0.0.2", addr).await?;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .ok_or("an HTTP/2 preface was held open")?;
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 "), "{got:?}");

    // An h2c upgrade request is answered as plain HTTP/1.1.
    let mut s = connect_from("127.0.0.2", addr).await?;
    s.write_all(
        format!(
            "GET {INSTANCE} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nMetadata: true\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let (status, _) = read_response(&mut s).await?;
    assert_eq!(status, 200);
    Ok(())
}

/// A proxy over an in-memory view with pod `p1` at 127.0.0.2 holding identity `id-a`, IMDS at `imds`.
async fn proxy_over_memory(
    imds: SocketAddr,
    tweak: impl FnOnce(&mut Settings),
) -> Result<imds_proxy::ProxyHandle, Box<dyn std::error::Error + Send + Sync>> {
    let view = Arc::new(MemoryView::new());
    view.set_ready(Ok(()));
    let pod = PodInfo {
        namespace: "default".into(),
        name: "p1".into(),
        ip: Some("127.0.0.2".parse()?),
        phase: "Running".into(),
        labels: Default::default(),
        replicaset: None,
        host_network: false,
    };
    let identity = IdentityInfo {
        namespace: "default".into(),
        name: "id-a".into(),
        identity_type: 0,
        client_id: "a1a1a1a1-1111-2222-3333-4444555566a1".into(),
        resource_id: "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-a".into(),
        namespaced: false,
    };
    view.set_assigned_identities(vec![AssignedIdentityInfo {
        namespace: "default".into(),
        name: "p1-default-id-a".into(),
        pod: "p1".into(),
        pod_namespace: "default".into(),
        node: NODE.into(),
        status: "Assigned".into(),
        identity,
    }]);
    view.set_pods(vec![pod]);
    let mut settings = Settings::for_tests(imds, NODE);
    tweak(&mut settings);
    let proxy = Proxy::start_with_view(settings, view).await?;
    tokio::time::timeout(Duration::from_secs(20), proxy.ready()).await??;
    Ok(proxy)
}

#[tokio::test]
async fn upstream_failures_read_like_nmis_go_client_errors() -> TestResult {
    // Nothing listens on a just-closed port: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let proxy = proxy_over_memory(closed, |_| {}).await?;
    let c = client_from("127.0.0.2")?;
    let resp = get_md(&c, format!("http://{}{INSTANCE}", proxy.addr())).await?;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.text().await?,
        format!(
            "Get \"http://{closed}{INSTANCE}\": dial tcp {closed}: connect: connection refused\n"
        )
    );
    let resp = get_md(&c, format!("http://{}{}", proxy.addr(), token_path(""))).await?;
    assert_eq!(resp.status(), 503);
    let body = resp.text().await?;
    assert!(
        body.starts_with("failed to refresh token, error: adal: Failed to execute the refresh request. Error = 'Get \"http://"),
        "{body}"
    );
    assert!(
        body.ends_with(&format!(
            "dial tcp {closed}: connect: connection refused'\n"
        )),
        "{body}"
    );
    for debug_text in ["hyper", "ConnectionRefused", "Error {", "kind:"] {
        assert!(!body.contains(debug_text), "{body}");
    }
    proxy.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn metric_labels_stay_bounded_under_many_resource_and_namespace_spellings() -> TestResult {
    let f = one_pod(|_| {}).await?;
    let c = client_from("127.0.0.2")?;
    let spellings: Vec<String> = (0..120)
        .map(|i: u32| {
            // Case variants of one resource, then distinct resources.
            if i < 60 {
                RESOURCE
                    .chars()
                    .enumerate()
                    .map(|(k, ch)| {
                        if (i >> (k % 6)) & 1 == 1 {
                            ch.to_ascii_uppercase()
                        } else {
                            ch
                        }
                    })
                    .collect()
            } else {
                format!("https://r{i}.example/")
            }
        })
        .collect();
    for r in &spellings {
        let url = f.url(&format!(
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
            urlencode(r)
        ));
        assert_eq!(get_md(&c, url).await?.status(), 200, "{r}");
    }
    // Host-token namespaces come from request headers (and are refused here: not from 127.0.0.1).
    for i in 0..200 {
        let resp = get_with(
            &c,
            f.url(&format!("/host/token/?resource={}", urlencode(RESOURCE))),
            &[("podns", &format!("ns-{i}")), ("podname", "x")],
        )
        .await?;
        assert_eq!(resp.status(), 500);
    }
    let m = metrics_text(f.proxy.metrics_addr()).await?;
    let values = |label: &str| -> std::collections::BTreeSet<String> {
        let key = format!("{label}=\"");
        m.lines()
            .filter(|l| l.starts_with("aadpodidentity_nmi_operations_duration_seconds_count"))
            .filter_map(|l| Some(l.split(&key).nth(1)?.split('"').next()?.to_string()))
            .collect()
    };
    let resources = values("resource");
    let namespaces = values("namespace");
    // Budget + "other" + "" (not applicable).
    assert!(
        resources.len() <= imds_proxy::metrics::MAX_RESOURCE_LABELS + 2,
        "{resources:?}"
    );
    assert!(
        resources.contains("other") && resources.contains(RESOURCE),
        "{resources:?}"
    );
    assert!(
        namespaces.len() <= imds_proxy::metrics::MAX_NAMESPACE_LABELS + 2,
        "{} namespaces",
        namespaces.len()
    );
    assert!(namespaces.contains("other"));
    assert!(m.lines().count() < 5000, "{} lines", m.lines().count());
    Ok(())
}

/// An IMDS stand-in whose every answer takes `delay`; `started` is notified when a request arrives.
async fn slow_imds(delay: Duration) -> std::io::Result<(SocketAddr, Arc<tokio::sync::Notify>)> {
    let started = Arc::new(tokio::sync::Notify::new());
    let notify = started.clone();
    let app = axum::Router::new().fallback(move || {
        let notify = notify.clone();
        async move {
            notify.notify_one();
            tokio::time::sleep(delay).await;
            "slow answer"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, started))
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request_and_refuses_new_connections() -> TestResult {
    let (imds, started) = slow_imds(Duration::from_secs(3)).await?;
    // Timeouts far beyond the test: quiet connections must be closed by the drain itself.
    let proxy = proxy_over_memory(imds, |s| {
        s.header_read_timeout_sec = 600;
        s.idle_timeout_sec = 600;
    })
    .await?;
    let addr = proxy.addr();
    let mut silent = connect_from("127.0.0.4", addr).await?;
    let mut kept = connect_from("127.0.0.4", addr).await?;
    kept.write_all(b"GET /metadata/identity/oauth2/token HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    assert_eq!(read_response(&mut kept).await?.0, 400);
    let c = client_from("127.0.0.2")?;
    let request = tokio::spawn(async move {
        let resp = get_md(&c, format!("http://{addr}{INSTANCE}")).await?;
        Ok::<_, reqwest::Error>((resp.status().as_u16(), resp.text().await?))
    });
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await?;
    let shutdown = tokio::spawn(proxy.shutdown());
    // While the request drains, the listener no longer accepts.
    let refused = async {
        while connect_from("127.0.0.3", addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused).await?;
    assert!(
        !request.is_finished(),
        "the slow request ended before the drain was seen"
    );
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), request).await???;
    assert_eq!((status, body.as_str()), (200, "slow answer"));
    let report = tokio::time::timeout(Duration::from_secs(30), shutdown).await???;
    assert_eq!(report.in_flight_at_start, 1);
    assert_eq!(report.cut_requests, 0);
    for s in [&mut silent, &mut kept] {
        read_until_closed(s, Duration::from_secs(10))
            .await
            .ok_or("a quiet connection outlived the drain")?;
    }
    Ok(())
}

#[tokio::test]
async fn requests_still_running_after_the_grace_are_cut_and_counted() -> TestResult {
    let (imds, started) = slow_imds(Duration::from_secs(25)).await?;
    let proxy = proxy_over_memory(imds, |s| s.shutdown_grace_sec = 1).await?;
    let addr = proxy.addr();
    let c = client_from("127.0.0.2")?;
    let request = tokio::spawn(async move { get_md(&c, format!("http://{addr}{INSTANCE}")).await });
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await?;
    let report = tokio::time::timeout(Duration::from_secs(15), proxy.shutdown()).await??;
    assert_eq!(report.cut_requests, 1);
    let outcome = tokio::time::timeout(Duration::from_secs(10), request).await??;
    assert!(outcome.is_err(), "a cut request got an answer: {outcome:?}");
    Ok(())
}
