//! The mutation suite's fast subset, run by `just test` (issue 12; the whole suite is `just mutants`): a few
//! of imds-proxy's deliberate defects, one per area, each judged on the netns backend by the case aimed at
//! it — which must FAIL — and the correct proxy by the same cases, which must not. `just test` builds the
//! defects' binary (`just mutants-build`); without it, or without root, the test SKIPs loudly.

use std::path::PathBuf;
use std::process::Command;

/// One defect per area whose aimed case is quick.
const FAST: &[&str] = &[
    "header-refusal-forwarded",
    "block-no-decode",
    "no-jump-repair",
    "created-served",
    "selector-case-falls-back",
    "token-route-case-sensitive",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn fast_subset_is_killed_by_the_aimed_cases() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: the mutation suite's fast subset needs root (netns backend)");
        return;
    }
    let proxy = root().join("target/debug/imds-proxy-mutants");
    let harness = root().join("target/debug/imds-conformance");
    for (bin, how) in [
        (&proxy, "`just mutants-build`"),
        (&harness, "`cargo build -p imds-conformance`"),
    ] {
        if !bin.exists() {
            eprintln!(
                "SKIP: {} is missing (build it with {how}; `just test` does)",
                bin.display()
            );
            return;
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_imds-mutants"))
        .current_dir(root())
        .args(["--aimed-only", "--out", "-", "--only", &FAST.join(",")])
        .arg("--mutant-proxy")
        .arg(&proxy)
        .arg("--harness")
        .arg(&harness)
        .output()
        .expect("running imds-mutants");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a defect survived or the correct proxy failed:\n{stdout}\n{stderr}"
    );
    let want = format!("**{n} of {n} killed**", n = FAST.len());
    assert!(stdout.contains(&want), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("False failures of the correct proxy: none."),
        "{stdout}"
    );
    for name in FAST {
        assert!(
            stdout.contains(&format!("| `{name}` |")) && !stdout.contains("survived"),
            "{name}: {stdout}"
        );
    }
    eprintln!("{stderr}");
}
