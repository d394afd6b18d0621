//! Errors a vendor meets are explained (docs/VENDORS.md §4–5): a `cmd:` interceptor that exits at once,
//! never becomes ready, listens on the wrong address, or installs no redirect rules stops the run with
//! exit 2 and a message naming which of the four it is, what the harness observed (exit status,
//! readiness answers, the node's listening sockets, the nat rules) and the tail of the interceptor's log.
//! The interceptors are deliberately broken tiny ones (`sh`, and `tests/fixtures/broken_vendor.py`,
//! Python standard library only) on netns; root and python3 needed, else a loud SKIP.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::netns_or_skip;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken_vendor.py")
}

fn python_or_skip(test: &str) -> bool {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIP: {test}: python3 not installed (the broken interceptors are Python scripts)"
        );
    }
    ok
}

/// Runs the harness on netns with `interceptor` claiming `iptables` (SEC-001 only: set-up is what is
/// judged) and returns its stderr, asserting exit 2 and that nothing was judged.
fn run_broken(interceptor: &str) -> String {
    let r = common::run(&[
        "--backend",
        "netns",
        "--interceptor",
        interceptor,
        "--features",
        "metadataHeaderRequired,iptables,passthrough",
        "--focus",
        "^SEC-001 ",
    ]);
    assert_eq!(r.code, 2, "a set-up error\n{}", r.log());
    assert!(
        r.report.is_none(),
        "no verdict for an interceptor that did not start\n{}",
        r.log()
    );
    String::from_utf8_lossy(&r.output.stderr).into_owned()
}

fn python(mode: &str, addr: &str) -> String {
    format!(
        "cmd:python3 {} --mode {mode} --addr {addr} --port {{listen_port}} --probe-port {{probe_port}}",
        fixture().display()
    )
}

#[test]
fn an_interceptor_that_exits_at_once_is_named_with_its_exit_status_and_log() {
    let test = "an_interceptor_that_exits_at_once_is_named_with_its_exit_status_and_log";
    if !netns_or_skip(test) {
        return;
    }
    let err =
        run_broken("cmd:sh -c 'echo broken-vendor: cannot read /etc/vendor.conf >&2; exit 3'");
    assert!(
        err.contains("interceptor on node-1 exited at once"),
        "{err}"
    );
    assert!(
        err.contains("(exit status: 3) before accepting a connection on 127.0.0.1:2579"),
        "{err}"
    );
    assert!(
        err.contains("--- last lines of its log:\nbroken-vendor: cannot read /etc/vendor.conf"),
        "{err}"
    );
}

#[test]
fn an_interceptor_that_never_becomes_ready_shows_its_readiness_answers() {
    let test = "an_interceptor_that_never_becomes_ready_shows_its_readiness_answers";
    if !netns_or_skip(test) || !python_or_skip(test) {
        return;
    }
    let err = run_broken(&python("never-ready", "127.0.0.1"));
    assert!(
        err.contains("interceptor on node-1 never became ready"),
        "{err}"
    );
    assert!(
        err.contains("it listens on 127.0.0.1:2579 but GET /healthz on 127.0.0.1:8085 did not answer 200 `Active`"),
        "{err}"
    );
    assert!(err.contains("it answered: 200 \"Not Active\" (×"), "{err}");
    assert!(
        err.contains("broken-vendor: mode never-ready"),
        "log tail\n{err}"
    );
}

#[test]
fn an_interceptor_on_the_wrong_address_shows_what_listens_in_the_node() {
    let test = "an_interceptor_on_the_wrong_address_shows_what_listens_in_the_node";
    if !netns_or_skip(test) || !python_or_skip(test) {
        return;
    }
    // The usual mistake: binding the node's address instead of 127.0.0.1.
    let err = run_broken(&python("wrong-address", "{node_ip}"));
    assert!(
        err.contains("interceptor on node-1 listens on the wrong address"),
        "{err}"
    );
    assert!(
        err.contains("nothing accepted a connection on 127.0.0.1:2579"),
        "{err}"
    );
    let sockets = err
        .split("listening sockets in the node: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("the node's sockets are listed\n{err}"));
    assert!(
        sockets.contains(":2579") && !sockets.contains("127.0.0.1:2579"),
        "the listen port on another address: {sockets}"
    );
    assert!(
        err.contains("broken-vendor: mode wrong-address"),
        "log tail\n{err}"
    );
}

#[test]
fn an_interceptor_that_installs_no_rules_is_stopped_before_the_cases() {
    let test = "an_interceptor_that_installs_no_rules_is_stopped_before_the_cases";
    if !netns_or_skip(test) || !python_or_skip(test) {
        return;
    }
    let err = run_broken(&python("no-rules", "127.0.0.1"));
    assert!(
        err.contains("interceptor on node-1 installs no redirect rules"),
        "{err}"
    );
    assert!(
        err.contains(
            "`iptables-save -t nat` in the node shows no DNAT/REDIRECT of 169.254.169.254"
        ),
        "{err}"
    );
    assert!(err.contains("no rule mentions 169.254.169.254"), "{err}");
    assert!(
        err.contains("broken-vendor: mode no-rules"),
        "log tail\n{err}"
    );
}
