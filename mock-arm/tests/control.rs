//! The `/_mock/` control API over a real socket: journal (with the request body), state, faults (refused
//! when invalid), throttling and auth switches, out-of-band removal, reset, the TLS CA endpoint, and that
//! malformed control requests are answered, never crash the server.

mod common;

use common::{API, identity_patch};
use mock_arm::MockArm;
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

#[tokio::test]
async fn control_api_drives_and_reports_the_mock() {
    let c = common::config(61);
    let (vm, vmss, kubelet, app) = (
        c.virtual_machines[0].id.clone(),
        c.scale_sets[0].id.clone(),
        c.identities[0].id.clone(),
        c.identities[1].id.clone(),
    );
    let arm = MockArm::builder().config(c).start().await.expect("starts");
    let base = arm.uri();
    let client = http();
    let ctl = |path: &str| format!("{base}/_mock{path}");

    assert_eq!(
        client
            .get(ctl("/health"))
            .send()
            .await
            .expect("health")
            .text()
            .await
            .expect("text"),
        "ok"
    );
    let r = client
        .patch(format!("{base}{vm}?{API}"))
        .body(identity_patch("UserAssigned", &[(&app, true)]))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    let journal: Value = client
        .get(ctl("/journal"))
        .send()
        .await
        .expect("journal")
        .json()
        .await
        .expect("json");
    assert_eq!(journal[0]["method"], "PATCH");
    assert_eq!(journal[0]["query"], API);
    assert!(
        journal[0]["body"]
            .as_str()
            .expect("body")
            .contains("/id-app")
    );
    assert_eq!(journal[0]["status"], 200);

    let state: Value = client
        .get(ctl("/state"))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    assert_eq!(state["operations"].as_array().map(Vec::len), Some(1));
    let vm_doc = state["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["id"] == vm.as_str())
        .cloned();
    assert_eq!(
        vm_doc.expect("vm")["properties"]["provisioningState"],
        "Updating"
    );

    // Faults: invalid ones refused, valid ones applied, cleared.
    let r = client
        .put(ctl("/faults"))
        .json(&json!({"rules": [{"status": 200}]}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
    let r = client
        .put(ctl("/faults"))
        .json(&json!({"rules": [{"method": "GET", "path_contains": "virtualMachineScaleSets", "status": 500, "times": 1}]}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let get_vmss = || client.get(format!("{base}{vmss}?{API}")).send();
    assert_eq!(get_vmss().await.expect("get").status(), 500);
    assert_eq!(get_vmss().await.expect("get").status(), 200);

    // Throttling switch: an empty bucket refuses, switched off it does not.
    let r = client
        .put(ctl("/throttling"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let throttling: Value = client
        .get(ctl("/throttling"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(throttling["enabled"], false);

    // Auth switch: on, an anonymous GET is 401.
    client
        .put(ctl("/auth"))
        .json(&json!({"enabled": true}))
        .send()
        .await
        .expect("put");
    assert_eq!(get_vmss().await.expect("get").status(), 401);
    client
        .put(ctl("/auth"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .expect("put");

    // Out-of-band removal of the kubelet identity from the scale set.
    let r = client
        .post(ctl("/out-of-band/remove"))
        .json(&json!({"resource": vmss, "identities": [kubelet.to_uppercase()]}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let removed: Value = r.json().await.expect("json");
    assert_eq!(removed["removed"], json!([kubelet]));
    let doc: Value = get_vmss().await.expect("get").json().await.expect("json");
    assert!(doc.get("identity").is_none(), "no identity left: {doc}");
    let r = client
        .post(ctl("/out-of-band/remove"))
        .json(&json!({"resource": "/nope", "identities": []}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);

    // Malformed control requests are answered.
    for (method, path, body) in [
        (reqwest::Method::PUT, "/faults", "not json"),
        (reqwest::Method::PUT, "/throttling", "{\"enabled\": 3}"),
        (reqwest::Method::POST, "/out-of-band/remove", "{}"),
        (reqwest::Method::GET, "/no-such-endpoint", ""),
    ] {
        let r = client
            .request(method, ctl(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answered");
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    assert_eq!(
        client
            .get(ctl("/ca.pem"))
            .send()
            .await
            .expect("get")
            .status(),
        404,
        "not serving TLS"
    );

    // Reset: configured state, empty journal.
    assert_eq!(
        client
            .post(ctl("/reset"))
            .send()
            .await
            .expect("reset")
            .status(),
        204
    );
    let doc: Value = get_vmss().await.expect("get").json().await.expect("json");
    assert_eq!(
        doc["identity"]["type"], "UserAssigned",
        "kubelet identity back: {doc}"
    );
    let journal: Value = client
        .get(ctl("/journal"))
        .send()
        .await
        .expect("journal")
        .json()
        .await
        .expect("json");
    assert_eq!(
        journal.as_array().map(Vec::len),
        Some(1),
        "only the GET after the reset"
    );
    let config: Value = client
        .get(ctl("/config"))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("json");
    assert_eq!(config["virtual_machines"][0]["id"], vm.as_str());
}
