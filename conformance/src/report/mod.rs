//! Run results and their renderings: live terminal lines, JSON, JUnit XML and Markdown; and the matrix of
//! several runs side by side (`matrix`: Markdown and JSON; `html`: one self-contained page).
//!
//! Owns [`RunReport`] — the JSON report's schema — and the writers. It does not run anything; the runner
//! fills a `RunReport` and hands it here.
//!
//! # JSON schema (`--report json=PATH`, `schema_version` 2)
//!
//! ```text
//! {
//!   "schema_version": 2,
//!   "tool": "imds-conformance 0.1.0",
//!   "scenario": "nmi-default",             // scenario name
//!   "profile": "nmi",                      // nmi | aks-restriction | hardened | imds
//!   "backend": "loopback",                 // loopback | netns
//!   "interceptor": "builtin (/path/imds-proxy)",
//!   "claimed_features": ["metadataHeaderRequired", ...],
//!   "started_at": "2026-01-01T00:00:00Z",  // RFC 3339
//!   "duration_ms": 1234,
//!   "notes": ["..."],                      // environment notes (e.g. why the backend was chosen)
//!   "timing": { "setup_ms": 2500, "sync_ms": 500, "teardown_ms": 800, "restores": 2,
//!               "restore_ms_total": 760, "restore_ms_max": 450 },   // `RunTiming`; absent when unknown
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
//! The Rust types below are the normative definition; `RunReport` deserialises what it serialises, and
//! also reads `schema_version` 1 reports, whose run timing was the last note, `"timing: setup_ms=…
//! sync_ms=… teardown_ms=… restores=… restore_ms_total=… restore_ms_max=…"` (moved to `timing` on read).

pub mod html;
pub mod junit;
pub mod markdown;
pub mod matrix;
pub mod terminal;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use std::fmt;
use std::time::Duration;

use crate::case::{Feature, Level, Outcome, Profile, Status};

/// Current JSON schema version (2: the run timing is the typed [`RunReport::timing`], no longer a note).
pub const SCHEMA_VERSION: u32 = 2;

/// Prefix of the run-timing note of `schema_version` 1 reports.
const V1_TIMING_NOTE: &str = "timing:";

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ReportWire")]
pub struct RunReport {
    /// The schema version it was written with ([`SCHEMA_VERSION`] for reports this version makes).
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
    /// Environment notes (backend choice, skipped areas).
    pub notes: Vec<String>,
    /// Where the run's time went besides the cases (`None` when the run did not measure it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<RunTiming>,
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

/// The JSON as written by any schema version (v1 kept its timing in `notes`).
#[derive(Deserialize)]
struct ReportWire {
    schema_version: u32,
    tool: String,
    scenario: String,
    profile: String,
    backend: String,
    interceptor: String,
    claimed_features: Vec<Feature>,
    started_at: String,
    duration_ms: u64,
    notes: Vec<String>,
    #[serde(default)]
    timing: Option<RunTiming>,
    summary: Summary,
    cases: Vec<CaseResult>,
    #[serde(default)]
    verdict: Option<Verdict>,
}

impl From<ReportWire> for RunReport {
    fn from(w: ReportWire) -> Self {
        let mut notes = w.notes;
        let mut timing = w.timing;
        if timing.is_none() {
            // A v1 report: the timing note (if any) becomes the typed field.
            if let Some(i) = notes.iter().position(|n| n.starts_with(V1_TIMING_NOTE)) {
                timing = RunTiming::parse_v1_note(&notes[i]);
                if timing.is_some() {
                    notes.remove(i);
                }
            }
        }
        RunReport {
            schema_version: w.schema_version,
            tool: w.tool,
            scenario: w.scenario,
            profile: w.profile,
            backend: w.backend,
            interceptor: w.interceptor,
            claimed_features: w.claimed_features,
            started_at: w.started_at,
            duration_ms: w.duration_ms,
            notes,
            timing,
            summary: w.summary,
            cases: w.cases,
            verdict: w.verdict,
        }
    }
}

/// Where a run's time went besides the cases: set-up (backend, services, interceptors up), the fixed
/// wait for the interceptors' watches, teardown, and the baseline restores between cases. Read by
/// `imds-bench` (`just bench`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTiming {
    /// Set-up, milliseconds.
    pub setup_ms: u64,
    /// The wait for the interceptors' watches to sync the seeded objects, milliseconds.
    pub sync_ms: u64,
    /// Teardown, milliseconds.
    pub teardown_ms: u64,
    /// Baseline restores that had something to restore (took ≥ 1 ms).
    pub restores: u64,
    /// Their total, milliseconds.
    pub restore_ms_total: u64,
    /// The longest of them, milliseconds.
    pub restore_ms_max: u64,
}

impl RunTiming {
    /// The timing of a run from its measured phases; `restores` are all baseline restores, of which
    /// only those of 1 ms or more count (the others had nothing to restore).
    pub fn measure(
        setup: Duration,
        sync: Duration,
        teardown: Duration,
        restores: &[Duration],
    ) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let real: Vec<Duration> = restores
            .iter()
            .copied()
            .filter(|d| *d >= Duration::from_millis(1))
            .collect();
        RunTiming {
            setup_ms: ms(setup),
            sync_ms: ms(sync),
            teardown_ms: ms(teardown),
            restores: real.len() as u64,
            restore_ms_total: ms(real.iter().sum()),
            restore_ms_max: ms(real.iter().max().copied().unwrap_or_default()),
        }
    }

    /// Reads a `schema_version` 1 timing note (`timing: setup_ms=… sync_ms=… …`); `None` when a field
    /// is missing or not a number.
    pub fn parse_v1_note(note: &str) -> Option<Self> {
        let rest = note.strip_prefix(V1_TIMING_NOTE)?;
        let fields: std::collections::BTreeMap<&str, u64> = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect::<Option<_>>()?;
        let get = |k: &str| fields.get(k).copied();
        Some(RunTiming {
            setup_ms: get("setup_ms")?,
            sync_ms: get("sync_ms")?,
            teardown_ms: get("teardown_ms")?,
            restores: get("restores")?,
            restore_ms_total: get("restore_ms_total")?,
            restore_ms_max: get("restore_ms_max")?,
        })
    }
}

/// `setup_ms=… sync_ms=… teardown_ms=… restores=… restore_ms_total=… restore_ms_max=…` (the Markdown
/// report's timing line).
impl fmt::Display for RunTiming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "setup_ms={} sync_ms={} teardown_ms={} restores={} restore_ms_total={} restore_ms_max={}",
            self.setup_ms,
            self.sync_ms,
            self.teardown_ms,
            self.restores,
            self.restore_ms_total,
            self.restore_ms_max
        )
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

    /// Ids of the cases with the given status.
    pub fn ids_with(&self, status: Status) -> Vec<String> {
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

    #[test]
    fn timing_counts_only_real_restores() {
        let ms = Duration::from_millis;
        let t = RunTiming::measure(
            ms(2500),
            ms(500),
            ms(800),
            &[Duration::from_micros(20), ms(310), ms(0), ms(450)],
        );
        assert_eq!(
            t.to_string(),
            "setup_ms=2500 sync_ms=500 teardown_ms=800 restores=2 restore_ms_total=760 restore_ms_max=450"
        );
        assert_eq!(
            RunTiming::parse_v1_note(&format!("timing: {t}")),
            Some(t),
            "the v1 note reads back"
        );
        assert_eq!(RunTiming::parse_v1_note("timing: setup_ms=1"), None);
        assert_eq!(
            RunTiming::parse_v1_note("timing: setup_ms=x sync_ms=1"),
            None
        );
    }

    #[test]
    fn reads_v1_reports_and_moves_the_timing_note_to_the_field() {
        let v1 = r#"{"schema_version":1,"tool":"imds-conformance 0.1.0","scenario":"s","profile":"nmi",
            "backend":"netns","interceptor":"none","claimed_features":[],"started_at":"2026-01-01T00:00:00Z",
            "duration_ms":5,"notes":["backend netns","timing: setup_ms=2500 sync_ms=500 teardown_ms=800 restores=2 restore_ms_total=760 restore_ms_max=450"],
            "summary":{"total":0,"pass":0,"fail":0,"skip":0,"unclaimed":0,"info":0,"must_failed":0},"cases":[]}"#;
        let r: RunReport = serde_json::from_str(v1).unwrap();
        assert_eq!(r.schema_version, 1);
        assert_eq!(r.notes, vec!["backend netns".to_string()]);
        let t = r.timing.expect("timing from the note");
        assert_eq!((t.setup_ms, t.restores, t.restore_ms_max), (2500, 2, 450));
        // v2 writes the field, and reads it back as it is.
        let v2 = serde_json::to_value(RunReport {
            schema_version: SCHEMA_VERSION,
            ..r.clone()
        })
        .unwrap();
        assert_eq!(v2["schema_version"], 2);
        assert_eq!(v2["timing"]["teardown_ms"], 800);
        let back: RunReport = serde_json::from_value(v2).unwrap();
        assert_eq!(back.timing, r.timing);
        assert_eq!(back.notes, r.notes);
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
