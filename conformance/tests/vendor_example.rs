//! The worked example vendor (`examples/python-interceptor/interceptor.py`, Python standard library only)
//! through `--interceptor cmd:…`, as a vendor would run it: its verdict is pinned — which cases PASS, which
//! SKIP and why, which are INFO, that every other case is UNCLAIMED for a feature it does not claim, and
//! that the `nmi` profile's verdict is NOT CONFORMANT (exit 1) for exactly the floor features it does not
//! claim (`enableScaleFeatures`, `tokens`, `hostToken`) and for nothing else. A self-test shows the pinned
//! run can fail: the same example reconciling its rules less often than the scenario says FAILs IPT-002.
//! The netns tests need root; without python3 (or root) the tests print a loud SKIP.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use imds_conformance::case::{Feature, Outcome, Status};

use common::{netns_or_skip, set};

/// What the example claims (its README says why).
const FEATURES: &str =
    "metadataHeaderRequired,blockInstanceMetadata,enableConntrackDeletion,iptables,passthrough";

/// Cases the example passes on every backend.
const PASS_ANY: &[&str] = &[
    "SEC-001", "SEC-002", "SEC-003", "HDR-001", "HDR-002", "HDR-003", "HDR-004", "HDR-005",
    "BLK-001", "BLK-002", "BLK-003", "BLK-004", "BLK-005", "ISO-010", "PT-001", "PT-002", "PT-003",
];
/// Kernel cases it passes on netns.
const PASS_NETNS: &[&str] = &[
    "CT-001", "CT-003", "IPT-001", "IPT-002", "IPT-003", "IPT-004", "IPT-006",
];
/// Cases checking a claimed feature's *off* behaviour: SKIP on every backend.
const SKIP_OFF: &[&str] = &["HDR-006", "BLK-006", "CT-002"];

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python-interceptor/interceptor.py")
}

/// The `cmd:` template of the example's README, reconciling every `interval` seconds.
fn template(interval: u32) -> String {
    format!(
        "cmd:python3 {} --node {{node}} --upstream {{imds_ip}}:{{imds_port}} --port {{listen_port}} \
         --probe-port {{probe_port}} --reconcile-interval {interval}",
        example().display()
    )
}

/// python3 present, or a loud SKIP.
fn python_or_skip(test: &str) -> bool {
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!(
                "SKIP: {test}: python3 not installed (the example vendor is a Python script)"
            );
            false
        }
    }
}

/// Runs the example through the harness on `backend` (built-in nmi-default scenario, `nmi` profile).
fn run_example(backend: &str, interval: u32, extra: &[&str]) -> common::Run {
    let interceptor = template(interval);
    let mut args = vec![
        "--backend",
        backend,
        "--profile",
        "nmi",
        "--interceptor",
        &interceptor,
        "--features",
        FEATURES,
    ];
    args.extend_from_slice(extra);
    common::run(&args)
}

/// Asserts the pinned verdict: exactly `pass` PASS, exactly `skip` SKIP, exactly `info` INFO, no FAIL,
/// every other case UNCLAIMED for features the example does not claim, NOT CONFORMANT for the missing
/// floor features only, exit 1.
fn assert_pinned(r: &common::Run, pass: &[&str], skip: &[&str], info: &[&str]) {
    let report = r
        .report
        .as_ref()
        .unwrap_or_else(|| panic!("no report\n{}", r.log()));
    let ids = |s: Status| r.ids(s).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(ids(Status::Fail), BTreeSet::new(), "no FAIL\n{}", r.log());
    assert_eq!(ids(Status::Pass), set(pass), "PASS\n{}", r.log());
    assert_eq!(ids(Status::Skip), set(skip), "SKIP\n{}", r.log());
    assert_eq!(ids(Status::Info), set(info), "INFO\n{}", r.log());
    let claimed: BTreeSet<Feature> = FEATURES
        .split(',')
        .map(|f| f.parse().expect("feature"))
        .collect();
    assert_eq!(
        report
            .claimed_features
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        claimed
    );
    let mut unclaimed = 0;
    for c in &report.cases {
        if let Outcome::Unclaimed { features } = &c.outcome {
            unclaimed += 1;
            assert!(
                !features.is_empty() && features.iter().all(|f| !claimed.contains(f)),
                "{} UNCLAIMED only for features the example does not claim: {features:?}",
                c.id
            );
        }
    }
    assert_eq!(
        unclaimed + pass.len() + skip.len() + info.len(),
        report.cases.len(),
        "every other case is UNCLAIMED\n{}",
        r.log()
    );
    let verdict = report.verdict();
    assert!(!verdict.conformant, "{}", r.log());
    assert_eq!(
        verdict.missing_features,
        vec![
            Feature::EnableScaleFeatures,
            Feature::Tokens,
            Feature::HostToken
        ],
        "{}",
        r.log()
    );
    assert_eq!(
        verdict.reasons.len(),
        1,
        "NOT CONFORMANT only for the floor: {:?}",
        verdict.reasons
    );
    assert_eq!(r.code, 1, "exit 1 (NOT CONFORMANT)\n{}", r.log());
}

/// The example's nat chain is never left in (nor ever put into) the machine's own namespace.
fn assert_root_tables_untouched() {
    if let Ok(o) = Command::new("iptables-save").args(["-t", "nat"]).output() {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            !text.contains("PY-IMDS-EXAMPLE"),
            "the example's chain is in the root namespace:\n{text}"
        );
    }
}

#[test]
fn example_vendor_verdict_on_netns_is_pinned() {
    let test = "example_vendor_verdict_on_netns_is_pinned";
    if !netns_or_skip(test) || !python_or_skip(test) {
        return;
    }
    let _serial = common::serial_guard();
    let r = run_example("netns", 2, &[]);
    let pass: Vec<&str> = PASS_ANY.iter().chain(PASS_NETNS).copied().collect();
    assert_pinned(&r, &pass, SKIP_OFF, &["IPT-005"]);
    assert_eq!(r.report.as_ref().map(|r| r.backend.as_str()), Some("netns"));
    assert_root_tables_untouched();
}

#[test]
fn example_vendor_verdict_on_loopback_is_pinned() {
    let test = "example_vendor_verdict_on_loopback_is_pinned";
    if !python_or_skip(test) {
        return;
    }
    let r = run_example("loopback", 2, &[]);
    // Kernel cases cannot run on loopback: they SKIP with the reason, the feature being claimed.
    let skip: Vec<&str> = SKIP_OFF
        .iter()
        .chain(PASS_NETNS)
        .chain(&["IPT-005"])
        .copied()
        .collect();
    assert_pinned(&r, PASS_ANY, &skip, &[]);
    assert_root_tables_untouched();
}

/// The pinned run can fail: reconciling every 30 s while the scenario says 2 s (`--ipt-update-interval-sec=2`
/// in nmi-default) leaves IPT-002's tampering unrepaired within 2 + 5 s.
#[test]
fn example_vendor_with_a_slow_reconcile_fails_ipt_002() {
    let test = "example_vendor_with_a_slow_reconcile_fails_ipt_002";
    if !netns_or_skip(test) || !python_or_skip(test) {
        return;
    }
    let _serial = common::serial_guard();
    let r = run_example("netns", 30, &["--focus", "^(SEC|IPT-002)"]);
    r.assert_fails_exactly(&["IPT-002"]);
    let report = r.report.as_ref().expect("report");
    let verdict = report.verdict();
    assert!(
        verdict.reasons.iter().any(|s| s.contains("IPT-002")),
        "{:?}",
        verdict.reasons
    );
    assert_root_tables_untouched();
}
