//! The load generator and the baseline it is compared against: a fixed number of keep-alive
//! HTTP/1.1 connections (one hyper client connection per worker task), each sending GETs back to
//! back until a request budget *or* a deadline runs out, latency recorded in an HDR histogram; and
//! a bare hyper server answering every request with a fixed body (the practical ceiling for a
//! server of that response size). Also owns core pinning of the runtimes.
//!
//! This module measures only; it must not know what the servers under test are (callers pass an
//! address, a path and headers), so every target is measured by exactly the same code.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Latency histogram in nanoseconds, 1 ns … 60 s, 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("creating an HDR histogram")
}

/// What one load run sends.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub path_and_query: String,
    pub headers: Vec<(&'static str, &'static str)>,
}

/// Bounds of one load run: whichever of `max_requests` and `max_time` comes first ends it.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub concurrency: usize,
    pub max_requests: u64,
    pub max_time: Duration,
}

/// Outcome of one load run.
pub struct LoadResult {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `load` against `target` and returns the merged histogram. Any non-200 answer or I/O error
/// counts as an error (and ends that worker's connection, which is then re-opened).
pub async fn run(target: &Target, load: Load) -> Result<LoadResult> {
    let budget = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.max_time;
    let mut tasks = Vec::with_capacity(load.concurrency);
    for _ in 0..load.concurrency.max(1) {
        let target = target.clone();
        let budget = budget.clone();
        let max = load.max_requests;
        tasks.push(tokio::spawn(async move {
            worker(&target, &budget, max, deadline).await
        }));
    }
    let mut hist = new_histogram()?;
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await.context("load worker panicked")??;
        hist.add(&h).context("merging histograms")?;
        ok += o;
        errors += e;
    }
    Ok(LoadResult {
        hist,
        ok,
        errors,
        elapsed: start.elapsed(),
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        // The connection ends when the worker drops its sender; errors surface on send_request.
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(
    target: &Target,
    budget: &AtomicU64,
    max: u64,
    deadline: Instant,
) -> Result<(Histogram<u64>, u64, u64)> {
    let mut hist = new_histogram()?;
    let (mut ok, mut errors) = (0u64, 0u64);
    let host = target.addr.to_string();
    let mut sender: Option<Sender> = None;
    // Bounded twice: by the shared request budget and by the deadline.
    while Instant::now() < deadline && budget.fetch_add(1, Ordering::Relaxed) < max {
        let s = match sender.as_mut() {
            Some(s) => s,
            None => sender.insert(connect(target.addr).await?),
        };
        let mut req = Request::get(target.path_and_query.as_str()).header("host", host.as_str());
        for (k, v) in &target.headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .context("building request")?;
        let t0 = Instant::now();
        let outcome = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            let _body = resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let took = t0.elapsed();
        match outcome {
            Ok(status) if status == hyper::StatusCode::OK => {
                ok += 1;
                hist.saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            }
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                sender = None;
            }
        }
    }
    Ok((hist, ok, errors))
}

/// A bare hyper HTTP/1.1 server answering every request with `body` (and a JSON content type).
/// Runs on the current runtime until the returned handle is aborted.
/// `zero_sleep` adds `tokio::time::sleep(Duration::ZERO).await` before each answer: a diagnostic
/// baseline that shows what an unconditional zero-length timer costs per request.
pub async fn bare_server(
    body: Bytes,
    zero_sleep: bool,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the bare server")?;
    let addr = listener.local_addr().context("bare server address")?;
    let handle = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            if zero_sleep {
                                tokio::time::sleep(Duration::ZERO).await;
                            }
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json; charset=utf-8")
                                    .body(Full::new(body))
                                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, handle))
}

/// A bare hyper pass-through in front of `upstream`: every accepted connection gets one upstream
/// HTTP/1.1 keep-alive connection of its own, and each request is forwarded on it as received (head and
/// body) and the answer returned as is. No routing, no policy, no metrics: the practical ceiling of any
/// HTTP pass-through on the same cores (the baseline imds-proxy's pass-through is compared with).
pub async fn bare_forwarder(
    upstream: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the bare forwarder")?;
    let addr = listener.local_addr().context("bare forwarder address")?;
    let handle = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let Ok((sender, conn)) = hyper::client::conn::http1::handshake::<
                    _,
                    hyper::body::Incoming,
                >(TokioIo::new(up))
                .await
                else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                // One request at a time per connection (HTTP/1.1 without pipelining), so a mutex
                // around the sender never waits.
                let sender = Arc::new(tokio::sync::Mutex::new(sender));
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let sender = sender.clone();
                    async move {
                        let mut s = sender.lock().await;
                        s.ready().await?;
                        s.send_request(req).await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, handle))
}

/// One GET with the load generator's client: status and body (used to size the baselines).
pub async fn fetch(target: &Target) -> Result<(u16, Bytes)> {
    let mut s = connect(target.addr).await?;
    let mut req =
        Request::get(target.path_and_query.as_str()).header("host", target.addr.to_string());
    for (k, v) in &target.headers {
        req = req.header(*k, *v);
    }
    let resp = s
        .send_request(req.body(Full::new(Bytes::new()))?)
        .await
        .context("sending")?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// How the cores are split between the servers under test and the load generator.
#[derive(Clone, Debug)]
pub struct Pinning {
    pub server_cores: Vec<usize>,
    pub load_cores: Vec<usize>,
}

impl Pinning {
    /// First half of the CPUs this process may use for servers, second half for the load
    /// generator; one CPU: both share it (pinning then means nothing and the report says so).
    pub fn plan() -> Self {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            return Self {
                server_cores: cpus.clone(),
                load_cores: cpus,
            };
        }
        let half = cpus.len() / 2;
        Self {
            server_cores: cpus[..half].to_vec(),
            load_cores: cpus[half..].to_vec(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "servers on CPU {:?} ({} tokio worker(s)), load generator on CPU {:?} ({} worker(s)), via sched_setaffinity",
            self.server_cores,
            self.server_cores.len().max(1),
            self.load_cores,
            self.load_cores.len().max(1)
        )
    }
}

fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread to `cores` (no-op when empty or when the kernel refuses).
pub fn pin_current_thread(cores: &[usize]) {
    if cores.is_empty() {
        return;
    }
    let mut set = nix::sched::CpuSet::new();
    for &c in cores {
        let _ = set.set(c);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

/// A multi-thread tokio runtime whose every thread (workers and blocking pool) is pinned to `cores`.
pub fn pinned_runtime(name: &str, cores: &[usize]) -> Result<tokio::runtime::Runtime> {
    let pinned = cores.to_vec();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.len().max(1))
        .thread_name(name)
        .enable_all()
        .on_thread_start(move || pin_current_thread(&pinned))
        .build()
        .with_context(|| format!("building the {name} runtime"))
}
