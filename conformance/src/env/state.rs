//! Named environments' state files: one JSON file per environment in a state directory shared by every
//! user of the machine (`/run/imds-conformance/env` by default, `$IMDS_CONFORMANCE_ENV_DIR` or
//! `--state-dir` otherwise), so that `env list` shows them all and `exec` / `down` can refuse to act on
//! someone else's.
//!
//! Owns: the file format, claiming a name atomically (`create_new`), who owns an environment (the caller's
//! uid, or `SUDO_UID` under sudo: env needs root, so the person behind sudo is the owner), and whether its
//! `env up` process still lives (PID *and* its start time, so a reused PID is not taken for it). It starts
//! and stops nothing.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default state directory (tmpfs: like `/run/netns`, it does not outlive a reboot, nor do namespaces).
pub const DEFAULT_STATE_DIR: &str = "/run/imds-conformance/env";

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A state file is not what `env up` writes.
    #[error("{path}: not an environment state file: {source}")]
    Corrupt {
        /// The file.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// The name is taken by a live environment.
    #[error(
        "environment {name:?} is already up (PID {pid}, owner {owner}); choose another --name or `env down --name {name}` first"
    )]
    Taken {
        /// The name.
        name: String,
        /// Its `env up` process.
        pid: u32,
        /// Owner, as [`owner_label`] prints it.
        owner: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Io { what, source }
}

/// Where an environment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `env up` is building it.
    Starting,
    /// Built and standing.
    Up,
}

/// What `env up` records (`<state dir>/<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvState {
    /// Environment name (the file's stem).
    pub name: String,
    /// Owner uid (the person behind sudo when run with sudo).
    pub owner_uid: u32,
    /// The `env up` process.
    pub pid: u32,
    /// Its start time (`/proc/PID/stat` field 22), to tell it from a later process with the same PID.
    pub pid_start: Option<u64>,
    /// Scenario name and, when given, its file.
    pub scenario: String,
    /// Backend (`netns`).
    pub backend: String,
    /// RFC 3339 start time.
    pub started: String,
    /// Building or standing.
    pub phase: Phase,
    /// Per-run prefix of every namespace (`imdsc-<pid>-<rand>`).
    pub prefix: String,
    /// Directory with the logs (kept after `down`).
    pub log_dir: PathBuf,
    /// Pod or node name → its network namespace.
    #[serde(default)]
    pub namespaces: BTreeMap<String, String>,
    /// Node name → the namespace of its VM's host side (where its mock IMDS and control API listen).
    #[serde(default)]
    pub host_sides: BTreeMap<String, String>,
    /// The test API server's URL.
    #[serde(default)]
    pub api_url: String,
}

/// Whether an environment's `env up` process lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The recorded process runs.
    Alive,
    /// It is gone (or the PID now belongs to another process).
    Dead,
}

impl EnvState {
    /// Whether the recorded `env up` process still runs.
    pub fn liveness(&self) -> Liveness {
        let pid = self.pid as i32;
        if !crate::netns::pid_alive(pid) || is_zombie(self.pid) {
            return Liveness::Dead;
        }
        match (self.pid_start, process_start(self.pid)) {
            (Some(a), Some(b)) if a != b => Liveness::Dead,
            _ => Liveness::Alive,
        }
    }

    /// `alive` / `dead` / `starting` for listings.
    pub fn status_word(&self) -> &'static str {
        match (self.liveness(), self.phase) {
            (Liveness::Dead, _) => "dead",
            (Liveness::Alive, Phase::Starting) => "starting",
            (Liveness::Alive, Phase::Up) => "up",
        }
    }
}

/// Whether process `pid` has exited but is not reaped yet (`/proc/PID/stat` state `Z` or `X`): it
/// answers `kill(pid, 0)` but runs nothing.
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat[stat.rfind(')')? + 1..].to_string();
            after
                .split_whitespace()
                .next()
                .map(|s| matches!(s, "Z" | "X"))
        })
        .unwrap_or(false)
}

/// Start time of process `pid` in clock ticks since boot (`/proc/PID/stat` field 22), if readable.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The uid acting: `SUDO_UID` when running as root under sudo, else the real uid.
pub fn caller_uid() -> u32 {
    let uid = nix::unistd::getuid().as_raw();
    if uid == 0
        && let Some(s) = std::env::var_os("SUDO_UID")
        && let Some(u) = s.to_str().and_then(|s| s.parse().ok())
    {
        return u;
    }
    uid
}

/// `1000 (alice)`, or the bare uid when it has no name.
pub fn owner_label(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{uid} ({})", u.name),
        _ => uid.to_string(),
    }
}

/// Checks an environment name: 1–40 chars of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "environment name {name:?}: use 1-40 chars of [A-Za-z0-9._-], not starting with '.'"
        ))
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The directory at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Every environment recorded, by name. Unreadable files are reported, not skipped silently.
    pub fn all(&self) -> Result<Vec<Result<EnvState, StateError>>, StateError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("listing {}", self.dir.display()))(e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        Ok(paths.iter().map(|p| read(p)).collect())
    }

    /// The environment `name`, if recorded.
    pub fn get(&self, name: &str) -> Result<Option<EnvState>, StateError> {
        let p = self.file(name);
        if !p.exists() {
            return Ok(None);
        }
        read(&p).map(Some)
    }

    /// Claims `state.name` for a new environment: fails when a live environment holds it; a dead one's
    /// record is returned (the caller cleans up its leftovers) and replaced.
    pub fn claim(&self, state: &EnvState) -> Result<Option<EnvState>, StateError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))?;
        let path = self.file(&state.name);
        let mut replaced = None;
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let text = serde_json::to_string_pretty(state).map_err(|source| {
                        StateError::Corrupt {
                            path: path.display().to_string(),
                            source,
                        }
                    })?;
                    f.write_all(text.as_bytes())
                        .map_err(io(format!("writing {}", path.display())))?;
                    return Ok(replaced);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let old = read(&path)?;
                    if old.liveness() == Liveness::Alive {
                        return Err(StateError::Taken {
                            name: old.name.clone(),
                            pid: old.pid,
                            owner: owner_label(old.owner_uid),
                        });
                    }
                    std::fs::remove_file(&path)
                        .map_err(io(format!("removing {}", path.display())))?;
                    replaced = Some(old);
                }
                Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
            }
        }
        Err(StateError::Io {
            what: format!("claiming {}", path.display()),
            source: std::io::Error::other("another process claimed the name at the same time"),
        })
    }

    /// Rewrites the record (atomically: a reader never sees half a file).
    pub fn update(&self, state: &EnvState) -> Result<(), StateError> {
        let path = self.file(&state.name);
        let tmp = self.dir.join(format!(".{}.json.tmp", state.name));
        let text = serde_json::to_string_pretty(state).map_err(|source| StateError::Corrupt {
            path: path.display().to_string(),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("replacing {}", path.display())))
    }

    /// Removes the record of `name` (absent is fine).
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        match std::fs::remove_file(self.file(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", self.file(name).display()))(e)),
        }
    }
}

fn read(path: &Path) -> Result<EnvState, StateError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
        path: path.display().to_string(),
        source,
    })
}

/// Picks the environment a command acts on: `--name`, else the only one recorded, else the only one
/// running; otherwise an error naming those that exist.
pub fn select(dir: &StateDir, name: Option<&str>) -> Result<EnvState, String> {
    if let Some(n) = name {
        check_name(n)?;
        return match dir.get(n).map_err(|e| e.to_string())? {
            Some(s) => Ok(s),
            None => Err(format!(
                "no environment named {n:?} in {}{}",
                dir.path().display(),
                known(dir)
            )),
        };
    }
    let all: Vec<EnvState> = dir
        .all()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    if let [only] = all.as_slice() {
        return Ok(only.clone());
    }
    let mut running: Vec<&EnvState> = all
        .iter()
        .filter(|s| s.liveness() == Liveness::Alive)
        .collect();
    match (all.len(), running.len()) {
        (0, _) => Err(format!(
            "no environment is up (in {}); start one with `imds-conformance env up`",
            dir.path().display()
        )),
        (_, 1) => Ok(running.remove(0).clone()),
        _ => Err(format!(
            "several environments exist: pass --name{}",
            known(dir)
        )),
    }
}

/// `; known: a (up, owner 0 (root)), b (dead, …)` or empty.
fn known(dir: &StateDir) -> String {
    let Ok(all) = dir.all() else {
        return String::new();
    };
    let names: Vec<String> = all
        .into_iter()
        .filter_map(Result::ok)
        .map(|s| {
            format!(
                "{} ({}, owner {})",
                s.name,
                s.status_word(),
                owner_label(s.owner_uid)
            )
        })
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!("; known: {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, pid: u32) -> EnvState {
        EnvState {
            name: name.into(),
            owner_uid: caller_uid(),
            pid,
            pid_start: process_start(pid),
            scenario: "s".into(),
            backend: "netns".into(),
            started: "2026-01-01T00:00:00Z".into(),
            phase: Phase::Up,
            prefix: "imdsc-1-abcd".into(),
            log_dir: "/tmp/x".into(),
            namespaces: BTreeMap::new(),
            host_sides: BTreeMap::new(),
            api_url: String::new(),
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["nmi-default", "a", "x.y_z-1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "../x", &"a".repeat(41), "sp ace"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn claim_refuses_a_live_name_and_replaces_a_dead_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("env"));
        let me = std::process::id();
        assert!(dir.claim(&state("a", me)).unwrap().is_none());
        assert!(matches!(
            dir.claim(&state("a", me)),
            Err(StateError::Taken { .. })
        ));
        // A recorded process whose start time differs is a reused PID: dead.
        let mut reused = state("b", me);
        reused.pid_start = reused.pid_start.map(|t| t + 1);
        assert_eq!(reused.liveness(), Liveness::Dead);
        dir.update(&reused).unwrap();
        let old = dir.claim(&state("b", me)).unwrap();
        assert_eq!(old.map(|o| o.pid_start), Some(reused.pid_start));
        assert_eq!(dir.all().unwrap().len(), 2);
        // Two live environments: no implicit pick; by name works.
        let e = select(&dir, None).unwrap_err();
        assert!(
            e.contains("several") && e.contains("a (up") && e.contains("b (up"),
            "{e}"
        );
        assert_eq!(select(&dir, Some("b")).unwrap().name, "b");
        assert!(select(&dir, Some("c")).unwrap_err().contains("known: a"));
        dir.remove("b").unwrap();
        assert_eq!(select(&dir, None).unwrap().name, "a");
    }

    #[test]
    fn process_start_reads_our_own() {
        assert!(process_start(std::process::id()).is_some());
        assert!(!is_zombie(std::process::id()));
    }

    #[test]
    fn an_unreaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let mut st = state("z", pid);
        // Not reaped yet: it shows as a zombie once it has exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_zombie(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        st.pid_start = None;
        assert_eq!(st.liveness(), Liveness::Dead);
        child.wait().unwrap();
    }
}
