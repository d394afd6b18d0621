//! Nothing is left behind: teardown (and drop) remove every namespace, veth and process of a topology; a
//! run killed with SIGINT mid-way removes everything with its prefix; the start-up sweep removes only
//! leftovers whose owner PID is dead. Needs root; SKIPs loudly otherwise.

mod netns_common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use imds_conformance::netns::{self, NodeSpec, Topology, TopologySpec};
use netns_common::{leftovers, one_pod, supported, topology_or_skip, two_by_two};

/// Child-process helpers are driven through these variables; without them the helper tests do nothing.
const CHILD_ENV: &str = "IMDSC_NETNS_SIGINT_CHILD";

fn pid_gone(pid: i32) -> bool {
    // A zombie still has a /proc entry; check its state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_removes_namespaces_links_and_processes() {
    let Some(topo) = topology_or_skip(
        "teardown_removes_namespaces_links_and_processes",
        two_by_two(),
    )
    .await
    else {
        return;
    };
    let prefix = topo.prefix().to_string();
    assert_eq!(topo.namespaces().len(), 1 + 2 + 2 + 4);
    let listed = netns::netns_list().await.expect("list");
    for ns in topo.namespaces() {
        assert!(listed.contains(&ns), "{ns} missing from ip netns list");
    }
    // Veth ends live only inside our namespaces: the root namespace never saw them.
    assert!(
        netns::root_link_names()
            .await
            .expect("links")
            .iter()
            .all(|l| !l.contains(&prefix))
    );
    assert!(
        netns::Ip::new(&topo.node("n1").expect("n1").ns)
            .link_names()
            .await
            .expect("links")
            .iter()
            .any(|l| l == "hs0")
    );

    // The node's rules carry the prefix, so the root-table check after teardown would catch a leak.
    let rules = netns::iptables_save(&topo.node("n1").expect("n1").ns, None)
        .await
        .expect("iptables-save");
    assert_eq!(
        rules.matches(prefix.as_str()).count(),
        2,
        "FORWARD state rule + MASQUERADE:\n{rules}"
    );

    // A process started inside a pod (as the harness starts mock-imds or an interceptor) and one it forks.
    let pod_ns = topo.pod("p1").expect("p1").ns.clone();
    let mut child = netns::command_in(&pod_ns, "sh")
        .args(["-c", "sleep 300 & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id().expect("pid") as i32;
    let mut grandchild = String::new();
    if let Some(out) = child.stdout.take() {
        use tokio::io::AsyncBufReadExt;
        tokio::io::BufReader::new(out)
            .read_line(&mut grandchild)
            .await
            .expect("read pid");
    }
    let grandchild: i32 = grandchild.trim().parse().expect("grandchild pid");
    assert_eq!(
        netns::pids_in_netns(&pod_ns).len(),
        2,
        "both processes run inside the pod"
    );

    topo.teardown().await.expect("teardown");
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("child ended")
        .expect("wait");
    assert!(
        !status.success(),
        "the process was killed, not finished: {status}"
    );
    assert!(
        pid_gone(pid) && pid_gone(grandchild),
        "processes inside the topology are gone"
    );
    assert_eq!(leftovers(&prefix).await, Vec::<String>::new());
    topo.teardown().await.expect("teardown is idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_topology_removes_it() {
    let Some(topo) = topology_or_skip("dropping_a_topology_removes_it", one_pod()).await else {
        return;
    };
    let prefix = topo.prefix().to_string();
    let standing = netns::registered_namespaces().expect("list");
    assert_eq!(
        standing
            .iter()
            .filter(|n| netns::belongs_to(&prefix, n))
            .count(),
        4,
        "{standing:?}"
    );
    drop(topo);
    assert_eq!(leftovers(&prefix).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_removes_what_it_created() {
    if !supported("a_failed_build_removes_what_it_created") {
        return;
    }
    // A namespace squatting on the host side's name makes `ip netns add` fail half-way.
    let spec = TopologySpec::new()
        .node(NodeSpec::new("n1").pod("p1"))
        .node(NodeSpec::new("n2"));
    let squatter = format!("{}-n2-hs", spec.run_prefix);
    std::process::Command::new("ip")
        .args(["netns", "add", &squatter])
        .status()
        .expect("ip netns add");
    let err = Topology::create(spec.clone())
        .await
        .expect_err("build must fail");
    assert!(
        err.to_string().contains("n2-hs"),
        "error names the failing step: {err}"
    );
    // Everything is gone, the squatter included (it carries the prefix).
    assert_eq!(leftovers(&spec.run_prefix).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_stale_removes_dead_owners_only() {
    if !supported("sweep_stale_removes_dead_owners_only") {
        return;
    }
    let mut exited = Command::new("true").spawn().expect("spawn true");
    let dead_pid = exited.id();
    exited.wait().expect("wait true");
    assert!(!netns::pid_alive(dead_pid as i32));
    let tag = &uuid_like();
    let dead = format!("{}{dead_pid}-{tag}-n1", netns::ROOT_PREFIX);
    let alive = format!("{}{}-{tag}-n1", netns::ROOT_PREFIX, std::process::id());
    for ns in [&dead, &alive] {
        assert!(
            Command::new("ip")
                .args(["netns", "add", ns])
                .status()
                .expect("ip")
                .success()
        );
    }
    // A process left running inside the dead run's namespace is killed by the sweep too.
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &dead, "sleep", "300"])
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(5);
    while netns::pids_in_netns(&dead).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }

    let removed = netns::sweep_stale(netns::ROOT_PREFIX).expect("sweep");
    assert!(
        removed.contains(&dead),
        "{dead} must be swept, removed {removed:?}"
    );
    assert!(
        !removed.contains(&alive),
        "{alive} belongs to a live process"
    );
    let registered = netns::registered_namespaces().expect("list");
    assert!(!registered.contains(&dead));
    assert!(registered.contains(&alive));
    assert!(
        !orphan.wait().expect("wait orphan").success(),
        "the orphan was killed"
    );

    netns::cleanup_prefix(&alive).await.expect("cleanup");
    assert!(
        !netns::registered_namespaces()
            .expect("list")
            .contains(&alive)
    );
}

fn uuid_like() -> String {
    // The run prefix's random part is as good a tag as any.
    netns::new_run_prefix()
        .rsplit('-')
        .next()
        .unwrap_or("x")
        .to_string()
}

/// Runs this test binary again as a child that builds a topology under `install_signal_cleanup`, sends it
/// SIGINT at `phase`, and returns (prefix, exit code, PID the child started inside a pod, if it got that far).
fn sigint_child(phase: &str) -> (String, Option<i32>, Option<i32>) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "sigint_child_process",
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, phase)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut prefix = None;
    let mut inner_pid = None;
    for line in lines.by_ref() {
        let line = line.expect("child stdout");
        // libtest prints "test NAME ... " without a newline before the child's first line.
        if let Some((_, p)) = line.split_once("PREFIX=") {
            prefix = Some(p.to_string());
            if phase == "mid-build" {
                break;
            }
        }
        if let Some((_, pid)) = line.split_once("INNER_PID=") {
            inner_pid = pid.parse().ok();
            break;
        }
    }
    let prefix = prefix.expect("child printed its prefix");
    if phase == "mid-build" {
        // Wait until the build has started (first namespace exists), then interrupt it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && !netns::registered_namespaces()
                .expect("list")
                .iter()
                .any(|n| netns::belongs_to(&prefix, n))
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let standing = netns::registered_namespaces()
        .expect("list")
        .iter()
        .filter(|n| netns::belongs_to(&prefix, n))
        .count();
    eprintln!(
        "sigint_child({phase}): {standing} namespaces of {prefix} standing when SIGINT is sent"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(lines);
    (prefix, status.code(), inner_pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_build_leaves_nothing_behind() {
    if !supported("sigint_mid_build_leaves_nothing_behind") {
        return;
    }
    let (prefix, code, _) = tokio::task::spawn_blocking(|| sigint_child("mid-build"))
        .await
        .expect("child");
    assert_eq!(code, Some(130), "the cleanup handler exits with 128+SIGINT");
    assert_eq!(leftovers(&prefix).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_after_build_kills_processes_and_leaves_nothing_behind() {
    if !supported("sigint_after_build_kills_processes_and_leaves_nothing_behind") {
        return;
    }
    let (prefix, code, inner) = tokio::task::spawn_blocking(|| sigint_child("built"))
        .await
        .expect("child");
    assert_eq!(code, Some(130));
    let inner = inner.expect("child started a process inside the topology");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pid_gone(inner) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        pid_gone(inner),
        "process {inner} inside the topology was killed"
    );
    assert_eq!(leftovers(&prefix).await, Vec::<String>::new());
}

/// Not a test on its own: the child process of the two SIGINT tests above (it waits for a signal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the sigint_* tests; does nothing unless IMDSC_NETNS_SIGINT_CHILD is set"]
async fn sigint_child_process() {
    let Ok(phase) = std::env::var(CHILD_ENV) else {
        eprintln!("SKIP: sigint_child_process only runs as the child of the sigint_* tests");
        return;
    };
    netns::install_signal_cleanup().expect("signal handler");
    // Big enough that the build takes a while, so SIGINT lands in the middle of it.
    let mut spec = TopologySpec::new();
    for n in 1..=4 {
        spec = spec.node(
            NodeSpec::new(format!("n{n}"))
                .pod(format!("a{n}"))
                .pod(format!("b{n}"))
                .pod(format!("c{n}")),
        );
    }
    println!("PREFIX={}", spec.run_prefix);
    let topo = match Topology::create(spec).await {
        Ok(topo) => topo,
        Err(err) => {
            // Interrupted: the signal task is removing everything and will exit the process.
            eprintln!("child: build stopped: {err}");
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
    };
    let _ = phase;
    let inner = netns::command_in(&topo.pod("a1").expect("a1").ns, "sleep")
        .arg("300")
        .spawn()
        .expect("spawn inside");
    println!("INNER_PID={}", inner.id().unwrap_or(0));
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(topo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_environment_outlives_its_handle_and_is_removed_through_attach() {
    if !supported("a_kept_environment_outlives_its_handle_and_is_removed_through_attach") {
        return;
    }
    let spec = one_pod();
    let topo = Topology::create(spec.clone()).await.expect("topology");
    let prefix = topo.keep_standing();
    assert_eq!(prefix, spec.run_prefix);
    let standing = || {
        netns::registered_namespaces()
            .expect("list")
            .into_iter()
            .filter(|n| netns::belongs_to(&prefix, n))
            .count()
    };
    assert_eq!(standing(), 4, "keep_standing disarms the drop-time cleanup");

    // `env exec` / `env down` in another process: attach by spec; dropping the handle keeps it standing.
    let attached = Topology::attach(&spec).expect("attach");
    assert_eq!(
        attached.pod("p1").expect("p1").ip.to_string(),
        "10.244.1.10"
    );
    drop(attached);
    assert_eq!(standing(), 4);
    let attached = Topology::attach(&spec).expect("attach");
    attached.teardown().await.expect("teardown");
    assert_eq!(leftovers(&prefix).await, Vec::<String>::new());
    assert!(
        Topology::attach(&spec).is_err(),
        "nothing left to attach to"
    );
}
