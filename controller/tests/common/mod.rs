//! Shared by the controller's integration tests: the loopback estate (kube-test-apiserver with nodes named
//! and provider-id'd as AKS does, mock-imds as every VM's IMDS and the controller's, mock-arm over TLS with
//! short operations and tokens verified through mock-imds's JWKS), helpers to add identities, bindings and
//! pods, and to read what the API server and mock-arm hold.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use imds_controller::Settings;
use imds_controller::cloudconfig::AzureConfig;
use kube_test_apiserver::ApiServer;
use mock_arm::MockArm;
use mock_arm::config::Config;
use mock_imds::MockImds;
use serde_json::{Value, json};

pub const AAD: &str = "aadpodidentity.k8s.io/v1";
/// Upper bound of every wait (a loaded CI machine); the tests never assert on how long anything took.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub struct Env {
    pub api: ApiServer,
    pub imds: MockImds,
    pub arm: MockArm,
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub ca: PathBuf,
}

impl Env {
    pub async fn start(seed: u64) -> Env {
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
            dir,
            kubeconfig,
            ca,
        }
    }

    pub fn settings(&self) -> Settings {
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
    pub fn identity(&self, i: usize, name: &str, client_id: Option<&str>) {
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

    pub fn pod(&self, name: &str, node: &str, selector: &str) {
        self.api
            .apply(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"aadpodidbinding": selector}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
                "status": {"phase": "Running", "podIP": "10.0.0.9"}}))
            .expect("pod");
    }

    pub fn delete_pod(&self, name: &str) {
        self.api
            .delete("v1", "Pod", "default", name)
            .expect("delete pod");
    }

    pub fn aai_status(&self, name: &str) -> Option<String> {
        self.api
            .get(AAD, "AzureAssignedIdentity", "default", name)
            .map(|a| a["status"]["status"].as_str().unwrap_or("").to_owned())
    }

    /// Lower-cased user-assigned identity ids on the resource whose id ends with `suffix`.
    pub fn on_resource(&self, suffix: &str) -> Vec<String> {
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

    pub fn patches(&self) -> Vec<mock_arm::journal::JournalEntry> {
        self.arm
            .journal()
            .into_iter()
            .filter(|e| e.method == "PATCH")
            .collect()
    }

    pub async fn token_status(&self, client_id: &str) -> u16 {
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
pub async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
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

pub fn vm_name(env: &Env, i: usize) -> String {
    env.config.virtual_machines[i]
        .id
        .rsplit('/')
        .next()
        .expect("name")
        .to_owned()
}
