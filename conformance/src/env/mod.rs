//! `imds-conformance env`: environments a person can live in. `env up` builds a scenario on the netns
//! backend and keeps it standing under a name (default: the scenario file's stem), so several can stand
//! side by side; `list`, `exec`, `logs`, `journal` and `down` find it by that name.
//!
//! Owns the `env` command line and its flows; state files are [`state`], signal-forwarding `exec` is
//! [`exec`], log files and the journal view are [`logs`]. Building and removing the environment itself is
//! the netns backend's job ([`crate::backend::netns`]).
//!
//! Safety: `exec` and `down` act only on environments of the caller (uid, or `SUDO_UID` under sudo) and
//! say why otherwise; `down` of an environment whose `env up` process died removes only what carries that
//! environment's own run prefix (killing, by PID, what still runs inside those namespaces).

pub mod exec;
pub mod logs;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::backend::netns::{MOCK_CONTROL_PORT, Netns};
use crate::cli::{InterceptorArgs, interceptor_spec, load_scenario};
use crate::runner::{self, BackendChoice};
use state::{EnvState, Liveness, Phase, StateDir, caller_uid, owner_label};

/// `env` arguments.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// Directory of the environments' state files, shared by every user of the machine.
    #[arg(long, global = true, env = "IMDS_CONFORMANCE_ENV_DIR", default_value = state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: EnvCommand,
}

/// `env` subcommands.
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Build the scenario's environment (netns backend, root) and keep it standing until Ctrl-C, SIGTERM, SIGHUP or `env down`; prints how to reach every pod, node and VM IMDS, and the log directory (kept after down).
    Up {
        /// Environment name (default: the scenario file's stem, e.g. nmi-default). Several environments with
        /// different names stand side by side.
        #[arg(long)]
        name: Option<String>,
        /// Scenario file (default: the built-in nmi-default).
        #[arg(long)]
        scenario: Option<PathBuf>,
        #[command(flatten)]
        interceptor: InterceptorArgs,
    },
    /// List the environments: name, owner, PID, status (up / starting / dead), scenario, backend, start time.
    List,
    /// Run a command inside a pod's (or node's) network namespace, e.g. `env exec app -- curl -s -H Metadata:true http://169.254.169.254/metadata/versions`. Signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are forwarded to it; exits with its status (128 + signal when killed by one).
    Exec {
        /// Environment (may be omitted when only one exists or runs).
        #[arg(long)]
        name: Option<String>,
        /// Pod or node name.
        pod: String,
        /// Command and arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Print an environment's logs: a node's interceptor log (NODE), `imds` (every request each VM's IMDS received) or `apiserver` (API server requests per client); all of them by default.
    Logs {
        /// Environment (may be omitted when only one exists or runs).
        #[arg(long)]
        name: Option<String>,
        /// Keep printing what is appended until Ctrl-C or the environment goes down.
        #[arg(long, short = 'f')]
        follow: bool,
        /// NODE, imds or apiserver.
        which: Option<String>,
    },
    /// Print a VM's IMDS journal (every request its mock IMDS received, headers included), read from the mock's control API.
    Journal {
        /// Environment (may be omitted when only one exists or runs).
        #[arg(long)]
        name: Option<String>,
        /// The raw JSON instead of one line per request.
        #[arg(long)]
        json: bool,
        /// Node (VM) name.
        node: String,
    },
    /// Stop an environment and remove what it built; its logs are kept (the directory is printed). For an environment whose `env up` died, removes its leftovers.
    Down {
        /// Environment (may be omitted when only one exists or runs).
        #[arg(long)]
        name: Option<String>,
    },
}

fn usage(msg: impl std::fmt::Display) -> i32 {
    eprintln!("imds-conformance: {msg}");
    2
}

/// Runs an `env` subcommand; returns the exit code.
pub async fn main(args: EnvArgs) -> i32 {
    let dir = StateDir::new(args.state_dir);
    match args.command {
        EnvCommand::Up {
            name,
            scenario,
            interceptor,
        } => up(&dir, name, scenario, interceptor).await,
        EnvCommand::List => list(&dir),
        EnvCommand::Exec { name, pod, cmd } => {
            let st = match mine_and_alive(&dir, name.as_deref(), "run a command in it") {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            let Some(ns) = st.namespaces.get(&pod) else {
                let names: Vec<&String> = st.namespaces.keys().collect();
                return usage(format!(
                    "no pod or node {pod:?} in environment {}; known: {names:?}",
                    st.name
                ));
            };
            match exec::run_in(ns, &cmd).await {
                Ok(code) => code,
                Err(e) => usage(e),
            }
        }
        EnvCommand::Logs {
            name,
            follow,
            which,
        } => {
            let st = match state::select(&dir, name.as_deref()) {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            let files = match logs::select_logs(&st, which.as_deref()) {
                Ok(f) => f,
                Err(e) => return usage(e),
            };
            let stop = async {
                runner::shutdown_signal().await;
            };
            match logs::print_logs(&st, &files, follow, stop).await {
                Ok(()) => 0,
                // A closed pipe (`env logs | head`) just ends the output.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => usage(format!("reading logs: {e}")),
            }
        }
        EnvCommand::Journal { name, json, node } => {
            let st = match state::select(&dir, name.as_deref()) {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            if st.liveness() == Liveness::Dead {
                return usage(format!(
                    "environment {} is not running (its `env up`, PID {}, is gone) and its mock IMDS with it; \
                     {} holds the requests it logged",
                    st.name,
                    st.pid,
                    st.log_dir.join(logs::IMDS_LOG).display()
                ));
            }
            match logs::fetch_journal(&st, &node).await {
                Ok(entries) => {
                    let text = if json {
                        serde_json::to_string_pretty(&entries).unwrap_or_default() + "\n"
                    } else {
                        logs::pretty_journal(&node, &entries)
                    };
                    use std::io::Write as _;
                    let _ = std::io::stdout().lock().write_all(text.as_bytes());
                    0
                }
                Err(e) => usage(e),
            }
        }
        EnvCommand::Down { name } => down(&dir, name.as_deref()).await,
    }
}

/// The environment, when it is the caller's and running; else why not.
fn mine_and_alive(dir: &StateDir, name: Option<&str>, doing: &str) -> Result<EnvState, String> {
    let st = state::select(dir, name)?;
    refuse_others(&st, doing)?;
    match (st.liveness(), st.phase) {
        (Liveness::Dead, _) => Err(format!(
            "environment {} is not running: its `env up` process (PID {}) is gone. \
             `imds-conformance env down --name {}` removes what it left behind",
            st.name, st.pid, st.name
        )),
        (Liveness::Alive, Phase::Starting) => Err(format!(
            "environment {} is still starting (PID {}); try again when `env up` says it is up",
            st.name, st.pid
        )),
        (Liveness::Alive, Phase::Up) => Ok(st),
    }
}

fn refuse_others(st: &EnvState, doing: &str) -> Result<(), String> {
    let me = caller_uid();
    if st.owner_uid != me {
        return Err(format!(
            "environment {} belongs to uid {}, not to you (uid {me}): refusing to {doing}",
            st.name,
            owner_label(st.owner_uid)
        ));
    }
    Ok(())
}

fn list(dir: &StateDir) -> i32 {
    let all = match dir.all() {
        Ok(a) => a,
        Err(e) => return usage(e),
    };
    if all.is_empty() {
        println!("no environment (state directory {})", dir.path().display());
        return 0;
    }
    println!(
        "{:<20} {:<14} {:<8} {:<9} {:<20} {:<8} STARTED",
        "NAME", "OWNER", "PID", "STATUS", "SCENARIO", "BACKEND"
    );
    for s in all {
        match s {
            Ok(s) => println!(
                "{:<20} {:<14} {:<8} {:<9} {:<20} {:<8} {}",
                s.name,
                owner_label(s.owner_uid),
                s.pid,
                s.status_word(),
                s.scenario,
                s.backend,
                s.started
            ),
            Err(e) => println!("?  {e}"),
        }
    }
    0
}

/// Removes the kubeconfigs (and anything else that is not a log) from a log directory; removes the
/// directory too when no log in it has content. Returns the logs kept.
fn keep_only_logs(dir: &Path) -> Vec<PathBuf> {
    let mut kept = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return kept;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        let is_log = p.extension().is_some_and(|x| x == "log");
        if is_log && e.metadata().is_ok_and(|m| m.len() > 0) {
            kept.push(p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    if kept.is_empty() {
        let _ = std::fs::remove_dir(dir);
    }
    kept.sort();
    kept
}

/// What is left of run `prefix` (namespaces), after a cleanup attempt.
async fn cleanup_leftovers(prefix: &str) -> Result<Vec<String>, String> {
    let err = crate::netns::cleanup_prefix(prefix).await.err();
    let left: Vec<String> = crate::netns::registered_namespaces()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|n| crate::netns::belongs_to(prefix, n))
        .collect();
    match (left.is_empty(), err) {
        (true, _) => Ok(Vec::new()),
        (false, Some(e)) => Err(format!("{e}; still present: {}", left.join(", "))),
        (false, None) => Err(format!("still present: {}", left.join(", "))),
    }
}

async fn up(
    dir: &StateDir,
    name: Option<String>,
    scenario_path: Option<PathBuf>,
    interceptor: InterceptorArgs,
) -> i32 {
    let scenario = match load_scenario(scenario_path.as_deref()) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let spec = match interceptor_spec(&interceptor, &scenario, BackendChoice::Netns) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    if let Err(e) = runner::resolve_backend(BackendChoice::Netns) {
        return usage(e);
    }
    let name = name.unwrap_or_else(|| {
        scenario_path
            .as_deref()
            .and_then(Path::file_stem)
            .and_then(|s| s.to_str())
            .map(String::from)
            .unwrap_or_else(|| scenario.name.clone())
    });
    if let Err(e) = state::check_name(&name) {
        return usage(e);
    }
    let me = caller_uid();
    match dir.get(&name) {
        Ok(Some(old)) if old.owner_uid != me && old.liveness() == Liveness::Dead => {
            return usage(format!(
                "environment {name:?} of uid {} is dead but not cleaned up; it is theirs to `env down` \
                 (or choose another --name)",
                owner_label(old.owner_uid)
            ));
        }
        Err(e) => return usage(e),
        _ => {}
    }
    let log_dir = std::env::temp_dir()
        .join("imds-conformance-env")
        .join(format!("{name}-{}", runner::run_id()));
    let prefix = crate::netns::new_run_prefix();
    let pid = std::process::id();
    let mut st = EnvState {
        name: name.clone(),
        owner_uid: me,
        pid,
        pid_start: state::process_start(pid),
        scenario: match &scenario_path {
            Some(p) => format!("{} ({})", scenario.name, p.display()),
            None => format!("{} (built-in)", scenario.name),
        },
        backend: "netns".into(),
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        phase: Phase::Starting,
        prefix: prefix.clone(),
        log_dir: log_dir.clone(),
        namespaces: Default::default(),
        host_sides: Default::default(),
        api_url: String::new(),
    };
    match dir.claim(&st) {
        Ok(None) => {}
        Ok(Some(old)) => {
            let left = cleanup_leftovers(&old.prefix).await;
            eprintln!(
                "imds-conformance: replacing dead environment {name} (PID {} gone){}; its logs stay in {}",
                old.pid,
                match &left {
                    Ok(_) => String::new(),
                    Err(e) => format!(" — its cleanup was incomplete: {e}"),
                },
                old.log_dir.display()
            );
        }
        Err(e) => return usage(e),
    }
    if let Err(e) = std::fs::create_dir_all(&log_dir) {
        let _ = dir.remove(&name);
        return usage(format!("creating {}: {e}", log_dir.display()));
    }
    let _ = crate::netns::sweep_stale(crate::netns::ROOT_PREFIX);
    let env = tokio::select! {
        r = Netns::start(&scenario, spec, &st.prefix, &log_dir) => match r {
            Ok(e) => e,
            Err(e) => {
                fail_up(dir, &name, &prefix, &log_dir, e.to_string()).await;
                return 2;
            }
        },
        sig = up_signal() => {
            fail_up(dir, &name, &prefix, &log_dir, format!("interrupted by {sig}")).await;
            return 130;
        }
    };
    for n in env.topology().nodes() {
        st.namespaces.insert(n.name.clone(), n.ns.clone());
        st.host_sides.insert(n.name.clone(), n.host_side_ns.clone());
    }
    for p in env.topology().pods() {
        st.namespaces.insert(p.name.clone(), p.ns.clone());
    }
    st.api_url = env.api_server().url();
    st.phase = Phase::Up;
    if let Err(e) = dir.update(&st) {
        crate::backend::Backend::teardown(&env).await;
        fail_up(dir, &name, &prefix, &log_dir, e.to_string()).await;
        return 2;
    }
    print_banner(&st, &scenario.name);
    let mocks: Vec<(String, &mock_imds::MockImds)> = st
        .host_sides
        .keys()
        .filter_map(|n| env.mock(n).map(|m| (n.clone(), m)))
        .collect();
    let mut pump = logs::Pump::new(mocks, env.api_server(), &log_dir);
    let sig = tokio::select! {
        sig = up_signal() => sig,
        _ = pump.run() => "the log pump",
    };
    // What arrived since the last poll.
    pump.once();
    drop(pump);
    eprintln!("imds-conformance: {sig}: tearing environment {name} down");
    crate::backend::Backend::teardown(&env).await;
    drop(env);
    let left = cleanup_leftovers(&st.prefix).await;
    let _ = dir.remove(&name);
    keep_only_logs(&log_dir);
    if let Err(e) = left {
        eprintln!("imds-conformance: teardown incomplete: {e}");
    }
    eprintln!(
        "imds-conformance: environment {name} is down; logs kept in {}",
        log_dir.display()
    );
    0
}

/// A failed `env up` cleans up after itself: namespaces and processes of its run, its state file, its
/// directory (logs with content are kept, and named).
async fn fail_up(dir: &StateDir, name: &str, prefix: &str, log_dir: &Path, why: String) {
    let left = cleanup_leftovers(prefix).await;
    let _ = dir.remove(name);
    let kept = keep_only_logs(log_dir);
    eprintln!("imds-conformance: env up {name} failed: {why}");
    if let Err(e) = left {
        eprintln!("imds-conformance: cleanup incomplete: {e}");
    }
    match kept.as_slice() {
        [] => eprintln!("imds-conformance: nothing was logged; nothing is left behind"),
        logs => {
            for l in logs {
                eprintln!("imds-conformance: log kept: {}", l.display());
            }
        }
    }
}

/// SIGINT, SIGTERM (`env down`) or SIGHUP (the terminal closed): `env up` tears down on each.
async fn up_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

fn print_banner(st: &EnvState, scenario: &str) {
    let n = &st.name;
    println!(
        "environment {n} is up (scenario {scenario}, prefix {}):",
        st.prefix
    );
    for (pod, ns) in &st.namespaces {
        println!(
            "  {pod:<14} imds-conformance env exec --name {n} {pod} -- CMD   (ip netns exec {ns} CMD)"
        );
    }
    println!("  API server     {}", st.api_url);
    for (node, hs) in &st.host_sides {
        println!(
            "  {:<14} imds-conformance env journal --name {n} {node}   (ip netns exec {hs} curl -s http://127.0.0.1:{MOCK_CONTROL_PORT}/_mock/journal)",
            format!("{node} IMDS")
        );
    }
    println!(
        "  logs           {}   (imds-conformance env logs --name {n} [-f] [NODE|imds|apiserver])",
        st.log_dir.display()
    );
    println!(
        "try: imds-conformance env exec --name {n} <pod> -- curl -s -H Metadata:true http://169.254.169.254/metadata/versions"
    );
    println!("stop with Ctrl-C or `imds-conformance env down --name {n}`");
}

async fn down(dir: &StateDir, name: Option<&str>) -> i32 {
    let st = match state::select(dir, name) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    if let Err(e) = refuse_others(&st, "take it down") {
        return usage(e);
    }
    let was_alive = st.liveness() == Liveness::Alive;
    if was_alive {
        // The recorded `env up` process (PID and start time checked just above): it tears down on SIGTERM.
        let pid = nix::unistd::Pid::from_raw(st.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while st.liveness() == Liveness::Alive {
            if tokio::time::Instant::now() >= deadline {
                return usage(format!(
                    "environment {}: its `env up` (PID {}) did not stop within 60 s after SIGTERM; it still runs",
                    st.name, st.pid
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Whatever the up process did not remove (it died, or its teardown was incomplete).
    let left = cleanup_leftovers(&st.prefix).await;
    let _ = dir.remove(&st.name);
    if !was_alive {
        println!(
            "environment {} was not running (its `env up`, PID {}, is gone); removed what was left of run {}",
            st.name, st.pid, st.prefix
        );
    }
    let logs = if st.log_dir.is_dir() {
        keep_only_logs(&st.log_dir);
        format!("logs kept in {}", st.log_dir.display())
    } else {
        "no logs were kept".to_string()
    };
    match left {
        Ok(_) => {
            println!("environment {} is down; {logs}", st.name);
            0
        }
        Err(e) => {
            eprintln!(
                "imds-conformance: environment {}: cleanup incomplete: {e} (remove with `ip netns delete NAME`); {logs}",
                st.name
            );
            1
        }
    }
}
