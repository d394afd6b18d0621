//! Leaving nothing behind: run prefixes that encode the owning PID, removal of every namespace carrying a
//! prefix (killing, by PID, the processes still inside them first), the start-up sweep of crashed runs, and
//! the SIGINT/SIGTERM path.
//!
//! What it must not touch: anything without our prefix, and any process that is not inside one of our
//! namespaces at the moment it is signalled (so PID reuse can never make us kill a stranger), nor the
//! current process.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    cmd::{NETNS_RUN_DIR, netns_delete_blocking},
    error::NetnsError,
    socket::netns_path,
};

/// Every name this library creates starts with this; [`sweep_stale`] only ever looks at such names.
pub const ROOT_PREFIX: &str = "imdsc-";

/// A fresh run prefix `imdsc-<pid>-<rand4>`: the PID lets a later run decide whether the owner is dead,
/// the random part keeps concurrent topologies of one process apart.
pub fn new_run_prefix() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{ROOT_PREFIX}{}-{}", std::process::id(), &random[..4])
}

/// The PID encoded in a name `ROOT…<pid>-…`, if the name has that shape.
pub fn owner_pid(root_prefix: &str, name: &str) -> Option<i32> {
    let rest = name.strip_prefix(root_prefix)?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|pid| *pid > 0)
}

/// Whether a process with this PID exists (EPERM still means it exists).
pub fn pid_alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Whether namespace `name` belongs to run `prefix` (`prefix` itself or `prefix-…`, never `prefix0-…`).
pub fn belongs_to(prefix: &str, name: &str) -> bool {
    name == prefix
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Names in `/run/netns` (the registry `ip netns list` reads).
pub fn registered_namespaces() -> Result<Vec<String>, NetnsError> {
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        // No namespace was ever named on this machine.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::Io {
                what: format!("listing {NETNS_RUN_DIR}"),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// PIDs of processes whose network namespace is `ns` (what `ip netns pids` does: compare the namespace
/// inode of `/proc/PID/ns/net` with the bind mount's). Never includes the current process.
pub fn pids_in_netns(ns: &str) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(netns_path(ns)) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(proc_entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|meta| meta.ino() == target.ino() && meta.dev() == target.dev())
        })
        .collect()
}

/// SIGTERM to every process inside `namespaces`, up to `grace` to exit, then SIGKILL to the rest. Each
/// signal goes only to a PID that is inside one of these namespaces at that moment.
pub fn kill_processes_in(namespaces: &[String], grace: Duration) {
    let inside = || -> Vec<i32> { namespaces.iter().flat_map(|ns| pids_in_netns(ns)).collect() };
    for pid in inside() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !inside().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in inside() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // A killed process leaves its namespace when it exits (even as a zombie), which takes a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !inside().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes every namespace of run `prefix` (processes inside are killed first), retrying a few rounds in
/// case a concurrent builder adds one meanwhile, and returns what could not be removed as an error.
pub fn cleanup_prefix_blocking(prefix: &str) -> Result<(), NetnsError> {
    if prefix.is_empty() {
        return Err(NetnsError::InvalidSpec(
            "refusing to clean up an empty prefix".into(),
        ));
    }
    let mut last_errors = Vec::new();
    for _round in 0..10 {
        let ours: Vec<String> = registered_namespaces()?
            .into_iter()
            .filter(|name| belongs_to(prefix, name))
            .collect();
        if ours.is_empty() {
            return Ok(());
        }
        kill_processes_in(&ours, Duration::from_secs(2));
        last_errors.clear();
        for name in &ours {
            if let Err(err) = netns_delete_blocking(name) {
                last_errors.push(format!("{name}: {err}"));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut leftovers: Vec<String> = registered_namespaces()?
        .into_iter()
        .filter(|name| belongs_to(prefix, name))
        .collect();
    if leftovers.is_empty() {
        return Ok(());
    }
    leftovers.extend(last_errors);
    Err(NetnsError::Leftovers {
        prefix: prefix.to_string(),
        leftovers,
    })
}

/// Async [`cleanup_prefix_blocking`] (runs on the blocking pool; it never changes namespace).
pub async fn cleanup_prefix(prefix: &str) -> Result<(), NetnsError> {
    let prefix = prefix.to_string();
    tokio::task::spawn_blocking(move || cleanup_prefix_blocking(&prefix))
        .await
        .map_err(|_| NetnsError::ThreadPanicked("cleanup".into()))?
}

/// Start-up sweep: removes namespaces named `<root_prefix><pid>-…` whose `pid` is no longer alive
/// (leftovers of a run that was SIGKILLed or crashed), killing processes still inside them. Namespaces of
/// live owners, and names without a parsable PID, are left alone. Returns the removed names.
pub fn sweep_stale(root_prefix: &str) -> Result<Vec<String>, NetnsError> {
    if root_prefix.is_empty() {
        return Err(NetnsError::InvalidSpec(
            "sweep_stale needs a non-empty root prefix".into(),
        ));
    }
    let stale: Vec<String> = registered_namespaces()?
        .into_iter()
        .filter(|name| owner_pid(root_prefix, name).is_some_and(|pid| !pid_alive(pid)))
        .collect();
    if stale.is_empty() {
        return Ok(stale);
    }
    kill_processes_in(&stale, Duration::from_secs(1));
    let mut failures = Vec::new();
    for name in &stale {
        if let Err(err) = netns_delete_blocking(name) {
            failures.push(format!("{name}: {err}"));
        }
    }
    if failures.is_empty() {
        Ok(stale)
    } else {
        Err(NetnsError::Leftovers {
            prefix: root_prefix.to_string(),
            leftovers: failures,
        })
    }
}

/// Prefixes of topologies of this process that are being built or are standing.
fn live() -> &'static Mutex<BTreeSet<String>> {
    static LIVE: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(BTreeSet::new()))
}

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Builder steps (each creates at most one namespace) currently running in this process.
static STEPS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Held by a topology builder while it runs one step. Counting *before* checking the shutdown flag (and
/// the signal path setting the flag *before* waiting for the count to drop) guarantees that either the
/// step sees the flag and does nothing, or the cleanup waits for the step and then removes what it made.
pub(crate) struct StepGuard(());

impl StepGuard {
    pub(crate) fn begin() -> Result<StepGuard, NetnsError> {
        STEPS_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let guard = StepGuard(());
        if SHUTTING_DOWN.load(Ordering::SeqCst) {
            return Err(NetnsError::Interrupted);
        }
        Ok(guard)
    }
}

impl Drop for StepGuard {
    fn drop(&mut self) {
        STEPS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) fn register_live(prefix: &str) {
    if let Ok(mut set) = live().lock() {
        set.insert(prefix.to_string());
    }
}

pub(crate) fn unregister_live(prefix: &str) {
    if let Ok(mut set) = live().lock() {
        set.remove(prefix);
    }
}

/// True once a shutdown signal was seen; topology builders stop at their next step.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::SeqCst)
}

/// Removes every topology of this process that is standing or being built (blocking). For a harness that
/// handles signals itself: call this from its handler before exiting. Builders in progress stop with
/// [`NetnsError::Interrupted`] at their next step, and so does every later [`Topology::create`] of this
/// process: this is the way out, not a reset.
///
/// [`Topology::create`]: super::Topology::create
pub fn cleanup_all_live_blocking() -> Result<(), NetnsError> {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    // Let a step that already started finish (commands time out, so this is bounded), so that what it
    // creates is seen by the cleanup below.
    let deadline = Instant::now() + Duration::from_secs(15);
    while STEPS_IN_FLIGHT.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let prefixes: Vec<String> = live()
        .lock()
        .map(|set| set.iter().cloned().collect())
        .unwrap_or_default();
    let mut leftovers = Vec::new();
    for prefix in &prefixes {
        if let Err(err) = cleanup_prefix_blocking(prefix) {
            leftovers.push(err.to_string());
        }
        unregister_live(prefix);
    }
    if leftovers.is_empty() {
        Ok(())
    } else {
        Err(NetnsError::Leftovers {
            prefix: prefixes.join(","),
            leftovers,
        })
    }
}

/// Installs (once per process; later calls are no-ops) a task that on SIGINT or SIGTERM removes every
/// live topology of this process and exits with 128+signal (130 / 143). Must be called inside a tokio
/// runtime. A harness that wants to do more on a signal (flush a partial report) should instead run
/// [`cleanup_all_live_blocking`] from its own `tokio::signal` handler.
pub fn install_signal_cleanup() -> Result<(), NetnsError> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    use tokio::signal::unix::{SignalKind, signal};
    let io_err = |what: &str, source| NetnsError::Io {
        what: format!("installing the {what} handler"),
        source,
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| io_err("SIGINT", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| io_err("SIGTERM", e))?;
    if INSTALLED.set(()).is_err() {
        // Another thread won the race; its task does the work.
        return Ok(());
    }
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = sigint.recv() => 130,
            _ = sigterm.recv() => 143,
        };
        SHUTTING_DOWN.store(true, Ordering::SeqCst);
        let result = tokio::task::spawn_blocking(cleanup_all_live_blocking).await;
        match result {
            Ok(Ok(())) => eprintln!("imds-conformance: signal received, netns topology removed"),
            Ok(Err(err)) => {
                eprintln!("imds-conformance: signal received, cleanup incomplete: {err}")
            }
            Err(_) => eprintln!("imds-conformance: signal received, cleanup task panicked"),
        }
        std::process::exit(code);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_shape() {
        assert_eq!(owner_pid("imdsc-", "imdsc-1234-ab12-n1"), Some(1234));
        assert_eq!(owner_pid("imdsc-", "imdsc-1234"), Some(1234));
        assert_eq!(owner_pid("imdsc-", "imdsc-x12-n1"), None);
        assert_eq!(owner_pid("imdsc-", "imdsc--n1"), None);
        assert_eq!(owner_pid("imdsc-", "imdsc-0-n1"), None);
        assert_eq!(owner_pid("imdsc-", "other-1234-n1"), None);
    }

    #[test]
    fn belongs_to_respects_the_dash_boundary() {
        assert!(belongs_to("imdsc-1-ab", "imdsc-1-ab"));
        assert!(belongs_to("imdsc-1-ab", "imdsc-1-ab-n1-hs"));
        assert!(!belongs_to("imdsc-1-ab", "imdsc-1-abc-n1"));
        assert!(!belongs_to("imdsc-1-ab", "imdsc-1-a"));
    }

    #[test]
    fn run_prefix_encodes_this_process() {
        let prefix = new_run_prefix();
        assert_eq!(
            owner_pid(ROOT_PREFIX, &prefix),
            Some(std::process::id() as i32)
        );
        assert!(pid_alive(std::process::id() as i32));
        assert_ne!(prefix, new_run_prefix());
    }
}
