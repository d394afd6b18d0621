//! imds-controller end to end on loopback: kube-test-apiserver (pods, nodes, the CRDs), mock-imds (the
//! controller's node's IMDS: its ARM token; and the VM's IMDS: the pod's token), mock-arm over TLS (its CA
//! trusted through --arm-ca-file; tokens verified through mock-imds's JWKS; short operations), and the
//! controller in process. Assertions are on what the API server and mock-arm hold and journal, and on what
//! mock-imds answers — never on timings.

mod common;

use common::{AAD, Env, until, vm_name};
use imds_controller::Controller;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_binding_gets_its_identity_on_the_vm_then_a_token_and_deletion_removes_it_when_unused()
 {
    let env = Env::start(11).await;
    let app = env.config.identities[1].clone();
    let app_id = app.id.to_ascii_lowercase();
    env.identity(1, "id-app", None);
    let vm = vm_name(&env, 0);
    env.pod("p1", &vm, "id-app");
    let ctl = Controller::start(env.settings())
        .await
        .expect("controller starts");

    until("p1's AAI Assigned", async || {
        env.aai_status("p1-default-id-app").as_deref() == Some("Assigned")
    })
    .await;
    let aai = env
        .api
        .get(AAD, "AzureAssignedIdentity", "default", "p1-default-id-app")
        .expect("aai");
    assert_eq!(aai["metadata"]["labels"]["nodename"], vm.as_str());
    assert_eq!(
        aai["metadata"]["finalizers"],
        json!(["azureassignedidentity.finalizers.aadpodidentity.k8s.io"])
    );
    assert_eq!(aai["spec"]["pod"], "p1");
    assert_eq!(
        aai["spec"]["azureIdentityRef"]["spec"]["clientID"],
        app.client_id.as_str()
    );
    assert!(
        env.on_resource(&format!("virtualMachines/{vm}"))
            .contains(&app_id)
    );
    // Changes only: the one PATCH carries the addition alone (the kubelet identity is not repeated).
    let patches = env.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    let body: Value = serde_json::from_str(&patches[0].body).expect("patch body");
    assert_eq!(
        body,
        json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {app_id.clone(): {}}}})
    );
    // The identity reaches the VM's IMDS: the pod's token.
    until("token from mock-imds", async || {
        env.token_status(&app.client_id).await == 200
    })
    .await;

    // Health and metrics.
    let probe = reqwest::get(format!("http://{}/healthz", ctl.probe_addr()))
        .await
        .expect("probe");
    assert_eq!(
        (probe.status().as_u16(), probe.text().await.expect("body")),
        (200, "Active".to_owned())
    );
    let metrics = reqwest::get(format!("http://{}/metrics", ctl.metrics_addr()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("imds_controller_cycles_total"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("imds_controller_arm_requests_total{method=\"PATCH\",status_code=\"200\"}"),
        "{metrics}"
    );

    // A second pod on the same VM with the same identity; deleting the first keeps the identity.
    env.pod("p2", &vm, "id-app");
    until("p2's AAI Assigned", async || {
        env.aai_status("p2-default-id-app").as_deref() == Some("Assigned")
    })
    .await;
    env.delete_pod("p1");
    until("p1's AAI deleted", async || {
        env.aai_status("p1-default-id-app").is_none()
    })
    .await;
    assert!(
        env.on_resource(&format!("virtualMachines/{vm}"))
            .contains(&app_id),
        "identity still used by p2 must stay"
    );
    assert_eq!(
        env.patches().len(),
        1,
        "nothing to change on ARM while p2 uses it"
    );
    // The last user goes: the identity is removed (one PATCH with the removal alone), the AAI deleted.
    env.delete_pod("p2");
    until("p2's AAI deleted", async || {
        env.aai_status("p2-default-id-app").is_none()
    })
    .await;
    until("identity removed from the VM", async || {
        !env.on_resource(&format!("virtualMachines/{vm}"))
            .contains(&app_id)
    })
    .await;
    let patches = env.patches();
    assert_eq!(patches.len(), 2, "{patches:?}");
    let body: Value = serde_json::from_str(&patches[1].body).expect("patch body");
    assert_eq!(
        body,
        json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {app_id.clone(): null}}})
    );
    until("token refused again", async || {
        env.token_status(&app.client_id).await == 400
    })
    .await;
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_set_nodes_share_one_patch_a_refused_identity_does_not_block_and_immutable_stays() {
    let env = Env::start(12).await;
    let (app, forbidden) = (
        env.config.identities[1].clone(),
        env.config.identities[2].clone(),
    );
    env.identity(1, "id-app", None);
    env.identity(2, "id-forbidden", None);
    env.pod("a0", "aks-nodepool1-12345678-vmss000000", "id-app");
    env.pod("a1", "aks-nodepool1-12345678-vmss000001", "id-app");
    env.pod("f0", "aks-nodepool1-12345678-vmss000000", "id-forbidden");
    let mut settings = env.settings();
    // Immutable by client id, written in upper case (MIC compares exactly and would remove it).
    settings.immutable_user_msis = vec![app.client_id.to_ascii_uppercase()];
    let ctl = Controller::start(settings)
        .await
        .expect("controller starts");
    until("both app AAIs Assigned", async || {
        env.aai_status("a0-default-id-app").as_deref() == Some("Assigned")
            && env.aai_status("a1-default-id-app").as_deref() == Some("Assigned")
    })
    .await;
    let on_ss = env.on_resource("virtualMachineScaleSets/aks-nodepool1-12345678-vmss");
    assert!(on_ss.contains(&app.id.to_ascii_lowercase()));
    assert!(!on_ss.contains(&forbidden.id.to_ascii_lowercase()));
    assert_eq!(
        env.aai_status("f0-default-id-forbidden").as_deref(),
        Some("Created")
    );
    // One scale set: every PATCH goes to it; the first carried both additions (403 naming the forbidden one),
    // the retry only the allowed one.
    let patches = env.patches();
    assert!(patches.iter().all(|p| {
        p.path
            .ends_with("virtualMachineScaleSets/aks-nodepool1-12345678-vmss")
    }));
    assert_eq!(patches[0].status, 403, "{patches:?}");
    assert_eq!(patches[1].status, 200, "{patches:?}");
    assert!(patches[0].body.contains(&forbidden.id.to_ascii_lowercase()));
    assert!(!patches[1].body.contains(&forbidden.id.to_ascii_lowercase()));

    // Every app pod goes: the AAIs are deleted but the immutable identity stays on the scale set.
    env.delete_pod("a0");
    env.delete_pod("a1");
    until("app AAIs deleted", async || {
        env.aai_status("a0-default-id-app").is_none()
            && env.aai_status("a1-default-id-app").is_none()
    })
    .await;
    assert!(
        env.on_resource("virtualMachineScaleSets/aks-nodepool1-12345678-vmss")
            .contains(&app.id.to_ascii_lowercase())
    );
    assert!(
        env.patches().iter().all(|p| !p.body.contains("null")),
        "nothing was removed: {:?}",
        env.patches()
    );
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_out_of_band_removal_is_restored() {
    let env = Env::start(13).await;
    let app = env.config.identities[1].clone();
    let app_id = app.id.to_ascii_lowercase();
    env.identity(1, "id-app", None);
    let vm = vm_name(&env, 1);
    let vm_id = env.config.virtual_machines[1].id.clone();
    // The first PATCH is throttled with Retry-After: 3.
    let faults: mock_arm::faults::Faults = serde_json::from_value(json!({
        "rules": [{"method": "PATCH", "status": 429, "retry_after": 3, "times": 1}]
    }))
    .expect("faults");
    env.arm.set_faults(faults).expect("faults accepted");
    env.pod("p1", &vm, "id-app");
    let ctl = Controller::start(env.settings())
        .await
        .expect("controller starts");
    until("AAI Assigned after the throttling", async || {
        env.aai_status("p1-default-id-app").as_deref() == Some("Assigned")
    })
    .await;
    // No call to that VM between the 429 and the end of its Retry-After (journal times, mock clock).
    let journal = env.arm.journal();
    let throttled = journal.iter().find(|e| e.status == 429).expect("the 429");
    let t429 = chrono::DateTime::parse_from_rfc3339(&throttled.time).expect("time");
    for e in journal
        .iter()
        .filter(|e| e.seq > throttled.seq && e.path.ends_with(&vm))
    {
        let t = chrono::DateTime::parse_from_rfc3339(&e.time).expect("time");
        assert!(
            t - t429 >= chrono::Duration::seconds(3),
            "{} {} at {} within the Retry-After of the 429 at {}",
            e.method,
            e.path,
            e.time,
            throttled.time
        );
    }
    // Removed behind the controller's back: restored by the reconcile.
    env.arm
        .remove_identities_out_of_band(&vm_id, std::slice::from_ref(&app.id))
        .await
        .expect("out-of-band removal");
    assert!(
        !env.on_resource(&format!("virtualMachines/{vm}"))
            .contains(&app_id)
    );
    until("identity restored", async || {
        env.on_resource(&format!("virtualMachines/{vm}"))
            .contains(&app_id)
    })
    .await;
    ctl.shutdown().await;
}

/// `--clientQps 2`: over the whole run, the API server counts no more requests from the controller than the
/// bucket allows for the time it ran (burst 2 per 1 s window, windows counted generously from start to the
/// last observation), and the work still gets done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_qps_bounds_every_api_request() {
    let env = Env::start(14).await;
    env.identity(1, "id-app", None);
    let vm = vm_name(&env, 0);
    for i in 0..6 {
        env.pod(&format!("q{i}"), &vm, "id-app");
    }
    let mut settings = env.settings();
    settings.client_qps = 2.0;
    let started = std::time::Instant::now();
    let ctl = Controller::start(settings)
        .await
        .expect("controller starts");
    until("every AAI Assigned", async || {
        (0..6)
            .all(|i| env.aai_status(&format!("q{i}-default-id-app")).as_deref() == Some("Assigned"))
    })
    .await;
    ctl.shutdown().await;
    let elapsed = started.elapsed().as_secs();
    let requests = env.api.stats().client("controller").requests;
    // 5 initial lists + 5 watches + 6 creates + 6 status patches at least.
    assert!(requests >= 22, "{requests} requests");
    let allowed = 2 * (elapsed + 1);
    assert!(
        requests <= allowed,
        "{requests} requests in {elapsed} s exceed clientQps 2 (at most {allowed})"
    );
}

/// `--createDeleteBatch 3`: with every write held 300 ms by the API server, the controller never has more
/// than 3 writes in flight while it creates, confirms and then deletes 12 assignments on one VM; and it does
/// overlap them (more than one at once), so the bound is what limits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_delete_batch_bounds_concurrent_api_operations() {
    let env = Env::start(15).await;
    env.identity(1, "id-app", None);
    let vm = vm_name(&env, 0);
    for i in 0..12 {
        env.pod(&format!("b{i}"), &vm, "id-app");
    }
    let mut settings = env.settings();
    settings.create_delete_batch = 3;
    settings.client_qps = 1000.0;
    let ctl = Controller::start(settings)
        .await
        .expect("controller starts");
    env.api
        .set_write_latency(std::time::Duration::from_millis(300));
    let all = |status: Option<&'static str>| {
        let env = &env;
        async move || {
            (0..12).all(|i| env.aai_status(&format!("b{i}-default-id-app")).as_deref() == status)
        }
    };
    until("every AAI Assigned", all(Some("Assigned"))).await;
    for i in 0..12 {
        env.delete_pod(&format!("b{i}"));
    }
    until("every AAI deleted", all(None)).await;
    ctl.shutdown().await;
    // Lease renewals are writes too; the bound is on AzureAssignedIdentity operations.
    let max = env
        .api
        .stats()
        .client("controller")
        .resource("azureassignedidentities")
        .max_writes_in_flight;
    assert!(
        max <= 3,
        "{max} writes in flight at once with createDeleteBatch 3"
    );
    assert!(
        max >= 2,
        "writes never overlapped (max {max}): the bound was not exercised"
    );
}

/// Two replicas on one Lease: only the leader writes; when it stops, the other takes the lock (after the
/// lease ran out on its own clock) and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_lets_one_replica_write_and_fails_over() {
    let env = Env::start(16).await;
    env.identity(1, "id-app", None);
    let vm = vm_name(&env, 0);
    let replica = |key: &str| {
        let path = env.dir.path().join(format!("kubeconfig-{key}"));
        env.api.write_kubeconfig(&path, key).expect("kubeconfig");
        let mut s = env.settings();
        s.kubeconfig = Some(path);
        if let Some(le) = s.leader_election.as_mut() {
            le.instance = key.to_owned();
            le.lease_duration = std::time::Duration::from_secs(2);
        }
        s
    };
    let a = Controller::start(replica("replica-a"))
        .await
        .expect("a starts");
    until("a holds the lock", async || {
        env.api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "default",
                "aad-pod-identity-mic",
            )
            .is_some_and(|l| l["spec"]["holderIdentity"] == "replica-a")
    })
    .await;
    let b = Controller::start(replica("replica-b"))
        .await
        .expect("b starts");
    env.pod("p1", &vm, "id-app");
    until("p1 Assigned", async || {
        env.aai_status("p1-default-id-app").as_deref() == Some("Assigned")
    })
    .await;
    let creates = |key: &str| {
        env.api
            .stats()
            .client(key)
            .resource("azureassignedidentities")
            .requests
            .get("create")
            .copied()
            .unwrap_or(0)
    };
    assert_eq!((creates("replica-a"), creates("replica-b")), (1, 0));
    a.shutdown().await;
    until("b takes the lock", async || {
        env.api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "default",
                "aad-pod-identity-mic",
            )
            .is_some_and(|l| l["spec"]["holderIdentity"] == "replica-b")
    })
    .await;
    env.pod("p2", &vm, "id-app");
    until("p2 Assigned by b", async || {
        env.aai_status("p2-default-id-app").as_deref() == Some("Assigned")
    })
    .await;
    assert_eq!((creates("replica-a"), creates("replica-b")), (1, 1));
    b.shutdown().await;
}

/// Client-secret credentials: the controller's ARM token comes from Azure AD's client-credentials grant (a
/// stub here that checks the form and hands out a token mock-imds signed, so mock-arm still verifies it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_credentials_get_the_arm_token_from_azure_ad() {
    use std::sync::{Arc, Mutex};
    let env = Env::start(17).await;
    env.identity(1, "id-app", None);
    let forms: Arc<Mutex<Vec<String>>> = Arc::default();
    let imds_token_url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
        env.imds.uri()
    );
    let app = axum::Router::new().route(
        "/tenant-1/oauth2/token",
        axum::routing::post({
            let forms = forms.clone();
            move |body: String| {
                let forms = forms.clone();
                let url = imds_token_url.clone();
                async move {
                    forms.lock().expect("lock").push(body);
                    let t: Value = reqwest::Client::builder()
                        .no_proxy()
                        .build()
                        .expect("client")
                        .get(url)
                        .header("Metadata", "true")
                        .send()
                        .await
                        .expect("mock-imds token")
                        .json()
                        .await
                        .expect("json");
                    axum::Json(json!({"token_type": "Bearer", "expires_in": "3599",
                        "access_token": t["access_token"]}))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let aad = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut settings = env.settings();
    if let Some(azure) = settings.azure.as_mut() {
        azure.use_managed_identity_extension = false;
        azure.tenant_id = "tenant-1".into();
        azure.client_id = "sp-client".into();
        azure.client_secret = "s3cret&=".into();
        azure.active_directory_endpoint = aad;
    }
    settings.imds_endpoint = "http://127.0.0.1:9".into(); // never asked
    let vm = vm_name(&env, 0);
    env.pod("p1", &vm, "id-app");
    let ctl = Controller::start(settings)
        .await
        .expect("controller starts");
    until("p1 Assigned", async || {
        env.aai_status("p1-default-id-app").as_deref() == Some("Assigned")
    })
    .await;
    ctl.shutdown().await;
    server.abort();
    let forms = forms.lock().expect("lock").clone();
    assert!(!forms.is_empty());
    assert_eq!(
        forms[0],
        "grant_type=client_credentials&client_id=sp-client&client_secret=s3cret%26%3D&resource=https%3A%2F%2Fmanagement.azure.com%2F"
    );
}

/// A leader that finds the lock taken by another replica stops (the binary then exits 1, as MIC does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_stops() {
    let env = Env::start(18).await;
    let mut s = env.settings();
    if let Some(le) = s.leader_election.as_mut() {
        le.instance = "me".into();
        le.lease_duration = std::time::Duration::from_secs(2);
    }
    let ctl = Controller::start(s).await.expect("controller starts");
    until("leader", async || {
        env.api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "default",
                "aad-pod-identity-mic",
            )
            .is_some_and(|l| l["spec"]["holderIdentity"] == "me")
    })
    .await;
    env.api
        .apply(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "aad-pod-identity-mic", "namespace": "default"},
            "spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 3600}}),
        )
        .expect("take the lock");
    let reason = tokio::time::timeout(common::PATIENCE, ctl.failed())
        .await
        .expect("the controller stops");
    assert!(reason.contains("leadership lost"), "{reason}");
    ctl.shutdown().await;
}

/// Work left undone (an update throttled with Retry-After) is retried without any event and with the
/// periodic triggers an hour away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_work_is_retried_without_an_event() {
    let env = Env::start(19).await;
    env.identity(1, "id-app", None);
    let faults: mock_arm::faults::Faults = serde_json::from_value(json!({
        "rules": [{"method": "PATCH", "status": 429, "retry_after": 1, "times": 1}]
    }))
    .expect("faults");
    env.arm.set_faults(faults).expect("faults accepted");
    env.pod("p1", &vm_name(&env, 0), "id-app");
    let mut settings = env.settings();
    settings.sync_retry_duration = std::time::Duration::from_secs(3600);
    settings.identity_assignment_reconcile_interval = std::time::Duration::from_secs(3600);
    settings.leader_election = None;
    let ctl = Controller::start(settings)
        .await
        .expect("controller starts");
    until("Assigned after the retry", async || {
        env.aai_status("p1-default-id-app").as_deref() == Some("Assigned")
    })
    .await;
    let statuses: Vec<u16> = env.patches().iter().map(|p| p.status).collect();
    assert_eq!(statuses, vec![429, 200]);
    ctl.shutdown().await;
}

/// A replica waiting for the lock answers its probe 200 "Not Active" (MIC's answer; never a failure that
/// would make Kubernetes restart it) and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_lock_is_alive_but_not_active() {
    let env = Env::start(20).await;
    env.api
        .apply(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "aad-pod-identity-mic", "namespace": "default"},
            "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600}}),
        )
        .expect("lock held elsewhere");
    env.identity(1, "id-app", None);
    env.pod("p1", &vm_name(&env, 0), "id-app");
    let ctl = Controller::start(env.settings())
        .await
        .expect("controller starts");
    until("the lock was read", async || {
        env.api
            .stats()
            .client("controller")
            .resource("leases")
            .requests
            .get("get")
            .copied()
            .unwrap_or(0)
            >= 2
    })
    .await;
    let probe = reqwest::get(format!("http://{}/healthz", ctl.probe_addr()))
        .await
        .expect("probe");
    assert_eq!(
        (probe.status().as_u16(), probe.text().await.expect("body")),
        (200, "Not Active".to_owned())
    );
    assert_eq!(
        env.aai_status("p1-default-id-app"),
        None,
        "a non-leader writes nothing"
    );
    ctl.shutdown().await;
}
