//! imds-controller end to end on loopback: kube-test-apiserver (pods, nodes, the CRDs), mock-imds (the
//! controller's node's IMDS: its ARM token; and the VM's IMDS: the pod's token), mock-arm over TLS (its CA
//! trusted through --arm-ca-file; tokens verified through mock-imds's JWKS; short operations), and the
//! controller in process. Assertions are on what the API server and mock-arm hold and journal, and on what
//! mock-imds answers — never on timings.

use std::path::PathBuf;
use std::time::Duration;

use imds_controller::cloudconfig::AzureConfig;
use imds_controller::{Controller, Settings};
use kube_test_apiserver::ApiServer;
use mock_arm::MockArm;
use mock_arm::config::Config;
use mock_imds::MockImds;
use serde_json::{Value, json};

const AAD: &str = "aadpodidentity.k8s.io/v1";
/// Upper bound of every wait (a loaded CI machine); the tests never assert on how long anything took.
const PATIENCE: Duration = Duration::from_secs(90);

struct Env {
    api: ApiServer,
    imds: MockImds,
    arm: MockArm,
    config: Config,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    ca: PathBuf,
}

impl Env {
    async fn start(seed: u64) -> Env {
        let imds = MockImds::builder()
            .seed(seed)
            .rate_limits(false)
            .start()
            .await
            .expect("mock-imds starts");
        let mut c = Config::generate(Some(seed));
        for vm in &mut c.virtual_machines {
            vm.imds = vec![imds.uri()];
        }
        c.scale_sets[0].imds = vec![imds.uri()];
        c.lro.vm_secs = 0.2;
        c.lro.vmss_secs = 0.2;
        c.lro.retry_after_secs = 1;
        c.propagation.tick_ms = 50;
        c.auth.enabled = true;
        c.auth.jwks_uri = Some(format!("{}/_mock/discovery/keys", imds.uri()));
        let arm = MockArm::builder()
            .config(c.clone())
            .tls(true)
            .start()
            .await
            .expect("mock-arm starts");
        let api = ApiServer::start("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("api server starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, "controller")
            .expect("kubeconfig");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, arm.ca_pem().expect("TLS CA")).expect("write CA");
        // Nodes: both VMs and the scale set's two instances, named and provider-id'd as AKS does.
        for vm in &c.virtual_machines {
            let name = vm.id.rsplit('/').next().expect("vm name");
            api.apply(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "spec": {"providerID": format!("azure://{}", vm.id)}}),
            )
            .expect("node");
        }
        for i in 0..2 {
            api.apply(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("aks-nodepool1-12345678-vmss00000{i}")},
                "spec": {"providerID": format!("azure://{}/virtualMachines/{i}", c.scale_sets[0].id)}}))
                .expect("node");
        }
        Env {
            api,
            imds,
            arm,
            config: c,
            _dir: dir,
            kubeconfig,
            ca,
        }
    }

    fn settings(&self) -> Settings {
        let sub = self.config.virtual_machines[0]
            .id
            .split('/')
            .nth(2)
            .expect("subscription")
            .to_owned();
        Settings {
            kubeconfig: Some(self.kubeconfig.clone()),
            azure: Some(AzureConfig {
                subscription_id: sub,
                resource_group: "MC_rg-aks_aks-cluster_eastus".into(),
                vm_type: "vmss".into(),
                use_managed_identity_extension: true,
                resource_manager_endpoint: self.arm.uri(),
                ..AzureConfig::default()
            }),
            imds_endpoint: self.imds.uri(),
            arm_ca_file: Some(self.ca.clone()),
            probe_addr: "127.0.0.1:0".parse().expect("addr"),
            metrics_addr: "127.0.0.1:0".parse().expect("addr"),
            sync_retry_duration: Duration::from_secs(1),
            identity_assignment_reconcile_interval: Duration::from_secs(1),
            update_user_msi_retry_interval: Duration::from_millis(100),
            client_qps: 50.0,
            ..Settings::default()
        }
    }

    /// AzureIdentity + AzureIdentityBinding (selector = identity name) for mock-arm identity `i`.
    fn identity(&self, i: usize, name: &str, client_id: Option<&str>) {
        let id = &self.config.identities[i];
        self.api
            .apply(json!({"apiVersion": AAD, "kind": "AzureIdentity",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"type": 0, "resourceID": id.id, "clientID": client_id.unwrap_or(&id.client_id)}}))
            .expect("identity");
        self.api
            .apply(json!({"apiVersion": AAD, "kind": "AzureIdentityBinding",
                "metadata": {"name": format!("{name}-binding"), "namespace": "default"},
                "spec": {"azureIdentity": name, "selector": name}}))
            .expect("binding");
    }

    fn pod(&self, name: &str, node: &str, selector: &str) {
        self.api
            .apply(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"aadpodidbinding": selector}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
                "status": {"phase": "Running", "podIP": "10.0.0.9"}}))
            .expect("pod");
    }

    fn delete_pod(&self, name: &str) {
        self.api
            .delete("v1", "Pod", "default", name)
            .expect("delete pod");
    }

    fn aai_status(&self, name: &str) -> Option<String> {
        self.api
            .get(AAD, "AzureAssignedIdentity", "default", name)
            .map(|a| a["status"]["status"].as_str().unwrap_or("").to_owned())
    }

    /// Lower-cased user-assigned identity ids on the resource whose id ends with `suffix`.
    fn on_resource(&self, suffix: &str) -> Vec<String> {
        let state = serde_json::to_value(self.arm.state()).expect("state json");
        let res = state["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["id"].as_str().is_some_and(|id| id.ends_with(suffix)))
            .cloned()
            .unwrap_or(Value::Null);
        res["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|m| m.keys().map(|k| k.to_ascii_lowercase()).collect())
            .unwrap_or_default()
    }

    fn patches(&self) -> Vec<mock_arm::journal::JournalEntry> {
        self.arm
            .journal()
            .into_iter()
            .filter(|e| e.method == "PATCH")
            .collect()
    }

    async fn token_status(&self, client_id: &str) -> u16 {
        let url = format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net&client_id={client_id}",
            self.imds.uri()
        );
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(url)
            .header("Metadata", "true")
            .send()
            .await
            .expect("token request")
            .status()
            .as_u16()
    }
}

/// Polls `check` until it holds (panics with `what` after [`PATIENCE`]).
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn vm_name(env: &Env, i: usize) -> String {
    env.config.virtual_machines[i]
        .id
        .rsplit('/')
        .next()
        .expect("name")
        .to_owned()
}

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
