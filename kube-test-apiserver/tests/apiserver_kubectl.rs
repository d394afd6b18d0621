//! The test API server driven by kubectl, i.e. by client-go: discovery, create, selectors, the
//! exact refusal of CRD field selectors, a watch with selector transitions, and accounting by the
//! kubeconfig's `/clients/{key}` prefix (client-go sends no bearer token over plain http).
//! Skips loudly when kubectl is not installed.

use std::process::Stdio;
use std::time::Duration;

use kube_test_apiserver::ApiServer;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn kubectl(
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=20s")
        .args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("kubectl starts");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        pipe.write_all(input.as_bytes())
            .await
            .expect("stdin written");
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("kubectl finishes within 30 s")
        .expect("kubectl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: default}
spec: {nodeName: n2, containers: [{name: c, image: busybox}]}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureAssignedIdentity
metadata: {name: p1-default-id1, namespace: default, labels: {nodename: n1}}
spec: {pod: p1, podNamespace: default, nodename: n1}
"#;

#[tokio::test]
async fn kubectl_client_go_lists_watches_and_is_accounted_by_path_key() {
    if !kubectl_available() {
        eprintln!("SKIP: kubectl not found on PATH; the client-go compatibility test needs it");
        return;
    }
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kc, "kubectl-user").unwrap();

    // No OpenAPI documents are served, so client-side validation is off (as for any minimal server).
    let (ok, out, err) = kubectl(
        &kc,
        &["create", "--validate=false", "-f", "-"],
        Some(OBJECTS),
    )
    .await;
    assert!(ok, "create failed: {out}{err}");
    assert_eq!(api.list("v1", "Pod", Some("default")).len(), 2);

    let (ok, out, err) = kubectl(
        &kc,
        &[
            "get",
            "pods",
            "--field-selector",
            "spec.nodeName=n1",
            "-o",
            "name",
        ],
        None,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "pod/p1");

    let (ok, _, err) = kubectl(
        &kc,
        &[
            "get",
            "azureassignedidentities",
            "--field-selector",
            "spec.nodename=n1",
        ],
        None,
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("field label not supported: spec.nodename"),
        "{err}"
    );

    // A watch with a label selector, through relabelling: ADDED, DELETED (left), ADDED (back).
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args([
            "get",
            "azureassignedidentities",
            "--watch",
            "--output-watch-events",
            "-l",
            "nodename=n1",
            "-o",
            r#"jsonpath={.type} {.object.metadata.name}{"\n"}"#,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl watch starts");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    assert_eq!(
        first.ok().and_then(|l| l.ok()).flatten().as_deref(),
        Some("ADDED p1-default-id1")
    );
    let relabel = |node: &str| {
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
               "metadata": {"name": "p1-default-id1", "namespace": "default", "labels": {"nodename": node}},
               "spec": {"pod": "p1", "podNamespace": "default", "nodename": node}})
    };
    api.apply(relabel("n2")).unwrap();
    api.apply(relabel("n1")).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
            Ok(Ok(Some(l))) => seen.push(l),
            other => panic!("watch output ended early ({other:?}); seen {seen:?}"),
        }
    }
    assert_eq!(seen, vec!["DELETED p1-default-id1", "ADDED p1-default-id1"]);
    let _ = watch.kill().await;

    let stats = api.stats();
    assert_eq!(
        stats.clients.keys().collect::<Vec<_>>(),
        vec!["kubectl-user"],
        "{stats:#?}"
    );
    let aai = stats
        .client("kubectl-user")
        .resource("azureassignedidentities");
    assert!(
        aai.requests.get("watch").is_some_and(|n| *n >= 1),
        "{aai:?}"
    );
    // kubectl lists first (the ADDED line), then watches from the list's resourceVersion.
    assert_eq!(aai.watch_events, 2, "{aai:?}");
}
