//! Root-only integration tests of `imds_proxy::netfilter` against the real kernel, each inside a network
//! namespace it creates (`ipxt-<pid>-<n>`) and deletes on success, failure and panic (a guard's `Drop`);
//! namespaces left by a killed run (Ctrl-C) are swept by the next run when their pid is gone.
//!
//! Shown here (issue 3 acceptance, REFERENCE A.1): the chain listing equals A.1's three lines and the
//! jump sits at `PREROUTING` position 1; reconcile restores a flushed/edited/foreign-ruled chain and
//! reports `Repaired`; the `imds-proxy` binary installs the chain, repairs it periodically and removes it
//! on SIGTERM/SIGINT; conntrack deletion (library and `--enable-conntrack-deletion`) removes only TCP
//! flows to the IMDS address and port. Also the `route_localnet` diagnosis.
//!
//! Safety: every mutating command carries `ip netns exec <our ns>`; the root namespace is never changed,
//! and 169.254.169.254 exists only on the `lo` of a namespace created here. Without root, `ip netns`,
//! `iptables` or `conntrack` the tests print `SKIP: <reason>` and return.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imds_proxy::netfilter::conntrack::{self, Flow};
use imds_proxy::netfilter::{Netfilter, NetfilterConfig, Reconciled, route_localnet_enabled};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

/// REFERENCE A.1, verbatim: `iptables -t nat -S aad-metadata` with NMI's defaults.
const A1_LISTING: [&str; 3] = [
    "-N aad-metadata",
    "-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579",
    "-A aad-metadata -j RETURN",
];
const NS_PREFIX: &str = "ipxt-";

// ---------------------------------------------------------------------------------------------------------
// Environment checks and the namespace guard
// ---------------------------------------------------------------------------------------------------------

fn tool_works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why these tests cannot run here, if they cannot.
fn skip_reason(need_conntrack: bool) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "not root: network namespaces and iptables need CAP_SYS_ADMIN/CAP_NET_ADMIN".into(),
        );
    }
    if !tool_works("ip", &["netns", "list"]) {
        return Some("`ip netns` (iproute2) is not available".into());
    }
    if !tool_works("iptables", &["--version"]) {
        return Some("`iptables` is not installed (apt-get install -y iptables)".into());
    }
    if need_conntrack && !tool_works("conntrack", &["--version"]) {
        return Some("`conntrack` is not installed (apt-get install -y conntrack)".into());
    }
    None
}

/// Prints `SKIP: <reason>` and returns from the test when it cannot run here; otherwise a fresh [`Netns`].
macro_rules! netns_or_skip {
    ($need_conntrack:expr) => {{
        if let Some(reason) = skip_reason($need_conntrack) {
            eprintln!("SKIP: {reason}");
            eprintln!(
                "SKIP: {} did not run",
                std::thread::current().name().unwrap_or(module_path!())
            );
            return;
        }
        Netns::create()
    }};
}

/// A network namespace owned by this test; deleted (with everything in it) on drop, including on panic.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Netns {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        sweep_stale();
        let name = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> argv...`, output captured.
    fn exec(&self, argv: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {} {argv:?}: {e}", self.name))
    }

    /// Like [`Self::exec`], panicking with stderr unless it succeeds; returns stdout.
    fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "ip netns exec {} {argv:?} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `iptables -w 5 -t <table> args...` in the namespace, output captured (for commands expected to fail).
    fn iptables_exec(&self, table: &str, args: &[&str]) -> Output {
        self.exec(&iptables_argv(table, args))
    }

    /// Like [`Self::iptables_exec`], panicking with stderr unless it succeeds; returns stdout.
    fn iptables(&self, table: &str, args: &[&str]) -> String {
        self.ok(&iptables_argv(table, args))
    }

    /// Runs `f` on a fresh thread that has entered this namespace: sockets it creates live in the
    /// namespace for their whole life, whichever thread uses them later.
    fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path)?;
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

/// `iptables -w 5 -t <table> args...`: read independently of the library, but queued on the xtables lock
/// like it.
fn iptables_argv<'a>(table: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["iptables", "-w", "5", "-t", table];
    argv.extend_from_slice(args);
    argv
}

/// Deletes `ipxt-<pid>-<n>` namespaces whose creating process no longer exists (a run killed by Ctrl-C).
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
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn netfilter_in(ns: &Netns) -> Netfilter {
    Netfilter::new(NetfilterConfig {
        netns: Some(ns.name().to_owned()),
        ..NetfilterConfig::default()
    })
}

/// `iptables -t nat -S PREROUTING` rules (without the policy line), read independently of the library.
fn prerouting_rules(ns: &Netns) -> Vec<String> {
    lines(&ns.iptables("nat", &["-S", "PREROUTING"]))
        .into_iter()
        .filter(|l| l.starts_with("-A "))
        .collect()
}

fn chain_listing(ns: &Netns) -> Vec<String> {
    lines(&ns.iptables("nat", &["-S", "aad-metadata"]))
}

/// The chain and the jump are gone, as NMI's e2e checks them after removal (REFERENCE A.1).
fn assert_removed(ns: &Netns) {
    let table = lines(&ns.iptables("nat", &["-S"]));
    assert!(
        !table.iter().any(|l| l.contains("aad-metadata")),
        "nat table still mentions aad-metadata: {table:#?}"
    );
    let check = ns.iptables_exec("nat", &["--check", "PREROUTING", "-j", "aad-metadata"]);
    assert!(
        !check.status.success(),
        "`iptables -t nat --check PREROUTING -j aad-metadata` must fail after removal"
    );
    let list = ns.iptables_exec("nat", &["-L", "aad-metadata"]);
    assert!(
        !list.status.success(),
        "`iptables -t nat -L aad-metadata` must fail after removal"
    );
}

// ---------------------------------------------------------------------------------------------------------
// (a) chain content and jump position
// ---------------------------------------------------------------------------------------------------------

#[test]
fn a1_reconcile_installs_exact_chain_with_jump_at_prerouting_position_1() {
    let ns = netns_or_skip!(false);
    // A rule that is already in PREROUTING (kube-proxy's, say): the jump must go in front of it.
    ns.iptables(
        "nat",
        &[
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            "53",
            "-j",
            "RETURN",
        ],
    );
    let nf = netfilter_in(&ns);

    assert_eq!(
        nf.reconcile().expect("first reconcile"),
        Reconciled::Repaired
    );
    assert_eq!(
        chain_listing(&ns),
        A1_LISTING,
        "chain must equal REFERENCE A.1's listing exactly"
    );
    assert_eq!(
        prerouting_rules(&ns),
        [
            "-A PREROUTING -j aad-metadata",
            "-A PREROUTING -p udp -m udp --dport 53 -j RETURN"
        ],
        "jump must be PREROUTING rule 1"
    );
    assert_eq!(nf.list_rules().expect("list"), A1_LISTING);
    assert_eq!(nf.jump_positions().expect("positions"), [1]);

    // Nothing to do the second time, and nothing is touched.
    assert_eq!(
        nf.reconcile().expect("second reconcile"),
        Reconciled::Unchanged
    );
    assert_eq!(chain_listing(&ns), A1_LISTING);
    assert_eq!(prerouting_rules(&ns).len(), 2);

    // NMI checks the jump's existence, not its position: a jump moved to rule 2 is left alone.
    ns.iptables("nat", &["-D", "PREROUTING", "-j", "aad-metadata"]);
    ns.iptables("nat", &["-A", "PREROUTING", "-j", "aad-metadata"]);
    assert_eq!(nf.reconcile().expect("reconcile"), Reconciled::Unchanged);
    assert_eq!(nf.jump_positions().expect("positions"), [2]);

    nf.remove().expect("remove");
    assert_removed(&ns);
    assert_eq!(
        prerouting_rules(&ns),
        ["-A PREROUTING -p udp -m udp --dport 53 -j RETURN"],
        "removal must leave foreign rules alone"
    );
    nf.remove().expect("remove is idempotent");
    assert!(nf.list_rules().expect("list").is_empty());
}

#[test]
fn a1_listen_on_all_addresses_dnats_to_localhost_and_custom_values_are_rendered() {
    let ns = netns_or_skip!(false);
    let nf = Netfilter::new(NetfilterConfig {
        metadata_ip: Ipv4Addr::new(169, 254, 169, 254),
        metadata_port: 8080,
        target_ip: Ipv4Addr::UNSPECIFIED,
        target_port: 12579,
        netns: Some(ns.name().to_owned()),
        ..NetfilterConfig::default()
    });
    assert_eq!(nf.reconcile().expect("reconcile"), Reconciled::Repaired);
    assert_eq!(
        chain_listing(&ns),
        [
            "-N aad-metadata",
            "-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 127.0.0.1:12579",
            "-A aad-metadata -j RETURN",
        ]
    );
    assert_eq!(nf.reconcile().expect("reconcile"), Reconciled::Unchanged);
    nf.remove().expect("remove");
    assert_removed(&ns);
}

// ---------------------------------------------------------------------------------------------------------
// (b) reconcile repairs every kind of drift
// ---------------------------------------------------------------------------------------------------------

#[test]
fn a1_reconcile_repairs_flushed_edited_and_foreign_ruled_chain() {
    let ns = netns_or_skip!(false);
    let nf = netfilter_in(&ns);
    assert_eq!(nf.reconcile().expect("install"), Reconciled::Repaired);

    let ipt = |args: &[&str]| {
        ns.iptables("nat", args);
    };
    let drifts: Vec<Drift<'_>> = vec![
        ("flushed chain", Box::new(|| ipt(&["-F", "aad-metadata"]))),
        (
            "DNAT rule deleted",
            Box::new(|| ipt(&["-D", "aad-metadata", "1"])),
        ),
        (
            "RETURN rule deleted",
            Box::new(|| ipt(&["-D", "aad-metadata", "2"])),
        ),
        (
            "foreign rule inserted first",
            Box::new(|| ipt(&["-I", "aad-metadata", "1", "-p", "udp", "-j", "RETURN"])),
        ),
        (
            "foreign rule appended",
            Box::new(|| ipt(&["-A", "aad-metadata", "-p", "tcp", "-j", "ACCEPT"])),
        ),
        (
            "DNAT target changed",
            Box::new(|| {
                ipt(&[
                    "-R",
                    "aad-metadata",
                    "1",
                    "!",
                    "-s",
                    "127.0.0.1/32",
                    "-d",
                    "169.254.169.254/32",
                    "-p",
                    "tcp",
                    "-m",
                    "tcp",
                    "--dport",
                    "80",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    "127.0.0.1:9999",
                ])
            }),
        ),
        (
            "jump deleted",
            Box::new(|| ipt(&["-D", "PREROUTING", "-j", "aad-metadata"])),
        ),
        (
            "chain and jump deleted",
            Box::new(|| {
                ipt(&["-D", "PREROUTING", "-j", "aad-metadata"]);
                ipt(&["-F", "aad-metadata"]);
                ipt(&["-X", "aad-metadata"]);
            }),
        ),
    ];
    for (what, drift) in drifts {
        drift();
        assert_ne!(
            (chain_listing_or_empty(&ns), prerouting_rules(&ns)),
            (
                A1_LISTING.map(str::to_owned).to_vec(),
                vec!["-A PREROUTING -j aad-metadata".to_owned()]
            ),
            "drift `{what}` did not change anything (test bug)"
        );
        assert_eq!(
            nf.reconcile()
                .unwrap_or_else(|e| panic!("reconcile after {what}: {e}")),
            Reconciled::Repaired,
            "reconcile after `{what}` must report Repaired"
        );
        assert_eq!(
            chain_listing(&ns),
            A1_LISTING,
            "chain after repairing `{what}`"
        );
        assert_eq!(
            prerouting_rules(&ns),
            ["-A PREROUTING -j aad-metadata"],
            "jump after repairing `{what}`"
        );
        assert_eq!(
            nf.reconcile().expect("reconcile"),
            Reconciled::Unchanged,
            "a repaired chain (`{what}`) needs no further change"
        );
    }
    nf.remove().expect("remove");
    assert_removed(&ns);
}

/// A named way of disturbing the chain from outside.
type Drift<'a> = (&'static str, Box<dyn Fn() + 'a>);

fn chain_listing_or_empty(ns: &Netns) -> Vec<String> {
    let table = lines(&ns.iptables("nat", &["-S"]));
    if table.iter().any(|l| l == "-N aad-metadata") {
        chain_listing(ns)
    } else {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------------------------
// (c) the binary installs the chain and removes it on SIGTERM
// ---------------------------------------------------------------------------------------------------------

/// Kills (SIGKILL, by PID) a child that is still running when the test ends, e.g. after a failed assert.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An `imds-proxy` process running inside a test namespace, with its test API server and its log.
/// Field order is drop order: the child is killed (if still running) before the API server stops.
struct ProxyRun {
    child: ChildGuard,
    api: Option<kube_test_apiserver::ApiServer>,
    runtime: tokio::runtime::Runtime,
    log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ProxyRun {
    /// Starts the test API server on a socket bound inside `ns` (so the proxy, also inside, reaches it at
    /// 127.0.0.1 and nothing is exposed in the root namespace) and `ip netns exec ns imds-proxy args...`.
    /// Ports are NMI's defaults: the namespace is ours, so nothing else can hold them.
    fn start(ns: &Netns, extra_args: &[&str]) -> ProxyRun {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = ns
            .enter(|| TcpListener::bind("127.0.0.1:0"))
            .expect("bind the API server inside the namespace");
        let api = runtime
            .block_on(kube_test_apiserver::ApiServer::start_on(listener))
            .expect("start the test API server");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, "node-1")
            .expect("kubeconfig");
        let log_path = dir.path().join("imds-proxy.log");
        let log = File::create(&log_path).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_imds-proxy")])
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["--node=node-1", "--kubelet-config=/nonexistent/kubelet"])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn imds-proxy inside the namespace");
        ProxyRun {
            child: ChildGuard(Some(child)),
            api: Some(api),
            runtime,
            log_path,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .0
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Polls (100 ms, bounded) until `done()`; fails with the proxy's log on timeout or early exit.
    fn wait_until(&mut self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            if let Some(status) = self.exited() {
                panic!(
                    "imds-proxy exited ({status}) before {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `imds-proxy ready`, logged once the first reconcile (and conntrack deletion) is done.
    fn wait_ready(&mut self) {
        let path = self.log_path.clone();
        self.wait_until(
            "`imds-proxy ready` in the log",
            Duration::from_secs(60),
            || std::fs::read_to_string(&path).is_ok_and(|l| l.contains("imds-proxy ready")),
        );
    }

    /// Sends `signal` and checks what NMI does on it: exit 0 with the chain and the jump removed.
    fn shut_down_cleanly(&mut self, ns: &Netns, signal: Signal) {
        let status = self.terminate(signal);
        assert!(
            status.success(),
            "imds-proxy must exit 0 after a clean {signal} shutdown, got {status}; log:\n{}",
            self.log()
        );
        assert_removed(ns);
    }

    /// Sends `signal` (by PID) and waits (bounded) for the exit status.
    fn terminate(&mut self, signal: Signal) -> std::process::ExitStatus {
        let pid = self.child.0.as_ref().map(Child::id).expect("child");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32")),
            signal,
        )
        .expect("signal the proxy");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "imds-proxy did not exit within 60 s of {signal}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ProxyRun {
    fn drop(&mut self) {
        // Stop the child first (it may still be using the API server), then the server on its runtime.
        drop(self.child.0.take().map(|c| ChildGuard(Some(c))));
        if let Some(api) = self.api.take() {
            self.runtime.block_on(api.shutdown());
        }
    }
}

#[test]
fn a1_proxy_binary_installs_chain_repairs_it_and_removes_it_on_sigterm() {
    let ns = netns_or_skip!(false);
    let mut proxy = ProxyRun::start(&ns, &["--ipt-update-interval-sec=1"]);

    proxy.wait_until(
        "A.1 chain with the jump at PREROUTING 1",
        Duration::from_secs(60),
        || {
            chain_listing_or_empty(&ns) == A1_LISTING
                && prerouting_rules(&ns).first().map(String::as_str)
                    == Some("-A PREROUTING -j aad-metadata")
        },
    );
    proxy.wait_ready();
    assert_eq!(chain_listing(&ns), A1_LISTING);
    assert_eq!(prerouting_rules(&ns), ["-A PREROUTING -j aad-metadata"]);

    // The periodic reconcile (--ipt-update-interval-sec) repairs tampering from outside.
    for argv in [
        &["-D", "PREROUTING", "-j", "aad-metadata"][..],
        &["-F", "aad-metadata"][..],
        &["-A", "aad-metadata", "-p", "tcp", "-j", "ACCEPT"][..],
    ] {
        ns.iptables("nat", argv);
    }
    assert_ne!(chain_listing(&ns), A1_LISTING);
    proxy.wait_until(
        "repair of the tampered chain by the periodic reconcile",
        Duration::from_secs(30),
        || {
            chain_listing_or_empty(&ns) == A1_LISTING
                && prerouting_rules(&ns) == ["-A PREROUTING -j aad-metadata"]
        },
    );

    proxy.shut_down_cleanly(&ns, Signal::SIGTERM);
    assert!(
        prerouting_rules(&ns).is_empty(),
        "PREROUTING must be empty again"
    );
    // Shown with --nocapture: what the proxy said (route_localnet warning, ready, removal).
    eprintln!("imds-proxy log:\n{}", proxy.log());
}

// ---------------------------------------------------------------------------------------------------------
// (d) conntrack deletion removes only TCP flows to IMDS ip:port
// ---------------------------------------------------------------------------------------------------------

const IMDS: &str = "169.254.169.254:80";

/// (protocol, original destination, original source port) of a tracked flow.
type FlowKey = (String, SocketAddr, u16);

/// The sockets of the flows under test, kept open (idle keep-alive connections) until dropped:
/// TCP to 169.254.169.254:80 (the IMDS flow), TCP to 10.213.0.1:80 (same port, other address),
/// TCP to 169.254.169.254:443 (same address, other port) and UDP to 169.254.169.254:80 (other protocol).
struct Flows {
    _listeners: Vec<TcpListener>,
    _servers: Vec<TcpStream>,
    clients: Vec<TcpStream>,
    _udp: Vec<UdpSocket>,
    udp_src: SocketAddr,
}

impl Flows {
    /// Puts the addresses on the namespace's `lo` (they exist nowhere else), adds a stateful rule so the
    /// kernel tracks flows in this namespace (on a node, kube-proxy/CNI rules do), opens the flows and checks
    /// that conntrack lists every one of them.
    fn open(ns: &Netns) -> Flows {
        ns.ok(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]);
        ns.ok(&["ip", "addr", "add", "10.213.0.1/32", "dev", "lo"]);
        ns.iptables(
            "filter",
            &[
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        );
        let imds: SocketAddr = IMDS.parse().expect("literal");
        let targets: [SocketAddr; 3] = [
            imds,
            "10.213.0.1:80".parse().expect("literal"),
            "169.254.169.254:443".parse().expect("literal"),
        ];
        let flows = ns
            .enter(move || {
                let (mut listeners, mut servers, mut clients) =
                    (Vec::new(), Vec::new(), Vec::new());
                for target in targets {
                    let l = TcpListener::bind(target)?;
                    clients.push(TcpStream::connect_timeout(&target, Duration::from_secs(5))?);
                    servers.push(l.accept()?.0);
                    listeners.push(l);
                }
                let udp_server = UdpSocket::bind(imds)?;
                let udp_client = UdpSocket::bind("0.0.0.0:0")?;
                udp_client.send_to(b"ping", imds)?;
                let mut buf = [0u8; 8];
                udp_server.recv_from(&mut buf)?;
                let udp_src = udp_client.local_addr()?;
                Ok(Flows {
                    _listeners: listeners,
                    _servers: servers,
                    clients,
                    _udp: vec![udp_server, udp_client],
                    udp_src,
                })
            })
            .expect("open the flows inside the namespace");
        assert_eq!(
            flows.tracked(ns),
            flows.all(),
            "every flow must be tracked once open"
        );
        flows
    }

    /// All four flows, sorted.
    fn all(&self) -> Vec<FlowKey> {
        let mut v: Vec<FlowKey> = self
            .clients
            .iter()
            .map(|c| {
                let local = c.local_addr().expect("local addr");
                (
                    "tcp".to_owned(),
                    c.peer_addr().expect("peer addr"),
                    local.port(),
                )
            })
            .chain(std::iter::once((
                "udp".to_owned(),
                IMDS.parse().expect("literal"),
                self.udp_src.port(),
            )))
            .collect();
        v.sort();
        v
    }

    /// All flows except TCP to IMDS: what must survive the deletion.
    fn all_but_imds_tcp(&self) -> Vec<FlowKey> {
        let imds: SocketAddr = IMDS.parse().expect("literal");
        self.all()
            .into_iter()
            .filter(|(proto, dst, _)| !(proto == "tcp" && *dst == imds))
            .collect()
    }

    /// Our flows as conntrack lists them in `ns` now (matched by source port), sorted.
    fn tracked(&self, ns: &Netns) -> Vec<FlowKey> {
        let ours: Vec<u16> = self.all().iter().map(|(_, _, sport)| *sport).collect();
        let mut found: Vec<FlowKey> = conntrack::list_flows(false, Some(ns.name()))
            .expect("conntrack -L")
            .into_iter()
            .filter(|f: &Flow| ours.contains(&f.sport))
            .map(|f| (f.protocol, SocketAddr::new(f.dst, f.dport), f.sport))
            .collect();
        found.sort();
        found
    }
}

#[test]
fn a1_conntrack_deletion_removes_only_tcp_flows_to_imds() {
    let ns = netns_or_skip!(true);
    let flows = Flows::open(&ns);
    assert_eq!(flows.all().len(), 4);

    let imds_ip = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
    let deleted =
        conntrack::delete_imds_flows(imds_ip, 80, Some(ns.name())).expect("delete IMDS flows");
    assert_eq!(
        deleted, 1,
        "exactly the one TCP flow to 169.254.169.254:80 is deleted"
    );
    assert_eq!(
        flows.tracked(&ns),
        flows.all_but_imds_tcp(),
        "only the TCP flow to IMDS may disappear"
    );

    // Nothing left to delete: conntrack exits 1 with "0 flow entries", which is Ok(0) for us.
    assert_eq!(
        conntrack::delete_imds_flows(imds_ip, 80, Some(ns.name())).expect("second deletion"),
        0
    );
    // The IPv6 family is selected from the address (and finds nothing here).
    let v6 = "fd00:ec2::254".parse().expect("literal");
    assert_eq!(
        conntrack::delete_imds_flows(v6, 80, Some(ns.name())).expect("IPv6 deletion"),
        0
    );
    // Through the Netfilter handle (the proxy's call), same filter.
    assert_eq!(
        netfilter_in(&ns)
            .delete_imds_flows()
            .expect("handle deletion"),
        0
    );
    assert_eq!(flows.tracked(&ns), flows.all_but_imds_tcp());
}

/// A.12: connections opened before the proxy's rules existed are cut by `--enable-conntrack-deletion`
/// once, right after the first reconcile; other flows survive. Shutdown here is by SIGINT.
#[test]
fn a1_proxy_binary_with_conntrack_deletion_removes_preexisting_imds_flows_only() {
    let ns = netns_or_skip!(true);
    let flows = Flows::open(&ns);

    let mut proxy = ProxyRun::start(&ns, &["--enable-conntrack-deletion=true"]);
    proxy.wait_ready();
    assert_eq!(chain_listing(&ns), A1_LISTING);
    assert_eq!(
        flows.tracked(&ns),
        flows.all_but_imds_tcp(),
        "the proxy must delete the pre-existing TCP flow to IMDS and nothing else; log:\n{}",
        proxy.log()
    );

    // NMI cleans up on SIGINT as on SIGTERM.
    proxy.shut_down_cleanly(&ns, Signal::SIGINT);
}

// ---------------------------------------------------------------------------------------------------------
// route_localnet diagnosis
// ---------------------------------------------------------------------------------------------------------

#[test]
fn route_localnet_off_yields_the_fix_message_and_on_yields_none() {
    let ns = netns_or_skip!(false);
    let nf = netfilter_in(&ns);
    ns.ok(&["sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=0"]);
    assert!(!route_localnet_enabled(Some(ns.name())).expect("read sysctl"));
    let msg = nf
        .route_localnet_problem()
        .expect("check")
        .expect("DNAT to 127.0.0.1 with route_localnet=0 is a problem");
    assert!(
        msg.contains("sysctl -w net.ipv4.conf.all.route_localnet=1"),
        "{msg}"
    );

    ns.ok(&["sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1"]);
    assert!(route_localnet_enabled(Some(ns.name())).expect("read sysctl"));
    assert_eq!(nf.route_localnet_problem().expect("check"), None);

    // A non-loopback DNAT target never needs route_localnet.
    ns.ok(&["sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=0"]);
    let node_ip = Netfilter::new(NetfilterConfig {
        target_ip: Ipv4Addr::new(10, 0, 0, 4),
        netns: Some(ns.name().to_owned()),
        ..NetfilterConfig::default()
    });
    assert_eq!(node_ip.route_localnet_problem().expect("check"), None);
}

// ---------------------------------------------------------------------------------------------------------
// (f) SIGTERM removes the rules at once and still lets an in-flight request finish
// ---------------------------------------------------------------------------------------------------------

#[test]
fn a1_sigterm_removes_rules_at_once_and_drains_an_in_flight_request() {
    let ns = netns_or_skip!(false);
    // An IMDS stand-in inside the namespace whose answer takes 5 s.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let stub = ns
        .enter(|| {
            let l = TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .expect("bind the IMDS stand-in inside the namespace");
    let stub_port = stub.local_addr().expect("stub address").port();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = started.clone();
    runtime.spawn(async move {
        let app = axum::Router::new().fallback(move || {
            seen.store(true, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "slow answer"
            }
        });
        if let Ok(l) = tokio::net::TcpListener::from_std(stub) {
            let _ = axum::serve(l, app).await;
        }
    });
    let mut proxy = ProxyRun::start(
        &ns,
        &[
            "--metadata-ip=127.0.0.1",
            &format!("--metadata-port={stub_port}"),
        ],
    );
    proxy.wait_ready();
    assert_eq!(chain_listing(&ns).len(), 3);
    // A pass-through request from inside the namespace, answered only after 5 s.
    let request = std::thread::spawn({
        let path = format!("/run/netns/{}", ns.name());
        move || -> io::Result<String> {
            use std::io::{Read, Write};
            let file = File::open(&path)?;
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let mut s = TcpStream::connect("127.0.0.1:2579")?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            s.write_all(
                b"GET /metadata/instance HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nConnection: close\r\n\r\n",
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        }
    });
    proxy.wait_until(
        "the request reaching the IMDS stand-in",
        Duration::from_secs(10),
        || started.load(Ordering::SeqCst),
    );
    let pid = proxy.child.0.as_ref().map(Child::id).expect("child");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32")),
        Signal::SIGTERM,
    )
    .expect("signal the proxy");
    // The rules go at once, not after the drain: the request is still waiting for its answer.
    proxy.wait_until(
        "the chain removed after SIGTERM",
        Duration::from_secs(10),
        || chain_listing_or_empty(&ns).is_empty(),
    );
    assert_removed(&ns);
    assert!(
        !request.is_finished(),
        "the in-flight request ended before the rules were removed"
    );
    let answer = request
        .join()
        .expect("request thread")
        .expect("the in-flight request got its answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slow answer"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = proxy.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "imds-proxy did not exit; log:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit {status}; log:\n{}", proxy.log());
    assert!(proxy.log().contains("cut_requests=0"), "{}", proxy.log());
}
