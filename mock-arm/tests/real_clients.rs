//! A real ARM client against mock-arm (issue 13 acceptance): the Azure SDK for Python's compute client
//! (`azure-mgmt-compute`, pinned, unmodified) updates a VM's and a scale set's identities with its LRO poller
//! and raises its proper exceptions on 404, 403 and 429. It talks https to mock-arm (the SDK refuses bearer
//! tokens over plain http — azure-core's `BearerTokenCredentialPolicy` — and ARM is https-only), trusting
//! mock-arm's generated CA through `connection_verify`; its bearer token is a managed-identity token from
//! mock-imds, verified by mock-arm through mock-imds's JWKS.
//!
//! The SDK is installed into a throw-away virtualenv under a tempdir; the script it runs lives in
//! `tests/real_clients/`. A missing interpreter, `venv`, or package index is a loud `SKIP:`, never a silent
//! pass. Owns only this file and `tests/real_clients/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mock_arm::MockArm;
use mock_arm::config::{Config, IdentityConfig};
use mock_arm::faults::{Faults, IdentityFailure};
use mock_arm::ids::ResourceId;
use mock_support::clients::{self, PythonVenv, run};
use serde_json::{Value, json};
use tokio::process::Command;

const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/real_clients")
}

fn tail(s: &str) -> &str {
    clients::tail(s, 3000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_azure_mgmt_compute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(PythonVenv {
        python: venv_python,
        version,
    }) = clients::python_venv(
        dir.path(),
        &assets().join("requirements.txt"),
        "the azure-mgmt-compute real-client test",
        "azure-mgmt-compute",
        INSTALL_TIMEOUT,
    )
    .await
    else {
        return;
    };
    eprintln!(
        "real client: {} with azure-mgmt-compute 39.0.0, azure-core 1.41.0",
        version.trim()
    );

    // The controller's VM: a mock-imds whose system-assigned identity gives the ARM token.
    let imds = mock_imds::MockImds::builder()
        .seed(51)
        .rate_limits(false)
        .start()
        .await
        .expect("mock-imds starts");
    let token: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
            imds.uri()
        ))
        .header("Metadata", "true")
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token json");
    let token = token["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();

    let mut c = Config::generate(Some(50));
    let vm_rid = ResourceId::parse(&c.virtual_machines[0].id).expect("vm id");
    let throttled = format!(
        "/subscriptions/{}/resourcegroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-throttled",
        vm_rid.subscription, vm_rid.resource_group
    );
    c.identities.push(IdentityConfig {
        id: throttled.clone(),
        location: "eastus".into(),
        client_id: "7d0c2a51-5b43-4c3e-9a51-0a4d5e6f7a8b".into(),
        principal_id: "1e2d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b".into(),
        deny_assign: Vec::new(),
    });
    c.lro.vm_secs = 2.0;
    c.lro.vmss_secs = 3.0;
    c.lro.retry_after_secs = 1;
    c.auth.jwks_uri = Some(format!("{}/_mock/discovery/keys", imds.uri()));
    let (vm, vmss, app, forbidden) = (
        c.virtual_machines[0].id.clone(),
        c.scale_sets[0].id.clone(),
        c.identities[1].id.clone(),
        c.identities[2].id.clone(),
    );
    let arm = MockArm::builder()
        .config(c)
        .tls(true)
        .start()
        .await
        .expect("mock-arm starts");
    arm.set_faults(Faults {
        rules: Vec::new(),
        identity_failures: vec![IdentityFailure {
            identity: throttled.clone(),
            status: 429,
            retry_after: 20,
            times: None,
        }],
    })
    .expect("valid faults");
    let ca = dir.path().join("mock-arm-ca.pem");
    std::fs::write(&ca, arm.ca_pem().expect("serving TLS")).expect("write CA");

    let setup = json!({
        "base_url": arm.uri(), "ca": ca, "token": token,
        "subscription": vm_rid.subscription, "resource_group": vm_rid.resource_group,
        "vm": vm_rid.name, "vmss": ResourceId::parse(&vmss).expect("vmss id").name,
        "identity": app, "forbidden": forbidden, "throttled": throttled, "missing_vm": "no-such-vm",
    });
    let mut cmd = Command::new(&venv_python);
    cmd.arg(assets().join("compute_client.py"))
        .arg(setup.to_string());
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "AZURE_CLOUD",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    let (ok, stdout, stderr) = run(&mut cmd, RUN_TIMEOUT).await.expect("python runs");
    assert!(ok, "compute_client.py failed: {}", tail(&stderr));
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "script output is not JSON ({e}): {stdout}\n{}",
            tail(&stderr)
        )
    });
    eprintln!("compute_client.py results: {r}");

    let has = |case: &str, id: &str| {
        r[case]["identities"]
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k.eq_ignore_ascii_case(id)))
    };
    for case in ["vm-add", "vmss-add"] {
        assert_eq!(r[case]["ok"], true, "{case}: {}", r[case]);
        assert_eq!(r[case]["final_status"], "Succeeded", "{case}: {}", r[case]);
        assert_eq!(
            r[case]["provisioning_state"], "Succeeded",
            "{case}: the poller's final GET"
        );
        assert!(
            has(case, &app),
            "{case}: identity not in the result: {}",
            r[case]
        );
        assert_eq!(r[case]["identity_type"], "UserAssigned");
    }
    assert_eq!(r["vm-remove"]["ok"], true, "{}", r["vm-remove"]);
    assert!(!has("vm-remove", &app), "{}", r["vm-remove"]);
    assert!(
        !has("vm-get", &app) && r["vm-get"]["ok"] == true,
        "{}",
        r["vm-get"]
    );

    let err = |case: &str, ty: &str, status: u16, code: &str| {
        let e = &r[case];
        assert_eq!(e["ok"], false, "{case}: {e}");
        assert_eq!(e["error_type"], ty, "{case}: {e}");
        assert_eq!(e["status"], status, "{case}: {e}");
        assert_eq!(e["code"], code, "{case}: {e}");
    };
    err(
        "not-found",
        "ResourceNotFoundError",
        404,
        "ResourceNotFound",
    );
    err(
        "forbidden",
        "HttpResponseError",
        403,
        "LinkedAuthorizationFailed",
    );
    err(
        "throttled",
        "HttpResponseError",
        429,
        "FailedIdentityOperation",
    );

    // The poller really polled the operation (Azure-AsyncOperation) and read the resource at the end, with
    // the verified identity of the mock-imds token as the caller.
    let journal = arm.journal();
    let polls = journal
        .iter()
        .filter(|j| j.path.contains("/operations/"))
        .count();
    assert!(polls >= 2, "no operation polls in the journal: {journal:?}");
    assert!(
        journal.iter().all(|j| j.caller_oid.is_some()),
        "unauthenticated requests: {journal:?}"
    );
    assert!(
        journal
            .iter()
            .any(|j| j.method == "GET" && j.path.eq_ignore_ascii_case(&vm) && j.status == 200),
        "no final GET of the VM"
    );
}
