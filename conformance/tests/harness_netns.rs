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
            "SEC-001", "SEC-002", "ISO-010", "RST-001", "RST-002", "RST-003", "RST-004", "RST-005"
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
    r.assert_fails_exactly(&["SEC-001", "SEC-002", "RST-001", "RST-003", "RST-005"]);
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
