//! Reports: the JUnit file is well-formed XML with one testcase per case and the right failures; the JSON
//! report round-trips through its serde types; the Markdown summary names every case. Also the CLI's exit
//! codes for usage errors.

mod common;

use std::time::Duration;

use imds_conformance::case::{Feature, Level, Outcome};
use imds_conformance::report::{
    CaseResult, RunReport, RunTiming, SCHEMA_VERSION, Summary, junit, markdown,
};
use quick_xml::events::Event;

fn sample() -> RunReport {
    let mk = |id: &str, level: Level, outcome: Outcome| CaseResult {
        id: id.into(),
        title: format!("title of {id} <&>"),
        area: id.split('-').next().unwrap().into(),
        level,
        features: vec![Feature::MetadataHeaderRequired],
        spec: "SPEC §3".into(),
        outcome,
        duration_ms: 3,
    };
    let cases = vec![
        mk("HDR-001", Level::Must, Outcome::Pass),
        mk(
            "HDR-002",
            Level::Must,
            Outcome::fail("400 \"x\"", "200 <body>"),
        ),
        mk("BLK-001", Level::Should, Outcome::fail("403", "200")),
        mk("CT-001", Level::Must, Outcome::skip("needs netns")),
        mk(
            "RTA-001",
            Level::Must,
            Outcome::Unclaimed {
                features: vec![Feature::SetRetryAfterHeader],
            },
        ),
        mk("LBL-006", Level::Info, Outcome::info("numbers")),
    ];
    RunReport {
        schema_version: SCHEMA_VERSION,
        tool: "imds-conformance test".into(),
        scenario: "s".into(),
        profile: "nmi".into(),
        backend: "loopback".into(),
        interceptor: "none".into(),
        claimed_features: vec![Feature::MetadataHeaderRequired],
        started_at: "2026-01-01T00:00:00Z".into(),
        duration_ms: 10,
        notes: vec!["note | with pipe".into()],
        timing: None,
        summary: Summary::of(&cases),
        cases,
        verdict: None,
    }
}

/// Counts testcase, failure and skipped elements; panics on malformed XML.
fn junit_counts(xml: &str) -> (usize, usize, usize) {
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut cases, mut failures, mut skipped) = (0, 0, 0);
    let mut depth: i64 = 0;
    loop {
        match reader.read_event().expect("well-formed JUnit XML") {
            Event::Start(e) => {
                depth += 1;
                match e.name().as_ref() {
                    b"testcase" => cases += 1,
                    b"failure" => failures += 1,
                    b"skipped" => skipped += 1,
                    _ => {}
                }
            }
            Event::Empty(e) => match e.name().as_ref() {
                b"testcase" => cases += 1,
                b"failure" => failures += 1,
                b"skipped" => skipped += 1,
                _ => {}
            },
            Event::End(_) => depth -= 1,
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 0, "balanced elements");
    (cases, failures, skipped)
}

#[test]
fn junit_is_xml_with_right_counts() {
    let r = sample();
    let xml = junit::render(&r).unwrap();
    assert!(xml.starts_with("<?xml"));
    let (cases, failures, skipped) = junit_counts(&xml);
    assert_eq!(cases, 6);
    assert_eq!(failures, 2);
    assert_eq!(skipped, 2);
    assert!(xml.contains("HDR-002"));
}

#[test]
fn json_round_trips() {
    let mut r = sample();
    r.timing = Some(RunTiming::measure(
        Duration::from_millis(2500),
        Duration::from_millis(500),
        Duration::from_millis(800),
        &[Duration::from_millis(310)],
    ));
    let text = serde_json::to_string_pretty(&r).unwrap();
    let back: RunReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["cases"][1]["outcome"]["status"], "FAIL");
    assert_eq!(
        v["cases"][4]["outcome"]["features"][0],
        "setRetryAfterHeader"
    );
    assert_eq!(v["summary"]["must_failed"], 1);
    assert_eq!(v["timing"]["setup_ms"], 2500);
    assert_eq!(v["timing"]["restores"], 1);
    assert!(
        markdown::render(&r).contains("> timing: setup_ms=2500 sync_ms=500 teardown_ms=800"),
        "the Markdown report shows the timing"
    );
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn report_snapshots() {
    insta::assert_snapshot!("markdown", markdown::render(&sample()));
    insta::assert_snapshot!("junit", junit::render(&sample()).unwrap());
}

#[test]
fn markdown_lists_cases_failures_first() {
    let md = markdown::render(&sample());
    assert!(md.contains("❌ NOT CONFORMANT"), "{md}");
    assert!(md.contains("MUST cases failed: HDR-002"), "{md}");
    let first_row = md.lines().find(|l| l.starts_with("| `")).unwrap();
    assert!(
        first_row.contains("HDR-002"),
        "MUST failure first: {first_row}"
    );
    assert!(md.contains("note \\| with pipe"));
}

#[test]
fn cli_run_writes_all_three_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (j, x, m) = (
        dir.path().join("r.json"),
        dir.path().join("r.xml"),
        dir.path().join("r.md"),
    );
    let targets = format!(
        "junit={},json={},md={}",
        x.display(),
        j.display(),
        m.display()
    );
    let out = common::cli(&[
        "run",
        "--profile",
        "imds",
        "--backend",
        "loopback",
        "--interceptor",
        "none",
        "--report",
        &targets,
    ]);
    common::assert_exit(&out, 0, "an imds run against the in-process mock");
    let report: RunReport = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(report.summary.total, 12);
    assert_eq!(report.summary.pass, 12);
    let (cases, failures, _) = junit_counts(&std::fs::read_to_string(&x).unwrap());
    assert_eq!((cases, failures), (12, 0));
    assert!(std::fs::read_to_string(&m).unwrap().contains("IMDS-012"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["run", "--features", "bogus", "--interceptor", "none"],
        vec![
            "run",
            "--scenario",
            "/nonexistent.yaml",
            "--interceptor",
            "none",
        ],
        vec!["run", "--report", "xml=a", "--interceptor", "none"],
        vec!["run", "--interceptor", "weird"],
        vec!["explain", "NOPE-1"],
    ] {
        common::assert_exit(&common::cli(&args), 2, &format!("{args:?}"));
    }
}

#[test]
fn list_and_explain() {
    let out = common::cli(&["explain", "hdr-001"]);
    common::assert_exit(&out, 0, "explain hdr-001");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Required metadata header"));
    let out = common::cli(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for area in [
        "HDR-", "BLK-", "RTA-", "CT-", "LBL-", "IPT-", "TOK-", "ISO-", "PT-", "RST-", "IMDS-",
    ] {
        assert!(text.contains(area), "list has {area}");
    }
    assert!(!text.contains("MIC-"));
}
