//! Running the netfilter userspace tools (`iptables`, `conntrack`, `cat`) as child processes, optionally
//! inside a named network namespace through `ip netns exec NS`.
//!
//! This module owns process spawning, the per-call timeout and the rendering of a failed call into a
//! [`NetfilterError`] that names the exact command line, its exit status and its stderr. It knows nothing
//! about chains or rules (that is `iptables.rs` and `mod.rs`) and never runs a shell: arguments are passed
//! as a vector, so nothing in a rule or a namespace name is ever interpreted.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use wait_timeout::ChildExt;

use super::NetfilterError;

/// Default upper bound for one tool invocation. `iptables -w` waits for the xtables lock for at most
/// [`super::iptables::LOCK_WAIT_SECS`]; this leaves room for that wait plus a large ruleset listing.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished tool invocation produced. Returned for every exit status: callers decide which statuses
/// are acceptable (for example `conntrack -D` exits 1 when it deleted nothing).
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// The command line as run (for errors and logs).
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    /// Turns a non-zero exit into [`NetfilterError::Failed`], keeping stdout on success.
    pub fn success(self) -> Result<String, NetfilterError> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(self.into_failure())
        }
    }

    /// The error describing this (unexpected) outcome.
    pub fn into_failure(self) -> NetfilterError {
        NetfilterError::Failed {
            command: self.command,
            status: self.status,
            stderr: self.stderr.trim().to_owned(),
        }
    }
}

/// Runs `program args...`, inside `netns` when given, and waits at most `timeout`.
///
/// The child gets no stdin and `LC_ALL=C` so that the messages we parse (conntrack's summary line) and the
/// ones we show are not translated. On timeout the child is killed (SIGKILL) and reaped, so no zombie and no
/// half-finished `iptables` outlives the call; `ip netns exec` execs the tool, so the PID we kill is the tool.
pub fn run_tool(
    netns: Option<&str>,
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Result<ToolOutput, NetfilterError> {
    let argv = full_argv(netns, program, args);
    let command = render_command(&argv);
    let (first, rest) = argv.split_first().ok_or_else(|| NetfilterError::Spawn {
        command: command.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command line"),
    })?;

    let mut child = Command::new(first)
        .args(rest)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetfilterError::Spawn {
            command: command.clone(),
            source,
        })?;

    // Drain both pipes on their own threads while we wait: a tool that fills the pipe buffer (a big
    // `iptables -S`) would otherwise block forever and turn every call into a timeout.
    let stdout_reader = child.stdout.take().map(spawn_reader);
    let stderr_reader = child.stderr.take().map(spawn_reader);

    let status = match child.wait_timeout(timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            // Best effort: the child may have exited between the timeout and the kill.
            let _ = child.kill();
            let _ = child.wait();
            return Err(NetfilterError::Timeout { command, timeout });
        }
        Err(source) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NetfilterError::Spawn { command, source });
        }
    };

    Ok(ToolOutput {
        command,
        status,
        stdout: join_reader(stdout_reader),
        stderr: join_reader(stderr_reader),
    })
}

fn spawn_reader<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error only truncates what we show; the exit status still decides the outcome.
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join_reader(handle: Option<thread::JoinHandle<String>>) -> String {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// The argument vector actually executed: `ip netns exec NS program args...` or `program args...`.
pub fn full_argv(netns: Option<&str>, program: &str, args: &[String]) -> Vec<String> {
    let mut argv = Vec::with_capacity(args.len() + 4);
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns].map(str::to_owned));
    }
    argv.push(program.to_owned());
    argv.extend(args.iter().cloned());
    argv
}

/// A copy-pasteable rendering of an argument vector: arguments that a shell would split or interpret are
/// single-quoted. Only for messages; execution never goes through a shell.
pub fn render_command(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+' | '@' | '!')
                });
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn argv_has_netns_prefix_only_when_asked() {
        assert_eq!(
            full_argv(Some("ns1"), "iptables", &strings(&["-t", "nat", "-S"])),
            strings(&["ip", "netns", "exec", "ns1", "iptables", "-t", "nat", "-S"])
        );
        assert_eq!(
            full_argv(None, "iptables", &strings(&["-S"])),
            strings(&["iptables", "-S"])
        );
    }

    #[test]
    fn rendering_quotes_what_a_shell_would_split() {
        let argv = strings(&[
            "iptables",
            "-m",
            "comment",
            "--comment",
            "AKS managed: it's",
            "!",
            "-s",
        ]);
        assert_eq!(
            render_command(&argv),
            r"iptables -m comment --comment 'AKS managed: it'\''s' ! -s"
        );
    }

    #[test]
    fn captures_stdout_stderr_and_status() {
        let out = run_tool(
            None,
            "sh",
            &strings(&["-c", "echo out; echo err >&2; exit 3"]),
            DEFAULT_TIMEOUT,
        )
        .expect("sh runs");
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.status.code(), Some(3));
        let err = out.success().expect_err("exit 3 is a failure");
        let msg = err.to_string();
        assert!(
            msg.contains("sh -c 'echo out; echo err >&2; exit 3'"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("err"), "{msg}");
    }

    #[test]
    fn timeout_kills_the_child() {
        let err = run_tool(None, "sleep", &strings(&["30"]), Duration::from_millis(200))
            .expect_err("sleep 30 cannot finish in 200 ms");
        assert!(matches!(err, NetfilterError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("sleep 30"), "{err}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run_tool(None, "/nonexistent/ipxt-tool", &[], DEFAULT_TIMEOUT)
            .expect_err("no such program");
        assert!(matches!(err, NetfilterError::Spawn { .. }), "{err:?}");
    }
}
