//! Live terminal progress: one line per case as it finishes, coloured when stdout is a terminal, and a
//! closing summary. Owns nothing else (no report files).

use std::io::{IsTerminal as _, Write as _};

use super::{CaseResult, RunReport};
use crate::case::Outcome;

/// Prints case lines to stdout.
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    colour: bool,
}

impl Default for Terminal {
    fn default() -> Self {
        Self::new()
    }
}

impl Terminal {
    /// Colour when stdout is a TTY and `NO_COLOR` is unset.
    pub fn new() -> Self {
        Terminal {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// The line for one finished case.
    pub fn line(&self, c: &CaseResult) -> String {
        let (code, word) = match c.outcome {
            Outcome::Pass => ("32", "PASS"),
            Outcome::Fail { .. } => ("31;1", "FAIL"),
            Outcome::Skip { .. } => ("33", "SKIP"),
            Outcome::Unclaimed { .. } => ("2", "UNCLAIMED"),
            Outcome::Info { .. } => ("36", "INFO"),
        };
        let detail = c.outcome.detail();
        let mut line = format!(
            "{:<9} {:<8} {:<6} {} ({} ms)",
            self.paint(code, word),
            c.id,
            c.level.to_string(),
            c.title,
            c.duration_ms
        );
        if !detail.is_empty() {
            line.push_str("\n          ");
            line.push_str(&self.paint("2", &detail));
        }
        line
    }

    /// Prints one finished case.
    pub fn case(&self, c: &CaseResult) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", self.line(c));
        let _ = out.flush();
    }

    /// Prints a note line (backend choice, set-up progress).
    pub fn note(&self, s: &str) {
        println!("{}", self.paint("2", &format!("-- {s}")));
    }

    /// Prints the closing summary.
    pub fn summary(&self, r: &RunReport) {
        let v = r.verdict();
        let word = if v.conformant {
            self.paint("32;1", v.word())
        } else {
            self.paint("31;1", v.word())
        };
        println!("\n{word}: {}", super::verdict_line(r));
        for reason in &v.reasons {
            println!("  - {reason}");
        }
    }
}
