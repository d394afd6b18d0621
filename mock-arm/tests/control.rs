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

/// The control API of one mock: `{base}/_mock{path}`.
struct Ctl {
    client: reqwest::Client,
    base: String,
}

impl Ctl {
    fn url(&self, path: &str) -> String {
        format!("{}/_mock{path}", self.base)
    }
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect(path)
    }
    async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("json")
    }
    async fn put(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .expect(path)
    }
    async fn post(&self, path: &str, body: Option<Value>) -> reqwest::Response {
        let req = self.client.post(self.url(path));
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        req.send().await.expect(path)
    }
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
    let ctl = Ctl {
        client: client.clone(),
        base: base.clone(),
    };

    assert_eq!(ctl.get("/health").await.text().await.expect("text"), "ok");
    let r = client
        .patch(format!("{base}{vm}?{API}"))
        .body(identity_patch("UserAssigned", &[(&app, true)]))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    let journal: Value = ctl.get_json("/journal").await;
    assert_eq!(journal[0]["method"], "PATCH");
    assert_eq!(journal[0]["query"], API);
    assert!(
        journal[0]["body"]
            .as_str()
            .expect("body")
            .contains("/id-app")
    );
    assert_eq!(journal[0]["status"], 200);

    let state: Value = ctl.get_json("/state").await;
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
    let r = ctl
        .put("/faults", json!({"rules": [{"status": 200}]}))
        .await;
    assert_eq!(r.status(), 400);
    let r = ctl.put("/faults", json!({"rules": [{"method": "GET", "path_contains": "virtualMachineScaleSets", "status": 500, "times": 1}]})).await;
    assert_eq!(r.status(), 200);
    let get_vmss = || client.get(format!("{base}{vmss}?{API}")).send();
    assert_eq!(get_vmss().await.expect("get").status(), 500);
    assert_eq!(get_vmss().await.expect("get").status(), 200);

    // Throttling switch: an empty bucket refuses, switched off it does not.
    let r = ctl.put("/throttling", json!({"enabled": false})).await;
    assert_eq!(r.status(), 200);
    let throttling: Value = ctl.get_json("/throttling").await;
    assert_eq!(throttling["enabled"], false);

    // Auth switch: on, an anonymous GET is 401.
    ctl.put("/auth", json!({"enabled": true})).await;
    assert_eq!(get_vmss().await.expect("get").status(), 401);
    ctl.put("/auth", json!({"enabled": false})).await;

    // Out-of-band removal of the kubelet identity from the scale set.
    let r = ctl
        .post(
            "/out-of-band/remove",
            Some(json!({"resource": vmss, "identities": [kubelet.to_uppercase()]})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let removed: Value = r.json().await.expect("json");
    assert_eq!(removed["removed"], json!([kubelet]));
    let doc: Value = get_vmss().await.expect("get").json().await.expect("json");
    assert!(doc.get("identity").is_none(), "no identity left: {doc}");
    let r = ctl
        .post(
            "/out-of-band/remove",
            Some(json!({"resource": "/nope", "identities": []})),
        )
        .await;
    assert_eq!(r.status(), 400);

    // Malformed control requests are answered.
    for (method, path, body) in [
        (reqwest::Method::PUT, "/faults", "not json"),
        (reqwest::Method::PUT, "/throttling", "{\"enabled\": 3}"),
        (reqwest::Method::POST, "/out-of-band/remove", "{}"),
        (reqwest::Method::GET, "/no-such-endpoint", ""),
    ] {
        let r = client
            .request(method, ctl.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answered");
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    assert_eq!(ctl.get("/ca.pem").await.status(), 404, "not serving TLS");

    // Reset: configured state, empty journal.
    assert_eq!(ctl.post("/reset", None).await.status(), 204);
    let doc: Value = get_vmss().await.expect("get").json().await.expect("json");
    assert_eq!(
        doc["identity"]["type"], "UserAssigned",
        "kubelet identity back: {doc}"
    );
    let journal: Value = ctl.get_json("/journal").await;
    assert_eq!(
        journal.as_array().map(Vec::len),
        Some(1),
        "only the GET after the reset"
    );
    let config: Value = ctl.get_json("/config").await;
    assert_eq!(config["virtual_machines"][0]["id"], vm.as_str());
}
