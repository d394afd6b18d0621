//! The harness's one process runner: external tools (`kind`, `kubectl`, `docker` for the kind backend;
//! `ip`, `iptables`, `conntrack` for the netns helper) run as typed commands. A [`ToolCmd`] says what to
//! run, with its stdin and a timeout; a [`Runner`] runs it to completion and returns the captured output
//! ([`SystemRunner`] on a blocking thread, [`run_async`] on tokio).
//!
//! Owns timeouts (every call has one; a late process is killed), stderr capture in errors, and the
//! [`Recorder`] runner that the snapshot tests (and `--kind-dry-run`) use to see the exact command
//! sequence without executing anything. It knows nothing about Kubernetes or namespaces: the wrappers in
//! [`crate::kind::wrappers`] and [`crate::netns`] build the commands and interpret what they print.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wait_timeout::ChildExt as _;

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCmd {
    /// Program (looked up on PATH unless it contains a slash).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Bytes written to stdin (then closed); `None` = no stdin.
    pub stdin: Option<Vec<u8>>,
    /// Longest the command may run.
    pub timeout: Duration,
}

impl ToolCmd {
    /// A command with no stdin and a 60 s timeout.
    pub fn new(program: impl Into<String>) -> Self {
        ToolCmd {
            program: program.into(),
            args: Vec::new(),
            stdin: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Appends one argument.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Sets stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The command as a shell would show it (for logs, errors and snapshots).
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|a| quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The same command for tokio (streaming uses: relays). Stdio is left to the caller.
    pub fn tokio_command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.program);
        c.args(&self.args);
        c
    }
}

fn quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// What a finished command left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
}

impl ToolOutput {
    /// A successful output with this stdout (for scripted runners).
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        ToolOutput {
            code: Some(0),
            stdout: stdout.into(),
            stderr: Vec::new(),
        }
    }

    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text, trimmed.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Why a tool call failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed.
    #[error("{program} not found on PATH (needed for: {cmd})")]
    NotFound {
        /// Program.
        program: String,
        /// The command.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It could not be started.
    #[error("starting `{cmd}`: {source}")]
    Spawn {
        /// The command.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran past its timeout and was killed.
    #[error("`{cmd}` did not finish within {after:?} and was killed; stderr: {stderr}")]
    Timeout {
        /// The command.
        cmd: String,
        /// The timeout.
        after: Duration,
        /// What it printed on stderr so far.
        stderr: String,
    },
    /// It exited non-zero.
    #[error("`{cmd}` exited with {code}: {stderr}")]
    Failed {
        /// The command.
        cmd: String,
        /// Exit code, or `signal`.
        code: String,
        /// Captured stderr.
        stderr: String,
    },
    /// Its output was not what the wrapper expected.
    #[error("`{cmd}` printed something unexpected: {message}")]
    Output {
        /// The command.
        cmd: String,
        /// What was wrong.
        message: String,
    },
}

/// Runs [`ToolCmd`]s to completion.
pub trait Runner: Send + Sync {
    /// Runs `cmd`, returning its output whatever its exit code (errors only for not-found, spawn
    /// failures and timeouts).
    fn run(&self, cmd: &ToolCmd) -> Result<ToolOutput, ToolError>;

    /// Runs `cmd` and requires exit code 0.
    fn check(&self, cmd: &ToolCmd) -> Result<ToolOutput, ToolError> {
        let out = self.run(cmd)?;
        if out.success() {
            return Ok(out);
        }
        Err(ToolError::Failed {
            cmd: cmd.display(),
            code: out
                .code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into()),
            stderr: out.stderr_text(),
        })
    }
}

fn spawn_error(cmd: &ToolCmd, source: std::io::Error) -> ToolError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ToolError::NotFound {
            program: cmd.program.clone(),
            cmd: cmd.display(),
            source,
        }
    } else {
        ToolError::Spawn {
            cmd: cmd.display(),
            source,
        }
    }
}

fn stdin_for(cmd: &ToolCmd) -> Stdio {
    if cmd.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    }
}

/// Runs commands for real with `std::process`, a reader thread per pipe and a kill on timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

impl Runner for SystemRunner {
    fn run(&self, cmd: &ToolCmd) -> Result<ToolOutput, ToolError> {
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args)
            .stdin(stdin_for(cmd))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| spawn_error(cmd, e))?;
        let writer = match (cmd.stdin.clone(), child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || {
                // A command that exits without reading everything is its own business.
                let _ = pipe.write_all(&bytes);
            })),
            _ => None,
        };
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let status = match child.wait_timeout(cmd.timeout) {
            Ok(Some(s)) => s,
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                return Err(ToolError::Timeout {
                    cmd: cmd.display(),
                    after: cmd.timeout,
                    stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
                });
            }
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        Ok(ToolOutput {
            code: status.code(),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }
}

/// Runs `cmd` on tokio: the same contract as [`SystemRunner`] (output whatever the exit code; errors for
/// not-found, spawn failures and timeouts) for callers on the runtime. The child dies with the future
/// (kill on drop), so a timeout or a cancelled caller leaves no process behind. On timeout the stderr
/// printed so far is not available (it is reported empty).
pub async fn run_async(cmd: &ToolCmd) -> Result<ToolOutput, ToolError> {
    let mut c = cmd.tokio_command();
    c.stdin(stdin_for(cmd))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = c.spawn().map_err(|e| spawn_error(cmd, e))?;
    let stdin = cmd.stdin.as_deref();
    let io = async move {
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A child that exits before reading everything (a parse error) breaks the pipe; its exit
            // status and stderr, not EPIPE, say what went wrong, so the write error is not reported.
            let _ = tokio::io::AsyncWriteExt::write_all(&mut pipe, bytes).await;
            // Closing stdin is what tells `ip -batch -` and `iptables-restore` that input is complete.
            drop(pipe);
        }
        child.wait_with_output().await
    };
    match tokio::time::timeout(cmd.timeout, io).await {
        Err(_) => Err(ToolError::Timeout {
            cmd: cmd.display(),
            after: cmd.timeout,
            stderr: String::new(),
        }),
        Ok(Err(source)) => Err(ToolError::Spawn {
            cmd: cmd.display(),
            source,
        }),
        Ok(Ok(out)) => Ok(ToolOutput {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        }),
    }
}

/// The answer function of a [`Recorder`]: given a command, what it "printed".
pub type Script = dyn Fn(&ToolCmd) -> ToolOutput + Send + Sync;

/// A runner that executes nothing: it records every command and answers from a script. Used by the
/// snapshot tests of the kind backend's command sequences and by `--kind-dry-run`.
#[derive(Clone)]
pub struct Recorder {
    log: Arc<Mutex<Vec<ToolCmd>>>,
    script: Arc<Script>,
}

impl Recorder {
    /// A recorder answering with `script`.
    pub fn new(script: impl Fn(&ToolCmd) -> ToolOutput + Send + Sync + 'static) -> Self {
        Recorder {
            log: Arc::new(Mutex::new(Vec::new())),
            script: Arc::new(script),
        }
    }

    /// Every command so far.
    pub fn commands(&self) -> Vec<ToolCmd> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every command so far, one shell line each, with stdin shown as `<<< N bytes` (snapshots).
    pub fn transcript(&self) -> String {
        self.commands()
            .iter()
            .map(|c| {
                let mut line = c.display();
                if let Some(s) = &c.stdin {
                    line.push_str(&format!("  <<< {} bytes", s.len()));
                }
                line.push_str(&format!("  [timeout {}s]", c.timeout.as_secs()));
                line
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Forgets the recorded commands.
    pub fn clear(&self) {
        if let Ok(mut l) = self.log.lock() {
            l.clear();
        }
    }
}

impl Runner for Recorder {
    fn run(&self, cmd: &ToolCmd) -> Result<ToolOutput, ToolError> {
        if let Ok(mut l) = self.log.lock() {
            l.push(cmd.clone());
        }
        Ok((self.script)(cmd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_runner_captures_and_times_out() {
        let r = SystemRunner;
        let out = r
            .run(
                &ToolCmd::new("sh")
                    .args(["-c", "cat; echo err >&2; exit 3"])
                    .stdin("in"),
            )
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout_text(), "in");
        assert_eq!(out.stderr_text(), "err");
        let e = r
            .check(&ToolCmd::new("sh").args(["-c", "echo nope >&2; exit 1"]))
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = r
            .run(
                &ToolCmd::new("sh")
                    .args(["-c", "echo started >&2; sleep 30"])
                    .timeout(Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(matches!(e, ToolError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("started"), "{e}");
        let e = r.run(&ToolCmd::new("imds-no-such-tool-xyz")).unwrap_err();
        assert!(matches!(e, ToolError::NotFound { .. }), "{e}");
    }

    #[tokio::test]
    async fn async_runner_captures_and_times_out() {
        let out = run_async(
            &ToolCmd::new("sh")
                .args(["-c", "cat; echo err >&2; exit 3"])
                .stdin("in"),
        )
        .await
        .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout_text(), "in");
        assert_eq!(out.stderr_text(), "err");
        let e = run_async(
            &ToolCmd::new("sh")
                .args(["-c", "sleep 30"])
                .timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ToolError::Timeout { .. }), "{e}");
        let e = run_async(&ToolCmd::new("imds-no-such-tool-xyz"))
            .await
            .unwrap_err();
        assert!(matches!(e, ToolError::NotFound { .. }), "{e}");
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let c = ToolCmd::new("kubectl").args(["get", "--raw", "/a b", "it's"]);
        assert_eq!(c.display(), r"kubectl get --raw '/a b' 'it'\''s'");
    }
}
