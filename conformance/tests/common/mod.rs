//! Shared helpers for the harness's own tests: locate the binaries, run `imds-conformance run` with a JSON
//! report and read it back through the report's serde types.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use imds_conformance::case::Status;
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

/// Runs the harness binary with `args` (colour off) to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(conformance_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("running imds-conformance")
}

/// Asserts that a [`cli`] run exited with `code`, showing `what` and its output otherwise.
pub fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    pub fn ids(&self, status: Status) -> Vec<String> {
        self.report
            .as_ref()
            .map(|r| r.ids_with(status))
            .unwrap_or_default()
    }

    /// Asserts that the run wrote a report, no MUST case failed and it exited 0; returns the report.
    pub fn assert_conformant(&self) -> &RunReport {
        let report = self
            .report
            .as_ref()
            .unwrap_or_else(|| panic!("no report\n{}", self.log()));
        assert_eq!(report.summary.must_failed, 0, "{}", self.log());
        assert_eq!(self.code, 0, "{}", self.log());
        report
    }

    /// Ids that FAILed.
    pub fn fails(&self) -> BTreeSet<String> {
        self.ids(Status::Fail).into_iter().collect()
    }

    /// Asserts that exactly `ids` FAILed and the run exited 1 (a self-test's verdict).
    pub fn assert_fails_exactly(&self, ids: &[&str]) {
        assert_eq!(self.fails(), set(ids), "{}", self.log());
        assert_eq!(self.code, 1, "{}", self.log());
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

/// A set of case ids.
pub fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Runs `imds-conformance run ARGS --report json=<tmp>` and parses the report.
pub fn run(args: &[&str]) -> Run {
    run_with_pid(args).0
}

/// [`run`] with the scenario file `file` of the repository on the loopback backend, then `extra`.
pub fn run_loopback(file: &str, extra: &[&str]) -> Run {
    let sc = scenario(file);
    let mut args = vec![
        "--scenario",
        sc.to_str().expect("UTF-8 path"),
        "--backend",
        "loopback",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// [`run`], also returning the child's PID (the netns tests look for leftovers carrying it).
pub fn run_with_pid(args: &[&str]) -> (Run, u32) {
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
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running imds-conformance");
    let pid = child.id();
    let output = child.wait_with_output().expect("running imds-conformance");
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|s| serde_json::from_str::<RunReport>(&s).expect("JSON report parses into RunReport"));
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        report,
        output,
    };
    (run, pid)
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

/// A mock-imds on 127.0.0.1 with rate limits off (relay tests).
pub async fn loopback_mock() -> mock_imds::MockImds {
    mock_imds::MockImds::builder()
        .rate_limits(false)
        .listen("127.0.0.1:0".parse().expect("address"))
        .start()
        .await
        .expect("mock-imds starts")
}

/// Sends `GET target` with `Metadata: true`, tagged `tag`, over a relayed `stream` to `mock`; asserts a 200
/// and that the mock journaled exactly that request; returns the body.
pub async fn relayed_get(
    stream: tokio::net::TcpStream,
    target: &str,
    tag: &str,
    mock: &mock_imds::MockImds,
) -> String {
    use imds_conformance::http::{Conn, Request};
    let mut conn = Conn::new(stream, "169.254.169.254".to_string());
    let req = Request::get(target)
        .metadata()
        .header("x-ms-client-request-id", tag);
    let r = conn
        .send(&req, false, std::time::Duration::from_secs(20))
        .await
        .expect("a response through the relay");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        mock.journal()
            .iter()
            .any(|e| e.headers.iter().any(|(_, v)| v == tag)),
        "the mock journaled the relayed request {tag}"
    );
    r.text()
}
