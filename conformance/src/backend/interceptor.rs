//! The interceptor under test as a supervised process: which one (`--interceptor`), its command line, its
//! log file, start / readiness / stop.
//!
//! Owns the vendor contract's command template (placeholders `{node}`, `{node_ip}`, `{kubeconfig}`,
//! `{imds_ip}`, `{imds_port}`, `{listen_port}`, plus `{probe_port}` and `{metrics_port}`) and the
//! built-in interceptor's command line (the `imds-proxy` binary with NMI flags). It does not decide where
//! the process runs: backends hand it a ready-made [`tokio::process::Command`] (plain on loopback,
//! `ip netns exec NODE ...` on netns). The AKS rule "interceptor" is not a process; backends apply it with
//! iptables through their exec helpers, using [`aks_rule_argv`] (tests use it too: one spelling of the rule).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::BackendError;
use super::startup::{Answers, LOG_TAIL_LINES, StartFailure};

/// Comment AgentBaker puts on its IMDS restriction rule (REFERENCE C).
pub const AKS_RULE_COMMENT: &str =
    "AKS managed: added by AgentBaker ensureIMDSRestriction for IMDS restriction feature";

/// How long a vendor interceptor that listens may take until its `GET /healthz` answers `Active`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Line the built-in interceptor logs once it serves (after its first iptables reconcile).
pub const BUILTIN_READY_LINE: &str = "imds-proxy ready";

/// Which interceptor is under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterceptorSpec {
    /// The `imds-proxy` binary of this repository, with the scenario's extra flags.
    Builtin {
        /// Path to the binary.
        bin: PathBuf,
        /// Extra flags (scenario `interceptor.flags`, then `--proxy-flag`s).
        flags: Vec<String>,
    },
    /// AKS IMDS restriction: AgentBaker's FORWARD DROP rule in each node; nothing listens.
    AksRule,
    /// Nothing: pods reach IMDS directly (baseline runs).
    None,
    /// A vendor's interceptor started from a shell command template inside each node.
    Cmd {
        /// Template with `{placeholders}`.
        template: String,
    },
    /// A vendor's interceptor deployed from a Kubernetes manifest with one DaemonSet (kind backend only).
    Manifest {
        /// The multi-document YAML file.
        path: PathBuf,
    },
}

impl InterceptorSpec {
    /// Short name for reports.
    pub fn label(&self) -> String {
        match self {
            InterceptorSpec::Builtin { bin, .. } => format!("builtin ({})", bin.display()),
            InterceptorSpec::AksRule => "aks-rule".into(),
            InterceptorSpec::None => "none".into(),
            InterceptorSpec::Cmd { template } => format!("cmd:{template}"),
            InterceptorSpec::Manifest { path } => format!("manifest:{}", path.display()),
        }
    }

    /// Whether pod traffic to IMDS is answered by a listening process (builtin / cmd).
    pub fn is_process(&self) -> bool {
        matches!(
            self,
            InterceptorSpec::Builtin { .. }
                | InterceptorSpec::Cmd { .. }
                | InterceptorSpec::Manifest { .. }
        )
    }
}

/// Everything a command template can refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchParams {
    /// Node name.
    pub node: String,
    /// Node IP.
    pub node_ip: String,
    /// Kubeconfig file for this node (user token = node name: per-node API accounting).
    pub kubeconfig: PathBuf,
    /// IMDS address the interceptor forwards to.
    pub imds_ip: String,
    /// IMDS port.
    pub imds_port: u16,
    /// Port the interceptor must listen on (127.0.0.1).
    pub listen_port: u16,
    /// Health probe port.
    pub probe_port: u16,
    /// Prometheus port.
    pub metrics_port: u16,
    /// Whether the interceptor manages iptables (false on loopback: no kernel redirect there).
    pub manage_iptables: bool,
}

impl LaunchParams {
    /// Replaces every `{placeholder}` of a template.
    pub fn expand(&self, template: &str) -> String {
        template
            .replace("{node}", &self.node)
            .replace("{node_ip}", &self.node_ip)
            .replace("{kubeconfig}", &self.kubeconfig.display().to_string())
            .replace("{imds_ip}", &self.imds_ip)
            .replace("{imds_port}", &self.imds_port.to_string())
            .replace("{listen_port}", &self.listen_port.to_string())
            .replace("{probe_port}", &self.probe_port.to_string())
            .replace("{metrics_port}", &self.metrics_port.to_string())
    }
}

/// Program and arguments of a process-based interceptor (`None` for `aks-rule` / `none`).
pub fn argv(spec: &InterceptorSpec, p: &LaunchParams) -> Option<Vec<String>> {
    match spec {
        InterceptorSpec::Builtin { bin, flags } => {
            let mut v = vec![
                bin.display().to_string(),
                format!("--node={}", p.node),
                format!("--kubeconfig={}", p.kubeconfig.display()),
                format!("--metadata-ip={}", p.imds_ip),
                format!("--metadata-port={}", p.imds_port),
                "--nmi-listen-address=127.0.0.1".into(),
                format!("--nmi-port={}", p.listen_port),
                format!("--http-probe-port={}", p.probe_port),
                format!("--prometheus-port={}", p.metrics_port),
                format!("--manage-iptables={}", p.manage_iptables),
            ];
            v.extend(flags.iter().cloned());
            Some(v)
        }
        // `exec` so the PID we signal is the vendor's process, not the shell.
        InterceptorSpec::Cmd { template } => Some(vec![
            "sh".into(),
            "-c".into(),
            format!("exec {}", p.expand(template)),
        ]),
        InterceptorSpec::AksRule | InterceptorSpec::None | InterceptorSpec::Manifest { .. } => None,
    }
}

/// The `iptables` command line (binary first) inserting (`insert = true`, FORWARD position 1) or deleting
/// AgentBaker's rule (REFERENCE C).
pub fn aks_rule_argv(node_ip: &str, insert: bool) -> Vec<String> {
    let mut v: Vec<String> = vec!["iptables".into(), "-w".into(), "-t".into(), "filter".into()];
    if insert {
        v.extend(["-I".into(), "FORWARD".into(), "1".into()]);
    } else {
        v.extend(["-D".into(), "FORWARD".into()]);
    }
    v.extend(
        [
            "!",
            "-s",
            node_ip,
            "-d",
            "169.254.169.254/32",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "80",
            "-m",
            "comment",
            "--comment",
            AKS_RULE_COMMENT,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v
}

/// Finds the `imds-proxy` binary: explicit path, next to the running executable (and one level up, for
/// test binaries in `target/*/deps`), then `PATH`.
pub fn find_proxy_bin(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    let name = "imds-proxy";
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let c = d.join(name);
            if c.is_file() {
                return Some(c);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// A running (or exited) interceptor process with its log file.
#[derive(Debug)]
pub struct Supervised {
    child: Option<Child>,
    log: PathBuf,
    /// Log length when this process was spawned: readiness lines before it belong to an earlier process.
    log_start: u64,
}

impl Supervised {
    /// Spawns `cmd` with stdout and stderr appended to `log`; killed if the handle is dropped.
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Self, BackendError> {
        let log_start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| BackendError::env(format!("opening {}", log.display()), e))?;
        let err = file
            .try_clone()
            .map_err(|e| BackendError::env(format!("opening {}", log.display()), e))?;
        // The log is a file: ask for no colour (imds-proxy also checks for a terminal itself).
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| BackendError::env("starting the interceptor", e))?;
        Ok(Supervised {
            child: Some(child),
            log: log.to_path_buf(),
            log_start,
        })
    }

    /// PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The exit status once the process has exited (as the OS words it: `exit status: 3`,
    /// `signal: 9 (SIGKILL)`); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(format!("unknown ({e})")),
            None => Some("not started".into()),
        }
    }

    /// Whether the process is still alive.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Tail of the log file.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Waits until the log contains `line`, or the process exits, or `timeout` elapses.
    pub async fn wait_log_line(
        &mut self,
        line: &str,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ours = std::fs::read(&self.log)
                .ok()
                .and_then(|b| {
                    b.get(self.log_start as usize..)
                        .map(|t| String::from_utf8_lossy(t).into_owned())
                })
                .unwrap_or_default();
            if ours.contains(line) {
                return Ok(());
            }
            if !self.running() {
                return Err(BackendError::env(
                    "interceptor exited before it was ready",
                    self.log_tail(15),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::env(
                    format!("interceptor not ready after {timeout:?} (no {line:?} in its log)"),
                    self.log_tail(15),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process: SIGTERM then wait up to `grace` (graceful), else / then SIGKILL.
    pub async fn stop(&mut self, graceful: bool, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if graceful && let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            // The PID is our own child: signalling it by id is exactly the process we started.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(grace, child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = child.kill().await;
    }
}

/// One node's interceptor slot, shared by both backends: the supervised process while there is one, and
/// its log file (which outlives restarts). Where the process runs is the backend's choice of [`Command`].
#[derive(Debug)]
pub struct NodeInterceptor {
    proc: Mutex<Option<Supervised>>,
    log: PathBuf,
}

impl NodeInterceptor {
    /// An empty slot logging to `log`.
    pub fn new(log: PathBuf) -> Self {
        NodeInterceptor {
            proc: Mutex::new(None),
            log,
        }
    }

    /// Spawns `cmd` unless the process runs already, then waits until it is ready: the built-in
    /// interceptor's ready line within `ready_line_timeout`; any other interceptor (docs/VENDORS.md §4)
    /// until `listening()` holds — polled every 50 ms at most 400 times while the process lives — and
    /// then until `ready()` (its `GET /healthz`) answers `Active`, for at most [`READY_TIMEOUT`]. What
    /// it saw when it did not start is the [`StartFailure`] (the backend words it with
    /// [`super::startup::start_error`]); when it never listened, `sockets()` lists what listens in the
    /// node while the process still runs (`None`: not observable).
    pub async fn start<F, R, S>(
        &self,
        spec: &InterceptorSpec,
        cmd: Command,
        ready_line_timeout: Duration,
        mut listening: impl FnMut() -> F,
        mut ready: impl FnMut() -> R,
        sockets: impl FnOnce() -> S,
    ) -> Result<(), StartFailure>
    where
        F: Future<Output = bool>,
        R: Future<Output = Result<(), String>>,
        S: Future<Output = Option<Vec<String>>>,
    {
        let mut guard = self.proc.lock().await;
        if let Some(p) = guard.as_mut()
            && p.running()
        {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let mut sup = Supervised::spawn(cmd, &self.log).map_err(StartFailure::Other)?;
        let tail = |sup: &Supervised| sup.log_tail(LOG_TAIL_LINES);
        if matches!(spec, InterceptorSpec::Builtin { .. }) {
            sup.wait_log_line(BUILTIN_READY_LINE, ready_line_timeout)
                .await
                .map_err(StartFailure::Other)?;
            *guard = Some(sup);
            return Ok(());
        }
        let mut ok = false;
        for _ in 0..400 {
            if listening().await {
                ok = true;
                break;
            }
            if let Some(status) = sup.exit_status() {
                return Err(StartFailure::Exited {
                    status,
                    after: started.elapsed(),
                    log_tail: tail(&sup),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !ok {
            let waited = started.elapsed();
            return Err(StartFailure::NotListening {
                waited,
                listening: sockets().await,
                log_tail: tail(&sup),
            });
        }
        let ready_started = tokio::time::Instant::now();
        let mut answers = Answers::default();
        loop {
            match ready().await {
                Ok(()) => break,
                Err(a) => answers.push(a),
            }
            if let Some(status) = sup.exit_status() {
                answers.push(format!("then the process exited ({status})"));
            }
            if !sup.running() || ready_started.elapsed() >= READY_TIMEOUT {
                return Err(StartFailure::NotReady {
                    waited: ready_started.elapsed(),
                    answers: answers.into_vec(),
                    log_tail: tail(&sup),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        *guard = Some(sup);
        Ok(())
    }

    /// Stops the process, if any: SIGTERM then wait up to `grace` (graceful), else / then SIGKILL.
    pub async fn stop(&self, graceful: bool, grace: Duration) {
        if let Some(mut p) = self.proc.lock().await.take() {
            p.stop(graceful, grace).await;
        }
    }

    /// Whether the process is running (started and not exited).
    pub async fn running(&self) -> bool {
        self.proc.lock().await.as_mut().is_some_and(|p| p.running())
    }

    /// The last 30 lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 30)
    }
}

/// Last `lines` lines of a file (empty when unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> LaunchParams {
        LaunchParams {
            node: "n1".into(),
            node_ip: "10.0.0.2".into(),
            kubeconfig: "/tmp/k".into(),
            imds_ip: "169.254.169.254".into(),
            imds_port: 80,
            listen_port: 2579,
            probe_port: 8085,
            metrics_port: 9090,
            manage_iptables: true,
        }
    }

    #[test]
    fn template_placeholders() {
        let spec = InterceptorSpec::Cmd {
            template: "vendor --node {node} --ip {node_ip} --kc {kubeconfig} --up {imds_ip}:{imds_port} --port {listen_port}".into(),
        };
        let v = argv(&spec, &params()).unwrap();
        assert_eq!(
            v[2],
            "exec vendor --node n1 --ip 10.0.0.2 --kc /tmp/k --up 169.254.169.254:80 --port 2579"
        );
    }

    #[test]
    fn aks_rule_matches_agentbaker() {
        let v = aks_rule_argv("10.0.0.2", true).join(" ");
        assert!(v.starts_with("iptables -w -t filter -I FORWARD 1 "));
        assert!(
            aks_rule_argv("10.0.0.2", false)
                .join(" ")
                .starts_with("iptables -w -t filter -D FORWARD ! -s 10.0.0.2 ")
        );
        assert!(v.contains("-I FORWARD 1 ! -s 10.0.0.2 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment"));
        assert!(v.ends_with("-j DROP"));
    }
}
