//! Sections 1 and 2, HTTP: mock-imds (rate limits off) and imds-proxy in front of it, each measured against
//! a baseline on the same pinned cores: a bare hyper server answering the same bytes (mock-imds), a bare
//! hyper forwarder to the same mock (imds-proxy's pass-through). Targets are interleaved round by round
//! (median req/s at `--concurrency`, latency from separate one-connection runs). Sends traffic only to
//! 127.0.0.1.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::load::{self, Load, Target};
use crate::report::{Report, row, us, verdict};

const INSTANCE: &str = "/metadata/instance?api-version=2021-02-01";
const TOKEN: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
const TOKEN_UNCACHED: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&bypass_cache=true";

/// The servers under test, their baselines and the targets on them.
pub struct Servers {
    pub mock: mock_imds::MockImds,
    proxy: imds_proxy::ProxyHandle,
    _view: Arc<imds_proxy::cluster::memory::MemoryView>,
    baselines: Vec<JoinHandle<()>>,
    /// `/metadata/instance` on the mock.
    pub mock_instance: Target,
    instance_body: usize,
    token_body: usize,
    /// The targets of sections 1 and 2 by name (`--only` names).
    targets: Vec<(&'static str, Target)>,
}

impl Servers {
    /// Starts mock-imds (seed 42, rate limits off), imds-proxy in front of it (an in-memory cluster view),
    /// checks that each answers 200, then starts the bare baselines answering the mock's bytes.
    pub fn start(server_rt: &Runtime, load_rt: &Runtime) -> Result<Self> {
        let mock = server_rt.block_on(async {
            let mock = mock_imds::MockImds::builder()
                .seed(42)
                .rate_limits(false)
                .start()
                .await
                .context("starting mock-imds")?;
            mock.signing_keys()
                .await
                .context("waiting for the mock's signing keys")?;
            anyhow::Ok(mock)
        })?;
        let view = Arc::new(imds_proxy::cluster::memory::MemoryView::new());
        view.set_ready(Ok(()));
        let proxy = server_rt.block_on(async {
            let settings = imds_proxy::Settings::for_tests(mock.addr(), "node-0");
            let proxy = imds_proxy::Proxy::start_with_view(settings, view.clone())
                .await
                .context("starting imds-proxy")?;
            proxy.ready().await.context("imds-proxy ready")?;
            anyhow::Ok(proxy)
        })?;
        let md = vec![("Metadata", "true")];
        let mock_i = Target {
            addr: mock.addr(),
            path_and_query: INSTANCE.into(),
            headers: md.clone(),
        };
        let mock_t = Target {
            path_and_query: TOKEN.into(),
            ..mock_i.clone()
        };
        let proxy_i = Target {
            addr: proxy.addr(),
            ..mock_i.clone()
        };
        let (s_i, body_i) = load_rt.block_on(load::fetch(&mock_i))?;
        let (s_t, body_t) = load_rt.block_on(load::fetch(&mock_t))?;
        let (s_p, body_p) = load_rt.block_on(load::fetch(&proxy_i))?;
        if s_i != 200 || s_t != 200 || s_p != 200 {
            bail!(
                "sanity check failed: instance {s_i}, token {s_t}, proxy pass-through {s_p}: {}",
                String::from_utf8_lossy(&body_p)
            );
        }
        let (bare_i_addr, bare_i_task) =
            server_rt.block_on(load::bare_server(body_i.clone(), false))?;
        let (bare_t_addr, bare_t_task) =
            server_rt.block_on(load::bare_server(body_t.clone(), false))?;
        let (bare_z_addr, bare_z_task) =
            server_rt.block_on(load::bare_server(body_i.clone(), true))?;
        let (fwd_addr, fwd_task) = server_rt.block_on(load::bare_forwarder(mock.addr()))?;
        let at = |addr, of: &Target| Target { addr, ..of.clone() };
        let targets = vec![
            ("bare-instance", at(bare_i_addr, &mock_i)),
            ("mock-instance", mock_i.clone()),
            ("proxy-instance", proxy_i),
            ("forwarder-instance", at(fwd_addr, &mock_i)),
            ("bare-token", at(bare_t_addr, &mock_t)),
            ("mock-token", mock_t),
            ("bare-zero-sleep", at(bare_z_addr, &mock_i)),
        ];
        Ok(Self {
            mock,
            proxy,
            _view: view,
            baselines: vec![bare_i_task, bare_t_task, bare_z_task, fwd_task],
            mock_instance: mock_i,
            instance_body: body_i.len(),
            token_body: body_t.len(),
            targets,
        })
    }

    /// Stops the baselines and the proxy; the mock goes on serving (sections 3–5 use it).
    pub fn stop(self, server_rt: &Runtime) -> mock_imds::MockImds {
        for task in &self.baselines {
            task.abort();
        }
        server_rt.block_on(async {
            let _ = self.proxy.shutdown().await;
        });
        self.mock
    }
}

/// `--only`: load the named targets for `rounds` rounds (interleaved) and print their figures.
pub fn only(
    servers: &Servers,
    load_rt: &Runtime,
    rounds: usize,
    l: Load,
    names: &[String],
) -> Result<()> {
    // Interleaved round by round, like the full run, so background load hits all targets alike.
    for _ in 0..rounds {
        for (name, t) in servers
            .targets
            .iter()
            .filter(|(n, _)| names.iter().any(|o| o == n))
        {
            let r = load_rt.block_on(load::run(t, l))?;
            println!(
                "{name}: {:.0} req/s, p50 {:.1} µs, p99 {:.1} µs, {} errors",
                r.rps(),
                us(r.hist.value_at_quantile(0.5)),
                us(r.hist.value_at_quantile(0.99)),
                r.errors
            );
        }
    }
    Ok(())
}

/// Figures gathered for one HTTP target across rounds.
#[derive(Default)]
struct Series {
    rps: Vec<f64>,
    errors: u64,
    lat: Option<Histogram<u64>>,
}

impl Series {
    fn median_rps(&self) -> f64 {
        let mut v = self.rps.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
    fn p(&self, q: f64) -> u64 {
        self.lat.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }
}

/// Sections 1 and 2: warm-up, `rounds` interleaved rounds (throughput at `l`, latency at one connection),
/// then the rows. Returns the mock's cached-token rate, which section 3 compares with.
pub fn sections(
    servers: &Servers,
    load_rt: &Runtime,
    rounds: usize,
    l: Load,
    report: &mut Report,
) -> Result<f64> {
    let targets = &servers.targets;
    // Warm-up: connections, allocator, caches (the mock's token cache gets its entry here).
    for (_, t) in targets {
        load_rt.block_on(load::run(
            t,
            Load {
                concurrency: l.concurrency,
                max_requests: 20_000,
                max_time: Duration::from_millis(300),
            },
        ))?;
    }
    let one = Load {
        concurrency: 1,
        ..l
    };
    let mut thr: BTreeMap<&str, Series> = BTreeMap::new();
    let mut lat: BTreeMap<&str, Series> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("imds-bench: HTTP round {}/{rounds}", round + 1);
        for (name, t) in targets {
            let r = load_rt.block_on(load::run(t, l))?;
            let s = thr.entry(name).or_default();
            s.rps.push(r.rps());
            s.errors += r.errors;
            let r = load_rt.block_on(load::run(t, one))?;
            let s = lat.entry(name).or_default();
            s.rps.push(r.rps());
            s.errors += r.errors;
            match s.lat.as_mut() {
                Some(h) => h.add(&r.hist).context("merging")?,
                None => s.lat = Some(r.hist),
            }
        }
    }
    let get = |m: &BTreeMap<&str, Series>, k: &str| -> (f64, u64, u64, u64) {
        let s = m.get(k);
        (
            s.map_or(0.0, Series::median_rps),
            s.map_or(0, |s| s.p(0.5)),
            s.map_or(0, |s| s.p(0.99)),
            s.map_or(0, |s| s.errors),
        )
    };
    let c = l.concurrency;
    let (bi, _, _, bie) = get(&thr, "bare-instance");
    let (mi, _, _, mie) = get(&thr, "mock-instance");
    let (pi, _, _, pie) = get(&thr, "proxy-instance");
    let (bt, _, _, bte) = get(&thr, "bare-token");
    let (mt, _, _, mte) = get(&thr, "mock-token");
    let (_, bi50, bi99, _) = get(&lat, "bare-instance");
    let (_, mi50, mi99, _) = get(&lat, "mock-instance");
    let (_, pi50, pi99, _) = get(&lat, "proxy-instance");
    let (_, bt50, bt99, _) = get(&lat, "bare-token");
    let (_, mt50, mt99, _) = get(&lat, "mock-token");
    let fie = get(&thr, "forwarder-instance").3;
    let errs = bie + mie + pie + bte + mte + fie;
    if errs > 0 {
        report.note(format!(
            "{errs} non-200 answers or connection errors during the HTTP runs (excluded from req/s)."
        ));
    }
    let s1 = "1 mock-imds";
    report.push(row(
        s1,
        format!(
            "/metadata/instance req/s (c={c}, {} B body)",
            servers.instance_body
        ),
        format!("{mi:.0}"),
        format!("bare hyper {bi:.0}"),
        format!("{:.2}× (goal ≥ 0.90×) {}", mi / bi, verdict(mi / bi >= 0.9)),
    ));
    report.push(row(
        s1,
        "/metadata/instance p50 / p99 (c=1)",
        format!("{:.1} / {:.1} µs", us(mi50), us(mi99)),
        format!("bare {:.1} / {:.1} µs", us(bi50), us(bi99)),
        "",
    ));
    report.push(row(
        s1,
        format!("cached token req/s (c={c}, {} B body)", servers.token_body),
        format!("{mt:.0}"),
        format!("bare hyper {bt:.0}"),
        format!(
            "{:.2}× (goal ≥ 0.90×) {}; {:.2}× the instance rate",
            mt / bt,
            verdict(mt / bt >= 0.9),
            mt / mi.max(1e-9)
        ),
    ));
    report.push(row(
        s1,
        "cached token p50 / p99 (c=1)",
        format!("{:.1} / {:.1} µs", us(mt50), us(mt99)),
        format!("bare {:.1} / {:.1} µs", us(bt50), us(bt99)),
        "",
    ));
    let (bz, _, _, _) = get(&thr, "bare-zero-sleep");
    let (_, bz50, bz99, _) = get(&lat, "bare-zero-sleep");
    report.push(row(
        s1,
        "diagnostic: bare hyper + tokio sleep(0) per request",
        format!(
            "{bz:.0} req/s; p50 / p99 {:.1} / {:.1} µs",
            us(bz50),
            us(bz99)
        ),
        format!("bare hyper {bi:.0} req/s"),
        format!("{:.2}× bare", bz / bi.max(1e-9)),
    ));
    let s2 = "2 imds-proxy";
    let (fi, _, _, _) = get(&thr, "forwarder-instance");
    let (_, fi50, fi99, _) = get(&lat, "forwarder-instance");
    // Added latency of a hop = via the hop − direct to the mock, for imds-proxy and for the bare forwarder.
    let add50 = us(pi50) - us(mi50);
    let add99 = us(pi99) - us(mi99);
    let fwd50 = us(fi50) - us(mi50);
    let fwd99 = us(fi99) - us(mi99);
    report.push(row(
        s2,
        "pass-through added p50 / p99 (c=1)",
        format!("{add50:+.1} / {add99:+.1} µs"),
        format!(
            "bare forwarder {fwd50:+.1} / {fwd99:+.1} µs; direct {:.1} / {:.1} µs; via proxy {:.1} / {:.1} µs",
            us(mi50),
            us(mi99),
            us(pi50),
            us(pi99)
        ),
        format!(
            "p50 {:+.1} µs over the forwarder's (goal ≤ +10 µs) {}",
            add50 - fwd50,
            verdict(add50 - fwd50 <= 10.0)
        ),
    ));
    report.push(row(
        s2,
        format!("pass-through req/s (c={c})"),
        format!("{pi:.0}"),
        format!("bare forwarder {fi:.0}; direct to mock {mi:.0}"),
        format!(
            "{:.2}× the forwarder (goal ≥ 0.90×) {}; {:.2}× direct",
            pi / fi.max(1e-9),
            verdict(pi / fi.max(1e-9) >= 0.9),
            pi / mi.max(1e-9)
        ),
    ));
    report.push(row(
        s2,
        format!("baseline: bare hyper forwarder → mock req/s (c={c})"),
        format!(
            "{fi:.0}; p50 / p99 (c=1) {:.1} / {:.1} µs",
            us(fi50),
            us(fi99)
        ),
        format!("direct to mock {mi:.0}"),
        format!(
            "forwarder {:.2}× direct (the ceiling of any pass-through on these cores)",
            fi / mi.max(1e-9)
        ),
    ));
    Ok(mt)
}

/// `/metadata/identity/oauth2/token` with `bypass_cache=true` on the mock (section 3's HTTP figure).
pub fn uncached_token(servers: &Servers) -> Target {
    Target {
        path_and_query: TOKEN_UNCACHED.into(),
        ..servers.mock_instance.clone()
    }
}
