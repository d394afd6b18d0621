//! The kind backend without a cluster (kind cannot run on the development and CI machines: no node image
//! can be fetched). What it would apply and run is pinned by insta snapshots: the rendered manifests and
//! the exact `kind` / `kubectl` / `docker` command sequences of set-up, the case operations and teardown,
//! produced by the backend's real code against a recording runner with simulated answers. The probe relay
//! that carries every pod connection on kind is exercised for real, with the `imds-probe` binary run
//! locally instead of through `kubectl exec`.

mod common;
mod netns_common;

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use imds_conformance::backend::interceptor::InterceptorSpec;
use imds_conformance::backend::relay;
use imds_conformance::http::{Conn, Request, SendError};
use imds_conformance::kind::dryrun;
use imds_conformance::kind::manifests::{self, Images};
use imds_conformance::kind::{KindBackend, KindOptions};
use imds_conformance::process::{Recorder, ToolOutput};
use imds_conformance::scenario::Scenario;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn scenario(name: &str) -> Scenario {
    Scenario::load(&common::scenario(&format!("{name}.yaml"))).expect("scenario parses")
}

fn builtin(s: &Scenario) -> InterceptorSpec {
    InterceptorSpec::Builtin {
        bin: PathBuf::from("imds-proxy"),
        flags: s.interceptor.flags.clone(),
    }
}

fn yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| serde_norway::to_string(o).expect("serializable"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn dry_run_creates_deploys_operates_and_deletes_the_cluster() {
    let s = scenario("nmi-default");
    let t = dryrun::transcript(&s, builtin(&s), KindOptions::new("imdsc-test")).unwrap();
    insta::assert_snapshot!("dry_run_nmi_default", t);
    // The same catalogue: a pod connection is a probe relay from inside the pod to 169.254.169.254:80.
    assert!(t.contains(
        "exec -i -n default app -c probe -- /imds-probe relay --connect 169.254.169.254:80"
    ));
    assert!(t.ends_with("kind delete cluster --name imdsc-test  [timeout 300s]"));
}

#[test]
fn dry_run_on_a_reused_cluster_undoes_only_its_own_changes() {
    let s = scenario("label-filter");
    let mut o = KindOptions::new("shared");
    o.archives = Some(PathBuf::from("target/images"));
    let t = dryrun::transcript_with(&s, InterceptorSpec::AksRule, o, true).unwrap();
    insta::assert_snapshot!("dry_run_reused_aks_rule", t);
    assert!(!t.contains("kind create cluster"));
    assert!(!t.contains("kind delete cluster"));
    // Three scenario nodes on three workers, each with its IMDS route and AKS rule removed at the end.
    for w in ["shared-worker", "shared-worker2", "shared-worker3"] {
        assert!(
            t.contains(&format!("docker exec {w} ip route del 169.254.169.254/32")),
            "{w}"
        );
        assert!(
            t.contains(&format!("docker exec {w} iptables -w -t filter -D FORWARD")),
            "{w}"
        );
    }
    assert!(t.contains("kind load image-archive target/images/imds-probe-0.1.0.tar --name shared"));
}

#[test]
fn keep_cluster_leaves_everything_in_place() {
    let s = scenario("nmi-default");
    let mut o = KindOptions::new("kept");
    o.keep_cluster = true;
    let t = dryrun::transcript(&s, builtin(&s), o).unwrap();
    let teardown = t.split("# teardown").nth(1).unwrap_or_default();
    assert_eq!(teardown.trim(), "", "teardown ran commands: {teardown}");
}

#[test]
fn too_few_workers_is_an_error_and_a_created_cluster_is_deleted() {
    let s = scenario("label-filter");
    let rec = Recorder::new(|cmd| {
        if cmd
            .args
            .starts_with(&["get".to_string(), "nodes".to_string()])
        {
            return ToolOutput::ok("small-control-plane\nsmall-worker\n");
        }
        ToolOutput::ok("")
    });
    let mut sc = s.clone();
    let err = KindBackend::start_blocking(
        &mut sc,
        builtin(&s),
        KindOptions::new("small"),
        Arc::new(rec.clone()),
    )
    .err()
    .expect("3 nodes do not fit on 1 worker");
    let msg = err.to_string();
    assert!(
        msg.contains("3 nodes") && msg.contains("1 schedulable"),
        "{msg}"
    );
    let t = rec.transcript();
    assert!(
        t.ends_with("kind delete cluster --name small  [timeout 300s]"),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_reach_the_real_api_server_and_restore_leaves_pods_alone() {
    use imds_conformance::backend::{ApiLoad, Backend as _};
    let s = scenario("nmi-default");
    let rec = dryrun::simulated("api", &s, false);
    let mut sc = s.clone();
    let backend = KindBackend::start_blocking(
        &mut sc,
        builtin(&s),
        KindOptions::new("api"),
        Arc::new(rec.clone()),
    )
    .unwrap();
    let backend: Arc<KindBackend> = Arc::new(backend);
    let world = backend.world().clone();
    let app = world.pod("app").unwrap().clone();
    let baseline_pod = imds_conformance::cluster::pod_object(&app, world.node_ip(&app.node));
    let api = backend.api();
    // The scenario's own pod, unchanged: nothing to do. Any other pod change: unsupported (SKIP).
    api.apply(baseline_pod.clone()).await.unwrap();
    let mut moved = app.clone();
    moved.name = "app-new".into();
    let e = api
        .apply(imds_conformance::cluster::pod_object(
            &moved,
            world.node_ip(&app.node),
        ))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("not supported on the kind backend"),
        "{e}"
    );
    assert!(api.delete(&baseline_pod).await.is_err());
    assert!(api.set_available(false).await.is_err());
    api.set_available(true).await.unwrap();
    match api.load().await.unwrap() {
        ApiLoad::Aggregate { watch_events, .. } => {
            assert_eq!(watch_events.get("azureassignedidentities"), Some(&4))
        }
        other => panic!("expected totals from /metrics, got {other:?}"),
    }
    // A case that applied an object: the runner's restore deletes it and re-applies the baseline.
    rec.clear();
    let mut ctx =
        imds_conformance::ctx::Ctx::new(backend.clone(), sc.clone(), Default::default(), "t");
    let id = sc.identities[0].clone();
    let other = world.pod("other").unwrap().clone();
    ctx.apply(imds_conformance::cluster::aai_object(
        &other, &id, "Assigned", true,
    ))
    .await
    .unwrap();
    ctx.restore().await.unwrap();
    let t = rec.transcript();
    insta::assert_snapshot!("restore_after_a_case", t);
    assert!(!t.contains(" pod "), "pods are never touched: {t}");
    assert!(t.contains(
        "delete -n default azureassignedidentity.aadpodidentity.k8s.io other-default-id-app"
    ));
    backend.teardown_blocking();
}

#[test]
fn manifests_are_rendered_from_the_repository_files() {
    let s = scenario("nmi-default");
    let images = Images::tagged("9.9.9");
    let mock = manifests::mock_objects(&s, &images).unwrap();
    insta::assert_snapshot!("mock_imds_objects", yaml(&mock));
    let proxy = manifests::builtin_interceptor(&images, &s.interceptor.flags).unwrap();
    insta::assert_snapshot!("imds_proxy_objects", yaml(&proxy));
    let mut pods = manifests::scenario_namespaces(&s);
    pods.push(manifests::node_agent(0, "c-worker", &images));
    pods.extend(manifests::test_pods(&s, &images));
    insta::assert_snapshot!("test_pods", yaml(&pods));
    // The scenario's flag replaces the manifest's flag of the same name (no duplicate flags).
    let ds = proxy.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
    let args: Vec<&str> = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args.iter()
            .filter(|a| a.starts_with("--ipt-update-interval-sec"))
            .collect::<Vec<_>>(),
        vec![&"--ipt-update-interval-sec=2"]
    );
    assert_eq!(manifests::crds().unwrap().len(), 4);
}

/// The VM's identities as a mock's control API reports them: (system-assigned, sorted client ids).
async fn vm_identities(control_uri: String) -> (bool, Vec<String>) {
    let v: Value = reqwest::get(format!("{control_uri}/_mock/identities"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<String> = v["user_assigned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["client_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    (v["system_assigned"].as_bool().unwrap(), ids)
}

/// Starts the in-process mock of the other backends and one from the kind ConfigMap for `s`; returns what
/// each says its VM holds.
async fn both_mocks(s: &Scenario) -> ((bool, Vec<String>), (bool, Vec<String>)) {
    let text = manifests::mock_config_toml(s).expect("one layout for every node");
    let seed = imds_conformance::backend::services::MOCK_SEED;
    let from_file = mock_imds::config::Config::from_toml_str(&text, "kind ConfigMap", Some(seed))
        .expect("mock-imds accepts the ConfigMap");
    assert!(!from_file.rate_limits.enabled);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let node = s.nodes[0].name.clone();
    let in_process = imds_conformance::backend::services::start_mock(l, control, s, &node)
        .await
        .unwrap();
    let from_configmap = mock_imds::MockImds::builder()
        .config(from_file)
        .listen("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    (
        vm_identities(in_process.control_uri().unwrap()).await,
        vm_identities(from_configmap.control_uri().unwrap()).await,
    )
}

#[tokio::test]
async fn the_kind_mock_config_gives_the_same_vm_as_the_in_process_mock() {
    let s = scenario("nmi-default");
    let (want, got) = both_mocks(&s).await;
    assert_eq!(got, want);
    assert!(want.0, "the default layout has a system-assigned identity");
    assert!(want.1.len() > s.identities.iter().filter(|i| i.on_vm).count());
    // A `vm:` layout (no system identity, two user-assigned ones) is the same on both too.
    let s = Scenario::parse(
        "name: layout\nnodes:\n  - name: node-1\n    vm: { systemAssigned: false, userAssigned: [a, b] }\n\
         identities: [ { name: a }, { name: b }, { name: c } ]\n",
        "test",
    )
    .unwrap();
    let (want, got) = both_mocks(&s).await;
    assert_eq!(got, want);
    let mut ids: Vec<String> = s.identities[..2].iter().map(|i| i.client_id()).collect();
    ids.sort();
    assert_eq!(want, (false, ids));
    // Different layouts per node cannot be one ConfigMap: a clear error, not a silent pick.
    let s = Scenario::parse(
        "name: layout\nnodes:\n  - { name: node-1, vm: { systemAssigned: false } }\n  - { name: node-2 }\n",
        "test",
    )
    .unwrap();
    let e = manifests::mock_config_toml(&s).unwrap_err().to_string();
    assert!(e.contains("same `vm:` identity layout"), "{e}");
}

#[test]
fn vendor_manifests_need_exactly_one_daemonset_and_get_the_gate() {
    let one = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: nmi, namespace: kube-system}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: nmi, namespace: kube-system}
spec:
  selector: {matchLabels: {app: nmi}}
  template:
    metadata: {labels: {app: nmi}}
    spec:
      nodeSelector: {kubernetes.io/os: linux}
      containers: [{name: nmi, image: "vendor/nmi:1"}]
"#;
    let objs = manifests::vendor_interceptor("vendor.yaml", one).unwrap();
    let ds = &objs[1];
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"][manifests::GATE_LABEL],
        "on"
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/os"],
        "linux"
    );
    assert_eq!(
        manifests::daemonset_of(&objs),
        Some(("kube-system".into(), "nmi".into(), "app=nmi".into()))
    );
    let none = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: nmi}\n";
    let e = manifests::vendor_interceptor("vendor.yaml", none).unwrap_err();
    assert!(
        e.to_string()
            .contains("exactly one DaemonSet (the interceptor), found 0"),
        "{e}"
    );
    let bad = "kind: [";
    assert!(manifests::vendor_interceptor("vendor.yaml", bad).is_err());

    // Through the backend: the vendor's DaemonSet is the one waited for and gated.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nmi.yaml");
    std::fs::write(&path, one).unwrap();
    let s = scenario("nmi-default");
    let t = dryrun::transcript(
        &s,
        InterceptorSpec::Manifest { path },
        KindOptions::new("v"),
    )
    .unwrap();
    assert!(
        t.contains("-n kube-system rollout status daemonset/nmi"),
        "{t}"
    );
    assert!(
        t.contains("get pods -n kube-system -l app=nmi --field-selector spec.nodeName=v-worker")
    );
}

#[test]
fn cli_dry_run_and_refusals() {
    let out = common::cli(&[
        "run",
        "--backend",
        "kind",
        "--kind-cluster",
        "cli",
        "--kind-dry-run",
    ]);
    common::assert_exit(&out, 0, "--kind-dry-run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kind create cluster --name cli --config ci/kind/two-workers.yaml"));
    let refused = |args: &[&str], needle: &str| {
        let out = common::cli(args);
        common::assert_exit(&out, 2, &format!("{args:?}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    refused(
        &[
            "run",
            "--backend",
            "kind",
            "--interceptor",
            "cmd:nmi --node {node}",
            "--kind-dry-run",
        ],
        "manifest:FILE",
    );
    refused(
        &[
            "run",
            "--backend",
            "kind",
            "--interceptor",
            "manifest:/nonexistent.yaml",
        ],
        "is not a file",
    );
    refused(
        &[
            "run",
            "--backend",
            "loopback",
            "--interceptor",
            "manifest:Cargo.toml",
        ],
        "needs --backend kind",
    );
    refused(
        &[
            "run",
            "--backend",
            "kind",
            "--kind-config",
            "/nonexistent/kind.yaml",
        ],
        "no such file",
    );
    refused(
        &["run", "--backend", "loopback", "--kind-dry-run"],
        "needs --backend kind",
    );
    let help = common::cli(&["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--kind-cluster",
        "--keep-cluster",
        "--kind-config",
        "--kind-dry-run",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}");
    }
}

/// The `imds-probe` binary next to the harness (built by `cargo build --workspace --bins`), or a SKIP.
fn probe_or_skip(test: &str) -> Option<PathBuf> {
    let p = common::conformance_bin().parent()?.join("imds-probe");
    if p.is_file() {
        return Some(p);
    }
    eprintln!(
        "SKIP: {test}: imds-probe binary not built next to {} (run `cargo build -p imds-probe` first)",
        common::conformance_bin().display()
    );
    None
}

/// The kind backend's relay command line, run with the local binary instead of the in-image path (and
/// without `kubectl exec -i`, which only adds the transport).
fn local_relay(probe: &PathBuf, addr: std::net::SocketAddr) -> tokio::process::Command {
    let argv = imds_conformance::kind::relay_argv(addr, Duration::from_secs(2));
    let mut c = tokio::process::Command::new(probe);
    c.args(&argv[1..]);
    c
}

#[tokio::test]
async fn relay_carries_an_http_exchange_to_mock_imds() {
    let Some(probe) = probe_or_skip("relay_carries_an_http_exchange_to_mock_imds") else {
        return;
    };
    let mock = common::loopback_mock().await;
    let stream = relay::connect(local_relay(&probe, mock.addr()), Duration::from_secs(2))
        .await
        .unwrap();
    let body = common::relayed_get(
        stream,
        "/metadata/instance?api-version=2021-02-01",
        "relay-1",
        &mock,
    )
    .await;
    assert!(body.contains("\"compute\""));
}

#[tokio::test]
async fn relay_reports_refused_and_reproduces_resets() {
    let Some(probe) = probe_or_skip("relay_reports_refused_and_reproduces_resets") else {
        return;
    };
    // Nothing listens: refused, as a local connect would say. (An address of its own, so no other socket
    // of this test binary can take the port in between.)
    let free = std::net::TcpListener::bind("127.0.0.77:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = relay::connect(local_relay(&probe, free), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(e, SendError::Refused), "{e:?}");

    // A peer that answers, then resets: the case's socket sees a reset, not a clean close.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"bye").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let mut stream = relay::connect(local_relay(&probe, addr), Duration::from_secs(2))
        .await
        .unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the relay ends");
    server.join().unwrap();
    assert_eq!(got, b"bye");
    let e = end.expect_err("a reset, not EOF");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");

    // A clean close stays a clean close.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"done").unwrap();
    });
    let mut stream = relay::connect(local_relay(&probe, addr), Duration::from_secs(2))
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the relay ends")
        .expect("clean EOF");
    server.join().unwrap();
    assert_eq!(got, b"done");
}

/// The probe run inside a pod's network namespace (what `kubectl exec` does on kind), on the netns
/// topology of SPEC §4: its connections are the pod's (forwarded by the node, masqueraded), a DROP in the
/// node's FORWARD chain is a connect timeout, and an HTTP exchange with the VM's mock-imds goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_relay_from_inside_a_pod_namespace() {
    let test = "probe_relay_from_inside_a_pod_namespace";
    if !netns_common::supported(test) {
        return;
    }
    let Some(probe) = probe_or_skip(test) else {
        return;
    };
    use imds_conformance::netns::{self, Topology};
    let topo = Topology::create(netns_common::one_pod())
        .await
        .expect("topology");
    let n1 = topo.node("n1").expect("n1").clone();
    let p1 = topo.pod("p1").expect("p1").clone();
    let imds = topo.imds_addr();
    let listener = netns::bind_in(&n1.host_side_ns, imds).expect("bind the VM's IMDS");
    listener.set_nonblocking(true).unwrap();
    let mock = mock_imds::MockImds::builder()
        .rate_limits(false)
        .listener(listener)
        .start()
        .await
        .unwrap();
    let relay_from_pod = |timeout: Duration| {
        let argv = imds_conformance::kind::relay_argv(imds, timeout);
        let mut c = netns::command_in(&p1.ns, &probe.display().to_string());
        c.args(&argv[1..]);
        c
    };
    let result = async {
        let stream = relay::connect(
            relay_from_pod(Duration::from_secs(3)),
            Duration::from_secs(3),
        )
        .await
        .map_err(|e| format!("relay: {e}"))?;
        let mut conn = Conn::new(stream, "169.254.169.254".to_string());
        let req = Request::get("/metadata/instance?api-version=2021-02-01")
            .metadata()
            .header("x-ms-client-request-id", "from-pod");
        let r = conn
            .send(&req, false, Duration::from_secs(10))
            .await
            .map_err(|e| format!("send: {e}"))?;
        if r.status != 200 {
            return Err(format!("expected 200, got {}", r.summary()));
        }
        let seen = mock.journal();
        let entry = seen
            .iter()
            .find(|e| e.headers.iter().any(|(_, v)| v == "from-pod"))
            .ok_or("the mock did not journal the request")?;
        // Forwarded by the node and masqueraded: IMDS sees the node's address, not the pod's.
        if !entry.source.starts_with(&format!("{}:", n1.ip)) {
            return Err(format!("IMDS saw {} (node is {})", entry.source, n1.ip));
        }
        // AgentBaker's DROP in the node's FORWARD chain: the probe reports a timeout, not a refusal.
        let rule = imds_conformance::backend::interceptor::aks_rule_argv(&n1.ip.to_string(), true);
        netns_common::exec_argv(&n1.ns, &rule)
            .await
            .map_err(|e| format!("AKS rule: {e}"))?;
        match relay::connect(
            relay_from_pod(Duration::from_millis(800)),
            Duration::from_millis(800),
        )
        .await
        {
            Err(SendError::ConnectTimeout) => Ok(()),
            Err(e) => Err(format!("expected a connect timeout, got {e:?}")),
            Ok(_) => Err("connected through a DROP rule".to_string()),
        }
    }
    .await;
    topo.teardown().await.expect("teardown");
    if let Err(e) = result {
        panic!("{e}");
    }
}
