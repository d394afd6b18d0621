//! The harness against imds-proxy on the loopback backend (any user): the default scenario passes, and
//! self-tests prove cases can fail — a feature switched off while claimed makes exactly the expected case
//! ids FAIL (one test per area that loopback can judge; the kernel areas are in `harness_netns.rs`).

mod common;

use std::collections::BTreeSet;

use imds_conformance::case::Status;

use common::{proxy_or_skip, run, run_loopback, scenario};

/// A self-test on loopback: nmi-default with `extra` arguments (a feature switched off while claimed)
/// makes exactly `fails` FAIL.
fn selftest(test: &str, extra: &[&str], fails: &[&str]) {
    if proxy_or_skip(test).is_none() {
        return;
    }
    run_loopback("nmi-default.yaml", extra).assert_fails_exactly(fails);
}

#[test]
fn loopback_nmi_default_passes() {
    if proxy_or_skip("loopback_nmi_default_passes").is_none() {
        return;
    }
    let r = run_loopback("nmi-default.yaml", &[]);
    let report = r.assert_conformant();
    assert!(report.summary.pass >= 20, "{}", r.log());
    // The kernel areas are listed as skipped, with the reason.
    assert!(
        r.ids(Status::Skip).iter().any(|i| i.starts_with("IPT-")),
        "{}",
        r.log()
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("skipped on loopback")),
        "{:?}",
        report.notes
    );
}

/// The built-in interceptor passes every MUST case of scenario `file` on loopback.
fn loopback_passes(test: &str, file: &str) {
    if proxy_or_skip(test).is_none() {
        return;
    }
    let r = run_loopback(file, &[]);
    assert_eq!(r.code, 0, "{}", r.log());
}

#[test]
fn loopback_nmi_all_features_passes() {
    loopback_passes("loopback_nmi_all_features_passes", "nmi-all-features.yaml");
}

#[test]
fn loopback_hardened_passes() {
    loopback_passes("loopback_hardened_passes", "hardened.yaml");
}

#[test]
fn selftest_hdr_header_check_off_but_claimed() {
    selftest(
        "selftest_hdr",
        &[
            "--focus",
            "^HDR",
            "--proxy-flag=--metadata-header-required=false",
        ],
        &["HDR-001", "HDR-002", "HDR-003", "HDR-005"],
    );
}

#[test]
fn selftest_blk_block_off_but_claimed() {
    selftest(
        "selftest_blk",
        &[
            "--focus",
            "^BLK",
            "--features",
            "blockInstanceMetadata,passthrough,metadataHeaderRequired,tokens",
        ],
        &["BLK-001", "BLK-002", "BLK-003", "BLK-004"],
    );
}

#[test]
fn selftest_rta_retry_after_off_but_claimed() {
    selftest(
        "selftest_rta",
        &[
            "--focus",
            "^RTA",
            "--features",
            "setRetryAfterHeader,tokens,hostToken,metadataHeaderRequired,enableScaleFeatures",
        ],
        &["RTA-001", "RTA-002"],
    );
}

#[test]
fn selftest_lbl_label_filter_off_but_claimed() {
    selftest(
        "selftest_lbl",
        &[
            "--focus",
            "^LBL",
            "--proxy-flag=--enableScaleFeatures=false",
        ],
        &["LBL-001", "LBL-002"],
    );
}

#[test]
fn selftest_tok_iso_no_interceptor_but_claimed() {
    // Without any interceptor pods reach IMDS directly: the VM's token for everyone.
    let r = run_loopback(
        "nmi-default.yaml",
        &["--interceptor", "none", "--focus", "^(SEC|TOK|ISO)"],
    );
    r.assert_fails_exactly(&[
        "SEC-001", "SEC-002", "SEC-003", "TOK-001", "TOK-005", "TOK-007", "TOK-008", "TOK-009",
        "ISO-001", "ISO-002", "ISO-004", "ISO-005", "ISO-006", "ISO-007", "ISO-011",
    ]);
}

/// Issue 12: a forwarder that hands every pod the VM's token is NOT CONFORMANT on every profile that judges
/// an interceptor, whatever it claims — the security floor (SEC) applies without a claim.
#[test]
fn forwarder_fails_the_security_floor_on_every_profile() {
    for profile in ["nmi", "hardened", "aks-restriction"] {
        let r = run_loopback(
            "nmi-default.yaml",
            &[
                "--interceptor",
                "none",
                "--profile",
                profile,
                "--features",
                "passthrough",
                "--focus",
                "^SEC",
            ],
        );
        r.assert_fails_exactly(&["SEC-001", "SEC-002", "SEC-003"]);
        let out = r.log();
        assert!(out.contains("NOT CONFORMANT: profile"), "{profile}: {out}");
        assert!(
            out.contains("MUST cases failed: SEC-001, SEC-002, SEC-003"),
            "{profile}: {out}"
        );
    }
}

/// Issue 12: claiming less than the profile's floor is NOT CONFORMANT with the missing features named, even
/// when nothing fails (every case UNCLAIMED).
#[test]
fn claiming_less_than_the_floor_is_not_conformant() {
    let Some(_) = proxy_or_skip("claiming_less_than_the_floor_is_not_conformant") else {
        return;
    };
    let r = run_loopback(
        "hardened.yaml",
        &[
            "--profile",
            "hardened",
            "--features",
            "none",
            "--focus",
            "^(SEC|HDR)",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.log());
    assert!(r.fails().is_empty(), "{}", r.log());
    let report = r.report.as_ref().expect("report");
    let verdict = report.verdict();
    assert!(!verdict.conformant);
    assert_eq!(verdict.missing_features.len(), 9, "{verdict:?}");
    assert!(
        r.log()
            .contains("missing: metadataHeaderRequired, blockInstanceMetadata"),
        "{}",
        r.log()
    );
}

#[test]
fn selftest_pt_wrong_upstream_vendor_template() {
    // A "vendor" interceptor (cmd: template) that forwards to a closed port: pass-through breaks.
    let Some(proxy) = proxy_or_skip("selftest_pt") else {
        return;
    };
    let template = format!(
        "cmd:{} --node={{node}} --kubeconfig={{kubeconfig}} --metadata-ip=127.0.0.1 --metadata-port=1 --nmi-port={{listen_port}} --http-probe-port={{probe_port}} --prometheus-port={{metrics_port}} --manage-iptables=false",
        proxy.display()
    );
    let r = run_loopback(
        "nmi-default.yaml",
        &["--interceptor", &template, "--focus", "^PT"],
    );
    r.assert_fails_exactly(&["PT-001", "PT-002", "PT-003"]);
}

#[test]
fn selftest_imds_fidelity_against_a_fake_imds() {
    // Something that answers 200 "hello" to everything is not IMDS: every fidelity case fails.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(200) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            );
        }
    });
    let r = run(&[
        "--profile",
        "imds",
        "--backend",
        "loopback",
        "--interceptor",
        "none",
        "--imds-url",
        &format!("http://{addr}"),
    ]);
    let expected: BTreeSet<String> = (1..=12).map(|i| format!("IMDS-{i:03}")).collect();
    assert_eq!(r.fails(), expected, "{}", r.log());
    assert_eq!(r.code, 1);
}

#[test]
fn auto_backend_as_non_root_is_loopback_and_lists_skips() {
    // Root here: drop to `nobody` with runuser to see what an ordinary user gets.
    if !common::is_root() {
        eprintln!("SKIP: auto_backend_as_non_root: needs root to switch to an unprivileged user");
        return;
    }
    let has_runuser = std::process::Command::new("runuser")
        .arg("--help")
        .output()
        .is_ok();
    if !has_runuser {
        eprintln!("SKIP: auto_backend_as_non_root: runuser not installed");
        return;
    }
    let sc = scenario("nmi-default.yaml");
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(common::conformance_bin())
        .args([
            "run",
            "--backend",
            "auto",
            "--interceptor",
            "none",
            "--focus",
            "^(IMDS|IPT|CT)-00[1-3]",
            "--profile",
            "nmi",
            "--scenario",
        ])
        .arg(&sc)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.is_empty() && !out.status.success() {
        eprintln!(
            "SKIP: auto_backend_as_non_root: nobody cannot run the binary here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert!(
        stdout.contains("backend auto → loopback: not root"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "skipped on loopback (need real kernel networking: the netns or kind backend): CT-002"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("IPT-001"), "{stdout}");
}

/// Processes whose command line mentions `needle` (the interceptors of a run carry its kubeconfig path).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

#[test]
fn loopback_sigint_midway_stops_interceptors() {
    if proxy_or_skip("loopback_sigint_midway").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let needle = dir.path().display().to_string();
    let sc = scenario("nmi-default.yaml");
    let mut child = std::process::Command::new(common::conformance_bin())
        .args([
            "run",
            "--backend",
            "loopback",
            "--scenario",
            sc.to_str().unwrap(),
        ])
        .env("TMPDIR", dir.path())
        .env("IMDS_PROXY_BIN", common::proxy_bin().unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while processes_mentioning(&needle).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "interceptor never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Our own child, by PID.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "interceptors left running: {left:?}");
}
