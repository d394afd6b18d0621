//! mock-arm's figures for `just bench`: VM GET and VM PATCH req/s against a bare hyper server answering the
//! same bytes to the same request, measured side by side (interleaved round by round, median), the method of
//! the mock-imds section. mock-arm runs with authentication and throttling off (they are policy, measured
//! by their own tests) and zero-length operations; the PATCH re-adds an identity already attached, so every
//! request takes the whole PATCH path (parse, plan, operation, document) without growing the resource.
//!
//! Its own load loop (the shared `load::run` sends GETs only) reuses the shared histogram, result type and
//! bare server. Sends traffic only to 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::load::{self, Load, LoadResult};
use crate::report::{Report, row};

/// One request shape.
#[derive(Clone, Debug)]
struct Call {
    addr: SocketAddr,
    method: Method,
    path_and_query: String,
    body: Bytes,
}

async fn worker(
    call: &Call,
    budget: &AtomicU64,
    max: u64,
    deadline: Instant,
) -> Result<(hdrhistogram::Histogram<u64>, u64, u64)> {
    let mut hist = load::new_histogram()?;
    let (mut ok, mut errors) = (0u64, 0u64);
    let host = call.addr.to_string();
    let mut sender = None;
    while Instant::now() < deadline && budget.fetch_add(1, Ordering::Relaxed) < max {
        let s = match sender.as_mut() {
            Some(s) => s,
            None => {
                let stream = TcpStream::connect(call.addr).await.context("connecting")?;
                stream.set_nodelay(true).context("TCP_NODELAY")?;
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .context("HTTP/1.1 handshake")?;
                tokio::spawn(conn);
                sender.insert(s)
            }
        };
        let req = Request::builder()
            .method(call.method.clone())
            .uri(call.path_and_query.as_str())
            .header("host", host.as_str())
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(call.body.clone()))
            .context("building request")?;
        let t0 = Instant::now();
        let outcome = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        match outcome {
            Ok(status) if status == hyper::StatusCode::OK => {
                ok += 1;
                hist.saturating_record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
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

async fn run(call: &Call, l: Load) -> Result<LoadResult> {
    let budget = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + l.max_time;
    let tasks: Vec<_> = (0..l.concurrency.max(1))
        .map(|_| {
            let (call, budget) = (call.clone(), budget.clone());
            tokio::spawn(async move { worker(&call, &budget, l.max_requests, deadline).await })
        })
        .collect();
    let mut hist = load::new_histogram()?;
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

/// One answer of `call` (sanity check, and the body the bare server repeats).
async fn fetch(call: &Call) -> Result<(u16, Bytes)> {
    let stream = TcpStream::connect(call.addr).await.context("connecting")?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(call.method.clone())
        .uri(call.path_and_query.as_str())
        .header("host", call.addr.to_string())
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(call.body.clone()))
        .context("building request")?;
    let resp = s.send_request(req).await.context("sending")?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading")?
        .to_bytes();
    Ok((status, body))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Measures and appends the mock-arm rows (section "3b mock-arm").
pub fn section(
    server_rt: &tokio::runtime::Runtime,
    load_rt: &tokio::runtime::Runtime,
    rounds: usize,
    l: Load,
    rows: &mut Report,
) -> Result<()> {
    let mut config = mock_arm::config::Config::generate(Some(42));
    config.lro.vm_secs = 0.0;
    let vm = config.virtual_machines[0].id.clone();
    let kubelet = config.identities[0].id.clone();
    let arm = server_rt.block_on(async {
        mock_arm::MockArm::builder()
            .config(config)
            .auth(false)
            .throttling(false)
            .start()
            .await
            .context("starting mock-arm")
    })?;
    let patch_body = serde_json::json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {kubelet: {}}}})
        .to_string();
    let get = Call {
        addr: arm.addr(),
        method: Method::GET,
        path_and_query: format!("{vm}?api-version=2019-12-01"),
        body: Bytes::new(),
    };
    let patch = Call {
        method: Method::PATCH,
        body: Bytes::from(patch_body),
        ..get.clone()
    };
    let (sg, body_g) = load_rt.block_on(fetch(&get))?;
    let (sp, body_p) = load_rt.block_on(fetch(&patch))?;
    anyhow::ensure!(
        sg == 200 && sp == 200,
        "mock-arm sanity check failed: GET {sg}, PATCH {sp}"
    );
    let (bare_g_addr, bare_g) = server_rt.block_on(load::bare_server(body_g.clone(), false))?;
    let (bare_p_addr, bare_p) = server_rt.block_on(load::bare_server(body_p.clone(), false))?;
    let targets = [
        (
            "bare-get",
            Call {
                addr: bare_g_addr,
                ..get.clone()
            },
        ),
        ("arm-get", get),
        (
            "bare-patch",
            Call {
                addr: bare_p_addr,
                ..patch.clone()
            },
        ),
        ("arm-patch", patch),
    ];
    for (_, t) in &targets {
        load_rt.block_on(run(
            t,
            Load {
                max_requests: 20_000,
                max_time: Duration::from_millis(300),
                ..l
            },
        ))?;
    }
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut errors = 0;
    for round in 0..rounds {
        eprintln!("imds-bench: mock-arm round {}/{rounds}", round + 1);
        for (i, (_, t)) in targets.iter().enumerate() {
            let r = load_rt.block_on(run(t, l))?;
            rps[i].push(r.rps());
            errors += r.errors;
        }
    }
    bare_g.abort();
    bare_p.abort();
    let m: Vec<f64> = rps.into_iter().map(median).collect();
    let c = l.concurrency;
    let s = "3b mock-arm";
    rows.push(row(
        s,
        format!("VM GET req/s (c={c}, {} B body)", body_g.len()),
        format!("{:.0}", m[1]),
        format!("bare hyper {:.0}", m[0]),
        format!("{:.2}× bare", m[1] / m[0].max(1e-9)),
    ));
    rows.push(row(
        s,
        format!("VM identity PATCH req/s (c={c}, {} B body)", body_p.len()),
        format!("{:.0}", m[3]),
        format!("bare hyper {:.0}", m[2]),
        format!(
            "{:.2}× bare{}",
            m[3] / m[2].max(1e-9),
            if errors > 0 {
                format!("; {errors} non-200 answers excluded")
            } else {
                String::new()
            }
        ),
    ));
    drop(arm);
    Ok(())
}
