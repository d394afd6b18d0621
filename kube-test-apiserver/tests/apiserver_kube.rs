//! The test API server driven by kube-rs exactly as an interceptor drives it: `watcher` +
//! `reflector` over pods with a `spec.nodeName` field selector and over AzureAssignedIdentities
//! with a `nodename=<node>` label selector, in both initial-list modes (list-then-watch and
//! streaming list); bookmarks; 410 recovery by relisting; outages; per-client accounting.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, WatchEvent, WatchParams,
};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube_test_apiserver::ApiServer;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const AAI: &str = "AzureAssignedIdentity";
const AAD: &str = "aadpodidentity.k8s.io/v1";

async fn client(api: &ApiServer, key: &str) -> kube::Client {
    let kc =
        kube::config::Kubeconfig::from_yaml(&api.kubeconfig_yaml(key)).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    kube::Client::try_from(cfg).expect("client builds")
}

fn aai_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("aadpodidentity.k8s.io", "v1", AAI),
        "azureassignedidentities",
    )
}

fn pod(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"}
    })
}

fn aai(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": AAD, "kind": AAI,
        "metadata": {"name": name, "namespace": "default", "labels": {"nodename": node}},
        "spec": {"pod": name, "podNamespace": "default", "nodename": node,
                 "azureIdentityRef": {"metadata": {"name": "id1"}, "spec": {"type": 0, "clientID": "c1"}}},
        "status": {"status": "Assigned"}
    })
}

/// What the driver task reports from a watcher stream.
#[derive(Debug)]
enum Seen {
    Event,
    Error(String, Option<u16>),
}

/// Run `reflector(watcher(...))` in a task, reporting every item; the store is the reflector's.
fn drive<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> mpsc::UnboundedReceiver<Seen>
where
    K: Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let seen = match item {
                Ok(_) => Seen::Event,
                Err(e) => {
                    let code = match &e {
                        watcher::Error::WatchError(s) => Some(s.code),
                        watcher::Error::WatchStartFailed(kube::Error::Api(s))
                        | watcher::Error::InitialListFailed(kube::Error::Api(s)) => Some(s.code),
                        _ => None,
                    };
                    Seen::Error(e.to_string(), code)
                }
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    rx
}

fn names<K: kube::Resource + Clone>(store: &Store<K>) -> BTreeSet<String>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Poll `cond` until it holds (bounded: 20 s), else fail with `what` and the last observation.
async fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut observe: impl FnMut() -> T,
    cond: impl Fn(&T) -> bool,
) -> T {
    let mut last = observe();
    for _ in 0..400 {
        if cond(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = observe();
    }
    panic!("timed out waiting for {what}; last observed: {last:?}");
}

/// Wait for the next error the driver reports, skipping events (bounded: 20 s).
async fn next_error(rx: &mut mpsc::UnboundedReceiver<Seen>) -> (String, Option<u16>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Seen::Error(msg, code))) => return (msg, code),
            Ok(Some(Seen::Event)) => continue,
            Ok(None) => panic!("watcher stream ended"),
            Err(_) => panic!("no watcher error within 20 s"),
        }
    }
}

#[tokio::test]
async fn pod_watcher_with_node_field_selector_tracks_create_update_delete() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    api.apply(pod("a", "n1")).unwrap();
    api.apply(pod("b", "n2")).unwrap();
    let pods: Api<Pod> = Api::all(client(&api, "node-n1").await);
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(pods, watcher::Config::default().fields("spec.nodeName=n1")),
    )
    .default_backoff();
    let _rx = drive(stream);

    eventually(
        "initial list: only a",
        || names(&reader),
        |n| *n == set(&["a"]),
    )
    .await;
    api.apply(pod("c", "n1")).unwrap();
    api.apply(pod("d", "n2")).unwrap();
    eventually(
        "c added, d not",
        || names(&reader),
        |n| *n == set(&["a", "c"]),
    )
    .await;
    // a moves away from n1: Kubernetes sends DELETED to this watcher; b moves in: ADDED.
    api.apply(pod("a", "n2")).unwrap();
    api.apply(pod("b", "n1")).unwrap();
    eventually(
        "a left, b entered",
        || names(&reader),
        |n| *n == set(&["b", "c"]),
    )
    .await;
    api.delete("v1", "Pod", "default", "c").unwrap();
    let last = eventually("c deleted", || names(&reader), |n| *n == set(&["b"])).await;
    assert_eq!(last, set(&["b"]));
    let b = reader
        .state()
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("b"))
        .unwrap();
    assert_eq!(
        b.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("n1")
    );
}

async fn aai_watcher_tracks_label_selector(streaming: bool) {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    api.apply(aai("x1", "n1")).unwrap();
    api.apply(aai("y1", "n2")).unwrap();
    let ar = aai_resource();
    let aais: Api<DynamicObject> = Api::all_with(client(&api, "node-n1").await, &ar);
    let mut cfg = watcher::Config::default().labels("nodename=n1");
    if streaming {
        cfg = cfg.streaming_lists();
    }
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let _rx = drive(reflector::reflector(writer, watcher(aais, cfg)).default_backoff());

    eventually("initial: x1", || names(&reader), |n| *n == set(&["x1"])).await;
    api.apply(aai("x2", "n1")).unwrap();
    api.apply(aai("y2", "n2")).unwrap();
    eventually("x2 added", || names(&reader), |n| *n == set(&["x1", "x2"])).await;
    // Status update of an own AAI reaches the store.
    let mut x2 = aai("x2", "n1");
    x2["status"]["status"] = json!("Created");
    api.apply(x2).unwrap();
    eventually(
        "x2 status Created",
        || {
            reader
                .state()
                .iter()
                .find(|o| o.metadata.name.as_deref() == Some("x2"))
                .map(|o| o.data["status"]["status"].clone())
        },
        |s| *s == Some(json!("Created")),
    )
    .await;
    // Relabel: x1 leaves the selector (DELETED for this watcher), y1 enters (ADDED).
    api.apply(aai("x1", "n9")).unwrap();
    api.apply(aai("y1", "n1")).unwrap();
    eventually("relabel", || names(&reader), |n| *n == set(&["x2", "y1"])).await;
    api.delete(AAD, AAI, "default", "x2").unwrap();
    eventually("x2 deleted", || names(&reader), |n| *n == set(&["y1"])).await;
}

#[tokio::test]
async fn aai_watcher_with_nodename_label_selector_list_then_watch() {
    aai_watcher_tracks_label_selector(false).await;
}

#[tokio::test]
async fn aai_watcher_with_nodename_label_selector_streaming_list() {
    aai_watcher_tracks_label_selector(true).await;
}

#[tokio::test]
async fn watcher_with_small_pages_follows_continue_tokens() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    for i in 0..7 {
        api.apply(aai(&format!("x{i}"), "n1")).unwrap();
    }
    let ar = aai_resource();
    let aais: Api<DynamicObject> = Api::all_with(client(&api, "pager").await, &ar);
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let cfg = watcher::Config::default().page_size(3);
    let _rx = drive(reflector::reflector(writer, watcher(aais, cfg)).default_backoff());
    eventually("all 7 synced", || names(&reader).len(), |n| *n == 7).await;
    let stats = api
        .stats()
        .client("pager")
        .resource("azureassignedidentities");
    assert_eq!(
        stats.requests.get("list"),
        Some(&3),
        "7 objects in pages of 3: {stats:?}"
    );
    assert_eq!(stats.objects_sent, 7);
}

#[tokio::test]
async fn bookmarks_arrive_on_raw_watch_and_are_counted_for_the_watcher() {
    let api = ApiServer::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    api.apply(pod("a", "n1")).unwrap();
    let pods: Api<Pod> = Api::all(client(&api, "raw").await);
    let wp = WatchParams::default().timeout(5);
    let rv = api.resource_version().to_string();
    let mut stream = pods.watch(&wp, &rv).await.unwrap().boxed();
    let mut bookmarks = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bookmarks < 2 {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(WatchEvent::Bookmark(bm)))) => {
                assert_eq!(
                    bm.metadata.resource_version, rv,
                    "bookmark carries the current revision"
                );
                bookmarks += 1;
            }
            Ok(Some(Ok(other))) => panic!("unexpected event {other:?}"),
            Ok(Some(Err(e))) => panic!("watch failed: {e}"),
            Ok(None) => panic!("watch ended before two bookmarks"),
            Err(_) => panic!("no two bookmarks within 10 s"),
        }
    }
    let stats = api.stats().client("raw").resource("pods");
    assert!(stats.bookmarks >= 2, "{stats:?}");
    assert_eq!(stats.objects_sent, 0, "bookmarks are not objects");
    assert_eq!(stats.requests.get("watch"), Some(&1));
}

#[tokio::test]
async fn stale_resource_version_gets_410_and_the_watcher_relists() {
    let api = ApiServer::builder()
        .history_limit(5)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    api.apply(aai("first", "n1")).unwrap();
    let ar = aai_resource();
    let aais: Api<DynamicObject> = Api::all_with(client(&api, "node-n1").await, &ar);
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let mut rx = drive(
        reflector::reflector(writer, watcher(aais, watcher::Config::default())).default_backoff(),
    );
    eventually("synced", || names(&reader), |n| *n == set(&["first"])).await;

    // Cut the watch, wait until the watcher has noticed (its reconnect is refused), then push the
    // history past its resourceVersion while it cannot see anything.
    api.set_available(false);
    next_error(&mut rx).await;
    for i in 0..20 {
        api.apply(aai(&format!("later-{i:02}"), "n1")).unwrap();
    }
    api.set_available(true);
    let mut saw_410 = false;
    for _ in 0..10 {
        let (msg, code) = next_error(&mut rx).await;
        if code == Some(410) {
            assert!(msg.contains("too old resource version"), "{msg}");
            saw_410 = true;
            break;
        }
    }
    assert!(
        saw_410,
        "the resumed watch must be answered with 410 Expired"
    );
    let n = eventually("relisted all", || names(&reader).len(), |n| *n == 21).await;
    assert_eq!(n, 21);
}

#[tokio::test]
async fn field_selector_on_crd_is_refused_through_kube_rs() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let aais: Api<DynamicObject> = Api::all_with(client(&api, "c").await, &aai_resource());
    let err = aais
        .list(&ListParams::default().fields("spec.nodename=n1"))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 400);
            assert_eq!(s.reason, "BadRequest");
            assert_eq!(s.message, "field label not supported: spec.nodename");
        }
        other => panic!("expected a Status, got {other:?}"),
    }
    // metadata.name is a field every resource supports.
    api.apply(aai("x", "n1")).unwrap();
    let list = aais
        .list(&ListParams::default().fields("metadata.name=x"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
}

#[tokio::test]
async fn label_filtered_client_receives_only_its_nodes_objects() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    for node in ["n1", "n2", "n3"] {
        for i in 0..5 {
            api.apply(aai(&format!("{node}-aai-{i}"), node)).unwrap();
        }
    }
    let ar = aai_resource();
    let start = |key: &'static str, labels: Option<&'static str>| {
        let ar = ar.clone();
        let api = &api;
        async move {
            let aais: Api<DynamicObject> = Api::all_with(client(api, key).await, &ar);
            let cfg = match labels {
                Some(l) => watcher::Config::default().labels(l),
                None => watcher::Config::default(),
            };
            let writer = reflector::store::Writer::new(ar.clone());
            let reader = writer.as_reader();
            let rx = drive(reflector::reflector(writer, watcher(aais, cfg)).default_backoff());
            (reader, rx)
        }
    };
    let (filtered, _f) = start("node-n1", Some("nodename=n1")).await;
    let (unfiltered, _u) = start("everything", None).await;
    eventually("filtered synced", || names(&filtered).len(), |n| *n == 5).await;
    eventually(
        "unfiltered synced",
        || names(&unfiltered).len(),
        |n| *n == 15,
    )
    .await;

    let stats = api.stats();
    let f = stats.client("node-n1").resource("azureassignedidentities");
    let u = stats
        .client("everything")
        .resource("azureassignedidentities");
    assert_eq!((f.objects_sent, u.objects_sent), (5, 15), "{stats:#?}");
    assert!(
        f.bytes_sent * 2 < u.bytes_sent,
        "filtered {} vs unfiltered {} bytes",
        f.bytes_sent,
        u.bytes_sent
    );

    // A change on n2 then one on n1: events are delivered in revision order, so once the filtered
    // client has the n1 change it has also been offered (and must have skipped) the n2 one.
    let mut other = aai("n2-aai-0", "n2");
    other["status"]["status"] = json!("Created");
    api.apply(other).unwrap();
    let mut own = aai("n1-aai-0", "n1");
    own["status"]["status"] = json!("Created");
    api.apply(own).unwrap();
    let counts = eventually(
        "both watchers saw their updates",
        || {
            let s = api.stats();
            (
                s.objects_sent("node-n1", "azureassignedidentities"),
                s.objects_sent("everything", "azureassignedidentities"),
            )
        },
        |c| c.0 >= 6 && c.1 >= 17,
    )
    .await;
    assert_eq!(counts, (6, 17));
    let s = api.stats();
    let f = s.client("node-n1");
    assert_eq!(
        f.resource("azureassignedidentities").requests.get("list"),
        Some(&1)
    );
    assert_eq!(
        f.resource("azureassignedidentities").requests.get("watch"),
        Some(&1)
    );
    assert!(
        f.bytes_sent > 0 && f.bytes_sent == f.resource("azureassignedidentities").bytes_sent,
        "{f:#?}"
    );
}

#[tokio::test]
async fn outage_makes_the_watcher_error_and_it_recovers() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    api.apply(pod("before", "n1")).unwrap();
    let pods: Api<Pod> = Api::all(client(&api, "node-n1").await);
    let (reader, writer) = reflector::store();
    let mut rx = drive(
        reflector::reflector(writer, watcher(pods, watcher::Config::default())).default_backoff(),
    );
    eventually("synced", || names(&reader), |n| *n == set(&["before"])).await;

    api.set_available(false);
    // A down API server resets connections: the watcher reports a transport error at once (kube-rs
    // would retry a 503 silently for minutes).
    let (msg, code) = next_error(&mut rx).await;
    assert_eq!(code, None, "{msg}");
    assert!(api.stats().refused_connections >= 1);
    api.apply(pod("during", "n1")).unwrap();
    api.set_available(true);
    eventually(
        "recovered",
        || names(&reader),
        |n| *n == set(&["before", "during"]),
    )
    .await;
}

/// Nodes are cluster-scoped: created, read, listed and watched at `/api/v1/nodes[/{name}]` with no
/// namespace, as a controller that reads `spec.providerID` (MIC) uses them.
#[tokio::test]
async fn nodes_are_cluster_scoped() {
    use k8s_openapi::api::core::v1::Node;
    let api = ApiServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("server starts");
    api.apply(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n0", "namespace": "ignored"},
        "spec": {"providerID": "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/n0"}
    }))
    .expect("apply node");
    let nodes: Api<Node> = Api::all(client(&api, "ctl").await);
    let n0 = nodes.get("n0").await.expect("get node");
    assert_eq!(
        n0.metadata.namespace, None,
        "cluster-scoped objects carry no namespace"
    );
    let created = nodes
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {}})).expect("node"),
        )
        .await
        .expect("create node");
    assert_eq!(created.metadata.namespace, None);
    let names: BTreeSet<String> = nodes
        .list(&ListParams::default())
        .await
        .expect("list nodes")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(names, BTreeSet::from(["n0".to_owned(), "n1".to_owned()]));
    let (store, writer) = reflector::store::<Node>();
    let stream = watcher(nodes.clone(), watcher::Config::default()).reflect(writer);
    let driver = tokio::spawn(stream.for_each(|_| async {}));
    store.wait_until_ready().await.expect("node store ready");
    assert_eq!(store.state().len(), 2);
    driver.abort();
    // The namespaced path does not serve nodes, as kube-apiserver does not.
    let url = format!("{}/api/v1/namespaces/default/nodes/n0", api.url());
    let status = reqwest::get(url).await.expect("get").status();
    assert_eq!(status, 404);
}
