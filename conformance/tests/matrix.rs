//! `imds-conformance matrix`: five interceptors side by side on netns (imds-proxy with NMI's defaults and
//! with every optional feature, the AKS rule, no interceptor, the Python example vendor) on a handful of
//! cases, each column pinned on what distinguishes it; the HTML page opened in a real headless browser
//! (Chromium: `scripts/bootstrap --browser`), which must parse it into every cell and its linked entry
//! and render it; the Markdown and JSON checked against each other. A loopback matrix (any user) covers
//! the command line: labels, per-column claims, an ERROR column (a `cmd:` that exits at once) and usage
//! errors. Without root, python3 or a browser the parts that need them print a loud SKIP.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use imds_conformance::report::matrix::MatrixReport;

use common::{netns_or_skip, proxy_or_skip};

/// The example vendor's claims (examples/python-interceptor/README.md).
const EXAMPLE_FEATURES: &str =
    "metadataHeaderRequired,blockInstanceMetadata,enableConntrackDeletion,iptables,passthrough";

/// Cases that tell the five apart, and stay quick (about 20 s per column on 2 cores).
/// SEC-002 is left out: with the AKS rule its requests wait for connect timeouts (about 50 s more).
const FOCUS: &str = "^(SEC-001|HDR-001|BLK-001|IPT-001|IPT-003|PT-001) ";

fn example_template() -> String {
    let py =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-interceptor/interceptor.py");
    format!(
        "cmd:python3 {} --node {{node}} --upstream {{imds_ip}}:{{imds_port}} --port {{listen_port}} \
         --probe-port {{probe_port}} --reconcile-interval 2",
        py.display()
    )
}

fn python_present() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A headless Chromium: `$IMDS_BROWSER`, else `chromium`, `chromium-browser`, `google-chrome` on PATH.
fn browser() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("IMDS_BROWSER") {
        return Some(PathBuf::from(b));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Runs the browser headless on `html` with `args` (the sandbox needs user namespaces root may not get).
fn headless(browser: &Path, args: &[&str], html: &Path) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .args(args)
        .arg(format!("file://{}", html.display()))
        .env("HOME", html.parent().expect("dir"))
        .output()
        .expect("running the browser")
}

/// Opens the page in a headless browser: the DOM it parsed holds, for every column × case of `m`, the
/// cell (class = the outcome) linking to an entry that exists, and a screenshot of it is a real picture
/// (a PNG well above a blank page's size). Loud SKIP without a browser.
fn check_in_browser(test: &str, m: &MatrixReport, html: &Path) {
    let Some(b) = browser() else {
        eprintln!(
            "SKIP: {test}: browser check: no chromium on PATH (install it with `scripts/bootstrap --browser`, or set IMDS_BROWSER)"
        );
        return;
    };
    let out = headless(&b, &["--dump-dom"], html);
    assert!(out.status.success(), "{} --dump-dom: {out:?}", b.display());
    let dom = String::from_utf8_lossy(&out.stdout);
    let cell = regex::Regex::new(
        r##"<td class="cell ([a-z]+)" data-col="(\d+)" data-case="([A-Z]+-\d+)"[^>]*><a href="#(r-\d+-[A-Z]+-\d+)">([A-Z—]+)</a></td>"##,
    )
    .expect("regex");
    let mut seen = BTreeMap::new();
    for c in cell.captures_iter(&dom) {
        let (class, col, id, target, word) = (&c[1], &c[2], &c[3], &c[4], &c[5]);
        assert_eq!(target, format!("r-{col}-{id}"), "cell links to its entry");
        assert!(
            dom.contains(&format!("id=\"{target}\"")),
            "the entry {target} exists in the parsed DOM"
        );
        seen.insert(
            (col.parse::<usize>().expect("col"), id.to_string()),
            (class.to_string(), word.to_string()),
        );
    }
    for (i, col) in m.columns.iter().enumerate() {
        for id in m.rows() {
            let want = match (&col.report, col.case(&id)) {
                (None, _) => "ERROR".to_string(),
                (Some(_), None) => "—".to_string(),
                (Some(_), Some(r)) => r.outcome.status().to_string(),
            };
            let got = seen
                .get(&(i, id.clone()))
                .unwrap_or_else(|| panic!("cell {i} {id} missing from the DOM\n{dom}"));
            assert_eq!(got.1, want, "cell {i} {id}");
            if want != "—" {
                assert_eq!(
                    got.0,
                    want.to_ascii_lowercase(),
                    "cell {i} {id} coloured by outcome"
                );
            }
        }
    }
    assert_eq!(
        seen.len(),
        m.columns.len() * m.rows().len(),
        "no extra cells"
    );
    let png = html.with_extension("png");
    let shot = format!("--screenshot={}", png.display());
    let out = headless(&b, &[&shot, "--window-size=1400,1000"], html);
    assert!(out.status.success(), "screenshot: {out:?}");
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    // A blank 1400×1000 page is about 10 KB; the matrix with its colours is many times that.
    assert!(
        bytes.len() > 40_000,
        "the page rendered content ({} bytes)",
        bytes.len()
    );
    eprintln!(
        "{test}: {} rendered the matrix: {} cells, screenshot {} bytes",
        b.display(),
        seen.len(),
        bytes.len()
    );
}

/// Runs `imds-conformance matrix ARGS --out DIR`; returns the exit code, the parsed JSON, the Markdown
/// and the HTML path, and the output for messages.
fn matrix(dir: &Path, args: &[&str]) -> (i32, Option<MatrixReport>, String, PathBuf, String) {
    let mut cmd = Command::new(common::conformance_bin());
    cmd.arg("matrix")
        .args(args)
        .arg("--out")
        .arg(dir)
        .env("TMPDIR", dir)
        .env("NO_COLOR", "1");
    if let Some(p) = common::proxy_bin() {
        cmd.env("IMDS_PROXY_BIN", p);
    }
    let out = cmd.output().expect("running imds-conformance matrix");
    let log = format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = std::fs::read_to_string(dir.join("matrix.json"))
        .ok()
        .map(|s| serde_json::from_str::<MatrixReport>(&s).expect("matrix.json parses"));
    let md = std::fs::read_to_string(dir.join("matrix.md")).unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        json,
        md,
        dir.join("matrix.html"),
        log,
    )
}

/// The status word of `id` in column `label`.
fn status(m: &MatrixReport, label: &str, id: &str) -> String {
    let col = m
        .columns
        .iter()
        .find(|c| c.label == label)
        .unwrap_or_else(|| panic!("no column {label}"));
    col.case(id)
        .map(|r| r.outcome.status().to_string())
        .unwrap_or_else(|| format!("no result ({:?})", col.error))
}

/// The Markdown has one header cell per label and one row per case.
fn check_markdown(m: &MatrixReport, md: &str) {
    let labels: Vec<&str> = m.columns.iter().map(|c| c.label.as_str()).collect();
    assert!(
        md.contains(&format!("| case | {} |", labels.join(" | "))),
        "header row\n{md}"
    );
    for id in m.rows() {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| `{id}` ")))
            .unwrap_or_else(|| panic!("no row for {id}\n{md}"));
        assert_eq!(row.matches(" | ").count(), m.columns.len(), "{row}");
    }
}

#[test]
fn matrix_of_five_interceptors_on_netns() {
    let test = "matrix_of_five_interceptors_on_netns";
    if !netns_or_skip(test) || proxy_or_skip(test).is_none() {
        return;
    }
    if !python_present() {
        eprintln!("SKIP: {test}: python3 not installed (the example vendor is a Python script)");
        return;
    }
    let _serial = common::serial_guard();
    let dir = tempfile::tempdir().expect("tempdir");
    let example = format!("example={}", example_template());
    let started = std::time::Instant::now();
    let (code, m, md, html, log) = matrix(
        dir.path(),
        &[
            "--backend",
            "netns",
            "--focus",
            FOCUS,
            "--interceptor",
            "proxy=builtin",
            "--interceptor",
            "proxy+all=builtin --block-instance-metadata=true --set-retry-after-header=true --enable-conntrack-deletion=true",
            "--features",
            "proxy+all=metadataHeaderRequired,blockInstanceMetadata,setRetryAfterHeader,enableConntrackDeletion,enableScaleFeatures,iptables,tokens,hostToken,passthrough",
            "--interceptor",
            "aks=aks-rule",
            "--features",
            "aks=imdsRestriction",
            "--interceptor",
            "none=none",
            "--features",
            "none=none",
            "--interceptor",
            &example,
            "--features",
            &format!("example={EXAMPLE_FEATURES}"),
        ],
    );
    let wall = started.elapsed();
    assert_eq!(code, 0, "every column ran\n{log}");
    let m = m.unwrap_or_else(|| panic!("no matrix.json\n{log}"));
    let labels: Vec<&str> = m.columns.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, ["proxy", "proxy+all", "aks", "none", "example"]);
    assert_eq!(m.backend, "netns");
    assert_eq!(
        m.rows(),
        [
            "SEC-001", "HDR-001", "BLK-001", "IPT-001", "IPT-003", "PT-001"
        ]
    );
    // One word per row: SEC-001 HDR-001 BLK-001 IPT-001 IPT-003 PT-001.
    let expect = [
        ("proxy", "PASS PASS UNCLAIMED PASS PASS PASS"),
        ("proxy+all", "PASS PASS PASS PASS PASS PASS"),
        // Dropped traffic gets no token: the security floor passes; nothing else is claimed.
        (
            "aks",
            "PASS UNCLAIMED UNCLAIMED UNCLAIMED UNCLAIMED UNCLAIMED",
        ),
        (
            "none",
            "FAIL UNCLAIMED UNCLAIMED UNCLAIMED UNCLAIMED UNCLAIMED",
        ),
        ("example", "PASS PASS PASS PASS PASS PASS"),
    ];
    for (label, want) in expect {
        for (id, w) in m.rows().iter().zip(want.split_whitespace()) {
            assert_eq!(status(&m, label, id), w, "{label} {id}\n{log}");
        }
    }
    // imds-proxy fails nothing: its only reason is the security floor's SEC-002 and SEC-003, not selected here.
    let proxy = m.columns[0].report.as_ref().expect("report").verdict();
    assert_eq!(
        proxy.reasons,
        ["security floor not run: SEC-002 (not selected); SEC-003 (not selected)"],
        "{log}"
    );
    assert_eq!(m.columns[3].verdict_word(), "NOT CONFORMANT");
    check_markdown(&m, &md);
    check_in_browser(test, &m, &html);
    eprintln!(
        "{test}: 5 interceptors × {} cases on netns in {:.1} s wall (matrix's own: {:.1} s)",
        m.rows().len(),
        wall.as_secs_f64(),
        m.duration_ms as f64 / 1000.0
    );
}

#[test]
fn matrix_on_loopback_labels_claims_and_an_error_column() {
    let test = "matrix_on_loopback_labels_claims_and_an_error_column";
    if proxy_or_skip(test).is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, m, md, html, log) = matrix(
        dir.path(),
        &[
            "--backend",
            "loopback",
            "--focus",
            "^(SEC-001|HDR-001|BLK-001) ",
            "--interceptor",
            "builtin",
            "--interceptor",
            "blocking=builtin --block-instance-metadata=true",
            "--features",
            "blocking=metadataHeaderRequired,blockInstanceMetadata,tokens",
            "--interceptor",
            "broken=cmd:sh -c 'echo vendor: cannot load config >&2; exit 3'",
        ],
    );
    // The broken column could not run: exit 2, but the others are judged and every report is written.
    assert_eq!(code, 2, "{log}");
    let m = m.unwrap_or_else(|| panic!("no matrix.json\n{log}"));
    let labels: Vec<&str> = m.columns.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, ["builtin", "blocking", "broken"]);
    assert_eq!(status(&m, "builtin", "BLK-001"), "UNCLAIMED");
    assert_eq!(status(&m, "blocking", "BLK-001"), "PASS");
    assert_eq!(status(&m, "blocking", "HDR-001"), "PASS");
    let broken = &m.columns[2];
    assert!(broken.report.is_none());
    let err = broken.error.as_deref().unwrap_or_default();
    assert!(
        err.contains("cannot load config"),
        "the log tail is in the error: {err}"
    );
    check_markdown(&m, &md);
    assert!(md.contains("💥 ERROR"), "{md}");
    check_in_browser(test, &m, &html);
}

#[test]
fn matrix_usage_errors_exit_2() {
    for (args, what) in [
        (vec!["matrix"], "no interceptor to run"),
        (
            vec![
                "matrix",
                "--interceptor",
                "a=builtin",
                "--interceptor",
                "a=none",
            ],
            "labelled \"a\"",
        ),
        (
            vec!["matrix", "--interceptor", "a=proxy"],
            "expected LABEL=SPEC",
        ),
        (
            vec![
                "matrix",
                "--interceptor",
                "a=none",
                "--features",
                "b=iptables",
            ],
            "no column has that label",
        ),
        (
            vec!["matrix", "--interceptor", "a=none", "--report", "junit=x"],
            "unknown report kind",
        ),
        (
            vec!["matrix", "--matrix", "/nonexistent/m.yaml"],
            "reading the matrix file",
        ),
    ] {
        let out = common::cli(&args);
        common::assert_exit(&out, 2, what);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{args:?}: {err}");
    }
}
