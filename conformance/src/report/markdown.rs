//! Markdown rendering of a [`RunReport`], shaped for a GitHub Actions step summary
//! (`--report md=$GITHUB_STEP_SUMMARY`): a verdict line, a counts table, then one row per case with
//! failures first. Owns nothing else.

use std::fmt::Write as _;

use super::RunReport;
use crate::case::{Level, Outcome};

/// Renders the report as Markdown.
pub fn render(r: &RunReport) -> String {
    let s = &r.summary;
    let v = r.verdict();
    let verdict = if v.conformant {
        "✅ CONFORMANT".to_string()
    } else {
        format!("❌ NOT CONFORMANT: {}", v.reasons.join("; "))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## imds-conformance: {} / {} on {}\n",
        r.scenario, r.profile, r.backend
    );
    let _ = writeln!(out, "**{verdict}** — interceptor `{}`\n", r.interceptor);
    let _ = writeln!(
        out,
        "| total | pass | fail | must failed | skip | unclaimed | info | time |"
    );
    let _ = writeln!(
        out,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let counts: Vec<String> = s.counts().iter().map(usize::to_string).collect();
    let _ = writeln!(
        out,
        "| {} | {:.1} s |\n",
        counts.join(" | "),
        r.duration_ms as f64 / 1000.0
    );
    for n in &r.notes {
        let _ = writeln!(out, "> {}", escape(n));
    }
    if let Some(t) = &r.timing {
        let _ = writeln!(out, "> timing: {t}");
    }
    if !r.notes.is_empty() || r.timing.is_some() {
        out.push('\n');
    }
    let _ = writeln!(out, "| id | level | result | title | detail |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    let rank = |o: &Outcome, l: Level| match (o, l) {
        (Outcome::Fail { .. }, Level::Must) => 0,
        (Outcome::Fail { .. }, _) => 1,
        (Outcome::Skip { .. }, _) => 3,
        (Outcome::Unclaimed { .. }, _) => 4,
        _ => 2,
    };
    let mut cases: Vec<_> = r.cases.iter().collect();
    cases.sort_by_key(|c| rank(&c.outcome, c.level));
    for c in cases {
        let icon = match c.outcome {
            Outcome::Pass => "✅ PASS",
            Outcome::Fail { .. } => "❌ FAIL",
            Outcome::Skip { .. } => "⏭️ SKIP",
            Outcome::Unclaimed { .. } => "➖ UNCLAIMED",
            Outcome::Info { .. } => "ℹ️ INFO",
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            c.id,
            c.level,
            icon,
            escape(&c.title),
            escape(&c.outcome.detail())
        );
    }
    out.push('\n');
    out
}

/// Keeps table cells intact: pipes and newlines would break the row.
fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}
