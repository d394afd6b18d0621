//! A mock's container image in its tests (cargo feature `test-clients`, for dev-dependencies): the `docker`
//! CLI, whether an engine answers (tests print `SKIP:` without one), the image under test — a prebuilt
//! `name:tag` from an environment variable, else built once per test binary by `ci/docker/test-image.sh` from
//! the binary cargo built for this test run — and the check that a container is gone.

use std::path::Path;
use std::process::Command;

/// The tag `ci/docker/test-image.sh` builds test images under.
pub const TEST_TAG: &str = "test";

/// A `docker` (or image build) command that failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{var}={spec} is not name:tag")]
    BadSpec { var: String, spec: String },
}

fn output(cmd: &mut Command, command: String) -> Result<String, DockerError> {
    let out = cmd.output().map_err(|source| DockerError::Spawn {
        command: command.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DockerError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs `docker ARGS`; its stdout.
pub fn docker(args: &[&str]) -> Result<String, DockerError> {
    output(
        Command::new("docker").args(args),
        format!("docker {}", args.join(" ")),
    )
}

/// Why there is no engine to test against (for the caller's `SKIP:`), or `None` when one answers.
pub fn engine_missing() -> Option<String> {
    match docker(&["info", "--format", "{{.ServerVersion}}"]) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "no Docker engine answers ({e}); start one with `eval \"$(ci/dockerd.sh start)\"`"
        )),
    }
}

/// The image under test as (name, tag): `$env_var` (`name:tag`, which must exist locally; never pulled),
/// else `image:test` built by `<repo_root>/ci/docker/test-image.sh` from `binary` and `dockerfile`.
pub fn test_image(
    env_var: &str,
    repo_root: &Path,
    binary: &Path,
    dockerfile: &str,
    image: &str,
) -> Result<(String, String), DockerError> {
    if let Ok(spec) = std::env::var(env_var) {
        let (name, tag) = spec.rsplit_once(':').ok_or_else(|| DockerError::BadSpec {
            var: env_var.to_owned(),
            spec: spec.clone(),
        })?;
        docker(&["image", "inspect", "--format", "{{.Id}}", &spec])?;
        return Ok((name.to_owned(), tag.to_owned()));
    }
    let script = repo_root.join("ci/docker/test-image.sh");
    output(
        Command::new(&script)
            .arg(binary)
            .arg(repo_root.join(dockerfile))
            .arg(format!("{image}:{TEST_TAG}")),
        "ci/docker/test-image.sh".to_owned(),
    )?;
    Ok((image.to_owned(), TEST_TAG.to_owned()))
}

/// Panics unless the engine no longer lists container `id`.
pub fn assert_container_gone(id: &str) {
    let listed = docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")])
        .unwrap_or_else(|e| panic!("docker ps: {e}"));
    assert!(
        listed.trim().is_empty(),
        "container {id} is still there: {listed}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = output(
            &mut Command::new("/nonexistent/docker"),
            "docker info".into(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.starts_with("cannot run `docker info`: "), "{err}");
    }

    #[test]
    fn a_failing_command_reports_status_and_stderr() {
        let err = output(
            Command::new("sh").args(["-c", "echo nope >&2; exit 4"]),
            "sh".into(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.starts_with("`sh` failed (exit status: 4): nope"),
            "{err}"
        );
    }
}
