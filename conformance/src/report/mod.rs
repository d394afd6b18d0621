//! Run results and their renderings: live terminal lines, JSON, JUnit XML and Markdown.
//!
//! Owns [`RunReport`] — the JSON report's schema — and the writers. It does not run anything; the runner
//! fills a `RunReport` and hands it here.
//!
//! # JSON schema (`--report json=PATH`, `schema_version` 1)
//!
//! ```text
//! {
//!   "schema_version": 1,
//!   "tool": "imds-conformance 0.1.0",
//!   "scenario": "nmi-default",             // scenario name
//!   "profile": "nmi",                      // nmi | aks-restriction | hardened | imds
//!   "backend": "loopback",                 // loopback | netns
//!   "interceptor": "builtin (/path/imds-proxy)",
//!   "claimed_features": ["metadataHeaderRequired", ...],
//!   "started_at": "2026-01-01T00:00:00Z",  // RFC 3339
//!   "duration_ms": 1234,
//!   "notes": ["..."],                      // environment notes (e.g. why the backend was chosen); the
//!                                          // last is the run timing, "timing: setup_ms=… sync_ms=…
//!                                          // teardown_ms=… restores=… restore_ms_total=… restore_ms_max=…"
//!                                          // (`runner::timing_note`)
//!   "summary": { "total": 40, "pass": 30, "fail": 1, "skip": 5, "unclaimed": 3, "info": 1,
//!                "must_failed": 1 },
//!   "cases": [ {
//!       "id": "HDR-001", "title": "...", "area": "HDR", "level": "MUST" | "SHOULD" | "INFO",
//!       "features": ["metadataHeaderRequired"], "spec": "SPEC §3 ...",
//!       "outcome": { "status": "PASS" }
//!                | { "status": "FAIL", "expected": "...", "observed": "..." }
//!                | { "status": "SKIP", "reason": "..." }
//!                | { "status": "UNCLAIMED", "features": ["..."] }
//!                | { "status": "INFO", "note": "..." },
//!       "duration_ms": 12 } ]
//! }
//! ```
//!
//! The Rust types below are the normative definition; `RunReport` deserialises what it serialises.

pub mod junit;
pub mod markdown;
pub mod terminal;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::case::{Feature, Level, Outcome};

/// Current JSON schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `imds-conformance <version>`.
    pub tool: String,
    /// Scenario name.
    pub scenario: String,
    /// Profile run.
    pub profile: String,
    /// Backend used.
    pub backend: String,
    /// Interceptor under test.
    pub interceptor: String,
    /// Features it claimed.
    pub claimed_features: Vec<Feature>,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Wall time of the whole run (set-up and teardown included), milliseconds.
    pub duration_ms: u64,
    /// Environment notes (backend choice, skipped areas) and, last, the run timing
    /// (`runner::timing_note`).
    pub notes: Vec<String>,
    /// Counts.
    pub summary: Summary,
    /// One entry per selected case, in run order.
    pub cases: Vec<CaseResult>,
}

/// Counts per outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Cases selected.
    pub total: usize,
    /// PASS.
    pub pass: usize,
    /// FAIL (any level).
    pub fail: usize,
    /// SKIP.
    pub skip: usize,
    /// UNCLAIMED.
    pub unclaimed: usize,
    /// INFO.
    pub info: usize,
    /// FAIL at level MUST (non-zero → exit 1).
    pub must_failed: usize,
}

impl Summary {
    /// The counts in the order every report shows them: total, pass, fail, must failed, skip,
    /// unclaimed, info.
    pub fn counts(&self) -> [usize; 7] {
        [
            self.total,
            self.pass,
            self.fail,
            self.must_failed,
            self.skip,
            self.unclaimed,
            self.info,
        ]
    }
}

/// One case's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseResult {
    /// Case id.
    pub id: String,
    /// Case title.
    pub title: String,
    /// Area prefix.
    pub area: String,
    /// Level.
    pub level: Level,
    /// Features the case needs.
    pub features: Vec<Feature>,
    /// Spec reference.
    pub spec: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Wall time of the case, milliseconds (restoring the baseline afterwards included).
    pub duration_ms: u64,
}

impl Summary {
    /// Counts `cases`.
    pub fn of(cases: &[CaseResult]) -> Self {
        let mut s = Summary {
            total: cases.len(),
            ..Summary::default()
        };
        for c in cases {
            match &c.outcome {
                Outcome::Pass => s.pass += 1,
                Outcome::Fail { .. } => {
                    s.fail += 1;
                    if c.level == Level::Must {
                        s.must_failed += 1;
                    }
                }
                Outcome::Skip { .. } => s.skip += 1,
                Outcome::Unclaimed { .. } => s.unclaimed += 1,
                Outcome::Info { .. } => s.info += 1,
            }
        }
        s
    }
}

impl RunReport {
    /// Exit code the CLI returns for this report: 0 all MUST pass, 1 a MUST failed.
    pub fn exit_code(&self) -> i32 {
        if self.summary.must_failed > 0 { 1 } else { 0 }
    }

    /// Ids of the cases with the given status word (`"FAIL"`, `"PASS"`...).
    pub fn ids_with(&self, status: &str) -> Vec<String> {
        self.cases
            .iter()
            .filter(|c| c.outcome.status() == status)
            .map(|c| c.id.clone())
            .collect()
    }
}

/// Where to write which report (`--report junit=PATH,json=PATH,md=PATH`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportTargets {
    /// JUnit XML file.
    pub junit: Option<PathBuf>,
    /// JSON file.
    pub json: Option<PathBuf>,
    /// Markdown file (`$GITHUB_STEP_SUMMARY` works).
    pub md: Option<PathBuf>,
}

impl std::str::FromStr for ReportTargets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut t = ReportTargets::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (kind, path) = part
                .split_once('=')
                .ok_or_else(|| format!("report {part:?}: expected KIND=PATH"))?;
            let path = PathBuf::from(path.trim());
            match kind.trim() {
                "junit" => t.junit = Some(path),
                "json" => t.json = Some(path),
                "md" | "markdown" => t.md = Some(path),
                other => return Err(format!("unknown report kind {other:?} (junit, json, md)")),
            }
        }
        Ok(t)
    }
}

impl ReportTargets {
    /// Merges another `--report` occurrence.
    pub fn merge(&mut self, other: ReportTargets) {
        self.junit = other.junit.or(self.junit.take());
        self.json = other.json.or(self.json.take());
        self.md = other.md.or(self.md.take());
    }

    /// Writes every requested report.
    pub fn write(&self, report: &RunReport) -> std::io::Result<()> {
        if let Some(p) = &self.json {
            let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
            std::fs::write(p, text + "\n")?;
        }
        if let Some(p) = &self.junit {
            std::fs::write(p, junit::render(report).map_err(std::io::Error::other)?)?;
        }
        if let Some(p) = &self.md {
            // Appending keeps earlier content of $GITHUB_STEP_SUMMARY.
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            f.write_all(markdown::render(report).as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_targets_parse() {
        let t: ReportTargets = "junit=a.xml,json=b.json,md=c.md".parse().unwrap();
        assert_eq!(t.junit.unwrap(), PathBuf::from("a.xml"));
        assert_eq!(t.json.unwrap(), PathBuf::from("b.json"));
        assert_eq!(t.md.unwrap(), PathBuf::from("c.md"));
        assert!("xml=a".parse::<ReportTargets>().is_err());
        assert!("junit".parse::<ReportTargets>().is_err());
    }
}
