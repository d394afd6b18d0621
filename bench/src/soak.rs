//! `imds-soak` (`just soak`): a bounded reliability run of imds-proxy in front of mock-imds, on the
//! harness's loopback backend (any user) or netns backend (root), with the nmi-default scenario.
//!
//! Under a sustained load at a fixed request rate (token requests of a pod with an identity, token
//! requests of a pod without one, pass-through requests) it walks through phases — steady, API server
//! down, API server back, mock latency on the identity path, recovered — while a hostile-request corpus
//! ([`hostile`]) is fired at the proxy and the mock, and samples the resident memory of every process
//! involved. Every figure is counted, not asserted: the run writes them to
//! `docs/RELIABILITY-figures-<backend>.md` (linked from `docs/RELIABILITY.md`) and exits non-zero only
//! when a promise was visibly broken (a wrong identity, a token for a pod without identity, a panic, a
//! dead proxy). Traffic goes only to loopback or
//! into the namespaces the run created; everything is torn down on exit and Ctrl-C.

#[path = "soak/hostile.rs"]
mod hostile;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use imds_conformance::backend::interceptor::{self, InterceptorSpec};
use imds_conformance::backend::loopback::Loopback;
use imds_conformance::backend::netns::Netns;
use imds_conformance::backend::{Backend, Target};
use imds_conformance::http::{Conn, Request, Response};
use imds_conformance::scenario::Scenario;
use mock_imds::MockImds;
use mock_imds::config::Fault;

#[derive(Parser, Debug)]
#[command(
    about = "Bounded reliability soak of imds-proxy and mock-imds (loopback, or netns as root)"
)]
struct Opts {
    /// Backend: loopback (any user) or netns (root).
    #[arg(long, default_value = "loopback", value_parser = ["loopback", "netns"])]
    backend: String,
    /// Length of the whole load in seconds (split over the five phases: 40/15/15/15/15 %).
    #[arg(long, default_value_t = 120)]
    secs: u64,
    /// Requests per second, held for the whole run.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Keep-alive connections the load is spread over.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Rounds of the hostile corpus (each round sends every input to the proxy and to the mock).
    #[arg(long, default_value_t = 3)]
    hostile_rounds: usize,
    /// Latency injected on the mock's identity path during the mock-latency phase.
    #[arg(long, default_value_t = 2000)]
    mock_latency_ms: u64,
    /// imds-proxy binary (default: next to this executable, then PATH).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Where to write the figures ("-" for none) [default: docs/RELIABILITY-figures-<backend>.md].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The phases of the run, in order, with their share of `--secs`.
const PHASES: [(&str, u32); 5] = [
    ("steady", 40),
    ("API server down", 15),
    ("API server back", 15),
    ("mock latency", 15),
    ("recovered", 15),
];

/// What one kind of load request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Token for the pod with an identity (client_id named): must be that identity, or a refusal.
    OwnToken,
    /// Token for a pod without identity: must never be a token.
    NoIdentityToken,
    /// `/metadata/versions` through the proxy.
    PassThrough,
}

impl Kind {
    /// Short name in the report's "other statuses" column.
    fn label(self) -> &'static str {
        match self {
            Kind::OwnToken => "own token",
            Kind::NoIdentityToken => "no-identity token",
            Kind::PassThrough => "pass-through",
        }
    }
}

/// Counters of one phase.
#[derive(Debug)]
struct PhaseStats {
    sent: u64,
    status: BTreeMap<u16, u64>,
    /// Answers outside 2xx by request kind, so the report says which requests got them.
    /// Keyed by (kind, status, the body's first line cut at 80 characters).
    other: BTreeMap<(&'static str, u16, String), u64>,
    errors: BTreeMap<String, u64>,
    tokens_ok: u64,
    wrong_identity: u64,
    token_without_identity: u64,
    latency_us: Histogram<u64>,
}

impl PhaseStats {
    fn new() -> Result<Self> {
        Ok(PhaseStats {
            sent: 0,
            status: BTreeMap::new(),
            other: BTreeMap::new(),
            errors: BTreeMap::new(),
            tokens_ok: 0,
            wrong_identity: 0,
            token_without_identity: 0,
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        })
    }
}

/// The environment under test: one of the harness's backends plus what the soak reaches directly.
enum Env {
    Loopback(Loopback),
    Netns(Netns),
}

impl Env {
    fn backend(&self) -> &dyn Backend {
        match self {
            Env::Loopback(b) => b,
            Env::Netns(b) => b,
        }
    }
    fn mock(&self, node: &str) -> Option<&MockImds> {
        match self {
            Env::Loopback(b) => b.mock(node),
            Env::Netns(b) => b.mock(node),
        }
    }
}

struct Shared {
    env: Env,
    phase: AtomicUsize,
    stop: AtomicBool,
    stats: Mutex<Vec<PhaseStats>>,
    own_client_id: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let opts = Opts::parse();
    if opts.rate == 0 || opts.connections == 0 || opts.secs == 0 {
        bail!("--rate, --connections and --secs must be positive");
    }
    let scenario = Scenario::load(&repo_root().join("scenarios/nmi-default.yaml"))
        .context("loading scenarios/nmi-default.yaml")?;
    let bin = interceptor::find_proxy_bin(opts.proxy_bin.as_deref())
        .context("imds-proxy binary not found (cargo build -p imds-proxy, or --proxy-bin)")?;
    let spec = InterceptorSpec::Builtin {
        bin,
        flags: scenario.interceptor.flags.clone(),
    };
    let run_dir = tempfile::tempdir().context("run directory")?;
    let env = match opts.backend.as_str() {
        "netns" => {
            imds_conformance::netns::netns_supported()
                .map_err(|e| anyhow::anyhow!("netns backend unavailable: {e}"))?;
            imds_conformance::netns::install_signal_cleanup()?;
            let _ = imds_conformance::netns::sweep_stale(imds_conformance::netns::ROOT_PREFIX);
            let prefix = imds_conformance::netns::new_run_prefix();
            Env::Netns(Netns::start(&scenario, spec, &prefix, run_dir.path()).await?)
        }
        _ => Env::Loopback(Loopback::start(&scenario, spec, run_dir.path()).await?),
    };
    let own_client_id = scenario
        .identities
        .iter()
        .find(|i| i.name == "id-app")
        .map(|i| i.client_id())
        .context("nmi-default has identity id-app")?;
    let stats = PHASES
        .iter()
        .map(|_| PhaseStats::new())
        .collect::<Result<Vec<_>>>()?;
    let shared = Arc::new(Shared {
        env,
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        stats: Mutex::new(stats),
        own_client_id,
    });
    let outcome = tokio::select! {
        r = run(&opts, shared.clone(), run_dir.path()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    shared.stop.store(true, Ordering::SeqCst);
    shared.env.backend().teardown().await;
    let report = outcome?;
    print!("{}", report.markdown);
    let out = opts.out.clone().unwrap_or_else(|| {
        repo_root().join(format!("docs/RELIABILITY-figures-{}.md", opts.backend))
    });
    if out.as_os_str() != "-" {
        std::fs::write(&out, &report.markdown)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("imds-soak: wrote {}", out.display());
    }
    if !report.broken.is_empty() {
        bail!("promises broken: {}", report.broken.join("; "));
    }
    Ok(())
}

struct Report {
    markdown: String,
    broken: Vec<String>,
}

async fn run(opts: &Opts, shared: Arc<Shared>, run_dir: &Path) -> Result<Report> {
    let backend = shared.env.backend();
    let world = backend.world().clone();
    let node = world.nodes.first().context("a node")?.name.clone();
    let host = world
        .pods
        .iter()
        .find(|p| p.host_network)
        .map(|p| p.name.clone())
        .unwrap_or_else(|| node.clone());
    let mock = shared.env.mock(&node).context("the node's mock")?;
    // Keys generated before the clock starts: no request waits seconds for RSA.
    mock.signing_keys().await?;
    let started = Instant::now();
    let rss = Arc::new(Mutex::new(BTreeMap::<String, RssTrack>::new()));
    let sampler = tokio::spawn(sample_rss(shared.clone(), rss.clone()));
    let per_conn = f64::from(opts.rate) / opts.connections as f64;
    let mut workers = Vec::new();
    for i in 0..opts.connections {
        let kind = match i % 4 {
            0 | 1 => Kind::OwnToken,
            2 => Kind::NoIdentityToken,
            _ => Kind::PassThrough,
        };
        let pod = if kind == Kind::NoIdentityToken {
            "other"
        } else {
            "app"
        };
        workers.push(tokio::spawn(load_worker(
            shared.clone(),
            pod.to_string(),
            kind,
            per_conn,
        )));
    }
    let hostile = tokio::spawn(hostile::fire(
        shared.clone(),
        "other".to_string(),
        host.clone(),
        opts.hostile_rounds,
    ));
    let total = Duration::from_secs(opts.secs);
    for (i, (name, share)) in PHASES.iter().enumerate() {
        shared.phase.store(i, Ordering::SeqCst);
        eprintln!("imds-soak: phase {name}");
        match *name {
            "API server down" => backend.api().set_available(false).await?,
            "API server back" => backend.api().set_available(true).await?,
            "mock latency" => mock.set_fault(
                "/metadata/identity",
                Fault {
                    latency_ms: opts.mock_latency_ms,
                    ..Fault::default()
                },
            ),
            "recovered" => mock.clear_faults(),
            _ => {}
        }
        tokio::time::sleep(total * *share / 100).await;
    }
    shared.stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    let hostile = hostile.await.context("hostile task")??;
    sampler.abort();
    let elapsed = started.elapsed();
    let alive = backend.interceptor_running(&node).await;
    let log = std::fs::read_to_string(run_dir.join(format!("{node}-interceptor.log")))
        .unwrap_or_default();
    let proxy_panics = log.matches("panicked").count();
    let journal = mock.journal().len();
    let stats = std::mem::take(
        &mut *shared
            .stats
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    let rss = rss.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    Ok(render(
        opts,
        &stats,
        &rss,
        &hostile,
        elapsed,
        alive,
        proxy_panics,
        journal,
    ))
}

/// One keep-alive connection from `pod`, sending `kind` requests at `rate` per second until stopped.
async fn load_worker(shared: Arc<Shared>, pod: String, kind: Kind, rate: f64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut conn: Option<Conn> = None;
    let target = match kind {
        Kind::OwnToken => format!(
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id={}",
            shared.own_client_id
        ),
        Kind::NoIdentityToken => "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F".into(),
        Kind::PassThrough => "/metadata/versions".into(),
    };
    let req = Request::get(target).metadata();
    while !shared.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let phase = shared.phase.load(Ordering::SeqCst);
        let begun = Instant::now();
        let result = async {
            if conn.is_none() {
                let stream = shared
                    .env
                    .backend()
                    .connect(&pod, Target::Imds, Duration::from_secs(5))
                    .await?;
                conn = Some(Conn::new(stream, "169.254.169.254"));
            }
            match conn.as_mut() {
                Some(c) => c.send(&req, true, Duration::from_secs(30)).await,
                None => Err(imds_conformance::http::SendError::Other(
                    "no connection".into(),
                )),
            }
        }
        .await;
        let us = u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX);
        if result.is_err() {
            conn = None;
        }
        let Ok(mut stats) = shared.stats.lock() else {
            return;
        };
        let Some(s) = stats.get_mut(phase) else {
            return;
        };
        s.sent += 1;
        let _ = s.latency_us.record(us.max(1));
        match result {
            Ok(r) => {
                *s.status.entry(r.status).or_default() += 1;
                if !(200..300).contains(&r.status) {
                    let text = r.text();
                    let body: String = text.lines().next().unwrap_or("").chars().take(80).collect();
                    *s.other.entry((kind.label(), r.status, body)).or_default() += 1;
                }
                classify_token(kind, &r, &shared.own_client_id, s);
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    conn = None;
                }
            }
            Err(e) => {
                let key = format!("{e}");
                let key: String = key
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(40)
                    .collect();
                *s.errors.entry(key).or_default() += 1;
            }
        }
    }
}

fn classify_token(kind: Kind, r: &Response, own: &str, s: &mut PhaseStats) {
    let token = r.status == 200
        && r.json()
            .is_some_and(|j| j.get("access_token").is_some_and(|t| t.is_string()));
    if !token {
        return;
    }
    let appid = r
        .json()
        .and_then(|j| j["access_token"].as_str().map(str::to_string))
        .and_then(|t| imds_conformance::http::jwt_claims(&t))
        .and_then(|c| c["appid"].as_str().map(str::to_string));
    match kind {
        Kind::OwnToken => {
            if appid
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(own))
            {
                s.tokens_ok += 1;
            } else {
                s.wrong_identity += 1;
            }
        }
        Kind::NoIdentityToken => s.token_without_identity += 1,
        Kind::PassThrough => {}
    }
}

/// Resident memory of one process over the run.
#[derive(Debug, Clone, Default)]
struct RssTrack {
    first_kib: u64,
    max_kib: u64,
    last_kib: u64,
}

/// Every second: RSS of this process (mock-imds and the API server run in it) and of every child
/// imds-proxy.
async fn sample_rss(shared: Arc<Shared>, out: Arc<Mutex<BTreeMap<String, RssTrack>>>) {
    let me = std::process::id();
    while !shared.stop.load(Ordering::SeqCst) {
        let mut seen = vec![("soak process (mock-imds, API server)".to_string(), me)];
        for pid in children_named(me, "imds-proxy") {
            seen.push((format!("imds-proxy (pid {pid})"), pid));
        }
        if let Ok(mut map) = out.lock() {
            for (name, pid) in seen {
                if let Some(kib) = rss_kib(pid) {
                    let t = map.entry(name).or_insert(RssTrack {
                        first_kib: kib,
                        ..RssTrack::default()
                    });
                    t.max_kib = t.max_kib.max(kib);
                    t.last_kib = kib;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// PIDs whose parent is `parent` and whose command name is `name`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid ..." — comm may contain spaces; split after the last ')'.
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
            let ppid = tail
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            comm == name && ppid == Some(parent)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn render(
    opts: &Opts,
    stats: &[PhaseStats],
    rss: &BTreeMap<String, RssTrack>,
    hostile: &hostile::Summary,
    elapsed: Duration,
    alive: bool,
    proxy_panics: usize,
    journal: usize,
) -> Report {
    let mut md = String::new();
    let mut broken = Vec::new();
    let _ = writeln!(
        md,
        "<!-- generated by `just soak` (bench/src/soak.rs); do not edit by hand -->\n\n\
         Run: {} UTC, backend **{}**, scenario nmi-default, built-in interceptor (imds-proxy), \
         {} req/s over {} keep-alive connections for {:.0} s, mock latency fault {} ms.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        opts.backend,
        opts.rate,
        opts.connections,
        elapsed.as_secs_f64(),
        opts.mock_latency_ms
    );
    let _ = writeln!(
        md,
        "| phase | sent | req/s | 2xx | other statuses | errors (no answer) | tokens (own identity) | wrong identity | token to pod without identity | p50 ms | p99 ms | max ms |\n\
         | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let total = Duration::from_secs(opts.secs);
    for (s, (name, share)) in stats.iter().zip(PHASES) {
        let secs = (total * share / 100).as_secs_f64().max(0.001);
        let ok: u64 = s.status.range(200..300).map(|(_, n)| n).sum();
        let mut by_status: BTreeMap<(&str, u16), u64> = BTreeMap::new();
        for ((kind, status, _), n) in &s.other {
            *by_status.entry((kind, *status)).or_default() += n;
        }
        let other: Vec<String> = by_status
            .iter()
            .map(|((kind, status), n)| format!("{kind} {status}×{n}"))
            .collect();
        let errors: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        let ms = |q: f64| s.latency_us.value_at_quantile(q) as f64 / 1000.0;
        let _ = writeln!(
            md,
            "| {name} | {} | {:.0} | {ok} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            s.sent,
            s.sent as f64 / secs,
            if other.is_empty() {
                "—".into()
            } else {
                other.join(", ")
            },
            if errors.is_empty() {
                "—".into()
            } else {
                errors.join(", ")
            },
            s.tokens_ok,
            s.wrong_identity,
            s.token_without_identity,
            ms(0.5),
            ms(0.99),
            s.latency_us.max() as f64 / 1000.0,
        );
        if s.wrong_identity > 0 {
            broken.push(format!("{name}: {} wrong identities", s.wrong_identity));
        }
        if s.token_without_identity > 0 {
            broken.push(format!(
                "{name}: {} tokens to a pod without identity",
                s.token_without_identity
            ));
        }
    }
    let _ = writeln!(
        md,
        "\nAnswers outside 2xx, by phase, request and body (first line):\n\n\
         | phase | request | status | body | count |\n| --- | --- | ---: | --- | ---: |"
    );
    for (s, (name, _)) in stats.iter().zip(PHASES) {
        for ((kind, status, body), n) in &s.other {
            let body = body.replace('|', "\\|");
            let _ = writeln!(md, "| {name} | {kind} | {status} | `{body}` | {n} |");
        }
    }
    let _ = writeln!(
        md,
        "\n| process | RSS first (MiB) | RSS max (MiB) | RSS last (MiB) |\n| --- | ---: | ---: | ---: |"
    );
    for (name, t) in rss {
        let mib = |k: u64| k as f64 / 1024.0;
        let _ = writeln!(
            md,
            "| {name} | {:.1} | {:.1} | {:.1} |",
            mib(t.first_kib),
            mib(t.max_kib),
            mib(t.last_kib)
        );
    }
    let _ = writeln!(md, "\n{}", hostile.markdown());
    let _ = writeln!(
        md,
        "After the run: imds-proxy still running: **{}**; `panicked` lines in its log: **{proxy_panics}**; \
         the mock's journal holds {journal} entries (capacity 10,000). The mock and proxy kept answering \
         after the hostile corpus: **{}**.",
        if alive { "yes" } else { "no" },
        if hostile.serving_after { "yes" } else { "no" },
    );
    if !alive {
        broken.push("imds-proxy is not running after the soak".into());
    }
    if proxy_panics > 0 {
        broken.push(format!("{proxy_panics} panics in the imds-proxy log"));
    }
    if !hostile.serving_after {
        broken.push("a server stopped answering after the hostile corpus".into());
    }
    Report {
        markdown: md,
        broken,
    }
}
