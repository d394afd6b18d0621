//! `imds-conformance matrix`: one scenario and profile run against several interceptors — the columns —
//! through the one runner ([`crate::runner::run`]), each column in its own environment, several at once.
//!
//! Owns what a column is ([`Column`]: a label, an interceptor spelled as for `run --interceptor`, extra
//! flags, claimed features), how columns are given (`--interceptor 'LABEL=SPEC'` on the command line, or
//! a matrix file: [`MatrixFile`]), and running them into a [`MatrixReport`]. Rendering is the report
//! module's ([`crate::report::matrix`], [`crate::report::html`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use crate::case::{Feature, Profile};
use crate::cli::{InterceptorArgs, interceptor_spec, parse_features};
use crate::report::matrix::{ColumnResult, MATRIX_SCHEMA_VERSION, MatrixReport};
use crate::runner::{self, BackendChoice, RunError, RunOptions};
use crate::scenario::Scenario;

pub mod cmd;

/// The interceptor kinds a column's spec may start with (as `run --interceptor`).
const KINDS: &[&str] = &["builtin", "aks-rule", "none", "cmd:", "manifest:"];

/// One column of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Shown as the column heading.
    pub label: String,
    /// `builtin`, `aks-rule`, `none`, `cmd:TEMPLATE` or `manifest:FILE`.
    pub interceptor: String,
    /// Appended to the scenario's `interceptor.flags` for this column: passed to imds-proxy (`builtin`),
    /// and read by every case as timing knobs (all kinds; see docs/VENDORS.md §6).
    #[serde(default)]
    pub flags: Vec<String>,
    /// Claimed features (default: `--features`, else the scenario's).
    #[serde(default)]
    pub features: Option<BTreeSet<Feature>>,
}

/// Why a column or a matrix file is not usable (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// A `--interceptor` value of `matrix` that is neither `LABEL=SPEC` nor a bare kind.
    #[error(
        "--interceptor {0:?}: expected LABEL=SPEC (SPEC: builtin [FLAG…], aks-rule, none, cmd:TEMPLATE, manifest:FILE)"
    )]
    Column(String),
    /// Two columns with one label.
    #[error("two columns are labelled {0:?}: labels must be unique")]
    DuplicateLabel(String),
    /// No column at all.
    #[error("no interceptor to run: give --interceptor LABEL=SPEC (repeatable) or --matrix FILE")]
    NoColumns,
    /// A per-column `--features LABEL=LIST` naming no column.
    #[error("--features {0:?}: no column has that label")]
    UnknownLabel(String),
    /// A feature list that does not parse.
    #[error("--features {0}")]
    Features(String),
    /// The matrix file could not be read.
    #[error("reading the matrix file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The matrix file is not valid.
    #[error("matrix file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The YAML error.
        #[source]
        source: serde_norway::Error,
    },
}

/// A matrix file (`--matrix FILE`, YAML): optional scenario and profile, and the columns.
///
/// ```yaml
/// scenario: ../scenarios/nmi-default.yaml      # relative to this file; default: the built-in nmi-default
/// profile: nmi                                 # default: the scenario's
/// columns:
///   - label: imds-proxy (all features)
///     interceptor: builtin
///     flags: [--block-instance-metadata=true]
///     features: [metadataHeaderRequired, blockInstanceMetadata, iptables, tokens, hostToken, passthrough]
///   - { label: AKS rule, interceptor: aks-rule }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixFile {
    /// Scenario file, relative to the matrix file.
    #[serde(default)]
    pub scenario: Option<PathBuf>,
    /// Profile.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// The columns, in order.
    pub columns: Vec<Column>,
}

impl MatrixFile {
    /// Reads and parses `path`; a relative `scenario` is resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self, MatrixError> {
        let text = std::fs::read_to_string(path).map_err(|source| MatrixError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut f: MatrixFile =
            serde_norway::from_str(&text).map_err(|source| MatrixError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if let Some(s) = f.scenario.take() {
            let dir = path.parent().unwrap_or(Path::new("."));
            f.scenario = Some(if s.is_absolute() { s } else { dir.join(s) });
        }
        Ok(f)
    }
}

/// Parses one command-line column: `LABEL=SPEC`, or a bare SPEC (labelled by its kind). It is `LABEL=SPEC`
/// when the text before the first `=` has no `:` and the text after it starts with a kind; so `cmd:`
/// templates may contain `=`, and a label may be a kind's name (`none=none`).
pub fn parse_column(s: &str) -> Result<Column, MatrixError> {
    let s = s.trim();
    let is_spec = |t: &str| KINDS.iter().any(|k| t.starts_with(k));
    let (label, spec) = match s.split_once('=') {
        Some((l, spec)) if !l.contains(':') && is_spec(spec.trim()) => {
            (Some(l.trim().to_string()), spec.trim())
        }
        _ if is_spec(s) => (None, s),
        _ => return Err(MatrixError::Column(s.into())),
    };
    if label.as_deref() == Some("") {
        return Err(MatrixError::Column(s.into()));
    }
    // `builtin --flag --flag`: the flags of this column.
    let (interceptor, flags) = match spec.strip_prefix("builtin") {
        Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => (
            "builtin".to_string(),
            rest.split_whitespace().map(String::from).collect(),
        ),
        Some(_) => return Err(MatrixError::Column(s.into())),
        None => (spec.to_string(), Vec::new()),
    };
    let label = label.unwrap_or_else(|| match interceptor.split_once(':') {
        Some((kind, _)) => kind.to_string(),
        None => interceptor.clone(),
    });
    Ok(Column {
        label,
        interceptor,
        flags,
        features: None,
    })
}

/// Applies `--features` values: `LABEL=LIST` sets one column's claims, a plain `LIST` every column's
/// that has none of its own.
pub fn apply_features(columns: &mut [Column], values: &[String]) -> Result<(), MatrixError> {
    let parse = |v: &str| parse_features(v).map_err(|e| MatrixError::Features(e.to_string()));
    for v in values {
        match v.split_once('=') {
            Some((label, list)) => {
                let col = columns
                    .iter_mut()
                    .find(|c| c.label == label.trim())
                    .ok_or_else(|| MatrixError::UnknownLabel(v.clone()))?;
                col.features = Some(parse(list)?);
            }
            None => {
                let f = parse(v)?;
                for c in columns.iter_mut().filter(|c| c.features.is_none()) {
                    c.features = Some(f.clone());
                }
            }
        }
    }
    Ok(())
}

/// Unique labels, at least one column.
pub fn check_columns(columns: &[Column]) -> Result<(), MatrixError> {
    if columns.is_empty() {
        return Err(MatrixError::NoColumns);
    }
    let mut seen = BTreeSet::new();
    for c in columns {
        if !seen.insert(c.label.as_str()) {
            return Err(MatrixError::DuplicateLabel(c.label.clone()));
        }
    }
    Ok(())
}

/// Everything a matrix run needs besides its columns.
#[derive(Debug, Clone)]
pub struct MatrixOptions {
    /// The scenario every column runs.
    pub scenario: Scenario,
    /// The profile every column runs.
    pub profile: Profile,
    /// The backend every column runs on.
    pub backend: BackendChoice,
    /// Case selection, as `run --focus` / `--skip`.
    pub focus: Option<regex::Regex>,
    /// See `focus`.
    pub skip: Option<regex::Regex>,
    /// imds-proxy binary for `builtin` columns.
    pub proxy_bin: Option<PathBuf>,
    /// Columns running at once (each in its own environment); at least 1.
    pub jobs: usize,
    /// Kind backend options (the kind backend runs one column at a time).
    pub kind: Option<crate::kind::KindOptions>,
    /// Print one line per column as it starts and ends.
    pub progress: bool,
}

/// Runs one column to its [`ColumnResult`] (a run error becomes the column's error).
async fn run_column(opts: &MatrixOptions, col: &Column) -> Result<ColumnResult, RunError> {
    let mut scenario = opts.scenario.clone();
    scenario.interceptor.flags.extend(col.flags.iter().cloned());
    let features = col
        .features
        .clone()
        .unwrap_or_else(|| scenario.interceptor.features.clone());
    let mut result = ColumnResult {
        label: col.label.clone(),
        interceptor: col.interceptor.clone(),
        flags: col.flags.clone(),
        claimed_features: features.iter().copied().collect(),
        report: None,
        error: None,
    };
    let args = InterceptorArgs {
        interceptor: Some(col.interceptor.clone()),
        proxy_bin: opts.proxy_bin.clone(),
        proxy_flags: Vec::new(),
    };
    let interceptor = match interceptor_spec(&args, &scenario, opts.backend) {
        Ok(i) => i,
        Err(e) => {
            result.error = Some(e);
            return Ok(result);
        }
    };
    let run = RunOptions {
        scenario,
        profile: opts.profile,
        backend: opts.backend,
        interceptor,
        features,
        focus: opts.focus.clone(),
        skip: opts.skip.clone(),
        imds_url: None,
        // The SDK area measures one interceptor at a time (`run --sdk-clients`), not a matrix column.
        sdk: None,
        live: false,
        kind: opts.kind.clone(),
    };
    match runner::run(run).await {
        Ok(r) => result.report = Some(r),
        Err(e @ RunError::Interrupted(_)) => return Err(e),
        Err(e) => result.error = Some(e.to_string()),
    }
    Ok(result)
}

/// Runs every column (at most `opts.jobs` at once; one at a time on kind) and assembles the report.
/// SIGINT / SIGTERM stop the matrix after every running column has torn down.
pub async fn run(opts: MatrixOptions, columns: Vec<Column>) -> Result<MatrixReport, RunError> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (kind, _) = runner::resolve_backend(opts.backend)?;
    let jobs = if opts.backend == BackendChoice::Kind {
        1
    } else {
        opts.jobs.max(1)
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(jobs));
    let opts = Arc::new(opts);
    let mut tasks = Vec::new();
    for (i, col) in columns.into_iter().enumerate() {
        let (gate, opts) = (gate.clone(), opts.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await;
            let t = Instant::now();
            if opts.progress {
                println!(
                    "-- [{}] {} ({}) starting",
                    i + 1,
                    col.label,
                    col.interceptor
                );
            }
            let r = run_column(&opts, &col).await;
            if opts.progress
                && let Ok(c) = &r
            {
                println!(
                    "-- [{}] {}: {} in {:.1} s{}",
                    i + 1,
                    c.label,
                    c.verdict_word(),
                    t.elapsed().as_secs_f64(),
                    c.error
                        .as_deref()
                        .map(|e| format!("\n   {}", e.replace('\n', "\n   ")))
                        .unwrap_or_default()
                );
            }
            r
        }));
    }
    let mut results = Vec::new();
    let mut interrupted = None;
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => results.push(c),
            Ok(Err(RunError::Interrupted(sig))) => interrupted = Some(sig),
            Ok(Err(e)) => return Err(e),
            Err(join) => return Err(RunError::Io(format!("a matrix column panicked: {join}"))),
        }
    }
    if let Some(sig) = interrupted {
        return Err(RunError::Interrupted(sig));
    }
    Ok(MatrixReport {
        schema_version: MATRIX_SCHEMA_VERSION,
        tool: format!("imds-conformance {}", env!("CARGO_PKG_VERSION")),
        scenario: opts.scenario.name.clone(),
        profile: opts.profile.to_string(),
        backend: kind.to_string(),
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        columns: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_parse_with_and_without_labels() {
        let c = parse_column("defaults=builtin").unwrap();
        assert_eq!(
            (c.label.as_str(), c.interceptor.as_str()),
            ("defaults", "builtin")
        );
        let c = parse_column("all = builtin --block-instance-metadata=true  --x=1").unwrap();
        assert_eq!(c.label, "all");
        assert_eq!(c.flags, vec!["--block-instance-metadata=true", "--x=1"]);
        // A bare spec: labelled by its kind; `=` inside a template is not a label separator.
        let c = parse_column("cmd:vendor --port={listen_port}").unwrap();
        assert_eq!(c.label, "cmd");
        assert_eq!(c.interceptor, "cmd:vendor --port={listen_port}");
        let c = parse_column("py=cmd:python3 x.py --a=b").unwrap();
        assert_eq!(
            (c.label.as_str(), c.interceptor.as_str()),
            ("py", "cmd:python3 x.py --a=b")
        );
        assert_eq!(parse_column("none").unwrap().label, "none");
        let c = parse_column("none=none").unwrap();
        assert_eq!((c.label.as_str(), c.interceptor.as_str()), ("none", "none"));
        let c = parse_column("builtin --x=1").unwrap();
        assert_eq!(
            (c.label.as_str(), c.flags.as_slice()),
            ("builtin", &["--x=1".to_string()][..])
        );
        for bad in ["", "x=", "=builtin", "x=proxy", "builtinx", "x=builtin2"] {
            assert!(parse_column(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn features_per_column_and_for_all() {
        let mut cols = vec![
            parse_column("a=builtin").unwrap(),
            parse_column("b=none").unwrap(),
        ];
        apply_features(&mut cols, &["b=none".into(), "iptables,passthrough".into()]).unwrap();
        assert_eq!(cols[1].features, Some(BTreeSet::new()));
        assert_eq!(
            cols[0].features,
            Some([Feature::Iptables, Feature::Passthrough].into())
        );
        assert!(apply_features(&mut cols, &["c=iptables".into()]).is_err());
        assert!(apply_features(&mut cols, &["a=nope".into()]).is_err());
        assert!(check_columns(&cols).is_ok());
        cols.push(parse_column("a=none").unwrap());
        assert!(matches!(
            check_columns(&cols),
            Err(MatrixError::DuplicateLabel(_))
        ));
        assert!(matches!(check_columns(&[]), Err(MatrixError::NoColumns)));
    }

    #[test]
    fn matrix_file_parses_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.yaml");
        std::fs::write(
            &p,
            "scenario: s.yaml\nprofile: hardened\ncolumns:\n  - label: x\n    interceptor: builtin\n    \
             flags: [--a=1]\n    features: [iptables]\n  - { label: y, interceptor: none }\n",
        )
        .unwrap();
        let f = MatrixFile::load(&p).unwrap();
        assert_eq!(f.scenario, Some(dir.path().join("s.yaml")));
        assert_eq!(f.profile, Some(Profile::Hardened));
        assert_eq!(f.columns[0].flags, vec!["--a=1"]);
        assert_eq!(f.columns[0].features, Some([Feature::Iptables].into()));
        assert_eq!(f.columns[1].features, None);
        std::fs::write(
            &p,
            "columns:\n  - { label: x, interceptor: none, feature: [] }\n",
        )
        .unwrap();
        assert!(matches!(
            MatrixFile::load(&p),
            Err(MatrixError::Parse { .. })
        ));
    }
}
