//! The `imds-proxy` binary: `--help` lists every NMI flag with its default, invalid usage exits 2, and a
//! loopback launch (no iptables) becomes ready, answers, and exits 0 on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const BIN: &str = env!("CARGO_BIN_EXE_imds-proxy");

/// Every NMI flag of REFERENCE A.9 with its default as `--help` must show it.
const NMI_FLAGS: &[(&str, &str)] = &[
    ("--nmi-listen-address", "127.0.0.1"),
    ("--nmi-port", "2579"),
    ("--metadata-ip", "169.254.169.254"),
    ("--metadata-port", "80"),
    ("--node", "\"\""),
    ("--ipt-update-interval-sec", "60"),
    ("--forceNamespaced", "false"),
    ("--MICNamespace", "default"),
    ("--http-probe-port", "8080"),
    ("--retry-attempts-for-created", "16"),
    ("--retry-attempts-for-assigned", "4"),
    ("--find-identity-retry-interval", "5"),
    ("--enableProfile", "false"),
    ("--enableScaleFeatures", "true"),
    ("--block-instance-metadata", "false"),
    ("--metadata-header-required", "true"),
    ("--prometheus-port", "9090"),
    ("--operation-mode", "standard"),
    ("--allow-network-plugin-kubenet", "false"),
    ("--kubelet-config", "/etc/default/kubelet"),
    ("--set-retry-after-header", "false"),
    ("--enable-conntrack-deletion", "false"),
    ("--log-format", "text"),
    ("--custom-user-agent", "\"\""),
    ("--manage-iptables", "true"),
];

#[test]
fn help_lists_every_nmi_flag_with_its_default() -> TestResult {
    let out = Command::new(BIN).arg("--help").output()?;
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout)?;
    // clap wraps long help; join each flag's paragraph before looking for its default.
    let paragraphs: Vec<String> = help
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for (flag, default) in NMI_FLAGS {
        let para = paragraphs
            .iter()
            .find(|p| {
                p.split(' ').any(|w| {
                    w == *flag
                        || w.starts_with(&format!("{flag}[="))
                        || w.starts_with(&format!("{flag} <"))
                })
            })
            .ok_or_else(|| format!("{flag} missing from --help:\n{help}"))?;
        assert!(
            para.contains(&format!("[default: {default}]")),
            "{flag}: expected default {default} in {para:?}"
        );
    }
    assert!(help.contains("--version"));
    assert!(help.contains("--kubeconfig"));
    let v = Command::new(BIN).arg("--version").output()?;
    assert!(v.status.success());
    assert!(String::from_utf8(v.stdout)?.starts_with("imds-proxy "));
    Ok(())
}

#[test]
fn invalid_usage_exits_2_with_a_message() -> TestResult {
    for args in [
        &["--no-such-flag"][..],
        &["--block-instance-metadata=maybe"],
        &["--nmi-port=notaport"],
        &["--operation-mode=fancy"],
        &["--log-format=xml"],
        &["--operation-mode=managed"], // needs --forceNamespaced
    ] {
        let out = Command::new(BIN).args(args).stdin(Stdio::null()).output()?;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} must say why");
    }
    Ok(())
}

#[test]
fn kubenet_guard_exits_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("kubelet");
    std::fs::write(&cfg, "KUBELET_FLAGS=--network-plugin=kubenet\n")?;
    let out = Command::new(BIN)
        .arg(format!("--kubelet-config={}", cfg.display()))
        .arg("--manage-iptables=false")
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Kubenet"));
    Ok(())
}

#[tokio::test]
async fn loopback_launch_ready_answers_and_exits_0_on_sigterm() -> TestResult {
    let mock = mock_imds::MockImds::builder()
        .rate_limits(false)
        .start()
        .await?;
    let api = kube_test_apiserver::ApiServer::start("127.0.0.1:0".parse()?).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "cli-node")?;
    // Pick free ports for the binary (it cannot report port 0 choices to us).
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
    };
    let (port, probe, prom) = (free()?, free()?, free()?);
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--node=node-1".to_string(),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--manage-iptables=false".into(),
            "--nmi-listen-address=127.0.0.1".into(),
            format!("--nmi-port={port}"),
            format!("--metadata-ip={}", mock.addr().ip()),
            format!("--metadata-port={}", mock.addr().port()),
            format!("--http-probe-port={probe}"),
            format!("--prometheus-port={prom}"),
            "--probe-listen-address=127.0.0.1".into(),
            "--block-instance-metadata".into(),
            "--log-format=json".into(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("imds-proxy ready") {
                return Ok::<_, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await??;
    assert!(ready, "binary never logged `imds-proxy ready`");
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metadata/instance"))
        .header("Metadata", "true")
        .send()
        .await?;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{probe}/healthz"))
            .await?
            .text()
            .await?,
        "Active"
    );
    let pid = child.id().ok_or("no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await??;
    assert_eq!(status.code(), Some(0));
    drain.abort();
    Ok(())
}
