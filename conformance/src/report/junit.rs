//! JUnit XML rendering of a [`RunReport`] through `quick-junit` (the library nextest uses).
//!
//! One `<testsuite>` per area (HDR, BLK, ...), one `<testcase>` per case named `ID title`. FAIL →
//! `<failure type="MUST|SHOULD|INFO">` with expected/observed; SKIP and UNCLAIMED → `<skipped>` with the
//! reason; INFO → success with the note in `<system-out>`. Owns nothing else.

use std::collections::BTreeMap;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::RunReport;
use crate::case::Outcome;

/// Renders the report as a JUnit XML document.
pub fn render(report: &RunReport) -> Result<String, quick_junit::SerializeError> {
    let mut junit = Report::new(format!(
        "imds-conformance {} {} {}",
        report.scenario, report.profile, report.backend
    ));
    junit.set_time(Duration::from_millis(report.duration_ms));
    let mut suites: BTreeMap<String, TestSuite> = BTreeMap::new();
    for c in &report.cases {
        let status = match &c.outcome {
            Outcome::Pass | Outcome::Info { .. } => TestCaseStatus::success(),
            Outcome::Fail { .. } => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_type(c.level.to_string());
                s.set_message(format!("{}: {}", c.id, c.outcome.detail()));
                s.set_description(format!("{}\nspec: {}", c.outcome.detail(), c.spec));
                s
            }
            Outcome::Skip { .. } | Outcome::Unclaimed { .. } => {
                let mut s = TestCaseStatus::skipped();
                s.set_type(c.outcome.status().as_str());
                s.set_message(c.outcome.detail());
                s
            }
        };
        let mut tc = TestCase::new(format!("{} {}", c.id, c.title), status);
        tc.set_classname(format!("imds-conformance.{}", c.area));
        tc.set_time(Duration::from_millis(c.duration_ms));
        if let Outcome::Info { note } = &c.outcome {
            tc.set_system_out(format!("INFO: {note}"));
        }
        suites
            .entry(c.area.clone())
            .or_insert_with(|| TestSuite::new(c.area.clone()))
            .add_test_case(tc);
    }
    junit.add_test_suites(suites.into_values());
    junit.to_string()
}
