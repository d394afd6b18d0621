//! The `mock-arm` binary's edges: `--help` documents every flag, `--print-config` prints a configuration that
//! loads back unchanged, usage and configuration errors exit 2, and a started binary announces readiness and
//! serves.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mock-arm"))
}

#[test]
fn help_lists_every_flag() {
    let out = bin().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--config",
        "--seed",
        "--tls",
        "--ca-out",
        "--jwks-uri",
        "--no-auth",
        "--no-throttling",
        "--vm-lro-secs",
        "--vmss-lro-secs",
        "--no-control",
        "--print-config",
        "Exit codes",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn printed_config_loads_back_and_errors_exit_2() {
    let out = bin()
        .args(["--seed", "5", "--print-config"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let loaded =
        mock_arm::config::Config::from_toml_str(&text, "printed", None).expect("loads back");
    assert_eq!(loaded, mock_arm::config::Config::generate(Some(5)));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[lro]\nvm_secs = \"soon\"\n").expect("write");
    let out = bin().arg("--config").arg(&bad).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid TOML"));
    assert_eq!(
        bin()
            .arg("--no-such-flag")
            .output()
            .expect("runs")
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn binary_announces_readiness_and_serves_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--tls", "--no-auth", "--ca-out"])
        .arg(&ca)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let mut line = String::new();
    let read = BufReader::new(stderr).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    read.expect("reads stderr");
    assert!(
        line.starts_with("mock-arm listening on https://127.0.0.1:"),
        "{line}"
    );
    let pem = std::fs::read_to_string(&ca).expect("CA written");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
}
