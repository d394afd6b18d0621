//! `env exec`: a command inside a pod's or node's network namespace (`ip netns exec NS CMD…`) that
//! behaves like the command itself towards whoever started it: SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to
//! `env exec` are forwarded, it waits for the command and exits with its status (128 + signal when it was
//! killed by one). So `timeout 5 imds-conformance env exec app -- sleep 60` returns after 5 s with 124
//! and leaves nothing running.
//!
//! Process groups: from an interactive terminal where we are the foreground group, the command stays in
//! our group (so a shell inside can read the terminal) and the terminal's own SIGINT / SIGQUIT (Ctrl-C,
//! Ctrl-\) reach it directly — those are not forwarded again, so it sees each once; SIGTERM and SIGHUP are
//! forwarded to its PID. Otherwise (scripts, `timeout`, CI) it gets a group of its own and every one of the
//! four signals goes to that whole group, so a pipeline or a shell's children are reached too.

use std::os::fd::AsFd as _;
use std::os::unix::process::ExitStatusExt as _;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgrp, isatty, tcgetpgrp};
use tokio::signal::unix::{SignalKind, signal};

/// Errors starting or supervising the command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A signal handler could not be installed.
    #[error("installing the {signal} handler: {source}")]
    Signal {
        /// Which signal.
        signal: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// `ip netns exec` could not be started or waited for.
    #[error("running {program:?} in {ns}: {source}")]
    Spawn {
        /// The command's program.
        program: String,
        /// The namespace.
        ns: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No command was given.
    #[error("no command given")]
    NoCommand,
}

/// Whether we are the terminal's foreground process group (an interactive `env exec`).
fn terminal_foreground() -> bool {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    isatty(fd).unwrap_or(false) && tcgetpgrp(fd).is_ok_and(|g| g == getpgrp())
}

/// The exit code a shell would report for `status`.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}

/// Runs `argv` in namespace `ns`, forwarding signals, and returns its exit code.
pub async fn run_in(ns: &str, argv: &[String]) -> Result<i32, ExecError> {
    let (program, args) = argv.split_first().ok_or(ExecError::NoCommand)?;
    let handler = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| ExecError::Signal {
            signal: name,
            source,
        })
    };
    // Installed before the spawn: a signal arriving in between is forwarded, not fatal to us alone.
    let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut hup = handler(SignalKind::hangup(), "SIGHUP")?;
    let mut quit = handler(SignalKind::quit(), "SIGQUIT")?;
    let own_group = !terminal_foreground();
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, program])
        .args(args)
        .kill_on_drop(false);
    if own_group {
        cmd.process_group(0);
    }
    let spawn_err = |source| ExecError::Spawn {
        program: program.clone(),
        ns: ns.to_string(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // `ip netns exec` execs the command: this PID is the command (and its group's id when own_group).
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    loop {
        let sig = tokio::select! {
            status = child.wait() => return Ok(exit_code(status.map_err(spawn_err)?)),
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
            _ = hup.recv() => Signal::SIGHUP,
            _ = quit.recv() => Signal::SIGQUIT,
        };
        // The child is not reaped yet (its wait did not complete), so its PID / group id is still ours to
        // signal: it cannot have been reused by a stranger.
        let from_terminal = matches!(sig, Signal::SIGINT | Signal::SIGQUIT);
        match pid {
            Some(pid) if own_group => {
                let _ = killpg(pid, sig);
            }
            Some(pid) if !from_terminal => {
                let _ = kill(pid, sig);
            }
            // Our group is the terminal's foreground group: the command got it from the terminal too.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn exit_codes_are_a_shells() {
        let code =
            |script: &str| exit_code(Command::new("sh").args(["-c", script]).status().unwrap());
        assert_eq!(code("exit 3"), 3);
        assert_eq!(code("kill -TERM $$"), 143);
        assert_eq!(code("kill -INT $$"), 130);
    }
}
