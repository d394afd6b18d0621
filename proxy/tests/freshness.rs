//! Bounded staleness of the cluster view (issue 10, SPEC §2 "fails closed"): with the API server hung (the
//! test API server's stall mode: connections accepted, nothing answered, open watches silent — what a
//! SIGSTOPped API server looks like), black-holed on loopback (a relay that stops forwarding bytes both ways)
//! and black-holed in a network namespace (iptables DROP both ways; root, else `SKIP:`):
//! after the staleness bound no pod receives a token and `/healthz` is not `Active`; a pod that reuses the
//! address of a pod deleted during the outage never receives the deleted pod's identity, not even before
//! the bound; and the proxy recovers once the API server is back. An idle but healthy API server keeps
//! the view fresh.
//!
//! The bound is [`BOUND_MS`] here (the flag's default is 10 s). Waits for recovery are bounded polls;
//! nothing asserts how fast the proxy is, only what it answers once the bound has passed.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use imds_proxy::{Proxy, Settings};
use kube_test_apiserver::{ApiServer, kubeconfig};
use mock_imds::config::UserAssignedIdentity;
use nix::sched::CloneFlags;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Staleness bound of these tests (ms): watches end every second, so an idle view shows proof every
/// second and has two seconds of slack on a busy machine.
const BOUND_MS: u64 = 3000;
const BOUND: Duration = Duration::from_millis(BOUND_MS);
/// Margin after the bound before the "no token" assertions: covers a proof received just before the
/// outage began and processed a little later.
const MARGIN: Duration = Duration::from_millis(1500);

fn bounded(s: &mut Settings) {
    s.cluster_view_staleness_bound_ms = BOUND_MS;
    s.retry_attempts_for_created = 1;
    s.retry_attempts_for_assigned = 1;
    s.find_identity_retry_interval = 1;
}

/// Starts the proxy against `server_url` (the API server, or a relay in front of it).
async fn fixture_via(
    mock: mock_imds::MockImds,
    api: ApiServer,
    server_url: &str,
) -> Result<Fixture, Box<dyn std::error::Error + Send + Sync>> {
    let client_key = format!("proxy-{}", std::process::id());
    let kubeconfig = tempfile::NamedTempFile::new()?.into_temp_path();
    kubeconfig::write_kubeconfig(&kubeconfig, server_url, &client_key)?;
    let mut settings = Settings::for_tests(mock.addr(), NODE);
    settings.kubeconfig = Some(kubeconfig.to_path_buf());
    bounded(&mut settings);
    let proxy = Proxy::start(settings).await?;
    tokio::time::timeout(Duration::from_secs(20), proxy.ready()).await??;
    Ok(Fixture {
        mock,
        api,
        proxy,
        kubeconfig,
        client_key,
    })
}

/// Pod `p1` at 127.0.0.2 with one Assigned identity; returns that identity.
async fn one_pod(
    f: &Fixture,
) -> Result<UserAssignedIdentity, Box<dyn std::error::Error + Send + Sync>> {
    let a = f.mock.assign_identity(uami(0xa1, "id-a"));
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.aai("p1", &a, NODE, "Assigned")?;
    f.wait_for_pod("127.0.0.2").await?;
    f.wait_for_aais("p1", 1, "Assigned").await?;
    Ok(a)
}

async fn health(f: &Fixture) -> reqwest::Result<String> {
    let c = reqwest::Client::builder().no_proxy().build()?;
    c.get(format!("http://{}/healthz", f.proxy.probe_addr()))
        .send()
        .await?
        .text()
        .await
}

/// Token requests the mock received for `id` since its journal was last cleared.
fn upstream_tokens_for(f: &Fixture, id: &UserAssignedIdentity) -> usize {
    f.mock
        .journal()
        .into_iter()
        .filter(|e| e.path == "/metadata/identity/oauth2/token" && e.query.contains(&id.client_id))
        .count()
}

/// Healthy baseline: p1 gets its token, health is `Active`, and it stays so while the API server is idle
/// for several bounds (idle watches must not look stale).
async fn healthy_and_idle(f: &Fixture) -> TestResult {
    let c = client_from("127.0.0.2")?;
    assert_eq!(f.token(&c, "").await?.status(), 200);
    assert_eq!(health(f).await?, "Active");
    tokio::time::sleep(BOUND * 3).await;
    assert_eq!(
        f.proxy.view().ready(),
        Ok(()),
        "idle API server: view stays fresh"
    );
    assert_eq!(f.token(&c, "").await?.status(), 200);
    assert_eq!(health(f).await?, "Active");
    Ok(())
}

/// The outage has begun (hang or black-hole): p1 is deleted and a pod without identity takes its address.
/// From then on no request from that address may get a token, neither before the bound (the proxy asks
/// the API server to confirm the caller) nor after it (the view is not fresh); after the bound nobody
/// gets a token and health is not `Active`.
async fn outage_fails_closed(f: &Fixture, a: &UserAssignedIdentity, began: Instant) -> TestResult {
    f.mock.clear_journal();
    f.api.delete("v1", "Pod", "default", "p1")?;
    f.pod("p1-new", "127.0.0.2", NODE, json!({}))?;
    let reused = client_from("127.0.0.2")?;
    // Before the bound: the cached view still names p1 for this address.
    let resp = f.token(&reused, "").await?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    assert_eq!(status, 500, "reused address during the outage: {body}");
    assert!(body.contains("cluster view unavailable"), "{body}");
    // After the bound: nobody, the reused address included.
    let after = began + BOUND + MARGIN;
    tokio::time::sleep_until(after.into()).await;
    for (ip, extra) in [
        ("127.0.0.2", String::new()),
        ("127.0.0.2", client_id(a)),
        ("127.0.0.9", String::new()),
    ] {
        let resp = f.token(&client_from(ip)?, &extra).await?;
        let status = resp.status().as_u16();
        let body = resp.text().await?;
        assert_eq!(status, 500, "{ip}{extra} after the bound: {body}");
        assert!(body.contains("cluster view unavailable"), "{body}");
    }
    assert_eq!(health(f).await?, "Not Active");
    assert!(f.proxy.view().ready().is_err());
    assert_eq!(
        upstream_tokens_for(f, a),
        0,
        "no token of p1's identity was requested"
    );
    Ok(())
}

/// The API server is back: health returns to `Active` and the new pod at the reused address is refused
/// as a pod without identity (404), never served p1's identity.
async fn recovers(f: &Fixture, a: &UserAssignedIdentity) -> TestResult {
    let reused = client_from("127.0.0.2")?;
    let mut last = (0, String::new());
    for _ in 0..120 {
        let resp = f.token(&reused, "").await?;
        last = (resp.status().as_u16(), resp.text().await?);
        assert_ne!(last.0, 200, "the reused address got a token: {}", last.1);
        if last.0 == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        last.0, 404,
        "after recovery p1-new is a pod without identity: {}",
        last.1
    );
    eventually("health Active again", || f.proxy.view().ready().is_ok()).await?;
    assert_eq!(health(f).await?, "Active");
    assert_eq!(
        upstream_tokens_for(f, a),
        0,
        "no token of p1's identity was requested"
    );
    // And a pod with an identity is served again.
    let b = f.mock.assign_identity(uami(0xb2, "id-b"));
    f.pod("p2", "127.0.0.3", NODE, json!({}))?;
    f.aai("p2", &b, NODE, "Assigned")?;
    f.wait_for_pod("127.0.0.3").await?;
    f.wait_for_aais("p2", 1, "Assigned").await?;
    let status = f
        .token_status_until_ok(&client_from("127.0.0.3")?, 40, Duration::from_millis(250))
        .await?;
    assert_eq!(status, 200);
    Ok(())
}

// ---- hang (stall mode) -------------------------------------------------------------------------------

#[tokio::test]
async fn iso_hung_api_server_fails_closed_never_serves_a_reused_ip_and_recovers() -> TestResult {
    let mock = mock().await?;
    let api = ApiServer::start("127.0.0.1:0".parse()?).await?;
    let url = api.url();
    let f = fixture_via(mock, api, &url).await?;
    let a = one_pod(&f).await?;
    healthy_and_idle(&f).await?;
    let began = Instant::now();
    f.api.set_hung(true);
    outage_fails_closed(&f, &a, began).await?;
    f.api.set_hung(false);
    recovers(&f, &a).await
}

// ---- black-hole on loopback (a relay that stops forwarding) -------------------------------------------

/// A TCP relay in front of the API server. While `drop` is true it forwards nothing in either direction
/// and holds new connections unanswered, as a network path whose packets are dropped.
struct BlackHoleRelay {
    addr: SocketAddr,
    drop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHoleRelay {
    async fn start(to: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (drop, _) = watch::channel(false);
        let rx = drop.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut gate = rx.clone();
                    let _ = gate.wait_for(|d| !*d).await;
                    let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::spawn(pump(ri, wo, rx.clone()));
                    tokio::spawn(pump(ro, wi, rx));
                });
            }
        });
        Ok(Self { addr, drop, task })
    }

    fn set_black_hole(&self, on: bool) {
        self.drop.send_replace(on);
    }
}

impl Drop for BlackHoleRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the black hole is on.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.wait_for(|d| !*d).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn iso_black_holed_api_server_on_loopback_fails_closed_never_serves_a_reused_ip_and_recovers()
-> TestResult {
    let mock = mock().await?;
    let api = ApiServer::start("127.0.0.1:0".parse()?).await?;
    let relay = BlackHoleRelay::start(api.addr()).await?;
    let f = fixture_via(mock, api, &format!("http://{}", relay.addr)).await?;
    let a = one_pod(&f).await?;
    healthy_and_idle(&f).await?;
    let began = Instant::now();
    relay.set_black_hole(true);
    outage_fails_closed(&f, &a, began).await?;
    relay.set_black_hole(false);
    recovers(&f, &a).await
}

// ---- black-hole in a network namespace (iptables DROP; root) ------------------------------------------

const NS_PREFIX: &str = "ipfr-";

/// A network namespace owned by this test, deleted on drop (panics included). Namespaces of killed runs
/// (`ipfr-<pid>-<n>` whose pid is gone) are swept by the next run.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Self, String> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        sweep_stale();
        let name = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn exec(&self, argv: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Drops every packet to and from `port` on this namespace's loopback (both directions: dropping
    /// only one would still let a watch's events arrive).
    fn black_hole(&self, port: u16, on: bool) -> Result<(), String> {
        let port = port.to_string();
        let op = if on { "-I" } else { "-D" };
        for dir in ["--dport", "--sport"] {
            self.exec(&[
                "iptables",
                "-w",
                "5",
                op,
                "INPUT",
                "-p",
                "tcp",
                dir,
                &port,
                "-m",
                "comment",
                "--comment",
                &self.name,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}

fn run(argv: &[&str]) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {argv:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{argv:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale namespace {name} of dead test process {pid}");
            let _ = run(&["ip", "netns", "del", &name]);
        }
    }
}

fn netns_skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "not root: network namespaces and iptables need CAP_SYS_ADMIN/CAP_NET_ADMIN".into(),
        );
    }
    if run(&["ip", "netns", "list"]).is_err() {
        return Some("`ip netns` (iproute2) is not available".into());
    }
    if run(&["iptables", "--version"]).is_err() {
        return Some("`iptables` is not installed (apt-get install -y iptables)".into());
    }
    None
}

/// Everything (mock, API server, proxy, "pods") runs on one thread inside a fresh namespace, on a
/// current-thread runtime, so every socket lives in the namespace; the API server's port is black-holed
/// there with iptables.
#[test]
fn iso_black_holed_api_server_in_netns_fails_closed_never_serves_a_reused_ip_and_recovers()
-> TestResult {
    if let Some(reason) = netns_skip_reason() {
        eprintln!("SKIP: {reason}");
        eprintln!("SKIP: iso_black_holed_api_server_in_netns_... did not run");
        return Ok(());
    }
    let ns = Netns::create()?;
    let path = format!("/run/netns/{}", ns.name);
    let ns_ref = &ns;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> TestResult {
                let file = File::open(&path)?;
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mock = mock().await?;
                    let api = ApiServer::start("127.0.0.1:0".parse()?).await?;
                    let (url, port) = (api.url(), api.addr().port());
                    let f = fixture_via(mock, api, &url).await?;
                    let a = one_pod(&f).await?;
                    healthy_and_idle(&f).await?;
                    let began = Instant::now();
                    ns_ref.black_hole(port, true)?;
                    outage_fails_closed(&f, &a, began).await?;
                    ns_ref.black_hole(port, false)?;
                    recovers(&f, &a).await
                })
            })
            .join()
            .map_err(|_| "the thread inside the namespace panicked")?
    })
}
