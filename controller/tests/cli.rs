//! The `imds-controller` binary: `--help` documents MIC's flags, configuration errors exit 2, and a run
//! against the loopback estate assigns an identity and stops cleanly (exit 0) on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, until, vm_name};

const BIN: &str = env!("CARGO_BIN_EXE_imds-controller");

/// Kills the child if a test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn help_documents_mics_flags_and_defaults() {
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--createDeleteBatch",
        "[default: 20]",
        "--clientQps",
        "--immutable-user-msis",
        "--syncRetryDuration",
        "[default: 3600s]",
        "--identity-assignment-reconcile-interval",
        "[default: 3m]",
        "--update-user-msi-max-retry",
        "--leader-election-name",
        "--http-probe-port",
        "--prometheus-port",
        "--forceNamespaced",
        "--cloudconfig",
        "--kubeconfig",
        "--log-format",
        "Exit codes",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn configuration_errors_exit_2() {
    let out = Command::new(BIN)
        .args(["--cloudconfig", "/nonexistent/azure.json"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("azure.json"));
    let out = Command::new(BIN)
        .args(["--createDeleteBatch", "0"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_assigns_an_identity_and_stops_cleanly_on_sigterm() {
    let env = Env::start(21).await;
    env.identity(1, "id-app", None);
    let s = env.settings();
    let azure = s.azure.clone().expect("azure config");
    let azure_json = env.dir.path().join("azure.json");
    std::fs::write(
        &azure_json,
        serde_json::json!({
            "cloud": "AzurePublicCloud", "tenantId": "t", "subscriptionId": azure.subscription_id,
            "resourceGroup": azure.resource_group, "vmType": "standard",
            "useManagedIdentityExtension": true, "resourceManagerEndpoint": azure.resource_manager_endpoint
        })
        .to_string(),
    )
    .expect("azure.json");
    let mut child = Command::new(BIN)
        .args(["--kubeconfig", &env.kubeconfig.display().to_string()])
        .args(["--cloudconfig", &azure_json.display().to_string()])
        .args(["--imds-endpoint", &env.imds.uri()])
        .args(["--arm-ca-file", &env.ca.display().to_string()])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--http-probe-port",
            "0",
            "--prometheus-port",
            "0",
        ])
        .args(["--syncRetryDuration", "1s", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let running = Running(child);
    // The ready line, then keep draining stderr so the child never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(common::PATIENCE)
        .expect("a first stderr line");
    let mut lines = vec![ready];
    while !lines.iter().any(|l| l.contains("imds-controller running")) {
        lines.push(
            rx.recv_timeout(common::PATIENCE)
                .unwrap_or_else(|_| panic!("no ready line: {lines:?}")),
        );
    }
    let vm = vm_name(&env, 0);
    env.pod("p1", &vm, "id-app");
    until("AAI Assigned by the binary", async || {
        env.aai_status("p1-default-id-app").as_deref() == Some("Assigned")
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(running.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut running = running;
    let deadline = Instant::now() + common::PATIENCE;
    let status = loop {
        if let Some(status) = running.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "exit after SIGTERM");
}
