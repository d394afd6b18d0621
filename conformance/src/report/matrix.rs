//! The matrix report (`imds-conformance matrix`): one scenario and profile run against several
//! interceptors, side by side — its JSON schema ([`MatrixReport`]), the Markdown table for
//! `$GITHUB_STEP_SUMMARY`, and where to write which rendering ([`MatrixTargets`]; the HTML page is
//! [`super::html`]).
//!
//! Each column holds the complete [`RunReport`] of its run (the same JSON `run --report json=` writes),
//! or, when the run could not be judged at all (the interceptor never became ready, a bad template…),
//! the error that stopped it. Rows are the union of the columns' cases in catalogue order.
//!
//! # JSON schema (`schema_version` 1)
//!
//! ```text
//! {
//!   "schema_version": 1,
//!   "tool": "imds-conformance 0.1.0",
//!   "scenario": "nmi-default", "profile": "nmi", "backend": "netns",
//!   "started_at": "2026-01-01T00:00:00Z", "duration_ms": 98000,   // wall time of the whole matrix
//!   "columns": [ {
//!       "label": "imds-proxy (NMI defaults)",
//!       "interceptor": "builtin",                  // as given (LABEL=SPEC / the matrix file)
//!       "flags": ["--block-instance-metadata=true"],   // appended to the scenario's interceptor.flags
//!       "claimed_features": ["metadataHeaderRequired", ...],
//!       "report": { …RunReport, schema_version 2… } | null,
//!       "error": "…" | null } ]                    // exactly one of report / error
//! }
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{CaseResult, RunReport};
use crate::case::{Feature, Outcome, Status};
use crate::catalog;

/// Current matrix JSON schema version.
pub const MATRIX_SCHEMA_VERSION: u32 = 1;

/// A whole matrix run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixReport {
    /// [`MATRIX_SCHEMA_VERSION`] for reports this version writes.
    pub schema_version: u32,
    /// `imds-conformance <version>`.
    pub tool: String,
    /// Scenario name.
    pub scenario: String,
    /// Profile every column ran.
    pub profile: String,
    /// Backend every column ran on.
    pub backend: String,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Wall time of the whole matrix, milliseconds.
    pub duration_ms: u64,
    /// One entry per interceptor, in the order given.
    pub columns: Vec<ColumnResult>,
}

/// One interceptor's column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnResult {
    /// The column's label.
    pub label: String,
    /// The interceptor as given (`builtin`, `aks-rule`, `none`, `cmd:…`, `manifest:…`).
    pub interceptor: String,
    /// Flags appended to the scenario's `interceptor.flags` for this column.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Features the column claimed.
    pub claimed_features: Vec<Feature>,
    /// The run's report (absent when the run stopped with an error).
    pub report: Option<RunReport>,
    /// Why the run could not be judged (absent when it could).
    pub error: Option<String>,
}

impl ColumnResult {
    /// This column's result for case `id` (None: not run in this column, or the column errored).
    pub fn case(&self, id: &str) -> Option<&CaseResult> {
        self.report.as_ref()?.cases.iter().find(|c| c.id == id)
    }

    /// `CONFORMANT`, `NOT CONFORMANT` or `ERROR`.
    pub fn verdict_word(&self) -> &'static str {
        match &self.report {
            Some(r) => r.verdict().word(),
            None => "ERROR",
        }
    }
}

impl MatrixReport {
    /// Case ids of every column, in catalogue order (cases no longer in the catalogue last, by id).
    pub fn rows(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for c in &self.columns {
            for r in c.report.iter().flat_map(|r| &r.cases) {
                if !ids.contains(&r.id) {
                    ids.push(r.id.clone());
                }
            }
        }
        let order: Vec<&str> = catalog::all().into_iter().map(|c| c.id).collect();
        ids.sort_by_key(|id| {
            (
                order.iter().position(|o| o == id).unwrap_or(usize::MAX),
                id.clone(),
            )
        });
        ids
    }

    /// The first title any column recorded for `id` (the catalogue's otherwise).
    pub fn title(&self, id: &str) -> String {
        self.columns
            .iter()
            .find_map(|c| c.case(id).map(|r| r.title.clone()))
            .or_else(|| catalog::find(id).map(|c| c.title.to_string()))
            .unwrap_or_default()
    }

    /// Whether every column produced a report (exit 0 of `matrix`; 2 otherwise).
    pub fn all_ran(&self) -> bool {
        self.columns.iter().all(|c| c.report.is_some())
    }
}

/// The short cell text of an outcome (`—` when the column has no result for the case).
pub fn cell_word(c: Option<&CaseResult>) -> &'static str {
    match c.map(|c| c.outcome.status()) {
        Some(s) => s.as_str(),
        None => "—",
    }
}

fn icon(s: Status) -> &'static str {
    match s {
        Status::Pass => "✅",
        Status::Fail => "❌",
        Status::Skip => "⏭️",
        Status::Unclaimed => "➖",
        Status::Info => "ℹ️",
    }
}

/// Keeps Markdown table cells intact (pipes and newlines would break the row) and observed values inert
/// (`<` would open HTML in a step summary).
fn escape(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace(['\n', '\r'], " ")
}

/// Renders the matrix as Markdown: header, a verdict row and a counts row per column, one row per case
/// (an icon and the status word per column), then the details of every FAIL and ERROR in a
/// collapsible section.
pub fn render_markdown(m: &MatrixReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## imds-conformance matrix: {} / {} on {}\n",
        m.scenario, m.profile, m.backend
    );
    let _ = writeln!(
        out,
        "{} interceptors, {} cases, {:.1} s wall. Legend: ✅ PASS · ❌ FAIL · ⏭️ SKIP · ➖ UNCLAIMED · \
         ℹ️ INFO · — not selected · 💥 ERROR: the column could not run\n",
        m.columns.len(),
        m.rows().len(),
        m.duration_ms as f64 / 1000.0
    );
    let labels: Vec<String> = m.columns.iter().map(|c| escape(&c.label)).collect();
    let _ = writeln!(out, "| case | {} |", labels.join(" | "));
    let _ = writeln!(out, "| --- |{}", " :---: |".repeat(m.columns.len()));
    let verdicts: Vec<String> = m
        .columns
        .iter()
        .map(|c| match c.verdict_word() {
            "CONFORMANT" => "✅ **CONFORMANT**".to_string(),
            "ERROR" => "💥 **ERROR**".to_string(),
            w => format!("❌ **{w}**"),
        })
        .collect();
    let _ = writeln!(out, "| **verdict** | {} |", verdicts.join(" | "));
    let counts: Vec<String> = m
        .columns
        .iter()
        .map(|c| match &c.report {
            Some(r) => format!(
                "{} pass, {} fail, {} skip, {} unclaimed, {} info",
                r.summary.pass, r.summary.fail, r.summary.skip, r.summary.unclaimed, r.summary.info
            ),
            None => "did not run".into(),
        })
        .collect();
    let _ = writeln!(out, "| counts | {} |", counts.join(" | "));
    for id in m.rows() {
        let cells: Vec<String> = m
            .columns
            .iter()
            .map(|c| match (&c.report, c.case(&id)) {
                (None, _) => "💥 ERROR".to_string(),
                (Some(_), None) => "—".to_string(),
                (Some(_), Some(r)) => {
                    format!("{} {}", icon(r.outcome.status()), cell_word(Some(r)))
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "| `{id}` {} | {} |",
            escape(&m.title(&id)),
            cells.join(" | ")
        );
    }
    out.push('\n');
    let mut details = String::new();
    for c in &m.columns {
        if let Some(e) = &c.error {
            let _ = writeln!(details, "- **{}** — ERROR: {}", escape(&c.label), escape(e));
        }
        for r in c.report.iter().flat_map(|r| &r.cases) {
            if let Outcome::Fail { .. } = r.outcome {
                let _ = writeln!(
                    details,
                    "- **{}** `{}` ({}): {}",
                    escape(&c.label),
                    r.id,
                    r.level,
                    escape(&r.outcome.detail())
                );
            }
        }
    }
    if !details.is_empty() {
        let _ = writeln!(
            out,
            "<details><summary>Failures and errors</summary>\n\n{details}\n</details>\n"
        );
    }
    out
}

/// Where `matrix` writes what (`--report md=PATH,html=PATH,json=PATH`, and `--out DIR` for all three).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatrixTargets {
    /// Markdown, appended (e.g. `$GITHUB_STEP_SUMMARY`).
    pub md: Option<PathBuf>,
    /// The self-contained HTML page.
    pub html: Option<PathBuf>,
    /// The JSON ([`MatrixReport`]).
    pub json: Option<PathBuf>,
}

/// A `--report` value `matrix` does not understand.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not `KIND=PATH`.
    #[error("report {0:?}: expected KIND=PATH")]
    Shape(String),
    /// An unknown kind.
    #[error("unknown report kind {0:?} (md, html, json)")]
    Kind(String),
}

impl std::str::FromStr for MatrixTargets {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut t = MatrixTargets::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (kind, path) = part
                .split_once('=')
                .ok_or_else(|| TargetError::Shape(part.to_string()))?;
            let path = PathBuf::from(path.trim());
            match kind.trim() {
                "md" | "markdown" => t.md = Some(path),
                "html" => t.html = Some(path),
                "json" => t.json = Some(path),
                other => return Err(TargetError::Kind(other.to_string())),
            }
        }
        Ok(t)
    }
}

impl MatrixTargets {
    /// Merges another `--report` occurrence (later wins).
    pub fn merge(&mut self, other: MatrixTargets) {
        self.md = other.md.or(self.md.take());
        self.html = other.html.or(self.html.take());
        self.json = other.json.or(self.json.take());
    }

    /// `DIR/matrix.{md,html,json}` for whichever is not set yet.
    pub fn default_in(&mut self, dir: &std::path::Path) {
        self.md.get_or_insert_with(|| dir.join("matrix.md"));
        self.html.get_or_insert_with(|| dir.join("matrix.html"));
        self.json.get_or_insert_with(|| dir.join("matrix.json"));
    }

    /// Writes every requested rendering (Markdown appended, the others replaced).
    pub fn write(&self, m: &MatrixReport) -> std::io::Result<()> {
        for p in [&self.md, &self.html, &self.json].into_iter().flatten() {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
        }
        if let Some(p) = &self.json {
            let text = serde_json::to_string_pretty(m).map_err(std::io::Error::other)?;
            std::fs::write(p, text + "\n")?;
        }
        if let Some(p) = &self.html {
            std::fs::write(p, super::html::render(m))?;
        }
        if let Some(p) = &self.md {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            f.write_all(render_markdown(m).as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::Level;
    use crate::report::{SCHEMA_VERSION, Summary, Verdict};

    fn case(id: &str, outcome: Outcome) -> CaseResult {
        CaseResult {
            id: id.into(),
            title: catalog::find(id)
                .map(|c| c.title.to_string())
                .unwrap_or_default(),
            area: id.split('-').next().unwrap_or(id).into(),
            level: Level::Must,
            features: Vec::new(),
            spec: String::new(),
            outcome,
            duration_ms: 7,
        }
    }

    fn report(cases: Vec<CaseResult>) -> RunReport {
        RunReport {
            schema_version: SCHEMA_VERSION,
            tool: "imds-conformance 0.0.0".into(),
            scenario: "nmi-default".into(),
            profile: "nmi".into(),
            backend: "netns".into(),
            interceptor: "x".into(),
            claimed_features: Vec::new(),
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 1000,
            notes: Vec::new(),
            timing: None,
            summary: Summary::of(&cases),
            verdict: Some(Verdict {
                conformant: false,
                missing_features: Vec::new(),
                reasons: vec!["MUST cases failed: HDR-001".into()],
            }),
            cases,
        }
    }

    /// Two judged columns (one with a `<script>` in an observed value: escaped in HTML, and a `|` in
    /// Markdown) and one that could not run.
    fn sample() -> MatrixReport {
        let col = |label: &str, r: Option<RunReport>, e: Option<&str>| ColumnResult {
            label: label.into(),
            interceptor: "builtin".into(),
            flags: vec!["--block-instance-metadata=true".into()],
            claimed_features: vec![Feature::Iptables],
            report: r,
            error: e.map(String::from),
        };
        MatrixReport {
            schema_version: MATRIX_SCHEMA_VERSION,
            tool: "imds-conformance 0.0.0".into(),
            scenario: "nmi-default".into(),
            profile: "nmi".into(),
            backend: "netns".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 61_000,
            columns: vec![
                col(
                    "a <proxy>",
                    Some(report(vec![
                        case("SEC-001", Outcome::Pass),
                        case("HDR-001", Outcome::fail("400", "200 <script>x|y</script>")),
                    ])),
                    None,
                ),
                col(
                    "b",
                    Some(report(vec![
                        case(
                            "HDR-001",
                            Outcome::Unclaimed {
                                features: vec![Feature::MetadataHeaderRequired],
                            },
                        ),
                        case("IPT-001", Outcome::skip("needs netns")),
                    ])),
                    None,
                ),
                col(
                    "c",
                    None,
                    Some("interceptor on node-1 exited at once (exit status 3)"),
                ),
            ],
        }
    }

    #[test]
    fn rows_are_in_catalogue_order_and_cells_cover_every_column() {
        let m = sample();
        assert_eq!(m.rows(), vec!["SEC-001", "HDR-001", "IPT-001"]);
        assert!(!m.all_ran());
        assert_eq!(m.columns[2].verdict_word(), "ERROR");
        assert_eq!(cell_word(m.columns[1].case("SEC-001")), "—");
    }

    #[test]
    fn markdown_matrix() {
        insta::assert_snapshot!(render_markdown(&sample()));
    }

    #[test]
    fn html_matrix_escapes_and_links_every_cell() {
        let html = super::super::html::render(&sample());
        assert!(!html.contains("<script>"), "observed values are escaped");
        assert!(
            !html.contains("src=") && !html.contains("<link"),
            "no external assets"
        );
        for i in 0..3 {
            for id in ["SEC-001", "HDR-001", "IPT-001"] {
                assert!(
                    html.contains(&format!("href=\"#r-{i}-{id}\"")),
                    "cell {i} {id}"
                );
                assert!(
                    html.contains(&format!("id=\"r-{i}-{id}\"")),
                    "entry {i} {id}"
                );
            }
        }
        insta::assert_snapshot!(html);
    }

    #[test]
    fn matrix_json_round_trips() {
        let m = sample();
        let text = serde_json::to_string(&m).unwrap();
        let back: MatrixReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn targets_parse() {
        let t: MatrixTargets = "md=a.md,html=b.html,json=c.json".parse().unwrap();
        assert_eq!(t.html, Some(PathBuf::from("b.html")));
        assert!("junit=x".parse::<MatrixTargets>().is_err());
        assert!("md".parse::<MatrixTargets>().is_err());
        let mut t = MatrixTargets::default();
        t.default_in(std::path::Path::new("out"));
        assert_eq!(t.json, Some(PathBuf::from("out/matrix.json")));
    }
}
