//! The matrix as one self-contained HTML page (`imds-conformance matrix --report html=PATH`): inline CSS,
//! no script, no external asset, so it can be opened from a CI artifact as it is.
//!
//! Layout: a header with scenario, profile, backend and wall time; the case × interceptor table (one
//! colour per outcome; the verdict and counts of each column on top); below it one section per case
//! (`id="case-<ID>"`: title, level, features, spec reference and the catalogue's explanation) holding one
//! entry per column (`id="r-<column index>-<ID>"`: the outcome with what was expected and observed,
//! the skip reason or the unclaimed features). Every cell links to its entry, every row heading to its
//! case; an interceptor that never ran has its error under `id="col-<index>"`. The tests read these ids.

use std::fmt::Write as _;

use super::matrix::{MatrixReport, cell_word};
use crate::case::Outcome;
use crate::catalog;

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// CSS class of a cell: the lower-case status word, `none` when the column has no result.
fn class(word: &str) -> String {
    match word {
        "—" => "none".into(),
        w => w.to_ascii_lowercase(),
    }
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#1b1f24;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em}
.meta{color:#57606a;margin-bottom:1em}
table.matrix{border-collapse:collapse}
table.matrix th,table.matrix td{border:1px solid #d0d7de;padding:.25em .6em;text-align:center;white-space:nowrap}
table.matrix thead th{position:sticky;top:0;background:#f6f8fa;vertical-align:bottom;white-space:normal;max-width:14em}
table.matrix th.case{text-align:left;font-weight:normal;white-space:normal;max-width:34em}
table.matrix th.case code{font-weight:bold}
td a,th a{color:inherit;text-decoration:none;display:block}
td.pass{background:#c9f2d0}td.fail{background:#ffb3ad;font-weight:bold}td.skip{background:#fff1b8}
td.unclaimed{background:#eaeef2;color:#57606a}td.info{background:#cfe6ff}td.none{background:#fff;color:#8c959f}
td.error{background:#e6d3ff;font-weight:bold}
td.conformant{background:#2da44e;color:#fff;font-weight:bold}td.not-conformant{background:#cf222e;color:#fff;font-weight:bold}
.legend span{display:inline-block;padding:0 .5em;margin-right:.3em;border:1px solid #d0d7de}
section.case{border-top:1px solid #d0d7de;padding-top:.3em}
.explain{max-width:60em}
.entry{margin:.3em 0 .3em 1em;padding:.2em .5em;border-left:4px solid #d0d7de}
.entry.pass{border-color:#2da44e}.entry.fail{border-color:#cf222e}.entry.skip{border-color:#d4a72c}
.entry.info{border-color:#0969da}.entry.error{border-color:#8250df}
.entry pre,.col-error pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:.2em 0;background:#f6f8fa;padding:.3em}
:target{outline:3px solid #0969da}
";

/// Renders the whole page.
pub fn render(m: &MatrixReport) -> String {
    let rows = m.rows();
    let mut out = String::new();
    let title = format!(
        "imds-conformance matrix: {} / {} on {}",
        m.scenario, m.profile, m.backend
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n",
        t = escape(&title)
    );
    let _ = writeln!(
        out,
        "<p class=\"meta\">{} · started {} · {} interceptors × {} cases · {:.1} s wall</p>",
        escape(&m.tool),
        escape(&m.started_at),
        m.columns.len(),
        rows.len(),
        m.duration_ms as f64 / 1000.0
    );
    out.push_str(
        "<p class=\"legend\">Legend: <span style=\"background:#c9f2d0\">PASS</span>\
         <span style=\"background:#ffb3ad\">FAIL</span><span style=\"background:#fff1b8\">SKIP</span>\
         <span style=\"background:#eaeef2\">UNCLAIMED</span><span style=\"background:#cfe6ff\">INFO</span>\
         <span style=\"background:#e6d3ff\">ERROR</span> — every cell links to what was observed.</p>\n",
    );
    out.push_str("<table class=\"matrix\" id=\"matrix\">\n<thead>\n<tr><th>case</th>");
    for (i, c) in m.columns.iter().enumerate() {
        let _ = write!(
            out,
            "<th id=\"colhead-{i}\" title=\"{}\">{}</th>",
            escape(&c.interceptor),
            escape(&c.label)
        );
    }
    out.push_str("</tr>\n<tr><th>verdict</th>");
    for (i, c) in m.columns.iter().enumerate() {
        let word = c.verdict_word();
        let cls = match word {
            "CONFORMANT" => "conformant",
            "ERROR" => "error",
            _ => "not-conformant",
        };
        let reasons = c
            .report
            .as_ref()
            .map(|r| r.verdict().reasons.join("; "))
            .or_else(|| c.error.clone())
            .unwrap_or_default();
        let _ = write!(
            out,
            "<td class=\"verdict {cls}\" title=\"{}\"><a href=\"#col-{i}\">{word}</a></td>",
            escape(&reasons)
        );
    }
    out.push_str("</tr>\n</thead>\n<tbody>\n");
    for id in &rows {
        let _ = write!(
            out,
            "<tr id=\"row-{id}\"><th class=\"case\"><a href=\"#case-{id}\"><code>{id}</code> {}</a></th>",
            escape(&m.title(id))
        );
        for (i, c) in m.columns.iter().enumerate() {
            let r = c.case(id);
            let word = if c.report.is_none() {
                "ERROR"
            } else {
                cell_word(r)
            };
            let tip = r.map(|r| r.outcome.detail()).unwrap_or_default();
            let _ = write!(
                out,
                "<td class=\"cell {}\" data-col=\"{i}\" data-case=\"{id}\" title=\"{}\">\
                 <a href=\"#r-{i}-{id}\">{word}</a></td>",
                class(word),
                escape(&tip)
            );
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    render_columns(&mut out, m);
    out.push_str("<h2>Cases</h2>\n");
    for id in &rows {
        render_case(&mut out, m, id);
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// One block per column: what it ran, its verdict and reasons, or its error.
fn render_columns(out: &mut String, m: &MatrixReport) {
    out.push_str("<h2>Interceptors</h2>\n");
    for (i, c) in m.columns.iter().enumerate() {
        let _ = writeln!(
            out,
            "<div class=\"col-error\" id=\"col-{i}\"><h3>{}</h3>\n<p><code>{}</code>{}</p>",
            escape(&c.label),
            escape(&c.interceptor),
            if c.flags.is_empty() {
                String::new()
            } else {
                format!(" flags: <code>{}</code>", escape(&c.flags.join(" ")))
            }
        );
        let claimed: Vec<&str> = c.claimed_features.iter().map(|f| f.name()).collect();
        let _ = writeln!(
            out,
            "<p>claimed: {}</p>",
            if claimed.is_empty() {
                "none".to_string()
            } else {
                escape(&claimed.join(", "))
            }
        );
        match (&c.report, &c.error) {
            (Some(r), _) => {
                let v = r.verdict();
                let _ = writeln!(
                    out,
                    "<p><b>{}</b>{}</p>",
                    v.word(),
                    if v.reasons.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", escape(&v.reasons.join("; ")))
                    }
                );
                for n in &r.notes {
                    let _ = writeln!(out, "<p class=\"meta\">{}</p>", escape(n));
                }
            }
            (None, e) => {
                let _ = writeln!(
                    out,
                    "<p><b>ERROR</b>: the run could not be judged</p>\n<pre>{}</pre>",
                    escape(e.as_deref().unwrap_or("(no message)"))
                );
            }
        }
        out.push_str("</div>\n");
    }
}

/// The case's explanation and every column's observation.
fn render_case(out: &mut String, m: &MatrixReport, id: &str) {
    let _ = writeln!(
        out,
        "<section class=\"case\" id=\"case-{id}\">\n<h3><code>{id}</code> {}</h3>",
        escape(&m.title(id))
    );
    if let Some(c) = catalog::find(id) {
        let feats: Vec<&str> = c.features.iter().map(|f| f.name()).collect();
        let _ = writeln!(
            out,
            "<p class=\"meta\">{} · features: {} · {}</p>\n<p class=\"explain\">{}</p>",
            c.level,
            if feats.is_empty() {
                "-".to_string()
            } else {
                escape(&feats.join(", "))
            },
            escape(c.spec),
            escape(c.explain)
        );
    }
    for (i, col) in m.columns.iter().enumerate() {
        let _ = write!(out, "<div class=\"entry {}\" id=\"r-{i}-{id}\">", {
            let word = if col.report.is_none() {
                "ERROR"
            } else {
                cell_word(col.case(id))
            };
            class(word)
        });
        let _ = write!(out, "<b>{}</b>: ", escape(&col.label));
        match (col.case(id), &col.report) {
            (_, None) => {
                let _ = write!(
                    out,
                    "ERROR — the run did not get this far; see <a href=\"#col-{i}\">the column's error</a>"
                );
            }
            (None, Some(_)) => out.push_str("not selected in this column"),
            (Some(r), Some(_)) => {
                let _ = write!(out, "{} ({} ms)", r.outcome.status(), r.duration_ms);
                match &r.outcome {
                    Outcome::Pass => {}
                    Outcome::Fail { expected, observed } => {
                        let _ = write!(
                            out,
                            "<pre>expected: {}\nobserved: {}</pre>",
                            escape(expected),
                            escape(observed)
                        );
                    }
                    other => {
                        let _ = write!(out, "<pre>{}</pre>", escape(&other.detail()));
                    }
                }
            }
        }
        out.push_str("</div>\n");
    }
    out.push_str("</section>\n");
}
