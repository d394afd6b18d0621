//! Shared helpers for the harness's own tests: locate the binaries, run `imds-conformance run` with a JSON
//! report and read it back through the report's serde types.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imds_conformance::report::RunReport;

/// The imds-conformance binary under test.
pub fn conformance_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imds-conformance"))
}

/// The imds-proxy binary in the same target dir, if built (`cargo build -p imds-proxy`).
pub fn proxy_bin() -> Option<PathBuf> {
    let dir = conformance_bin().parent()?.to_path_buf();
    let p = dir.join("imds-proxy");
    p.is_file().then_some(p)
}

/// The proxy binary, or a loud SKIP (returns None).
pub fn proxy_or_skip(test: &str) -> Option<PathBuf> {
    let p = proxy_bin();
    if p.is_none() {
        eprintln!(
            "SKIP: {test}: imds-proxy binary not built next to {} (run `cargo build -p imds-proxy` first)",
            conformance_bin().display()
        );
    }
    p
}

/// Whether we are root (netns tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Root and netns support, or a loud SKIP.
pub fn netns_or_skip(test: &str) -> bool {
    if !is_root() {
        eprintln!("SKIP: {test}: needs root for network namespaces");
        return false;
    }
    if let Err(e) = imds_conformance::netns::netns_supported() {
        eprintln!("SKIP: {test}: network namespaces not usable here: {e}");
        return false;
    }
    true
}

/// A scenario file of the repository.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name)
}

/// Result of one `run`.
pub struct Run {
    pub code: i32,
    pub report: Option<RunReport>,
    pub output: Output,
}

impl Run {
    /// Ids with `status` in the report.
    pub fn ids(&self, status: &str) -> Vec<String> {
        self.report
            .as_ref()
            .map(|r| r.ids_with(status))
            .unwrap_or_default()
    }

    /// stdout + stderr for assertion messages.
    pub fn log(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

/// Runs `imds-conformance run ARGS --report json=<tmp>` and parses the report.
pub fn run(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut cmd = Command::new(conformance_bin());
    cmd.arg("run")
        .args(args)
        .arg("--report")
        .arg(format!("json={}", json.display()))
        // Run directories (kept on FAIL for debugging) land in the test's temp dir and go with it.
        .env("TMPDIR", dir.path())
        .env("NO_COLOR", "1");
    if let Some(p) = proxy_bin() {
        cmd.env("IMDS_PROXY_BIN", p);
    }
    let output = cmd.output().expect("running imds-conformance");
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|s| serde_json::from_str::<RunReport>(&s).expect("JSON report parses into RunReport"));
    Run {
        code: output.status.code().unwrap_or(-1),
        report,
        output,
    }
}

/// Serialises the heavy netns runs across test threads *and* processes (nextest runs each test in its
/// own process): several full environments at once on 2 cores would make the timed cases meaningless.
pub fn serial_guard() -> nix::fcntl::Flock<std::fs::File> {
    let path = std::env::temp_dir().join("imds-conformance-harness-netns-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("lock file");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock")
}
