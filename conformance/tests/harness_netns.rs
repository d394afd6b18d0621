//! The harness on the netns backend (root): every MUST case of nmi-default and hardened passes against
//! imds-proxy, CT and RST included; self-tests prove the kernel areas (CT, IPT, RST) can fail; and after
//! every run — also one interrupted with SIGINT — `ip netns list`, `ip link` and the root iptables hold
//! nothing with the run's prefix. Without root these SKIP loudly.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use imds_conformance::case::Status;

use common::{netns_or_skip, proxy_or_skip, scenario, set};

/// Everything in the system carrying the prefix of runs owned by `pid`.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("{}{pid}-", imds_conformance::netns::ROOT_PREFIX);
    let mut out = Vec::new();
    for (what, args) in [
        ("netns", vec!["ip", "netns", "list"]),
        ("link", vec!["ip", "-o", "link"]),
        ("iptables", vec!["iptables-save"]),
    ] {
        if let Ok(o) = Command::new(args[0]).args(&args[1..]).output() {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                if l.contains(&prefix) {
                    out.push(format!("{what}: {l}"));
                }
            }
        }
    }
    out
}

/// Runs the scenario file `file` on the netns backend with `extra` arguments, one run at a time, and
/// returns it with the child's PID (for the leftover check).
fn run_netns(file: &str, extra: &[&str]) -> (common::Run, u32) {
    let _serial = common::serial_guard();
    let sc = scenario(file);
    let mut args = vec!["--scenario", sc.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend(["--backend", "netns"]);
    common::run_with_pid(&args)
}

fn must_pass(file: &str, test: &str) {
    if !netns_or_skip(test) || proxy_or_skip(test).is_none() {
        return;
    }
    let (r, pid) = run_netns(file, &[]);
    let report = r.assert_conformant();
    assert_eq!(report.backend, "netns");
    for area in ["CT-", "IPT-"] {
        assert!(
            r.ids(Status::Pass).iter().any(|i| i.starts_with(area))
                || file == "nmi-default.yaml" && area == "CT-",
            "{area} cases ran and passed\n{}",
            r.log()
        );
    }
    assert!(leftovers(pid).is_empty(), "leftovers: {:?}", leftovers(pid));
}

#[test]
fn netns_nmi_default_all_must_pass() {
    must_pass("nmi-default.yaml", "netns_nmi_default_all_must_pass");
}

#[test]
fn netns_hardened_all_must_pass() {
    must_pass("hardened.yaml", "netns_hardened_all_must_pass");
}

#[test]
fn netns_nmi_all_features_all_must_pass() {
    must_pass(
        "nmi-all-features.yaml",
        "netns_nmi_all_features_all_must_pass",
    );
}

#[test]
fn netns_aks_restriction_passes_with_aks_rule() {
    if !netns_or_skip("netns_aks_restriction") {
        return;
    }
    let (r, pid) = run_netns("aks-restriction.yaml", &["--interceptor", "aks-rule"]);
    assert_eq!(r.code, 0, "{}", r.log());
    assert_eq!(
        r.ids(Status::Pass).into_iter().collect::<BTreeSet<_>>(),
        set(&[
            "SEC-001", "SEC-002", "SEC-003", "ISO-010", "RST-001", "RST-002", "RST-003", "RST-004",
            "RST-005"
        ]),
        "{}",
        r.log()
    );
    assert!(leftovers(pid).is_empty(), "leftovers: {:?}", leftovers(pid));
}

#[test]
fn selftest_rst_no_rule_but_claimed() {
    if !netns_or_skip("selftest_rst") {
        return;
    }
    let (r, pid) = run_netns("aks-restriction.yaml", &["--interceptor", "none"]);
    // No rule: pods reach IMDS and get the VM's tokens, which the security floor sees too.
    r.assert_fails_exactly(&[
        "SEC-001", "SEC-002", "SEC-003", "RST-001", "RST-003", "RST-005",
    ]);
    assert!(leftovers(pid).is_empty());
}

/// Issue 12: a vendor whose conntrack deletion is too broad (it flushes the whole table at start) fails
/// CT-003, which watches DESTROY events (the kernel rebuilds the established entry, so a later look at the
/// table would not see it).
#[test]
fn selftest_ct_flush_everything_at_start() {
    if !netns_or_skip("selftest_ct_flush") {
        return;
    }
    let Some(proxy) = proxy_or_skip("selftest_ct_flush") else {
        return;
    };
    let template = format!(
        "cmd:sh -c 'conntrack -F >/dev/null 2>&1; exec {} --node={{node}} --kubeconfig={{kubeconfig}} --metadata-ip={{imds_ip}} --metadata-port={{imds_port}} --nmi-listen-address=127.0.0.1 --nmi-port={{listen_port}} --http-probe-port={{probe_port}} --prometheus-port={{metrics_port}} --manage-iptables=true --enable-conntrack-deletion=true --ipt-update-interval-sec=2'",
        proxy.display()
    );
    let (r, _) = run_netns(
        "hardened.yaml",
        &[
            "--interceptor",
            &template,
            "--features",
            "enableConntrackDeletion,iptables",
            "--focus",
            "^CT-003",
        ],
    );
    r.assert_fails_exactly(&["CT-003"]);
    assert!(r.log().contains("destroyed flows of pod"), "{}", r.log());
}

#[test]
fn selftest_ct_deletion_off_but_claimed() {
    if !netns_or_skip("selftest_ct") || proxy_or_skip("selftest_ct").is_none() {
        return;
    }
    let (r, _) = run_netns(
        "nmi-default.yaml",
        &[
            "--focus",
            "^CT",
            "--features",
            "enableConntrackDeletion,iptables,tokens,metadataHeaderRequired",
        ],
    );
    r.assert_fails_exactly(&["CT-001"]);
}

#[test]
fn selftest_ipt_no_interceptor_but_claimed() {
    if !netns_or_skip("selftest_ipt") {
        return;
    }
    let (r, _) = run_netns(
        "nmi-default.yaml",
        &["--interceptor", "none", "--focus", "^IPT"],
    );
    r.assert_fails_exactly(&["IPT-001", "IPT-002", "IPT-004"]);
}

#[test]
fn netns_sigint_midway_leaves_nothing() {
    if !netns_or_skip("netns_sigint_midway") || proxy_or_skip("netns_sigint_midway").is_none() {
        return;
    }
    let _serial = common::serial_guard();
    let sc = scenario("nmi-default.yaml");
    let mut child = Command::new(common::conformance_bin())
        .args([
            "run",
            "--backend",
            "netns",
            "--scenario",
            sc.to_str().unwrap(),
        ])
        .env("IMDS_PROXY_BIN", common::proxy_bin().unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the environment stands (namespaces with this run's prefix exist), then a bit more so
    // cases are running, then interrupt.
    let deadline = Instant::now() + Duration::from_secs(60);
    while leftovers(pid).iter().all(|l| !l.starts_with("netns")) {
        assert!(Instant::now() < deadline, "environment never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    // Our own child, by PID.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "run did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130));
    assert!(
        leftovers(pid).is_empty(),
        "leftovers after SIGINT: {:?}",
        leftovers(pid)
    );
}

/// Sends `GET path` with `Metadata: true` over a connection made inside `ns`; returns (status, body).
async fn get_in(ns: &str, addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use imds_conformance::http::{Conn, Request};
    let stream = imds_conformance::netns::connect_in(ns, addr, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("connect {addr} in {ns}: {e}"));
    // The harness's own client: it decodes chunked bodies (the journal is streamed).
    let r = Conn::new(stream, addr.to_string())
        .send(
            &Request::get(path).metadata(),
            false,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {ns} to {addr}: {e}"));
    (r.status, r.text())
}

/// Issue 10 item 3: each VM's mock serves `/_mock/` only on 127.0.0.1:MOCK_CONTROL_PORT inside its host
/// side. From every pod, node (= host-network pod) and the cluster namespace, the control port is not
/// reachable on any address a namespace could name, and `/_mock/journal` through 169.254.169.254:80 is an
/// unknown IMDS path; from inside the host side (the harness's way in) the control API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_mock_control_api_is_unreachable_from_pods_and_nodes() {
    use imds_conformance::backend::interceptor::InterceptorSpec;
    use imds_conformance::backend::netns::{MOCK_CONTROL_PORT, Netns};
    use std::net::{Ipv4Addr, SocketAddr};
    let test = "netns_mock_control_api_is_unreachable_from_pods_and_nodes";
    if !netns_or_skip(test) {
        return;
    }
    let _serial = common::serial_guard();
    let sc = imds_conformance::scenario::Scenario::load(&scenario("nmi-default.yaml"))
        .expect("scenario");
    let dir = tempfile::tempdir().expect("run dir");
    let prefix = imds_conformance::netns::new_run_prefix();
    let env = Netns::start(&sc, InterceptorSpec::None, &prefix, dir.path())
        .await
        .expect("netns environment");
    let topo = env.topology();
    let outcome = async {
        let mut sources: Vec<String> = topo.pods().iter().map(|p| p.ns.clone()).collect();
        sources.extend(topo.nodes().iter().map(|n| n.ns.clone()));
        sources.push(topo.cluster_ns().to_string());
        sources.sort();
        sources.dedup();
        let mut targets = vec![
            Ipv4Addr::LOCALHOST,
            imds_conformance::netns::IMDS_IP,
            topo.api_ip(),
        ];
        targets.extend(topo.nodes().iter().map(|n| n.ip));
        for ns in &sources {
            for ip in &targets {
                let addr = SocketAddr::from((*ip, MOCK_CONTROL_PORT));
                if let Ok(stream) =
                    imds_conformance::netns::connect_in(ns, addr, Duration::from_secs(2)).await
                {
                    return Err(format!(
                        "{ns} connected to {addr} (peer {:?}): the control port is reachable",
                        stream.peer_addr()
                    ));
                }
            }
            // Through the IMDS address (pods and nodes have a route to it), /_mock/ is only an unknown
            // IMDS path.
            if ns != topo.cluster_ns() {
                let (status, body) = get_in(ns, topo.imds_addr(), "/_mock/journal").await;
                if (status, body.as_str()) != (404, r#"{"error":"Not found"}"#) {
                    return Err(format!("{ns}: GET /_mock/journal via IMDS answered {status} {body}"));
                }
            }
        }
        // The harness's way in: inside each host side, on its loopback.
        for n in topo.nodes() {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, MOCK_CONTROL_PORT));
            let (status, body) = get_in(&n.host_side_ns, addr, "/_mock/journal").await;
            let journal: Vec<serde_json::Value> = serde_json::from_str(&body)
                .map_err(|e| format!("{}: journal over the control port: {status} {body}: {e}", n.name))?;
            if status != 200 || !journal.iter().any(|e| e["path"] == "/_mock/journal") {
                return Err(format!(
                    "{}: the journal lists the pods' /_mock/journal attempts as IMDS requests: {status} {body}",
                    n.name
                ));
            }
        }
        Ok(())
    }
    .await;
    imds_conformance::backend::Backend::teardown(&env).await;
    drop(env);
    if let Err(e) = outcome {
        panic!("{e}");
    }
    assert!(
        prefix_leftovers(&prefix).is_empty(),
        "leftovers: {:?}",
        prefix_leftovers(&prefix)
    );
}

/// Namespaces and links still named with `prefix`.
fn prefix_leftovers(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for args in [vec!["ip", "netns", "list"], vec!["ip", "-o", "link"]] {
        if let Ok(o) = Command::new(args[0]).args(&args[1..]).output() {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(prefix))
                    .map(str::to_string),
            );
        }
    }
    out
}

// ---- `env` (issue 16): named environments a person works in ----

/// `imds-conformance env …` with the test's own state directory and TMPDIR (logs land under it).
struct EnvCli {
    state: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl EnvCli {
    fn new() -> Self {
        EnvCli {
            state: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(common::conformance_bin());
        c.arg("env")
            .args(args)
            .env("IMDS_CONFORMANCE_ENV_DIR", self.state.path())
            .env("TMPDIR", self.tmp.path())
            .env("IMDS_PROXY_BIN", common::proxy_bin().unwrap())
            .env_remove("SUDO_UID")
            .env("NO_COLOR", "1");
        c
    }

    /// Runs `env ARGS` to completion: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let o = self.cmd(args).output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Starts `env up ARGS` and waits until the environment `name` is up; returns the child.
    fn up(&self, name: &str, args: &[&str]) -> std::process::Child {
        let mut child = self
            .cmd(&[&["up", "--name", name][..], args].concat())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let dir = imds_conformance::env::state::StateDir::new(self.state.path());
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(s)) = dir.get(name)
                && s.phase == imds_conformance::env::state::Phase::Up
            {
                return child;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let o = child.wait_with_output().unwrap();
                panic!(
                    "env up {name} exited with {status}\n{}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            assert!(Instant::now() < deadline, "env up {name} never came up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`EnvCli::run`] as another user behind sudo.
    fn run_as(&self, sudo_uid: &str, args: &[&str]) -> (i32, String, String) {
        let o = self.cmd(args).env("SUDO_UID", sudo_uid).output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn state_of(&self, name: &str) -> imds_conformance::env::state::EnvState {
        imds_conformance::env::state::StateDir::new(self.state.path())
            .get(name)
            .unwrap()
            .unwrap()
    }
}

fn curl_or_skip(test: &str) -> bool {
    let ok = Command::new("curl").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIP: {test}: curl not installed (env exec runs it inside the pods)");
    }
    ok
}

const TOKEN_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/";

/// Namespaces of run `prefix` that exist.
fn namespaces_of(prefix: &str) -> Vec<String> {
    imds_conformance::netns::registered_namespaces()
        .unwrap()
        .into_iter()
        .filter(|n| imds_conformance::netns::belongs_to(prefix, n))
        .collect()
}

/// Two environments side by side: distinct prefixes; `exec` needs `--name` then; `--proxy-flag` overrides
/// the scenario's flag (last wins, as NMI); the scenario's VM layout reaches IMDS's "Multiple user assigned
/// identities" answer; a `timeout` around `exec` leaves nothing running; logs and the journal read back;
/// `down` keeps the logs (no colour, no kubeconfig); another user's or a dead environment is refused and a
/// dead one's leftovers are removed by `down`.
#[test]
fn netns_env_side_by_side_exec_signals_override_logs_and_down() {
    let test = "netns_env_side_by_side";
    if !netns_or_skip(test) || proxy_or_skip(test).is_none() || !curl_or_skip(test) {
        return;
    }
    let _serial = common::serial_guard();
    let env = EnvCli::new();
    let real = scenario("nmi-real-timing.yaml");
    let mut a = env.up("a", &[]);
    let mut b = env.up(
        "b",
        &[
            "--scenario",
            real.to_str().unwrap(),
            // The scenario sets 16 / 5 s: overridden, so a pod without identity is answered at once.
            "--proxy-flag=--retry-attempts-for-created=1",
            "--proxy-flag=--retry-attempts-for-assigned=1",
            "--proxy-flag=--find-identity-retry-interval=1",
        ],
    );
    let (sa, sb) = (env.state_of("a"), env.state_of("b"));
    assert_ne!(sa.prefix, sb.prefix);
    assert!(!namespaces_of(&sa.prefix).is_empty() && !namespaces_of(&sb.prefix).is_empty());
    let (code, out, _) = env.run(&["list"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().filter(|l| l.contains(" up ")).count() == 2,
        "{out}"
    );

    // Two environments: no implicit pick.
    let (code, _, err) = env.run(&["exec", "app", "--", "true"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("several") && err.contains("a (up") && err.contains("b (up"),
        "{err}"
    );

    // A token in a, through the interceptor.
    let (code, out, err) = env.run(&[
        "exec",
        "--name",
        "a",
        "app",
        "--",
        "curl",
        "-s",
        "-m",
        "30",
        "-H",
        "Metadata: true",
        TOKEN_URL,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"access_token\""), "{out}");
    // b: the overridden wait loop (NMI's message names the attempts), and the VM's layout.
    let (_, out, _) = env.run(&[
        "exec",
        "--name",
        "b",
        "other",
        "--",
        "curl",
        "-s",
        "-m",
        "60",
        "-H",
        "Metadata: true",
        TOKEN_URL,
    ]);
    assert!(
        out.contains("CREATED state failed after 1 attempts"),
        "{out}"
    );
    let (_, out, _) = env.run(&[
        "exec",
        "--name",
        "b",
        "host-agent",
        "--",
        "curl",
        "-s",
        "-m",
        "30",
        "-H",
        "Metadata: true",
        TOKEN_URL,
    ]);
    assert!(
        out.contains("Multiple user assigned identities exist"),
        "{out}"
    );

    // `timeout` around exec: exec returns and the command is gone.
    let pidfile = env.tmp.path().join("sleep.pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut t = Command::new("timeout");
    t.arg("2").arg(common::conformance_bin()).args([
        "env", "exec", "--name", "a", "app", "--", "sh", "-c", &script,
    ]);
    t.env("IMDS_CONFORMANCE_ENV_DIR", env.state.path());
    let mut child = t.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "timeout + env exec did not return"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(124), "timeout reports the time-out");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !imds_conformance::netns::pid_alive(pid)
            || imds_conformance::env::state::is_zombie(pid as u32),
        "the command (PID {pid}) still runs"
    );

    // Logs and the journal.
    let (code, out, _) = env.run(&["logs", "--name", "a", "imds"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("node-1") && out.contains("GET /metadata/identity/oauth2/token?"),
        "{out}"
    );
    let (code, out, _) = env.run(&["journal", "--name", "a", "node-1"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("/metadata/identity/oauth2/token") && out.contains("    metadata: true"),
        "{out}"
    );

    // Another user's environment is refused.
    let (code, _, err) = env.run_as("4242", &["down", "--name", "a"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("belongs to uid 0") && err.contains("refusing"),
        "{err}"
    );

    // `logs -f` prints what is there and follows until the environment goes down.
    let follow = env
        .cmd(&["logs", "--name", "a", "-f", "imds"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // down: the up process tears down; logs stay (plain text), nothing else does.
    let (code, out, err) = env.run(&["down", "--name", "a"]);
    assert_eq!(code, 0, "{err}");
    let followed = follow.wait_with_output().unwrap();
    assert!(followed.status.success());
    assert!(
        String::from_utf8_lossy(&followed.stdout).contains("GET /metadata/identity/oauth2/token?")
            && String::from_utf8_lossy(&followed.stderr).contains("environment a is down"),
        "{followed:?}"
    );
    assert!(
        out.contains(&format!("logs kept in {}", sa.log_dir.display())),
        "{out}"
    );
    assert!(a.wait().unwrap().success());
    assert!(namespaces_of(&sa.prefix).is_empty());
    let log = std::fs::read_to_string(sa.log_dir.join("node-1-interceptor.log")).unwrap();
    assert!(
        log.contains("imds-proxy ready") && !log.contains('\u{1b}'),
        "no colour in the log file"
    );
    assert!(
        std::fs::read_to_string(sa.log_dir.join("imds.log"))
            .unwrap()
            .contains("-> 200")
    );
    assert!(!sa.log_dir.join("node-1.kubeconfig").exists());

    // b's up process dies without tearing down: exec refuses, list says dead, down removes what is left.
    b.kill().unwrap(); // our own child, by PID
    b.wait().unwrap();
    let (code, _, err) = env.run(&["exec", "app", "--", "true"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("not running") && err.contains("env down --name b"),
        "{err}"
    );
    let (_, out, _) = env.run(&["list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("b ") && l.contains(" dead ")),
        "{out}"
    );
    assert!(!namespaces_of(&sb.prefix).is_empty(), "leftovers to clean");
    let (code, out, err) = env.run(&["down"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("was not running"), "{out}");
    assert!(namespaces_of(&sb.prefix).is_empty());
    let (_, out, _) = env.run(&["list"]);
    assert!(out.starts_with("no environment"), "{out}");
}

/// A failed `env up` (the interceptor refuses an unknown flag) removes its namespaces, state file and
/// directory, keeping only the log with content and saying where it is.
#[test]
fn netns_env_failed_up_cleans_up_after_itself() {
    let test = "netns_env_failed_up";
    if !netns_or_skip(test) || proxy_or_skip(test).is_none() {
        return;
    }
    let _serial = common::serial_guard();
    let env = EnvCli::new();
    let child = env
        .cmd(&["up", "--name", "broken", "--proxy-flag=--no-such-flag"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(leftovers(pid).is_empty(), "leftovers: {:?}", leftovers(pid));
    assert!(
        std::fs::read_dir(env.state.path())
            .unwrap()
            .next()
            .is_none(),
        "no state file left"
    );
    let kept: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("imds-conformance: log kept: "))
        .collect();
    assert_eq!(kept.len(), 1, "{err}");
    assert!(kept[0].ends_with("node-1-interceptor.log"), "{err}");
    let dir = std::path::Path::new(kept[0]).parent().unwrap();
    let files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec!["node-1-interceptor.log".to_string()]);
    assert!(
        std::fs::read_to_string(kept[0])
            .unwrap()
            .contains("no-such-flag")
    );
}
