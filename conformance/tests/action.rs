//! The repository's GitHub Action (`action.yml`, run steps in `ci/action.sh`) run locally the way a runner
//! runs a composite action (`ci/test-action.py`: same step order, conditions, `${{ }}` substitutions and
//! GITHUB_* files), against the example vendor on netns with the harness built here (`harness` input):
//! the step summary gets the Markdown report, the reports land in `report-dir`, the outputs say
//! `NOT CONFORMANT` / 1, and the last step fails on NOT CONFORMANT — unless `fail-on-not-conformant` is
//! false; an interceptor that cannot start fails the run step with exit 2 and an ERROR summary.
//! Needs root, python3 with PyYAML; else a loud SKIP.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::netns_or_skip;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pyyaml_or_skip(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: {test}: python3 with PyYAML needed (ci/test-action.py reads action.yml)");
    }
    ok
}

/// What `ci/test-action.py` printed, and its exit code.
struct ActionRun {
    code: i32,
    report: serde_json::Value,
    stderr: String,
}

impl ActionRun {
    fn step_exit(&self, name_prefix: &str) -> Option<i64> {
        self.report["steps"].as_array()?.iter().find(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(name_prefix))
        })?["exit"]
            .as_i64()
    }
}

fn run_action(workdir: &Path, inputs: &[(&str, String)]) -> ActionRun {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("ci/test-action.py"))
        .arg("--workdir")
        .arg(workdir)
        .env("TMPDIR", workdir);
    for (k, v) in inputs {
        cmd.arg("--input").arg(format!("{k}={v}"));
    }
    let out = cmd.output().expect("running ci/test-action.py");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ci/test-action.py printed no JSON ({e})\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    ActionRun {
        code: out.status.code().unwrap_or(-1),
        report,
        stderr,
    }
}

fn example_inputs(fail_on_not_conformant: &str) -> Vec<(&'static str, String)> {
    let py = repo().join("examples/python-interceptor/interceptor.py");
    vec![
        (
            "interceptor",
            format!(
                "cmd:python3 {} --node {{node}} --upstream {{imds_ip}}:{{imds_port}} --port {{listen_port}} \
                 --probe-port {{probe_port}} --reconcile-interval 2",
                py.display()
            ),
        ),
        (
            "features",
            "metadataHeaderRequired,blockInstanceMetadata,enableConntrackDeletion,iptables,passthrough".into(),
        ),
        (
            "harness",
            common::conformance_bin().display().to_string(),
        ),
        ("focus", "^(SEC-00[12]|HDR-001|IPT-001) ".into()),
        ("fail-on-not-conformant", fail_on_not_conformant.into()),
    ]
}

#[test]
fn action_runs_the_example_vendor_and_fails_on_not_conformant() {
    let test = "action_runs_the_example_vendor_and_fails_on_not_conformant";
    if !netns_or_skip(test) || !pyyaml_or_skip(test) {
        return;
    }
    let _serial = common::serial_guard();
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run_action(dir.path(), &example_inputs("true"));
    let ctx = format!("{:#}\n{}", r.report, r.stderr);
    assert_eq!(r.step_exit("Prepare"), Some(0), "{ctx}");
    assert_eq!(r.step_exit("Run"), Some(0), "{ctx}");
    assert_eq!(
        r.step_exit("Upload"),
        Some(0),
        "the reports exist to upload\n{ctx}"
    );
    assert_eq!(
        r.step_exit("Verdict"),
        Some(1),
        "NOT CONFORMANT fails\n{ctx}"
    );
    assert_eq!(r.code, 1, "{ctx}");
    assert_eq!(r.report["outputs"]["verdict"], "NOT CONFORMANT", "{ctx}");
    assert_eq!(r.report["outputs"]["exit-code"], "1", "{ctx}");
    let summary = r.report["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("## imds-conformance: nmi-default / nmi on netns"),
        "{ctx}"
    );
    assert!(
        summary.contains("missing: enableScaleFeatures, tokens, hostToken"),
        "{ctx}"
    );
    let reports = dir.path().join("imds-conformance-report");
    for f in ["junit.xml", "report.json", "summary.md"] {
        assert!(reports.join(f).is_file(), "{f} written\n{ctx}");
    }
    let json: imds_conformance::report::RunReport = serde_json::from_str(
        &std::fs::read_to_string(reports.join("report.json")).expect("report.json"),
    )
    .expect("a run report");
    assert_eq!(
        json.ids_with(imds_conformance::case::Status::Fail),
        Vec::<String>::new(),
        "{ctx}"
    );

    // The same run, told not to fail on NOT CONFORMANT: every step passes.
    let r = run_action(dir.path(), &example_inputs("false"));
    assert_eq!(r.code, 0, "{:#}\n{}", r.report, r.stderr);
    assert_eq!(r.step_exit("Verdict"), Some(0));
}

#[test]
fn action_fails_the_run_step_when_the_interceptor_cannot_start() {
    let test = "action_fails_the_run_step_when_the_interceptor_cannot_start";
    if !netns_or_skip(test) || !pyyaml_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run_action(
        dir.path(),
        &[
            (
                "interceptor",
                "cmd:sh -c 'echo vendor: no config >&2; exit 4'".into(),
            ),
            ("harness", common::conformance_bin().display().to_string()),
        ],
    );
    let ctx = format!("{:#}\n{}", r.report, r.stderr);
    assert_eq!(r.step_exit("Run"), Some(2), "{ctx}");
    assert_eq!(r.code, 2, "{ctx}");
    assert_eq!(
        r.report["steps"][3]["skipped"], true,
        "the verdict step is skipped after a failure\n{ctx}"
    );
    assert_eq!(r.report["outputs"]["verdict"], "ERROR", "{ctx}");
    let summary = r.report["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("**ERROR**"), "{ctx}");
    assert!(
        r.stderr.contains("interceptor on node-1 exited at once"),
        "the harness's explanation is in the step log\n{ctx}"
    );
}
