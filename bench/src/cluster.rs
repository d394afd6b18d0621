//! Section 4, the cluster view at scale: the test API server (`kube_test_apiserver`) holds
//! N nodes × 20 pods and one AzureAssignedIdentity per pod; one imds-proxy *process* for `node-0`
//! is started against it, once with label filtering (`--enableScaleFeatures=true`) and once
//! without. Measured: bytes the API server sent to that proxy (its per-client accounting), time
//! from spawn to `/healthz` = `Active`, and the process's VmRSS once ready.
//!
//! This module drives the proxy only through its command line and its probe port (a black box,
//! like the harness does); it must not reach into the proxy's internals.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube_test_apiserver::ApiServer;
use serde_json::json;

pub const PODS_PER_NODE: usize = 20;
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// One proxy run against the populated API server.
pub struct ProxyRun {
    pub filtering: bool,
    pub ready_after: Duration,
    pub rss_kib: Option<u64>,
    pub aai_bytes: u64,
    pub pod_bytes: u64,
    pub total_bytes: u64,
}

/// Writes N × 20 pods and as many AAIs into `api`.
pub fn populate(api: &ApiServer, nodes: usize) -> Result<Duration> {
    let start = Instant::now();
    for n in 0..nodes {
        let node = format!("node-{n}");
        for i in 0..PODS_PER_NODE {
            let k = n * PODS_PER_NODE + i;
            let pod = format!("app-{n}-{i}");
            let ip = format!("10.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255);
            let client_id = format!("{:08x}-0000-4000-8000-{:012x}", n, k);
            api.apply(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "default",
                             "labels": {"app": format!("app-{n}"), "aadpodidbinding": format!("id-{n}")}},
                "spec": {"nodeName": node,
                         "containers": [{"name": "app", "image": "mcr.microsoft.com/azure-cli:2.61.0"}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.240.0.4"}
            }))
            .with_context(|| format!("creating pod {pod}"))?;
            api.apply(json!({
                "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
                "metadata": {"name": format!("{pod}-default-id-{n}"), "namespace": "default",
                             "labels": {"nodename": node}},
                "spec": {
                    "pod": pod, "podNamespace": "default", "nodename": node,
                    "azureIdentityRef": {
                        "metadata": {"name": format!("id-{n}"), "namespace": "default"},
                        "spec": {"type": 0, "clientID": client_id,
                                 "resourceID": format!("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-{n}")}
                    },
                    "azureBindingRef": {
                        "metadata": {"name": format!("id-{n}-binding"), "namespace": "default"},
                        "spec": {"azureIdentity": format!("id-{n}"), "selector": format!("id-{n}")}
                    }
                },
                "status": {"status": "Assigned", "availableReplicas": 1}
            }))
            .with_context(|| format!("creating the AAI of {pod}"))?;
        }
    }
    Ok(start.elapsed())
}

fn free_port() -> Result<u16> {
    // Bind-and-release: a small race with other processes, acceptable for a benchmark on loopback.
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn healthz_active(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200") && out.contains("Active") && !out.contains("Not Active")
}

/// VmRSS of a process in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        // SIGTERM (the proxy removes nothing: --manage-iptables=false), then a bounded wait, then SIGKILL.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts one proxy process for `node-0` and measures it.
pub fn run_proxy(
    api: &ApiServer,
    proxy_bin: &Path,
    dir: &Path,
    imds: SocketAddr,
    filtering: bool,
) -> Result<ProxyRun> {
    let key = format!("bench-filter-{}", if filtering { "on" } else { "off" });
    let kubeconfig: PathBuf = dir.join(format!("{key}.yaml"));
    api.write_kubeconfig(&kubeconfig, &key)
        .context("writing kubeconfig")?;
    let (nmi, probe, prom) = (free_port()?, free_port()?, free_port()?);
    let start = Instant::now();
    let child = Command::new(proxy_bin)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args([
            "--node=node-0",
            "--manage-iptables=false",
            "--nmi-listen-address=127.0.0.1",
            "--probe-listen-address=127.0.0.1",
        ])
        .arg(format!("--nmi-port={nmi}"))
        .arg(format!("--http-probe-port={probe}"))
        .arg(format!("--prometheus-port={prom}"))
        .arg(format!("--metadata-ip={}", imds.ip()))
        .arg(format!("--metadata-port={}", imds.port()))
        .arg(format!("--enableScaleFeatures={filtering}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", proxy_bin.display()))?;
    let mut child = Reaper(child);
    let probe_addr = SocketAddr::from(([127, 0, 0, 1], probe));
    loop {
        if healthz_active(probe_addr) {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            bail!("imds-proxy exited before ready: {status}");
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("imds-proxy not ready after {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready_after = start.elapsed();
    // Let allocations from the initial list settle before reading RSS.
    std::thread::sleep(Duration::from_millis(500));
    let rss_kib = vm_rss_kib(child.0.id());
    let stats = api.stats().client(&key);
    drop(child);
    Ok(ProxyRun {
        filtering,
        ready_after,
        rss_kib,
        aai_bytes: stats.resource("azureassignedidentities").bytes_sent,
        pod_bytes: stats.resource("pods").bytes_sent,
        total_bytes: stats.bytes_sent,
    })
}
