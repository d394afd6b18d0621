//! Real client programs in tests (cargo feature `test-clients`, for dev-dependencies): a bounded run of a
//! child process, the tail of its output for messages, set-up steps that print a loud `SKIP:` instead of
//! failing when the machine lacks an interpreter or a package index, and a throw-away Python virtualenv with
//! pinned requirements. Children are killed when their run is dropped or times out.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How much of a child's stderr a `SKIP:` line shows.
pub const SKIP_TAIL_BYTES: usize = 2000;

/// Runs a command to completion with a deadline; returns (success, stdout, stderr). `None` when the program
/// could not be started at all (not installed).
pub async fn run(cmd: &mut Command, timeout: Duration) -> Option<(bool, String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().ok()?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Some((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
        Ok(Err(e)) => Some((false, String::new(), format!("waiting for {cmd:?}: {e}"))),
        // kill_on_drop ends the child when the future is dropped here.
        Err(_) => Some((
            false,
            String::new(),
            format!("{cmd:?} timed out after {timeout:?}"),
        )),
    }
}

/// The last `max_bytes` (or fewer, on a character boundary) of `s`.
pub fn tail(s: &str, max_bytes: usize) -> &str {
    let start = s.len().saturating_sub(max_bytes);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Runs a set-up step (interpreter, installer) within `timeout`; on failure prints the loud
/// `SKIP: {why}: <stderr tail>` and returns `false`.
pub async fn setup_step(cmd: &mut Command, why: &str, timeout: Duration) -> bool {
    match run(cmd, timeout).await {
        Some((true, _, _)) => true,
        other => {
            eprintln!(
                "SKIP: {why}: {}",
                other
                    .map(|o| tail(&o.2, SKIP_TAIL_BYTES).to_owned())
                    .unwrap_or_default()
            );
            false
        }
    }
}

/// A virtualenv with a test's pinned requirements installed.
#[derive(Debug)]
pub struct PythonVenv {
    /// The venv's interpreter.
    pub python: PathBuf,
    /// `python --version` of the interpreter it was made from.
    pub version: String,
}

/// Makes a virtualenv under `dir` with `$PYTHON` (default `python3`) and installs `requirements` into it.
/// `None`, after a loud `SKIP:` naming `test` (or the `packages` pip could not install), when the interpreter,
/// `venv` or the package index is missing.
pub async fn python_venv(
    dir: &Path,
    requirements: &Path,
    test: &str,
    packages: &str,
    timeout: Duration,
) -> Option<PythonVenv> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let Some((true, version, _)) = run(Command::new(&python).arg("--version"), timeout).await
    else {
        eprintln!("SKIP: {python} not found; {test} did not run");
        return None;
    };
    let venv = dir.join("venv");
    if !setup_step(
        Command::new(&python).args(["-m", "venv"]).arg(&venv),
        &format!("`{python} -m venv` unavailable; {test} did not run"),
        timeout,
    )
    .await
    {
        return None;
    }
    let venv_python = venv.join("bin/python");
    if !setup_step(
        Command::new(&venv_python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-r",
            ])
            .arg(requirements),
        &format!("pip could not install the pinned {packages} (no package index?)"),
        timeout,
    )
    .await
    {
        return None;
    }
    Some(PythonVenv {
        python: venv_python,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_char_boundaries() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        // "é" is two bytes: a cut inside it moves to the next boundary.
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aé", 2), "é");
    }

    #[tokio::test]
    async fn run_reports_missing_programs_and_exit_status() {
        assert!(
            run(
                &mut Command::new("/nonexistent/program"),
                Duration::from_secs(5)
            )
            .await
            .is_none()
        );
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(out, Some((false, "out\n".into(), "err\n".into())));
    }
}
