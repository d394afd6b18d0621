//! The SDK area (SDK-001…006) on the netns backend with the real clients — Python azure-identity, Node
//! @azure/identity, Rust azure_identity — installed by `scripts/sdk-clients.sh` into a temp dir: against
//! imds-proxy with NMI's defaults every SDK gets its pod's token, and a pod without identity gets no
//! usable answer within the cap (the SDKs retry NMI's 404 plain-text answer); with the opt-ins beyond NMI
//! (`--sdk-friendly-errors --identity-wait-bound-sec=10`) the same pod gets an error that names the cause.
//! The two runs go side by side (each waits on its SDKs, not the CPU) under the netns tests' lock.
//!
//! Needs root (network namespaces), the imds-proxy and imds-sdk-client binaries, and python3/node with a
//! package index; whatever is missing is a loud SKIP — for the whole test, or for one SDK whose cases the
//! harness SKIPs — never a silent pass.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use imds_conformance::case::{Outcome, Status};
use imds_conformance::report::RunReport;

use common::{netns_or_skip, proxy_or_skip, scenario};

/// The token case and the no-identity case of each SDK.
const SDKS: &[(&str, &str, &str)] = &[
    ("Python azure-identity", "SDK-001", "SDK-002"),
    ("Node @azure/identity", "SDK-003", "SDK-004"),
    ("Rust azure_identity", "SDK-005", "SDK-006"),
];

/// The cap with NMI's defaults, where the SDKs are expected to use all of it: short, it is CI time.
const NMI_CAP: &str = "8";
/// The cap with the opt-ins, where the SDKs answer in about a second: generous, it costs nothing.
const OPT_IN_CAP: &str = "60";

fn install(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sdk-clients.sh");
    let out = Command::new(&script)
        .arg(dir)
        // The Rust client comes from the workspace build (`cargo build --workspace --bins`).
        .env("SDK_CLIENTS_SKIP_RUST_BUILD", "1")
        .output()
        .expect("running scripts/sdk-clients.sh");
    // Its SKIP lines (a missing interpreter or index) go to the test's output as they are.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scripts/sdk-clients.sh failed");
}

fn run(clients: &Path, cap: &str, extra: &[&str]) -> common::Run {
    let sc = scenario("nmi-default.yaml");
    let mut args = vec![
        "--scenario",
        sc.to_str().expect("UTF-8 path"),
        "--backend",
        "netns",
        "--focus",
        "^SDK-",
        "--sdk-clients",
        clients.to_str().expect("UTF-8 path"),
        "--sdk-timeout",
        cap,
    ];
    args.extend_from_slice(extra);
    common::run(&args)
}

fn outcome<'r>(report: &'r RunReport, id: &str) -> &'r Outcome {
    &report
        .cases
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("{id} is in the report"))
        .outcome
}

#[test]
fn sdk_area_shows_what_the_opt_ins_change() {
    let test = "sdk_area_shows_what_the_opt_ins_change";
    if !netns_or_skip(test) || proxy_or_skip(test).is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    install(dir.path());
    eprintln!("{test}: clients installed in {:?}", started.elapsed());

    let waited = Instant::now();
    let _serial = common::serial_guard();
    eprintln!(
        "{test}: waited {:?} for the netns tests' lock",
        waited.elapsed()
    );
    let started = Instant::now();
    let (nmi, opt_in) = std::thread::scope(|s| {
        let nmi = s.spawn(|| run(dir.path(), NMI_CAP, &[]));
        let opt_in = s.spawn(|| {
            run(
                dir.path(),
                OPT_IN_CAP,
                &[
                    "--proxy-flag=--sdk-friendly-errors",
                    "--proxy-flag=--identity-wait-bound-sec=10",
                ],
            )
        });
        (
            nmi.join().expect("NMI-defaults run"),
            opt_in.join().expect("opt-in run"),
        )
    });
    eprintln!("{test}: both runs in {:?}", started.elapsed());
    let nmi_report = nmi
        .report
        .as_ref()
        .unwrap_or_else(|| panic!("no report\n{}", nmi.log()));
    let opt_report = opt_in
        .report
        .as_ref()
        .unwrap_or_else(|| panic!("no report\n{}", opt_in.log()));
    // SHOULD and INFO only: never a MUST failure, whatever the SDKs did.
    assert_eq!(nmi_report.summary.must_failed, 0, "{}", nmi.log());
    assert_eq!(opt_report.summary.must_failed, 0, "{}", opt_in.log());

    let mut measured = 0;
    for &(sdk, token, failure) in SDKS {
        let skipped: Vec<&Outcome> = [token, failure]
            .iter()
            .flat_map(|id| [outcome(nmi_report, id), outcome(opt_report, id)])
            .filter(|o| o.status() == Status::Skip)
            .collect();
        if let Some(o) = skipped.first() {
            // The harness says what is missing (runtime, package, binary).
            eprintln!("SKIP: {test}: {sdk}: {}", o.detail());
            continue;
        }
        measured += 1;
        for (run, report) in [(&nmi, nmi_report), (&opt_in, opt_report)] {
            let o = outcome(report, token);
            assert_eq!(o.status(), Status::Info, "{sdk} {token}\n{}", run.log());
            assert!(
                o.detail().contains("(the pod's identity)"),
                "{}",
                o.detail()
            );
        }
        // NMI's defaults: no answer within the cap, or one that does not say why.
        let o = outcome(nmi_report, failure);
        assert_eq!(o.status(), Status::Fail, "{sdk} {failure}\n{}", nmi.log());
        assert!(
            o.detail().contains("no answer within")
                || o.detail().contains("does not name the cause"),
            "{}",
            o.detail()
        );
        // The opt-ins: an error naming the cause.
        let o = outcome(opt_report, failure);
        assert_eq!(
            o.status(),
            Status::Info,
            "{sdk} {failure}\n{}",
            opt_in.log()
        );
        assert!(o.detail().ends_with("(names the cause)"), "{}", o.detail());
        eprintln!(
            "{sdk}: NMI defaults: {}",
            outcome(nmi_report, failure).detail()
        );
        eprintln!("{sdk}: opt-ins: {}", o.detail());
    }
    if measured == 0 {
        eprintln!("SKIP: {test}: no SDK could be measured (see the SKIP lines above)");
    }
}
