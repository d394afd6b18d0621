//! The test API server over plain HTTP: exact Kubernetes Status bodies, discovery documents
//! (insta snapshots), list/watch wire format, resourceVersion semantics, streaming lists,
//! selector transitions, writes (POST/PUT/PATCH/DELETE), and the `/_test/*` control endpoints.

use std::time::Duration;

use kube_test_apiserver::{ApiServer, Stats};
use serde_json::{Value, json};

const AAIS: &str = "/apis/aadpodidentity.k8s.io/v1/azureassignedidentities";
const NS_AAIS: &str = "/apis/aadpodidentity.k8s.io/v1/namespaces/default/azureassignedidentities";

async fn server() -> ApiServer {
    ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn get(api: &ApiServer, path: &str, token: &str) -> (u16, String) {
    let resp = http()
        .get(format!("{}{path}", api.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn get_url(url: &str) -> (u16, String) {
    let resp = http().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Sends `req` and decodes the JSON answer.
async fn json_of<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> T {
    req.send().await.unwrap().json().await.unwrap()
}

fn aai(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
        "metadata": {"name": name, "namespace": "default", "labels": {"nodename": node}},
        "spec": {"pod": name, "podNamespace": "default", "nodename": node},
        "status": {"status": "Assigned"}
    })
}

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn crd_field_selector_is_refused_with_the_exact_kubernetes_status() {
    let api = server().await;
    for path in [
        format!("{AAIS}?fieldSelector=spec.nodeName%3Dnode-1"),
        format!("{NS_AAIS}?fieldSelector=spec.nodeName%3Dnode-1&watch=true"),
    ] {
        let (status, body) = get(&api, &path, "t").await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"field label not supported: spec.nodeName","reason":"BadRequest","code":400}"#
        );
    }
    // The same selector is fine on pods.
    let (status, _) = get(
        &api,
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1",
        "t",
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = get(&api, "/api/v1/pods?fieldSelector=spec.bogus%3D1", "t").await;
    assert_eq!(
        (
            status,
            body.contains("field label not supported: spec.bogus")
        ),
        (400, true)
    );
}

#[tokio::test]
async fn discovery_documents() {
    let api = server().await;
    let addr = api.addr().to_string();
    for (name, path) in [
        ("api", "/api"),
        ("api_v1", "/api/v1"),
        ("apis", "/apis"),
        ("apis_group", "/apis/aadpodidentity.k8s.io"),
        ("apis_group_v1", "/apis/aadpodidentity.k8s.io/v1"),
        ("version", "/version"),
    ] {
        let (status, body) = get(&api, path, "t").await;
        assert_eq!(status, 200, "{path}");
        let body = body.replace(&addr, "[addr]");
        let doc: Value = serde_json::from_str(&body).unwrap();
        insta::assert_json_snapshot!(name, doc);
    }
    let stats = api.stats().client("t").resource("discovery");
    assert_eq!(stats.requests.get("get"), Some(&6));
}

#[tokio::test]
async fn list_wire_format_and_label_selectors() {
    let api = server().await;
    api.apply(aai("a", "n1")).unwrap();
    api.apply(aai("b", "n2")).unwrap();
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "kube-system"}, "spec": {"nodeName": "n1"}}))
        .unwrap();
    let (status, body) = get(
        &api,
        &format!("{AAIS}?labelSelector=nodename%3Dn1&limit=500"),
        "t",
    )
    .await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "AzureAssignedIdentityList");
    assert_eq!(list["apiVersion"], "aadpodidentity.k8s.io/v1");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        api.resource_version().to_string()
    );
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["items"][0]["kind"], "AzureAssignedIdentity",
        "CR list items keep kind"
    );
    let item = &list["items"][0]["metadata"];
    assert!(item["uid"].is_string() && item["creationTimestamp"].is_string());
    assert_eq!(item["generation"], 1);

    for (selector, expected) in [
        ("nodename%20in%20(n1,n2)", 2),
        ("nodename%20notin%20(n1)", 1),
        ("nodename!%3Dn1", 1),
        ("nodename", 2),
        ("!nodename", 0),
        ("nodename%3D%3Dn2", 1),
    ] {
        let (_, body) = get(&api, &format!("{AAIS}?labelSelector={selector}"), "t").await;
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            list["items"].as_array().unwrap().len(),
            expected,
            "{selector}"
        );
    }
    let (status, body) = get(&api, &format!("{AAIS}?labelSelector=a%20in%20()"), "t").await;
    assert_eq!(status, 400);
    assert!(body.contains(r#""reason":"BadRequest""#), "{body}");

    // Core lists: no kind/apiVersion on items; namespaced path filters.
    let (_, body) = get(&api, "/api/v1/namespaces/kube-system/pods", "t").await;
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert!(list["items"][0].get("kind").is_none());
    let (_, body) = get(&api, "/api/v1/namespaces/default/pods", "t").await;
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn watch_from_revision_older_than_history_gets_410_expired_event() {
    let api = ApiServer::builder()
        .history_limit(3)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    for i in 0..10 {
        api.apply(aai(&format!("a{i}"), "n1")).unwrap();
    }
    let (status, body) = get(&api, &format!("{AAIS}?watch=1&resourceVersion=2"), "t").await;
    assert_eq!(
        status, 200,
        "watch errors arrive as events, as from kube-apiserver"
    );
    let events = lines(&body);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(
        events[0]["object"],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "too old resource version: 2 (8)", "reason": "Expired", "code": 410})
    );
    // A retained revision replays exactly the later events.
    let (_, body) = get(
        &api,
        &format!("{AAIS}?watch=true&resourceVersion=9&timeoutSeconds=1"),
        "t",
    )
    .await;
    let events = lines(&body);
    let got: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["object"]["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("ADDED".into(), "a8".into()), ("ADDED".into(), "a9".into())]
    );
}

#[tokio::test]
async fn streaming_list_ends_initial_events_with_annotated_bookmark() {
    let api = server().await;
    api.apply(aai("a", "n1")).unwrap();
    api.apply(aai("b", "n2")).unwrap();
    let path = format!(
        "{AAIS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1&labelSelector=nodename%3Dn1"
    );
    let (status, body) = get(&api, &path, "t").await;
    assert_eq!(status, 200);
    let events = lines(&body);
    assert_eq!(events.len(), 2, "{body}");
    assert_eq!(
        (
            events[0]["type"].as_str(),
            events[0]["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("a"))
    );
    assert_eq!(
        events[1],
        json!({"type": "BOOKMARK", "object": {"kind": "AzureAssignedIdentity", "apiVersion": "aadpodidentity.k8s.io/v1",
               "metadata": {"resourceVersion": api.resource_version().to_string(), "creationTimestamp": null,
                            "annotations": {"k8s.io/initial-events-end": "true"}}}})
    );
    // Without allowWatchBookmarks the request is invalid, as in Kubernetes.
    let (status, _) = get(
        &api,
        &format!("{AAIS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"),
        "t",
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn object_leaving_the_selector_is_sent_as_deleted_with_its_previous_content() {
    let api = server().await;
    api.apply(aai("a", "n1")).unwrap();
    let rv = api.resource_version();
    let url = format!(
        "{}{AAIS}?watch=true&resourceVersion={rv}&labelSelector=nodename%3Dn1&timeoutSeconds=2",
        api.url()
    );
    let watch =
        tokio::spawn(async move { http().get(url).send().await.unwrap().text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.apply(aai("a", "n2")).unwrap(); // leaves
    api.apply(aai("a", "n1")).unwrap(); // comes back
    api.apply(aai("other", "n2")).unwrap(); // never seen
    let body = watch.await.unwrap();
    let events = lines(&body);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["DELETED", "ADDED"], "{body}");
    assert_eq!(
        events[0]["object"]["metadata"]["labels"]["nodename"], "n1",
        "previous content"
    );
    assert_eq!(
        events[0]["object"]["metadata"]["resourceVersion"],
        (rv + 1).to_string(),
        "new revision"
    );
    assert_eq!(
        events[1]["object"]["metadata"]["resourceVersion"],
        (rv + 2).to_string()
    );
}

#[tokio::test]
async fn writes_over_http_follow_kubernetes_semantics() {
    let api = server().await;
    let c = http();
    let url = format!("{}{NS_AAIS}", api.url());
    let created = c.post(&url).json(&aai("a", "n1")).send().await.unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = created.json().await.unwrap();
    let again = c.post(&url).json(&aai("a", "n1")).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 409);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["reason"], "AlreadyExists");
    assert_eq!(
        again["message"],
        r#"azureassignedidentities.aadpodidentity.k8s.io "a" already exists"#
    );

    // MIC's JSON patch of the status (no status subresource on these CRDs).
    let patched = c
        .patch(format!("{url}/a"))
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"replace","path":"/status/status","value":"Created"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["status"]["status"], "Created");

    // PUT with the stale resourceVersion from the create: 409 Conflict.
    let stale = c
        .put(format!("{url}/a"))
        .json(&created)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 409);
    let stale: Value = stale.json().await.unwrap();
    assert_eq!(stale["reason"], "Conflict");

    let merge = c
        .patch(format!("{url}/a"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"metadata":{"labels":{"nodename":"n2"}}}"#)
        .send()
        .await
        .unwrap();
    let merge: Value = merge.json().await.unwrap();
    assert_eq!(merge["metadata"]["labels"]["nodename"], "n2");
    assert_eq!(
        merge["metadata"]["generation"], 1,
        "metadata changes do not bump generation"
    );

    let deleted = c.delete(format!("{url}/a")).send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(
        deleted["status"], "Success",
        "custom resources answer DELETE with a Status"
    );
    let missing = c.get(format!("{url}/a")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(
        missing,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "azureassignedidentities.aadpodidentity.k8s.io \"a\" not found", "reason": "NotFound",
               "details": {"name": "a", "group": "aadpodidentity.k8s.io", "kind": "azureassignedidentities"}, "code": 404})
    );

    // Pods: status subresource; main writes keep the stored status.
    let pods = format!("{}/api/v1/namespaces/default/pods", api.url());
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}});
    let r = c.post(&pods).json(&pod).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r: Value = json_of(
        c.patch(format!("{pods}/p/status"))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"status":{"phase":"Running","podIP":"10.1.0.5"}}"#),
    )
    .await;
    assert_eq!(r["status"]["phase"], "Running");
    let r: Value = json_of(
        c.patch(format!("{pods}/p"))
            .header("content-type", "application/strategic-merge-patch+json")
            .body(r#"{"status":{"phase":"Failed"},"metadata":{"labels":{"x":"y"}}}"#),
    )
    .await;
    assert_eq!(
        (
            r["status"]["phase"].as_str(),
            r["metadata"]["labels"]["x"].as_str()
        ),
        (Some("Running"), Some("y"))
    );
    let (_, body) = get(
        &api,
        "/api/v1/pods?fieldSelector=status.podIP%3D10.1.0.5,spec.nodeName%3Dn1",
        "t",
    )
    .await;
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let r = c.delete(format!("{pods}/p")).send().await.unwrap();
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["kind"], "Pod", "pods answer DELETE with the object");
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let api = server().await;
    let c = http();
    let mut obj = aai("f", "n1");
    obj["metadata"]["finalizers"] =
        json!(["azureassignedidentity.finalizers.aadpodidentity.k8s.io"]);
    api.apply(obj).unwrap();
    let url = format!("{}{NS_AAIS}/f", api.url());
    let r = c.delete(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let held: Value = r.json().await.unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    let r = c
        .patch(&url)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"metadata":{"finalizers":null}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        api.get(
            "aadpodidentity.k8s.io/v1",
            "AzureAssignedIdentity",
            "default",
            "f"
        )
        .is_none()
    );
}

#[tokio::test]
async fn stats_endpoint_outage_and_accounting_by_token_or_source_ip() {
    let api = server().await;
    api.apply(aai("a", "n1")).unwrap();
    let (_, body) = get(&api, AAIS, "node-1").await;
    // Without a token the client is its source IP.
    let anon = http()
        .get(format!("{}{AAIS}", api.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 200);
    let stats: Stats = json_of(http().get(format!("{}/_test/stats", api.url()))).await;
    assert_eq!(stats, api.stats());
    let n1 = stats.client("node-1");
    assert_eq!(
        n1.resource("azureassignedidentities").bytes_sent,
        body.len() as u64
    );
    assert_eq!(n1.objects_sent, 1);
    assert_eq!(stats.client("127.0.0.1").objects_sent, 1);

    // Outage: connections are reset; only the handle (or a self-ending outage) restores service.
    api.set_available(false);
    assert!(
        http()
            .get(format!("{}{AAIS}", api.url()))
            .send()
            .await
            .is_err()
    );
    assert!(api.stats().refused_connections >= 1);
    api.set_available(true);
    let r = http()
        .put(format!("{}/_test/available", api.url()))
        .json(&json!({"available": false, "restore_after_ms": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(!api.is_available());
    let mut restored = false;
    for _ in 0..200 {
        if http()
            .get(format!("{}/_test/health", api.url()))
            .send()
            .await
            .is_ok()
        {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        restored && api.is_available(),
        "service restores itself after restore_after_ms"
    );
    let r = http()
        .delete(format!("{}/_test/stats", api.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(api.stats(), Stats::default());
}

#[tokio::test]
async fn kubeconfig_carries_the_accounting_token() {
    let api = server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path, "node-7").unwrap();
    let doc: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["users"][0]["user"]["token"], "node-7");
    assert_eq!(
        doc["clusters"][0]["cluster"]["server"],
        format!("{}/clients/node-7", api.url())
    );
    // The path prefix names the client even without a token (client-go over plain http).
    let (status, _) = get_url(&format!(
        "{}/api/v1/pods?limit=1",
        api.client_url("node 8/x")
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        api.stats()
            .client("node 8/x")
            .resource("pods")
            .requests
            .get("list"),
        Some(&1)
    );
    assert_eq!(doc["current-context"], "imds-conformance");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let api = server().await;
    let url = api.url();
    let watch_url = format!("{url}{AAIS}?watch=true");
    let watch =
        tokio::spawn(async move { http().get(watch_url).send().await.unwrap().text().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(api);
    // The open watch ends and new connections are refused.
    let ended = tokio::time::timeout(Duration::from_secs(10), watch).await;
    assert!(ended.is_ok(), "open watch must end when the server stops");
    let mut refused = false;
    for _ in 0..100 {
        if http().get(format!("{url}/version")).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "listener must be closed after drop");
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    let api = server().await;
    for i in 0..5 {
        api.apply(aai(&format!("a{i}"), "n1")).unwrap();
    }
    let first_rv = api.resource_version();
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            Some(t) => format!("{AAIS}?limit=2&continue={t}"),
            None => format!("{AAIS}?limit=2"),
        };
        let (status, body) = get(&api, &path, "t").await;
        assert_eq!(status, 200, "{body}");
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            list["metadata"]["resourceVersion"],
            first_rv.to_string(),
            "every page carries the first revision"
        );
        names.extend(
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        if pages == 1 {
            // A change between pages: the later page shows current state; a watch from the list's
            // revision would replay it.
            api.apply(aai("a4", "n2")).unwrap();
        }
        match list["metadata"]["continue"].as_str() {
            Some(t) => {
                assert!(list["metadata"]["remainingItemCount"].as_u64().unwrap() > 0);
                token = Some(t.to_owned());
            }
            None => break,
        }
        assert!(pages < 10, "pagination must end");
    }
    assert_eq!(pages, 3);
    assert_eq!(names, vec!["a0", "a1", "a2", "a3", "a4"]);
    // resourceVersion=0 is served from the "cache": limit ignored, as kube-apiserver does.
    let (_, body) = get(&api, &format!("{AAIS}?limit=2&resourceVersion=0"), "t").await;
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 5);
    assert!(list["metadata"].get("continue").is_none());
    let (status, _) = get(&api, &format!("{AAIS}?limit=2&continue=zz"), "t").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn yaml_bodies_are_accepted_and_protobuf_is_refused() {
    let api = server().await;
    let url = format!("{}/api/v1/namespaces/default/pods", api.url());
    let r = http()
        .post(&url)
        .header("content-type", "application/yaml")
        .body("apiVersion: v1\nkind: Pod\nmetadata: {name: y}\nspec: {nodeName: n1}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = http()
        .post(&url)
        .header("content-type", "application/vnd.kubernetes.protobuf")
        .body(vec![0x6b, 0x38, 0x73, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["reason"], "UnsupportedMediaType");
    // A dry run is refused, never applied.
    let r = http()
        .post(format!("{url}?dryRun=All"))
        .json(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dry"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(api.get("v1", "Pod", "default", "dry").is_none());
}

#[tokio::test]
async fn run_standalone_writes_a_kubeconfig_and_serves_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let kc = path.clone();
    let task = tokio::spawn(async move {
        kube_test_apiserver::run_standalone("127.0.0.1:0".parse().unwrap(), &kc, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut server = None;
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(doc) = serde_norway::from_str::<Value>(&text)
        {
            server = doc["clusters"][0]["cluster"]["server"]
                .as_str()
                .map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let server = server.expect("kubeconfig written within 5 s");
    let base = server
        .strip_suffix("/clients/admin")
        .expect("standalone key is admin")
        .to_owned();
    let (status, _) = get_url(&format!("{server}/api/v1/pods")).await;
    assert_eq!(status, 200);
    let stats: Stats = json_of(http().get(format!("{base}/_test/stats"))).await;
    assert_eq!(
        stats.client("admin").resource("pods").requests.get("list"),
        Some(&1)
    );
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops within 10 s");
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    assert!(
        http().get(format!("{base}/version")).send().await.is_err(),
        "listener closed"
    );
}

/// A hung server (as SIGSTOPped) accepts connections and answers nothing: a list waits, an open watch
/// goes silent without ending; when the hang ends the waiting list is answered and the watch catches up.
#[tokio::test]
async fn hung_server_answers_nothing_and_watches_go_silent_until_it_resumes() {
    let api = server().await;
    api.apply(aai("before", "n1")).unwrap();
    let mut watch = http()
        .get(format!(
            "{}{AAIS}?watch=true&resourceVersion=0&timeoutSeconds=30",
            api.url()
        ))
        .send()
        .await
        .unwrap();
    let first = watch.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("before"));
    api.set_hung(true);
    assert!(api.is_hung());
    api.apply(aai("during", "n1")).unwrap();
    // Nothing arrives on the watch, and a new request is not answered, while hung.
    let silent = tokio::time::timeout(Duration::from_millis(700), watch.chunk()).await;
    assert!(
        silent.is_err(),
        "a hung server's watch must stay silent and open"
    );
    let url = format!("{}{AAIS}", api.url());
    let pending = tokio::spawn(async move { http().get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!pending.is_finished(), "a hung server must not answer");
    api.set_hung(false);
    let status = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    let caught_up = tokio::time::timeout(Duration::from_secs(10), watch.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&caught_up).contains("during"));
}
