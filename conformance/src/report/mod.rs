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
//!       "duration_ms": 12 } ],
//!   "verdict": { "conformant": false,      // CONFORMANT only with the profile's floor claimed, the security
//!                "missing_features": ["failClosed"],   // floor run and passed, a MUST case run and none
//!                "reasons": ["..."] }                   // failed (`Verdict`); absent in older reports
//! }
//! ```
//!
//! The Rust types below are the normative definition; `RunReport` deserialises what it serialises.

pub mod junit;
pub mod markdown;
pub mod terminal;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::case::{Feature, Level, Outcome, Profile};

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
    /// The verdict (absent in reports written before profiles had floors: [`RunReport::verdict`] judges
    /// those from their own fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// What a run concludes (SPEC §3.1). `CONFORMANT` only when all of these hold: the interceptor claims every
/// feature of its profile's floor ([`Profile::floor`]); the security floor (area `SEC`) ran and passed;
/// at least one MUST case ran (passed or failed — not skipped or unclaimed); no MUST case failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// All conditions hold.
    pub conformant: bool,
    /// Features of the profile's floor the interceptor did not claim.
    #[serde(default)]
    pub missing_features: Vec<Feature>,
    /// Why the run is not conformant, one sentence each; empty when it is.
    #[serde(default)]
    pub reasons: Vec<String>,
}

impl Verdict {
    /// Judges a run of `profile` whose interceptor claimed `claimed`; `security_floor` names the `SEC` cases
    /// the profile requires (each must have run: PASS or FAIL).
    pub fn judge(
        profile: Profile,
        claimed: &[Feature],
        security_floor: &[&str],
        cases: &[CaseResult],
    ) -> Verdict {
        let missing_features: Vec<Feature> = profile
            .floor()
            .iter()
            .copied()
            .filter(|f| !claimed.contains(f))
            .collect();
        let mut reasons = Vec::new();
        if !missing_features.is_empty() {
            let names: Vec<&str> = missing_features.iter().map(|f| f.name()).collect();
            reasons.push(format!(
                "the {profile} profile's floor is not claimed; missing: {}",
                names.join(", ")
            ));
        }
        let must_failed: Vec<&str> = cases
            .iter()
            .filter(|c| c.level == Level::Must && matches!(c.outcome, Outcome::Fail { .. }))
            .map(|c| c.id.as_str())
            .collect();
        if !must_failed.is_empty() {
            reasons.push(format!("MUST cases failed: {}", must_failed.join(", ")));
        }
        let must_ran = cases.iter().any(|c| {
            c.level == Level::Must && matches!(c.outcome, Outcome::Pass | Outcome::Fail { .. })
        });
        if !must_ran {
            reasons
                .push("no MUST case ran (every one was skipped, unclaimed or not selected)".into());
        }
        let not_run: Vec<String> = security_floor
            .iter()
            .filter_map(|id| match cases.iter().find(|c| c.id == *id) {
                None => Some(format!("{id} (not selected)")),
                Some(c) => match &c.outcome {
                    Outcome::Pass | Outcome::Fail { .. } => None,
                    other => Some(format!("{id} ({}: {})", other.status(), other.detail())),
                },
            })
            .collect();
        if !not_run.is_empty() {
            reasons.push(format!("security floor not run: {}", not_run.join("; ")));
        }
        Verdict {
            conformant: reasons.is_empty(),
            missing_features,
            reasons,
        }
    }

    /// `CONFORMANT` or `NOT CONFORMANT`.
    pub fn word(&self) -> &'static str {
        if self.conformant {
            "CONFORMANT"
        } else {
            "NOT CONFORMANT"
        }
    }
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
    /// Exit code the CLI returns for this report: 0 `CONFORMANT`, 1 `NOT CONFORMANT`.
    pub fn exit_code(&self) -> i32 {
        if self.verdict().conformant { 0 } else { 1 }
    }

    /// The stored verdict, or for a report written before verdicts were stored, one judged from its own
    /// fields (the security floor then counts as met: those catalogues had none).
    pub fn verdict(&self) -> Verdict {
        if let Some(v) = &self.verdict {
            return v.clone();
        }
        match serde_json::from_value::<Profile>(serde_json::Value::String(self.profile.clone())) {
            Ok(profile) => Verdict::judge(profile, &self.claimed_features, &[], &self.cases),
            Err(_) => Verdict {
                conformant: false,
                missing_features: Vec::new(),
                reasons: vec![format!("unknown profile {:?}", self.profile)],
            },
        }
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

/// The verdict line after the verdict word: profile, claimed features and the counts, e.g.
/// `profile hardened, claimed: none — 26 cases — 0 pass, 2 fail (2 MUST), 0 skip, 24 unclaimed, 0 info — 3.1 s`.
pub fn verdict_line(r: &RunReport) -> String {
    let [total, pass, fail, must, skip, unclaimed, info] = r.summary.counts();
    let claimed: Vec<&str> = r.claimed_features.iter().map(|f| f.name()).collect();
    format!(
        "profile {}, claimed: {} — {total} cases — {pass} pass, {fail} fail ({must} MUST), {skip} skip, \
         {unclaimed} unclaimed, {info} info — {:.1} s",
        r.profile,
        if claimed.is_empty() {
            "none".to_string()
        } else {
            claimed.join(", ")
        },
        r.duration_ms as f64 / 1000.0
    )
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

#[cfg(test)]
mod verdict_tests {
    use super::*;

    fn case(id: &str, level: Level, outcome: Outcome) -> CaseResult {
        CaseResult {
            id: id.into(),
            title: String::new(),
            area: id.split('-').next().unwrap_or(id).into(),
            level,
            features: Vec::new(),
            spec: String::new(),
            outcome,
            duration_ms: 0,
        }
    }

    #[test]
    fn conformant_needs_floor_security_floor_and_a_must_case() {
        let floor = Profile::Nmi.floor();
        let ok = [
            case("SEC-001", Level::Must, Outcome::Pass),
            case("HDR-001", Level::Must, Outcome::Pass),
        ];
        let v = Verdict::judge(Profile::Nmi, floor, &["SEC-001"], &ok);
        assert!(v.conformant, "{v:?}");
        assert_eq!(v.word(), "CONFORMANT");

        // One floor feature missing: named, not conformant although nothing failed.
        let v = Verdict::judge(Profile::Nmi, &floor[1..], &["SEC-001"], &ok);
        assert!(!v.conformant);
        assert_eq!(v.missing_features, vec![floor[0]]);

        // The security floor excluded or skipped.
        let v = Verdict::judge(Profile::Nmi, floor, &["SEC-001", "SEC-002"], &ok);
        assert!(!v.conformant);
        assert!(v.reasons[0].contains("SEC-002 (not selected)"), "{v:?}");
        let skipped = [
            case("SEC-001", Level::Must, Outcome::skip("no pod")),
            case("HDR-001", Level::Must, Outcome::Pass),
        ];
        let v = Verdict::judge(Profile::Nmi, floor, &["SEC-001"], &skipped);
        assert!(v.reasons[0].contains("SEC-001 (SKIP: no pod)"), "{v:?}");

        // Nothing at MUST ran: never conformant.
        let none = [case("HDR-004", Level::Should, Outcome::Pass)];
        let v = Verdict::judge(Profile::Imds, &[], &[], &none);
        assert!(!v.conformant);
        assert!(v.reasons[0].starts_with("no MUST case ran"), "{v:?}");

        // A MUST failure.
        let failed = [case("HDR-001", Level::Must, Outcome::fail("400", "200"))];
        let v = Verdict::judge(Profile::Imds, &[], &[], &failed);
        assert_eq!(v.reasons, vec!["MUST cases failed: HDR-001".to_string()]);
    }

    #[test]
    fn hardened_floor_contains_the_nmi_floor() {
        for f in Profile::Nmi.floor() {
            assert!(Profile::Hardened.floor().contains(f), "{f}");
        }
        assert!(Profile::Imds.floor().is_empty());
        assert!(!Profile::Imds.has_security_floor());
    }
}
