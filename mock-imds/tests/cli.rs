//! The `mock-imds` binary: configuration precedence (flags > MOCK_IMDS_* env > file > defaults),
//! `--print-config`, exit code 2 on usage errors, the "listening" log line, serving, and a clean exit on
//! SIGTERM. Runs the real binary built by cargo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mock_imds::config::Config;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mock-imds"));
    // Never inherit the developer's MOCK_IMDS_* settings.
    for (k, _) in std::env::vars() {
        if k.starts_with("MOCK_IMDS_") {
            c.env_remove(k);
        }
    }
    c
}

/// Sends SIGTERM to the mock and waits (at most 10 s) for it to exit; returns its exit status.
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("mock-imds did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn print_config(cmd: &mut Command) -> Config {
    let out = cmd.arg("--print-config").output().expect("run mock-imds");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    Config::from_toml_str(&text, "--print-config", None).expect("printed config parses")
}

#[test]
fn print_config_is_the_seeded_default() {
    let c = print_config(bin().args(["--seed", "3"]));
    assert_eq!(c, Config::generate(Some(3)));
    assert_eq!(
        c.server.listen.to_string(),
        "127.0.0.1:8080",
        "default listen address"
    );
}

#[test]
fn precedence_flags_over_env_over_file_over_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("vm.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:9001\"\nseed = 77\njournal_capacity = 50\n[compute]\nlocation = \"westeurope\"\n",
    )
    .expect("write");
    // File over defaults (and the file's seed is used).
    let c = print_config(bin().arg("--config").arg(&file));
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9001");
    assert_eq!(c.compute.location, "westeurope");
    assert_eq!(c.server.journal_capacity, 50);
    assert_eq!(c.compute.vm_id, Config::generate(Some(77)).compute.vm_id);
    // Env over file.
    let c = print_config(
        bin()
            .arg("--config")
            .arg(&file)
            .env("MOCK_IMDS_LISTEN", "127.0.0.1:9002")
            .env("MOCK_IMDS_SEED", "5"),
    );
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9002");
    assert_eq!(c.compute.vm_id, Config::generate(Some(5)).compute.vm_id);
    assert_eq!(c.compute.location, "westeurope");
    // Flags over env.
    let c = print_config(
        bin()
            .arg("--config")
            .arg(&file)
            .env("MOCK_IMDS_LISTEN", "127.0.0.1:9002")
            .args([
                "--listen",
                "127.0.0.1:9003",
                "--no-rate-limit",
                "--no-control",
                "--journal-capacity",
                "7",
            ]),
    );
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9003");
    assert!(!c.rate_limits.enabled && !c.server.control);
    assert_eq!(c.server.journal_capacity, 7);
    // Config file via env.
    let c = print_config(bin().env("MOCK_IMDS_CONFIG", &file));
    assert_eq!(c.compute.location, "westeurope");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["--no-such-flag"],
        vec!["--listen", "not-an-address"],
        vec!["--seed", "-1"],
    ] {
        let out = bin().args(&args).output().expect("run");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[compute]\nvmid = \"typo\"\n").expect("write");
    let out = bin().arg("--config").arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("vmid"),
        "error names the bad key"
    );
    let out = bin()
        .args(["--config", "/nonexistent/vm.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_documents_every_flag() {
    let out = bin().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--config",
        "--seed",
        "--no-rate-limit",
        "--no-control",
        "--journal-capacity",
        "--server-build",
        "--header-read-timeout",
        "--idle-timeout",
        "--max-connections",
        "--max-connections-per-source",
        "--shutdown-grace",
        "--print-config",
        "MOCK_IMDS_LISTEN",
        "169.254.169.254",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}");
    }
}

#[test]
fn serves_and_exits_cleanly_on_sigterm() {
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--seed", "9"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut line = String::new();
    BufReader::new(stderr)
        .read_line(&mut line)
        .expect("read log line");
    let uri = line
        .trim()
        .strip_prefix("mock-imds listening on ")
        .unwrap_or_else(|| panic!("log line: {line:?}"))
        .to_string();
    assert!(uri.starts_with("http://127.0.0.1:"), "{uri}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let status = rt.block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("{uri}/metadata/versions"))
            .header("Metadata", "true")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert_eq!(status.ok(), Some(200));
    let status = terminate(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn sigterm_during_key_generation_exits_cleanly() {
    // A free port, so we can see the socket listen before the "listening" line (keys still generating).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = bin()
        .args(["--listen", &addr])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("mock-imds did not listen on {addr} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Unseeded RSA generation takes far longer than this; the mock is serving but not yet "ready".
    let status = terminate(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn connection_limits_come_from_file_env_and_flags_and_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("limits.toml");
    std::fs::write(
        &file,
        "[server.limits]\nidle_timeout_secs = 7\nmax_connections = 100\n",
    )
    .expect("write");
    let c = print_config(
        bin()
            .arg("--config")
            .arg(&file)
            .env("MOCK_IMDS_MAX_CONNECTIONS_PER_SOURCE", "20")
            .args(["--header-read-timeout", "3", "--shutdown-grace", "0"]),
    );
    let l = &c.server.limits;
    assert_eq!(
        (
            l.idle_timeout_secs,
            l.max_connections,
            l.max_connections_per_source,
            l.header_read_timeout_secs,
            l.shutdown_grace_secs
        ),
        (7, 100, 20, 3, 0)
    );
    for args in [
        vec!["--idle-timeout", "0"],
        vec!["--header-read-timeout", "86401"],
        vec!["--max-connections", "0"],
        vec!["--max-connections-per-source", "0"],
    ] {
        let out = bin()
            .args(&args)
            .arg("--print-config")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("server.limits."),
            "{args:?}: the error names the limit"
        );
    }
}

#[test]
fn sigterm_logs_the_requests_the_grace_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("slow.toml");
    std::fs::write(
        &file,
        "[[faults.rules]]\npath_prefix = \"/metadata/versions\"\nlatency_ms = 600000\n",
    )
    .expect("write");
    let mut child = bin()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "9",
            "--shutdown-grace",
            "1",
        ])
        .arg("--config")
        .arg(&file)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("read log line");
    let addr = line
        .trim()
        .strip_prefix("mock-imds listening on http://")
        .unwrap_or_else(|| panic!("log line: {line:?}"))
        .to_string();
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
    std::io::Write::write_all(
        &mut conn,
        b"GET /metadata/versions HTTP/1.1\r\nHost: imds\r\nMetadata: true\r\n\r\n",
    )
    .expect("write");
    // The request is in flight once the server has read it; nothing outside shows that moment, so give it a
    // second (if it were not yet read, shutdown would close the connection as idle and the test fail loudly).
    std::thread::sleep(Duration::from_secs(1));
    let status = terminate(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("stderr");
    assert!(
        rest.contains(
            "cut 1 request(s) in flight without an answer: GET /metadata/versions from 127.0.0.1:"
        ),
        "exit log: {rest}"
    );
}
