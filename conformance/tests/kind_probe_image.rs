//! The probe image and the `exec -i` transport for real, against a local Docker engine: the image is built
//! from `ci/docker/imds-probe.Dockerfile` with the statically linked `imds-probe` (`just test` builds it for
//! the `x86_64-unknown-linux-gnu` target), a container runs its default command (`sleep`, as kind test pods
//! do), and the harness's relay opens a connection from inside it with `docker exec -i … /imds-probe relay`,
//! built by the same `Docker` wrapper the kind backend uses for node-level commands. `kubectl exec -i` is the
//! same kind of byte stream over the API server.
//!
//! The container shares the host's network (`--network host`) and talks only to 127.0.0.1. Without an engine
//! or without the static binary the test prints `SKIP: <reason>`. Container and image are removed at the end,
//! also when an assertion fails.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use imds_conformance::backend::relay;
use imds_conformance::http::SendError;
use imds_conformance::kind::relay_argv;
use imds_conformance::kind::wrappers::Docker;
use imds_conformance::process::{Runner, SystemRunner, ToolCmd};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The static probe `just test` builds, next to the debug binaries of the gnu target.
fn static_probe() -> Option<PathBuf> {
    let debug = common::conformance_bin().parent()?.to_path_buf();
    let p = debug
        .parent()?
        .join("x86_64-unknown-linux-gnu")
        .join("debug")
        .join("imds-probe");
    p.is_file().then_some(p)
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = SystemRunner
        .check(
            &ToolCmd::new("docker")
                .args(args.iter().copied())
                .timeout(Duration::from_secs(120)),
        )
        .map_err(|e| e.to_string())?;
    Ok(out.stdout_text().trim().to_string())
}

/// Removes the container and the image whatever happens.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.container]);
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_image_relays_through_docker_exec() {
    let test = "probe_image_relays_through_docker_exec";
    if let Err(e) = docker(&["version", "--format", "{{.Server.Version}}"]) {
        eprintln!(
            "SKIP: {test}: no Docker engine answers ({e}); `just test` starts one with ci/dockerd.sh"
        );
        return;
    }
    let Some(bin) = static_probe() else {
        eprintln!(
            "SKIP: {test}: no static imds-probe (RUSTFLAGS='-C target-feature=+crt-static' cargo build \
             -p imds-probe --target x86_64-unknown-linux-gnu; `just test` does this)"
        );
        return;
    };
    let tag = imds_conformance::netns::new_run_prefix();
    let image = format!("imds-conformance/imds-probe-test:{tag}");
    let _cleanup = Cleanup {
        container: tag.clone(),
        image: image.clone(),
    };

    // The build context ci/build-images.sh stages: the binary and a non-empty rootfs/.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ctx.path().join("rootfs/tmp")).unwrap();
    std::fs::copy(&bin, ctx.path().join("imds-probe")).unwrap();
    let dockerfile = repo_root().join("ci/docker/imds-probe.Dockerfile");
    // The classic builder, as ci/build-images.sh uses (Debian's docker.io has no buildx).
    let built = std::process::Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--file"])
        .arg(&dockerfile)
        .args(["--tag", &image])
        .arg(ctx.path())
        .output()
        .expect("docker build runs");
    assert!(
        built.status.success(),
        "docker build of the probe image: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    docker(&[
        "run",
        "-d",
        "--rm",
        "--network",
        "host",
        "--name",
        &tag,
        &image,
    ])
    .expect("the probe image runs its default command (sleep)");

    let mock = common::loopback_mock().await;
    let wrapper = Docker::new(Arc::new(SystemRunner), "docker");
    let relay_cmd = |addr| wrapper.exec_cmd(&tag, true, &relay_argv(addr, Duration::from_secs(3)));
    let stream = relay::connect(
        relay_cmd(mock.addr()).tokio_command(),
        Duration::from_secs(3),
    )
    .await
    .expect("a connection from inside the container");
    let body = common::relayed_get(
        stream,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F",
        "probe-image",
        &mock,
    )
    .await;
    assert!(body.contains("access_token"));

    // Nothing listens on this address: the probe in the container says so, the harness maps it.
    let free = std::net::TcpListener::bind("127.0.0.78:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = relay::connect(relay_cmd(free).tokio_command(), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(matches!(e, SendError::Refused), "{e:?}");
}
