//! Shared helpers of the netns_* integration tests: the SKIP guard, the 2-node topology the tests build,
//! and a tiny "who answered, and whom did it see" TCP server standing in for IMDS / NMI / the API server.

#![allow(dead_code)] // each test binary uses a different subset

use std::{net::SocketAddr, time::Duration};

use imds_conformance::netns::{self, NetnsError, Node, NodeSpec, Topology, TopologySpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// True when the netns backend can run; otherwise prints a loud SKIP with the reason.
pub fn supported(test: &str) -> bool {
    match netns::netns_supported() {
        Ok(()) => true,
        Err(reason) => {
            eprintln!("SKIP: {test}: {reason}");
            false
        }
    }
}

/// `spec` built for `test`; `None` after a loud SKIP when the netns backend cannot run here.
pub async fn topology_or_skip(test: &str, spec: TopologySpec) -> Option<Topology> {
    if !supported(test) {
        return None;
    }
    Some(Topology::create(spec).await.expect("topology"))
}

/// Node `n1` of `topo`, the IMDS address, and a tag server `tag` standing in for n1's IMDS (it serves
/// until its handle is dropped with the runtime).
pub fn n1_with_imds(
    topo: &Topology,
    tag: &'static str,
) -> (Node, SocketAddr, tokio::task::JoinHandle<()>) {
    let n1 = topo.node("n1").expect("n1").clone();
    let imds = topo.imds_addr();
    let server = serve_imds(&n1.host_side_ns, imds, tag);
    (n1, imds, server)
}

/// 2 nodes × 2 pods, plus a host-network pod on n1.
pub fn two_by_two() -> TopologySpec {
    TopologySpec::new()
        .node(NodeSpec::new("n1").pod("p1").pod("p2").host_pod("h1"))
        .node(NodeSpec::new("n2").pod("p3").pod("p4"))
}

/// The smallest topology: one node `n1` with one pod `p1`.
pub fn one_pod() -> TopologySpec {
    TopologySpec::new().node(NodeSpec::new("n1").pod("p1"))
}

/// Serves `listener` (bound in some namespace) forever: each connection gets one line
/// `"<tag> <peer address>\n"` and is closed. The task ends when its handle is aborted or dropped with
/// the runtime.
pub fn serve_tag(
    listener: std::net::TcpListener,
    tag: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(format!("{tag} {peer}\n").as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

/// A tag server standing in for a VM's IMDS: bound to `imds` in that VM's host-side namespace.
pub fn serve_imds(
    host_side_ns: &str,
    imds: SocketAddr,
    tag: &'static str,
) -> tokio::task::JoinHandle<()> {
    serve_tag(
        netns::bind_in(host_side_ns, imds).expect("bind imds on the host side"),
        tag,
    )
}

/// [`netns::exec_in`] with an owned argv (as the library builds them).
pub async fn exec_argv(
    ns: &str,
    argv: &[String],
) -> Result<imds_conformance::process::ToolOutput, NetnsError> {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    netns::exec_in(ns, &args).await
}

/// Connects from namespace `ns` to `addr`, reads the tag server's line and returns (tag, peer it saw).
pub async fn ask(
    ns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(String, SocketAddr), NetnsError> {
    let mut stream = netns::connect_in(ns, addr, timeout).await?;
    let mut line = String::new();
    let read = tokio::time::timeout(timeout, stream.read_to_string(&mut line)).await;
    let parse_err = || NetnsError::Parse {
        what: "tag server reply",
        line: line.clone(),
    };
    match read {
        Ok(Ok(_)) => {}
        _ => return Err(parse_err()),
    }
    let mut parts = line.split_whitespace();
    let tag = parts.next().ok_or_else(parse_err)?.to_string();
    let peer = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(parse_err)?;
    Ok((tag, peer))
}

/// Names in `ip netns list`, root links and root `iptables-save` lines that mention `prefix`.
pub async fn leftovers(prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = netns::netns_list()
        .await
        .expect("ip netns list")
        .into_iter()
        .filter(|ns| ns.contains(prefix))
        .map(|ns| format!("netns {ns}"))
        .collect();
    found.extend(
        netns::root_link_names()
            .await
            .expect("ip link")
            .into_iter()
            .filter(|l| l.contains(prefix))
            .map(|l| format!("root link {l}")),
    );
    found.extend(
        netns::root_iptables_save()
            .await
            .expect("iptables-save")
            .lines()
            .filter(|l| l.contains(prefix))
            .map(|l| format!("root rule {l}")),
    );
    found
}
