//! The `imds-proxy` binary: `--help` lists every NMI flag with its default, invalid usage exits 2, a
//! loopback launch (no iptables) becomes ready, answers, and exits 0 on SIGTERM with an info-level summary
//! (no per-request lines), and SIGTERM drains an in-flight request (exit 0) or cuts it after the grace
//! (exit 3).

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

mod common;
use common::{TestResult, slow_imds};

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
    // imds-proxy's listener bounds and shutdown grace.
    ("--header-read-timeout-sec", "10"),
    ("--idle-timeout-sec", "60"),
    ("--max-connections", "2048"),
    ("--max-connections-per-ip", "128"),
    ("--probe-max-connections", "64"),
    ("--probe-max-connections-per-ip", "8"),
    ("--shutdown-grace-sec", "90"),
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

/// A launched binary (loopback, no iptables) with its ports and the stderr lines read so far.
struct Launched {
    child: tokio::process::Child,
    port: u16,
    probe: u16,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    _api: kube_test_apiserver::ApiServer,
    _dir: tempfile::TempDir,
}

/// Starts the binary against `imds` with a test API server, waits for `imds-proxy ready`.
async fn launch(
    imds: std::net::SocketAddr,
    extra: &[&str],
) -> Result<Launched, Box<dyn std::error::Error + Send + Sync>> {
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
            format!("--metadata-ip={}", imds.ip()),
            format!("--metadata-port={}", imds.port()),
            format!("--http-probe-port={probe}"),
            format!("--prometheus-port={prom}"),
            "--probe-listen-address=127.0.0.1".into(),
            "--log-format=json".into(),
        ])
        .args(extra)
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
    Ok(Launched {
        child,
        port,
        probe,
        lines,
        _api: api,
        _dir: dir,
    })
}

impl Launched {
    fn signal(&self, sig: nix::sys::signal::Signal) -> TestResult {
        let pid = self.child.id().ok_or("no pid")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    /// Waits (bounded) for the exit; returns the exit code and the rest of stderr.
    async fn exit(
        mut self,
    ) -> Result<(Option<i32>, String), Box<dyn std::error::Error + Send + Sync>> {
        let mut rest = String::new();
        let status = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.lines.next_line().await? {
                rest.push_str(&line);
                rest.push('\n');
            }
            self.child.wait().await
        })
        .await??;
        Ok((status.code(), rest))
    }
}

#[tokio::test]
async fn loopback_launch_ready_answers_and_exits_0_on_sigterm() -> TestResult {
    let mock = mock_imds::MockImds::builder()
        .rate_limits(false)
        .start()
        .await?;
    let proxy = launch(mock.addr(), &["--block-instance-metadata"]).await?;
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/metadata/instance", proxy.port))
        .header("Metadata", "true")
        .send()
        .await?;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{}/healthz", proxy.probe))
            .await?
            .text()
            .await?,
        "Active"
    );
    proxy.signal(nix::sys::signal::Signal::SIGTERM)?;
    let (code, stderr) = proxy.exit().await?;
    assert_eq!(code, Some(0), "{stderr}");
    // Per-request lines are debug-level; the summary names the decision at info level.
    assert!(!stderr.contains("\"message\":\"handled\""), "{stderr}");
    assert!(stderr.contains("blocked_instance=1"), "{stderr}");
    assert!(stderr.contains("\"cut_requests\":0"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() -> TestResult {
    let (imds, started) = slow_imds(Duration::from_secs(3)).await?;
    let proxy = launch(imds, &[]).await?;
    let url = format!("http://127.0.0.1:{}/metadata/instance", proxy.port);
    let request = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .get(url)
            .header("Metadata", "true")
            .send()
            .await?;
        Ok::<_, reqwest::Error>((resp.status().as_u16(), resp.text().await?))
    });
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await?;
    proxy.signal(nix::sys::signal::Signal::SIGTERM)?;
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), request).await???;
    assert_eq!((status, body.as_str()), (200, "slow answer"));
    let (code, stderr) = proxy.exit().await?;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("\"in_flight_at_start\":1"), "{stderr}");
    assert!(stderr.contains("\"cut_requests\":0"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn sigterm_after_the_grace_cuts_logs_and_exits_3() -> TestResult {
    let (imds, started) = slow_imds(Duration::from_secs(25)).await?;
    let proxy = launch(imds, &["--shutdown-grace-sec=1"]).await?;
    let url = format!("http://127.0.0.1:{}/metadata/instance", proxy.port);
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .header("Metadata", "true")
            .send()
            .await
    });
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await?;
    proxy.signal(nix::sys::signal::Signal::SIGTERM)?;
    let (code, stderr) = proxy.exit().await?;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("\"cut_requests\":1"), "{stderr}");
    let outcome = tokio::time::timeout(Duration::from_secs(10), request).await??;
    assert!(outcome.is_err(), "a cut request got an answer: {outcome:?}");
    Ok(())
}

/// The shipped build (no cargo feature `mutants`) carries none of the mutation suite's defects: it does
/// not know `--list-mutants`, ignores `IMDS_PROXY_MUTANT`, and its binary holds neither the variable's name
/// nor any defect's name.
#[test]
fn the_shipped_build_has_no_deliberate_defects() -> TestResult {
    let out = Command::new(BIN).arg("--list-mutants").output()?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let bytes = std::fs::read(BIN)?;
    for needle in [
        b"IMDS_PROXY_MUTANT".as_slice(),
        b"header-refusal-forwarded",
        b"token-route-case-sensitive",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} found in {BIN}",
            String::from_utf8_lossy(needle)
        );
    }
    Ok(())
}
