//! Selecting and running cases: profile / focus / skip selection, the per-case decision (UNCLAIMED, SKIP
//! for the backend, run), panic and timeout containment, restoring the cluster between cases, and the
//! whole-run lifecycle (backend choice, start-up sweep, set-up, run, teardown on success, failure, panic and
//! SIGINT/SIGTERM).
//!
//! Owns the order of things, not their content: cases live in `catalog/`, environments in `backend/`,
//! renderings in `report/`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use regex::Regex;

use crate::backend::interceptor::InterceptorSpec;
use crate::backend::{Backend, BackendError, loopback::Loopback, netns::Netns};
use crate::case::{BackendKind, Feature, Outcome, Profile, Status};
use crate::catalog::{self, Case};
use crate::ctx::Ctx;
use crate::kind::{KindBackend, KindOptions};
use crate::report::terminal::Terminal;
use crate::report::{CaseResult, RunReport, RunTiming, SCHEMA_VERSION, Summary, Verdict};
use crate::scenario::Scenario;

/// Longest a single case may run before it is failed.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(180);

/// Which backend the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// netns when root and the kernel allows it, else loopback (skipped cases listed).
    Auto,
    /// Unprivileged loopback.
    Loopback,
    /// Network namespaces (root).
    Netns,
    /// A kind cluster (needs docker, kind and kubectl; see --kind-* options).
    Kind,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The scenario.
    pub scenario: Scenario,
    /// Profile (defaults to the scenario's).
    pub profile: Profile,
    /// Backend choice.
    pub backend: BackendChoice,
    /// Interceptor under test.
    pub interceptor: InterceptorSpec,
    /// Claimed features.
    pub features: BTreeSet<Feature>,
    /// Only cases whose `id title` matches.
    pub focus: Option<Regex>,
    /// Drop cases whose `id title` matches.
    pub skip: Option<Regex>,
    /// Real IMDS URL for the IMDS fidelity cases.
    pub imds_url: Option<String>,
    /// The SDK area's clients (`--sdk-clients`); `None`: the SDK cases SKIP.
    pub sdk: Option<crate::catalog::sdk::SdkClients>,
    /// Print live progress.
    pub live: bool,
    /// Options of the kind backend (with `--backend kind`).
    pub kind: Option<crate::kind::KindOptions>,
}

/// Errors that stop a run before a verdict (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The environment could not be built or driven.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The backend asked for is not available here.
    #[error("{0}")]
    Unavailable(String),
    /// SIGINT / SIGTERM: everything was torn down.
    #[error("interrupted by {0}; environment torn down")]
    Interrupted(&'static str),
    /// Local I/O (run directory).
    #[error("{0}")]
    Io(String),
}

/// Ids of the security-floor cases (area `SEC`) `profile` requires: they apply whatever the interceptor
/// claims, and a run without them is never `CONFORMANT`.
pub fn security_floor(profile: Profile) -> Vec<&'static str> {
    if !profile.has_security_floor() {
        return Vec::new();
    }
    catalog::all()
        .into_iter()
        .filter(|c| c.area() == "SEC" && c.profiles.contains(&profile))
        .map(|c| c.id)
        .collect()
}

/// The cases of `profile` matching `focus` and not `skip`, in catalogue order.
pub fn select(profile: Profile, focus: Option<&Regex>, skip: Option<&Regex>) -> Vec<&'static Case> {
    catalog::all()
        .into_iter()
        .filter(|c| c.profiles.contains(&profile))
        .filter(|c| {
            let key = format!("{} {}", c.id, c.title);
            focus.is_none_or(|r| r.is_match(&key)) && skip.is_none_or(|r| !r.is_match(&key))
        })
        .collect()
}

/// Why `case` cannot run on `backend` (its reason text lists what it needs).
pub fn backend_skip_reason(case: &Case, backend: BackendKind) -> Option<String> {
    if case.backends.contains(&backend) {
        return None;
    }
    let needs: Vec<String> = case.backends.iter().map(|b| b.to_string()).collect();
    Some(format!(
        "needs the {} backend (real iptables/conntrack: root for netns); running on {backend}",
        needs.join(" or ")
    ))
}

/// Runs one case with the pre-checks, containment and restoration.
pub async fn run_case(ctx: &mut Ctx, case: &Case) -> CaseResult {
    run_case_timed(ctx, case).await.0
}

/// [`run_case`], also returning how long restoring the environment after the case took (included in the
/// case's `duration_ms`; near zero when the case changed nothing).
pub async fn run_case_timed(ctx: &mut Ctx, case: &Case) -> (CaseResult, Duration) {
    let start = Instant::now();
    let (outcome, restore) = decide(ctx, case).await;
    let result = CaseResult {
        id: case.id.into(),
        title: case.title.into(),
        area: case.area().into(),
        level: case.level,
        features: case.features.to_vec(),
        spec: case.spec.into(),
        outcome,
        duration_ms: start.elapsed().as_millis() as u64,
    };
    (result, restore)
}

/// The outcome, and the time [`Ctx::restore`] took (zero when the case did not run).
async fn decide(ctx: &mut Ctx, case: &Case) -> (Outcome, Duration) {
    let missing: Vec<Feature> = case
        .features
        .iter()
        .copied()
        .filter(|f| !ctx.claims(*f))
        .collect();
    if !missing.is_empty() {
        return (Outcome::Unclaimed { features: missing }, Duration::ZERO);
    }
    if let Some(f) = case.unless.iter().find(|f| ctx.claims(**f)) {
        let reason = format!("checks the behaviour with {f} off; the interceptor claims {f}");
        return (Outcome::skip(reason), Duration::ZERO);
    }
    if let Some(reason) = backend_skip_reason(case, ctx.backend.kind()) {
        return (Outcome::skip(reason), Duration::ZERO);
    }
    let run = (case.run)(ctx);
    let result = tokio::time::timeout(
        CASE_TIMEOUT,
        std::panic::AssertUnwindSafe(run).catch_unwind(),
    )
    .await;
    let mut outcome = match result {
        Ok(Ok(o)) => o,
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Outcome::fail("the case to complete", format!("harness panic: {msg}"))
        }
        Err(_) => Outcome::fail(
            format!("the case to finish within {CASE_TIMEOUT:?}"),
            "it did not (timed out)",
        ),
    };
    let restore_started = Instant::now();
    if let Err(e) = ctx.restore().await {
        let note = format!("restoring the cluster after the case failed: {e}");
        outcome = match outcome {
            Outcome::Pass => Outcome::fail("a restorable environment", note),
            other => other,
        };
    }
    let restore = restore_started.elapsed();
    if let Outcome::Fail { expected, observed } = outcome {
        // FAIL messages cite the id, so a log line alone says which rule broke.
        let outcome = Outcome::Fail {
            expected: format!("[{}] {expected}", case.id),
            observed,
        };
        return (outcome, restore);
    }
    (outcome, restore)
}

/// Runs `cases` in order, printing live lines when `term` is given.
pub async fn run_cases(ctx: &mut Ctx, cases: &[&Case], term: Option<&Terminal>) -> Vec<CaseResult> {
    run_cases_timed(ctx, cases, term).await.0
}

/// [`run_cases`], also returning each case's restore time (see [`run_case_timed`]).
async fn run_cases_timed(
    ctx: &mut Ctx,
    cases: &[&Case],
    term: Option<&Terminal>,
) -> (Vec<CaseResult>, Vec<Duration>) {
    let mut out = Vec::new();
    let mut restores = Vec::new();
    for c in cases {
        let (r, restore) = run_case_timed(ctx, c).await;
        if let Some(t) = term {
            t.case(&r);
        }
        out.push(r);
        restores.push(restore);
    }
    (out, restores)
}

/// A short random run id (also the journal tag prefix).
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Resolves `auto`: the backend to use and a note explaining the choice.
pub fn resolve_backend(choice: BackendChoice) -> Result<(BackendKind, Option<String>), RunError> {
    let root = nix::unistd::geteuid().is_root();
    let supported = || crate::netns::netns_supported();
    match choice {
        BackendChoice::Loopback => Ok((BackendKind::Loopback, None)),
        // kind, kubectl and docker are checked by their first call, with the command in the error.
        BackendChoice::Kind => Ok((BackendKind::Kind, None)),
        BackendChoice::Netns => {
            if !root {
                return Err(RunError::Unavailable(
                    "--backend netns needs root (network namespaces, iptables); use --backend loopback".into(),
                ));
            }
            supported().map_err(|e| RunError::Unavailable(format!("--backend netns: {e}")))?;
            Ok((BackendKind::Netns, None))
        }
        BackendChoice::Auto => {
            if !root {
                return Ok((
                    BackendKind::Loopback,
                    Some("backend auto → loopback: not root, so no network namespaces; kernel cases (CT, IPT, RST) are skipped".into()),
                ));
            }
            match supported() {
                Ok(()) => Ok((
                    BackendKind::Netns,
                    Some("backend auto → netns (root, namespaces supported)".into()),
                )),
                Err(e) => Ok((
                    BackendKind::Loopback,
                    Some(format!(
                        "backend auto → loopback: netns not usable here ({e}); kernel cases are skipped"
                    )),
                )),
            }
        }
    }
}

/// A started environment, torn down by [`Env::teardown`] (and, for netns, by the topology's drop).
pub struct Env {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// Per-run directory (kubeconfigs, interceptor logs).
    pub run_dir: PathBuf,
    /// Run id.
    pub run_id: String,
    /// The scenario as the backend built it (kind renames nodes to the cluster's workers).
    pub scenario: Scenario,
}

impl Env {
    /// Tears the environment down; removes the run directory unless `keep_logs`.
    pub async fn teardown(&self, keep_logs: bool) {
        self.backend.teardown().await;
        if !keep_logs {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// Builds the environment for `scenario` on `kind` (`kind_opts` for the kind backend).
pub async fn start_env(
    scenario: &Scenario,
    interceptor: InterceptorSpec,
    kind: BackendKind,
    kind_opts: Option<KindOptions>,
) -> Result<Env, RunError> {
    if matches!(interceptor, InterceptorSpec::Manifest { .. }) && kind != BackendKind::Kind {
        return Err(RunError::Unavailable(
            "--interceptor manifest:FILE needs --backend kind".into(),
        ));
    }
    let mut scenario = scenario.clone();
    let run_id = run_id();
    let run_dir = std::env::temp_dir().join(format!("imds-conformance-{run_id}"));
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| RunError::Io(format!("creating {}: {e}", run_dir.display())))?;
    let backend: Arc<dyn Backend> = match kind {
        BackendKind::Loopback => Arc::new(Loopback::start(&scenario, interceptor, &run_dir).await?),
        BackendKind::Kind => {
            let opts = kind_opts.ok_or_else(|| {
                RunError::Unavailable("--backend kind: no kind options given".into())
            })?;
            let runner: Arc<dyn crate::process::Runner> = Arc::new(crate::process::SystemRunner);
            Arc::new(KindBackend::start(&mut scenario, interceptor, opts, runner).await?)
        }
        BackendKind::Netns => {
            // Leftovers of crashed runs (dead owner PID, our prefix only) go first.
            match crate::netns::sweep_stale(crate::netns::ROOT_PREFIX) {
                Ok(removed) if !removed.is_empty() => {
                    eprintln!("imds-conformance: removed stale environments {removed:?}")
                }
                Ok(_) => {}
                Err(e) => eprintln!("imds-conformance: stale sweep incomplete: {e}"),
            }
            let prefix = crate::netns::new_run_prefix();
            Arc::new(Netns::start(&scenario, interceptor, &prefix, &run_dir).await?)
        }
    };
    Ok(Env {
        backend,
        run_dir,
        run_id,
        scenario,
    })
}

/// A vendor interceptor (`cmd:`) that claims `iptables` on netns must have its redirect in every node's
/// nat table once it is ready (docs/VENDORS.md §5); otherwise the run stops here, saying so (with the
/// rules it did find and its log's tail) instead of failing every interception case for no stated reason.
async fn check_redirects(
    env: &Env,
    spec: &InterceptorSpec,
    features: &BTreeSet<Feature>,
    kind: BackendKind,
) -> Result<(), BackendError> {
    if kind != BackendKind::Netns
        || !matches!(spec, InterceptorSpec::Cmd { .. })
        || !features.contains(&Feature::Iptables)
    {
        return Ok(());
    }
    let nodes: Vec<String> = env
        .backend
        .world()
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect();
    for node in nodes {
        let argv = vec!["iptables-save".into(), "-t".into(), "nat".into()];
        let nat = env.backend.exec(&node, argv).await?.stdout;
        if nat.lines().any(catalog::interception::is_redirect) {
            continue;
        }
        let imds: Vec<&str> = nat
            .lines()
            .filter(|l| l.contains("169.254.169.254"))
            .collect();
        let log = env.backend.interceptor_log(&node).await;
        return Err(crate::backend::startup::no_rules_error(&node, &imds, &log));
    }
    Ok(())
}

/// Resolves when SIGINT or SIGTERM arrives, naming it.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers we can only wait forever; the drop-time cleanup still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The whole run: backend choice, set-up, cases, teardown. Signals during set-up or run tear down and
/// return [`RunError::Interrupted`].
pub async fn run(opts: RunOptions) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let term = Terminal::new();
    let (kind, note) = resolve_backend(opts.backend)?;
    let mut notes: Vec<String> = note.into_iter().collect();
    let cases = select(opts.profile, opts.focus.as_ref(), opts.skip.as_ref());
    // Only cases that would otherwise run (features claimed) are worth listing as skipped.
    let skipped: Vec<&str> = cases
        .iter()
        .filter(|c| c.features.iter().all(|f| opts.features.contains(f)))
        .filter(|c| backend_skip_reason(c, kind).is_some())
        .map(|c| c.id)
        .collect();
    if !skipped.is_empty() {
        notes.push(format!(
            "skipped on {kind} (need real kernel networking: the netns or kind backend): {}",
            skipped.join(", ")
        ));
    }
    if opts.live {
        for n in &notes {
            term.note(n);
        }
        term.note(&format!(
            "scenario {} · profile {} · backend {kind} · interceptor {} · {} cases",
            opts.scenario.name,
            opts.profile,
            opts.interceptor.label(),
            cases.len()
        ));
    }
    let label = opts.interceptor.label();
    let setup_started = Instant::now();
    let env = tokio::select! {
        r = start_env(&opts.scenario, opts.interceptor.clone(), kind, opts.kind.clone()) => r?,
        sig = shutdown_signal() => {
            if kind == BackendKind::Netns {
                let _ = tokio::task::spawn_blocking(crate::netns::cleanup_all_live_blocking).await;
            }
            return Err(RunError::Interrupted(sig));
        }
    };
    if let Err(e) = check_redirects(&env, &opts.interceptor, &opts.features, kind).await {
        env.teardown(false).await;
        return Err(e.into());
    }
    let mut ctx = Ctx::new(
        env.backend.clone(),
        env.scenario.clone(),
        opts.features.clone(),
        env.run_id.clone(),
    );
    ctx.imds_url = opts.imds_url.clone();
    ctx.sdk = opts.sdk.clone();
    let setup = setup_started.elapsed();
    // Let interceptors' watches sync the seeded objects before the first case.
    let sync = Duration::from_millis(500);
    tokio::time::sleep(sync).await;
    let results = tokio::select! {
        r = run_cases_timed(&mut ctx, &cases, opts.live.then_some(&term)) => Some(r),
        sig = shutdown_signal() => {
            eprintln!("imds-conformance: {sig} received, tearing down");
            env.teardown(false).await;
            return Err(RunError::Interrupted(sig));
        }
    };
    let (results, restores) = results.unwrap_or_default();
    let failed = results.iter().any(|r| r.outcome.status() == Status::Fail);
    if failed {
        notes.push(format!(
            "interceptor logs kept in {}",
            env.run_dir.display()
        ));
    }
    let teardown_started = Instant::now();
    env.teardown(failed).await;
    let timing = RunTiming::measure(setup, sync, teardown_started.elapsed(), &restores);
    let claimed: Vec<Feature> = opts.features.iter().copied().collect();
    let report = RunReport {
        schema_version: SCHEMA_VERSION,
        tool: format!("imds-conformance {}", env!("CARGO_PKG_VERSION")),
        scenario: opts.scenario.name.clone(),
        profile: opts.profile.to_string(),
        backend: kind.to_string(),
        interceptor: label,
        claimed_features: claimed.clone(),
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        notes,
        timing: Some(timing),
        summary: Summary::of(&results),
        verdict: Some(Verdict::judge(
            opts.profile,
            &claimed,
            &security_floor(opts.profile),
            &results,
        )),
        cases: results,
    };
    if opts.live {
        term.summary(&report);
    }
    Ok(report)
}
