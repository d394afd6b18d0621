//! The netns topology behaves like an Azure node (SPEC §4): pods and the node reach their VM's IMDS on the
//! host side (pods forwarded and masqueraded, the node locally generated), NMI's DNAT intercepts pod
//! traffic only, AKS's FORWARD DROP times pods out but not the node, conntrack tracks pod flows, and every
//! node reaches the API server's address in the cluster namespace. Needs root; SKIPs loudly otherwise.

mod netns_common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use imds_conformance::backend::interceptor::aks_rule_argv;
use imds_conformance::netns::{self, IMDS_IP, NetnsError, Topology};
use netns_common::{
    CONNECT_TIMEOUT, ask, exec_argv, n1_with_imds, one_pod, serve_imds, serve_tag, supported,
    topology_or_skip, two_by_two,
};

/// Packet count of the rule carrying `comment` in `iptables-save -c` output.
fn counter(save: &str, comment: &str) -> u64 {
    let line = save
        .lines()
        .find(|l| l.contains(comment))
        .unwrap_or_else(|| panic!("no rule {comment} in\n{save}"));
    let packets = line
        .strip_prefix('[')
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no counters in {line}"));
    packets
        .parse()
        .unwrap_or_else(|_| panic!("bad counter in {line}"))
}

/// Inserts a rule without target at the top of `chain` (filter table) that only counts IMDS packets.
async fn insert_counter(ns: &str, chain: &str, comment: &str) {
    netns::exec_in(
        ns,
        &[
            "iptables",
            "-I",
            chain,
            "1",
            "-d",
            "169.254.169.254/32",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-m",
            "comment",
            "--comment",
            comment,
        ],
    )
    .await
    .expect("count rule");
}

/// Asserts that node `n1` itself and its host-network pod `h1` (locally generated traffic) reach the
/// VM's IMDS un-intercepted.
async fn assert_node_side_reaches_imds(topo: &Topology, imds: SocketAddr, why: &str) {
    let n1 = topo.node("n1").expect("n1");
    for who in [n1.ns.as_str(), topo.pod("h1").expect("h1").ns.as_str()] {
        let (tag, _) = ask(who, imds, CONNECT_TIMEOUT).await.expect(why);
        assert_eq!(tag, "imds", "{why}");
    }
}

async fn filter_counters(ns: &str) -> String {
    let out = netns::exec_in(ns, &["iptables-save", "-c", "-t", "filter"])
        .await
        .expect("iptables-save -c");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_node_reach_their_vm_imds_forwarded_and_masqueraded() {
    if !supported("pods_and_node_reach_their_vm_imds_forwarded_and_masqueraded") {
        return;
    }
    let root_sysctls = || -> Vec<String> {
        [
            "ip_forward",
            "conf/all/route_localnet",
            "conf/default/route_localnet",
            "conf/all/rp_filter",
        ]
        .iter()
        .map(|k| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{k}")).expect("root sysctl"))
        .collect()
    };
    let root_before = root_sysctls();
    let topo = Topology::create(two_by_two()).await.expect("topology");
    let n1 = topo.node("n1").expect("n1").clone();
    let n2 = topo.node("n2").expect("n2").clone();
    assert_eq!(
        root_sysctls(),
        root_before,
        "the root namespace's sysctls are never touched"
    );
    // Cross-check the in-thread sysctl writes through a process that runs inside the node.
    let seen = netns::exec_in(
        &n1.ns,
        &[
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv4/conf/all/route_localnet",
        ],
    )
    .await
    .expect("cat sysctls");
    assert_eq!(String::from_utf8_lossy(&seen.stdout), "1\n1\n");
    let imds = topo.imds_addr();
    assert_eq!(
        imds,
        SocketAddr::from((Ipv4Addr::new(169, 254, 169, 254), 80))
    );
    let _imds1 = serve_imds(&n1.host_side_ns, imds, "imds-n1");
    let _imds2 = serve_imds(&n2.host_side_ns, imds, "imds-n2");

    // Kubernetes-node sysctls inside the node, and nothing of it leaked into the root namespace's view.
    for key in [
        "net/ipv4/ip_forward",
        "net/ipv4/conf/all/route_localnet",
        "net/ipv4/conf/cbr0/route_localnet",
    ] {
        assert_eq!(
            netns::read_sysctl_in(&n1.ns, key).expect("sysctl"),
            "1",
            "{key} in node"
        );
    }

    // Count IMDS packets per chain in n1 (rules without a target only count).
    insert_counter(&n1.ns, "FORWARD", "imdsc-count-forward").await;
    insert_counter(&n1.ns, "OUTPUT", "imdsc-count-output").await;

    // A pod: answered by its VM's IMDS, which sees the node's address (masquerade). Forwarded, not output.
    let p1 = topo.pod("p1").expect("p1");
    let (tag, peer) = ask(&p1.ns, imds, CONNECT_TIMEOUT)
        .await
        .expect("p1 -> imds");
    assert_eq!(tag, "imds-n1");
    assert_eq!(
        peer.ip(),
        n1.ip,
        "IMDS must see the node address, not the pod's {}",
        p1.ip
    );
    let save = filter_counters(&n1.ns).await;
    assert!(
        counter(&save, "imdsc-count-forward") > 0,
        "pod traffic must be forwarded:\n{save}"
    );
    assert_eq!(
        counter(&save, "imdsc-count-output"),
        0,
        "pod traffic must not be output:\n{save}"
    );

    // The node and a host-network pod (same namespace): locally generated, never forwarded.
    let forwarded_before = counter(&save, "imdsc-count-forward");
    for who in [n1.ns.as_str(), topo.pod("h1").expect("h1").ns.as_str()] {
        let (tag, peer) = ask(who, imds, CONNECT_TIMEOUT).await.expect("node -> imds");
        assert_eq!(
            (tag.as_str(), peer.ip()),
            ("imds-n1", std::net::IpAddr::V4(n1.ip))
        );
    }
    let save = filter_counters(&n1.ns).await;
    assert!(
        counter(&save, "imdsc-count-output") > 0,
        "node traffic must be output:\n{save}"
    );
    assert_eq!(
        counter(&save, "imdsc-count-forward"),
        forwarded_before,
        "node traffic is not forwarded"
    );

    // Every pod reaches its own VM's IMDS only.
    for (pod, tag, node_ip) in [
        ("p2", "imds-n1", n1.ip),
        ("p3", "imds-n2", n2.ip),
        ("p4", "imds-n2", n2.ip),
    ] {
        let pod = topo.pod(pod).expect("pod");
        let (got, peer) = ask(&pod.ns, imds, CONNECT_TIMEOUT)
            .await
            .expect("pod -> imds");
        assert_eq!(
            (got.as_str(), peer.ip()),
            (tag, std::net::IpAddr::V4(node_ip)),
            "pod {}",
            pod.name
        );
    }
    topo.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmi_dnat_to_localhost_intercepts_pod_traffic_but_not_node_traffic() {
    let Some(topo) = topology_or_skip(
        "nmi_dnat_to_localhost_intercepts_pod_traffic_but_not_node_traffic",
        two_by_two(),
    )
    .await
    else {
        return;
    };
    let (n1, imds, _imds1) = n1_with_imds(&topo, "imds");
    let _imds2 = serve_imds(&topo.node("n2").expect("n2").host_side_ns, imds, "imds");
    let nmi_listener =
        netns::bind_in(&n1.ns, "127.0.0.1:0".parse().expect("addr")).expect("bind nmi");
    let nmi_port = nmi_listener.local_addr().expect("port").port();
    let _nmi = serve_tag(nmi_listener, "nmi");

    // NMI's exact chain (REFERENCE A.1).
    let rules = format!(
        "*nat\n:aad-metadata - [0:0]\n\
         -I PREROUTING 1 -j aad-metadata\n\
         -A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:{nmi_port}\n\
         -A aad-metadata -j RETURN\nCOMMIT\n"
    );
    netns::exec_in_with(
        &n1.ns,
        &["iptables-restore", "--noflush"],
        Some(rules.as_bytes()),
        netns::DEFAULT_TIMEOUT,
    )
    .await
    .expect("install aad-metadata");

    let p1 = topo.pod("p1").expect("p1");
    let (tag, peer) = ask(&p1.ns, imds, CONNECT_TIMEOUT)
        .await
        .expect("p1 intercepted");
    assert_eq!(tag, "nmi", "pod traffic must be DNATed to the interceptor");
    assert_eq!(
        peer.ip(),
        p1.ip,
        "the interceptor identifies the pod by its own source address"
    );
    assert_node_side_reaches_imds(&topo, imds, "node traffic (OUTPUT) must not be intercepted")
        .await;
    let (tag, _) = ask(&topo.pod("p3").expect("p3").ns, imds, CONNECT_TIMEOUT)
        .await
        .expect("p3");
    assert_eq!(tag, "imds", "n2 has no interceptor");

    // Without route_localnet the kernel drops DNATed-to-127.0.0.1 packets as martians: the rule alone is
    // not enough, which is why the topology sets it.
    netns::write_sysctl_in(
        &n1.ns,
        &[
            ("net/ipv4/conf/all/route_localnet", "0"),
            ("net/ipv4/conf/cbr0/route_localnet", "0"),
        ],
    )
    .expect("sysctl");
    let err = ask(&p1.ns, imds, Duration::from_millis(700))
        .await
        .expect_err("no route_localnet, no interception");
    assert!(
        err.is_connect_timeout(),
        "expected a silent drop, got {err}"
    );
    topo.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aks_forward_drop_times_out_pods_while_the_node_still_connects() {
    let Some(topo) = topology_or_skip(
        "aks_forward_drop_times_out_pods_while_the_node_still_connects",
        two_by_two(),
    )
    .await
    else {
        return;
    };
    let (n1, imds, _imds) = n1_with_imds(&topo, "imds");
    let p1 = topo.pod("p1").expect("p1");
    ask(&p1.ns, imds, CONNECT_TIMEOUT)
        .await
        .expect("reachable before the rule");

    // REFERENCE C: AgentBaker's rule, filter table, FORWARD position 1.
    let node_ip = n1.ip.to_string();
    exec_argv(&n1.ns, &aks_rule_argv(&node_ip, true))
        .await
        .expect("AKS rule");
    let err = netns::connect_in(&p1.ns, imds, Duration::from_millis(800))
        .await
        .expect_err("dropped");
    assert!(
        err.is_connect_timeout(),
        "DROP must time out (no RST), got {err}"
    );
    assert_node_side_reaches_imds(&topo, imds, "node still connects").await;
    exec_argv(&n1.ns, &aks_rule_argv(&node_ip, false))
        .await
        .expect("remove rule");
    ask(&p1.ns, imds, CONNECT_TIMEOUT)
        .await
        .expect("reachable again after removal");
    topo.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conntrack_in_the_node_lists_the_pods_imds_flow() {
    let Some(topo) = topology_or_skip(
        "conntrack_in_the_node_lists_the_pods_imds_flow",
        two_by_two(),
    )
    .await
    else {
        return;
    };
    let n1 = topo.node("n1").expect("n1").clone();
    let imds = topo.imds_addr();
    // A server that keeps connections open, so the flow is ESTABLISHED while we look.
    let listener =
        tokio::net::TcpListener::from_std(netns::bind_in(&n1.host_side_ns, imds).expect("bind"))
            .expect("tokio listener");
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let p2 = topo.pod("p2").expect("p2");
    let stream = netns::connect_in(&p2.ns, imds, CONNECT_TIMEOUT)
        .await
        .expect("connect");
    let local = stream.local_addr().expect("local addr");
    let flows = netns::conntrack_list(&n1.ns).await.expect("conntrack -L");
    let flow = flows
        .iter()
        .find(|f| {
            f.original.src == std::net::IpAddr::V4(p2.ip) && f.original.sport == Some(local.port())
        })
        .unwrap_or_else(|| panic!("no flow from {local} in {flows:#?}"));
    assert_eq!(flow.protocol, "tcp");
    assert_eq!(flow.original.dst, std::net::IpAddr::V4(IMDS_IP));
    assert_eq!(flow.original.dport, Some(80));
    assert_eq!(flow.state.as_deref(), Some("ESTABLISHED"));
    let reply = flow.reply.as_ref().expect("reply tuple");
    assert_eq!(
        reply.dst,
        std::net::IpAddr::V4(n1.ip),
        "masqueraded to the node address"
    );
    drop(stream);
    server.abort();
    topo.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reaches_the_api_server_in_the_cluster_namespace() {
    let Some(topo) = topology_or_skip(
        "every_node_reaches_the_api_server_in_the_cluster_namespace",
        two_by_two(),
    )
    .await
    else {
        return;
    };
    let api =
        netns::bind_in(topo.cluster_ns(), SocketAddr::from((topo.api_ip(), 0))).expect("bind api");
    let api_addr = api.local_addr().expect("api addr");
    assert_eq!(api_addr.ip(), topo.api_ip());
    let _api = serve_tag(api, "api");
    for node in topo.nodes() {
        let (tag, peer) = ask(&node.ns, api_addr, CONNECT_TIMEOUT)
            .await
            .expect("node -> api");
        assert_eq!(
            (tag.as_str(), peer.ip()),
            ("api", std::net::IpAddr::V4(node.ip)),
            "node {}",
            node.name
        );
    }
    // Pods get there too (masqueraded), should a vendor run something in a pod that watches the API.
    let (_, peer) = ask(&topo.pod("p4").expect("p4").ns, api_addr, CONNECT_TIMEOUT)
        .await
        .expect("pod -> api");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(topo.node("n2").expect("n2").ip)
    );
    topo.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_command_and_carry_stderr_timeouts_and_os_errors() {
    let Some(topo) = topology_or_skip(
        "errors_name_the_command_and_carry_stderr_timeouts_and_os_errors",
        one_pod(),
    )
    .await
    else {
        return;
    };
    let node = topo.node("n1").expect("n1");

    let err = netns::exec_in(
        &node.ns,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "no-such-chain",
            "-j",
            "ACCEPT",
        ],
    )
    .await
    .expect_err("unknown chain");
    match &err {
        NetnsError::CommandFailed {
            command, stderr, ..
        } => {
            assert!(command.contains("no-such-chain"), "{command}");
            assert!(!stderr.is_empty(), "stderr is captured: {err}");
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    let err = netns::Ip::new(&node.ns)
        .batch(&["link add x0 type nosuchtype".into()])
        .await
        .expect_err("bad batch");
    assert!(
        err.to_string().contains("nosuchtype"),
        "the failing batch is named: {err}"
    );

    let err = netns::exec_in_with(&node.ns, &["sleep", "5"], None, Duration::from_millis(200))
        .await
        .expect_err("timeout");
    assert!(matches!(err, NetnsError::CommandTimeout { .. }), "{err:?}");

    let missing = format!("{}-missing", topo.prefix());
    let err = netns::bind_in(&missing, "127.0.0.1:0".parse().expect("addr"))
        .expect_err("no such namespace");
    assert!(matches!(err, NetnsError::EnterNamespace { .. }), "{err:?}");

    // Nothing listens on the node's address: a refusal (RST) is not a timeout.
    let err = netns::connect_in(
        &topo.pod("p1").expect("p1").ns,
        SocketAddr::from((node.ip, 9)),
        CONNECT_TIMEOUT,
    )
    .await
    .expect_err("refused");
    assert_eq!(
        err.socket_error_kind(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "{err}"
    );
    assert!(!err.is_connect_timeout());
    topo.teardown().await.expect("teardown");
}
