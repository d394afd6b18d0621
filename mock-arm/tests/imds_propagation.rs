//! The effect of ARM on IMDS, end to end with real mock-imds instances in-process (one per VM, two for the
//! scale set's instances): the controller authenticates to mock-arm with an ARM token it got from its VM's
//! mock-imds (verified through mock-imds's JWKS); an identity PATCHed onto a VM or scale set becomes
//! available from that VM's mock-imds (by client id, object id and resource id) only after the operation and
//! the propagation delay; removal — by PATCH or out of band — brings back "Identity not found". A manual
//! clock makes every step deterministic (`propagate_due` sends what is due by that clock).

mod common;

use std::sync::Arc;

use chrono::{Duration, Utc};
use common::{API, identity_patch};
use mock_arm::MockArm;
use mock_arm::config::Config;
use mock_imds::MockImds;
use mock_imds::clock::ManualClock;
use serde_json::Value;

async fn imds(seed: u64) -> MockImds {
    MockImds::builder()
        .seed(seed)
        .rate_limits(false)
        .start()
        .await
        .expect("mock-imds starts")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// A token request to `imds` for ARM with one selector; `(status, body)`.
async fn token(imds: &MockImds, selector: &str) -> (u16, Value) {
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/{selector}",
        imds.uri()
    );
    let r = http()
        .get(url)
        .header("Metadata", "true")
        .send()
        .await
        .expect("token request");
    (r.status().as_u16(), r.json().await.expect("json"))
}

fn claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).expect("jwt payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims json")
}

async fn assert_not_found(imds: &MockImds, selector: &str) {
    let (status, body) = token(imds, selector).await;
    assert_eq!(status, 400, "{selector}: {body}");
    assert_eq!(
        body["error_description"], "Identity not found",
        "{selector}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_propagates_to_each_vms_imds_and_removal_takes_it_away() {
    let (vm_imds, ss0, ss1) = (imds(41).await, imds(42).await, imds(43).await);
    let mut c: Config = Config::generate(Some(40));
    c.virtual_machines[0].imds = vec![vm_imds.uri()];
    c.scale_sets[0].imds = vec![ss0.uri(), ss1.uri()];
    c.lro.vm_secs = 10.0;
    c.lro.vmss_secs = 40.0;
    c.propagation.vm_delay_secs = 5.0;
    c.propagation.vmss_delay_secs = 5.0;
    c.propagation.tick_ms = 50;
    c.auth.enabled = true;
    c.auth.jwks_uri = Some(format!("{}/_mock/discovery/keys", vm_imds.uri()));
    let (vm, vmss, app) = (
        c.virtual_machines[0].id.clone(),
        c.scale_sets[0].id.clone(),
        c.identities[1].clone(),
    );
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let arm = MockArm::builder()
        .config(c)
        .clock(clock.clone())
        .start()
        .await
        .expect("mock-arm starts");

    // The controller's ARM token, from its VM's mock-imds (system-assigned identity), as MIC gets it.
    let (status, t) = token(&vm_imds, "").await;
    assert_eq!(status, 200, "{t}");
    let bearer = format!(
        "Bearer {}",
        t["access_token"].as_str().expect("access_token")
    );
    let controller = claims(t["access_token"].as_str().expect("token"));
    let patch = |id: String, body: String| {
        let bearer = bearer.clone();
        let url = format!("{}{id}?{API}", arm.uri());
        async move {
            http()
                .patch(url)
                .header("authorization", bearer)
                .header("content-type", "application/json; charset=utf-8")
                .body(body)
                .send()
                .await
                .expect("patch")
        }
    };
    let unauthenticated = http()
        .get(format!("{}{vm}?{API}", arm.uri()))
        .send()
        .await
        .expect("get");
    assert_eq!(unauthenticated.status(), 401);

    let by_client = format!("&client_id={}", app.client_id);
    let by_object = format!("&object_id={}", app.principal_id);
    let by_resource = format!("&msi_res_id={}", app.id);
    assert_not_found(&vm_imds, &by_client).await;

    // VM: 10 s operation + 5 s propagation.
    let r = patch(
        vm.clone(),
        identity_patch("UserAssigned", &[(&app.id, true)]),
    )
    .await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.expect("json");
    assert_eq!(doc["properties"]["provisioningState"], "Updating");
    clock.advance(Duration::seconds(14));
    assert_eq!(
        arm.propagate_due().await,
        0,
        "nothing due before operation + delay"
    );
    assert_not_found(&vm_imds, &by_client).await;
    clock.advance(Duration::seconds(1));
    assert_eq!(arm.propagate_due().await, 1);
    for selector in [&by_client, &by_object, &by_resource] {
        let (status, body) = token(&vm_imds, selector).await;
        assert_eq!(status, 200, "{selector}: {body}");
        let c = claims(body["access_token"].as_str().expect("token"));
        assert_eq!(c["appid"], app.client_id.as_str(), "{c}");
        assert_eq!(c["oid"], app.principal_id.as_str(), "{c}");
    }
    assert_not_found(&ss0, &by_client).await;

    // Scale set: every instance's mock-imds follows it, 40 s + 5 s.
    let r = patch(
        vmss.clone(),
        identity_patch("UserAssigned", &[(&app.id, true)]),
    )
    .await;
    assert_eq!(r.status(), 200);
    clock.advance(Duration::seconds(44));
    arm.propagate_due().await;
    assert_not_found(&ss1, &by_client).await;
    clock.advance(Duration::seconds(1));
    assert_eq!(arm.propagate_due().await, 2);
    for instance in [&ss0, &ss1] {
        assert_eq!(token(instance, &by_client).await.0, 200);
    }

    // Removal by PATCH: gone from the VM's IMDS once the operation and the delay are over.
    let r = patch(
        vm.clone(),
        identity_patch("UserAssigned", &[(&app.id.to_uppercase(), false)]),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        token(&vm_imds, &by_client).await.0,
        200,
        "still there while the operation runs"
    );
    clock.advance(Duration::seconds(15));
    assert_eq!(arm.propagate_due().await, 1);
    assert_not_found(&vm_imds, &by_client).await;

    // Out of band (an AKS upgrade): immediate on ARM and on every instance.
    let removed = arm
        .remove_identities_out_of_band(&vmss, std::slice::from_ref(&app.id))
        .await
        .expect("known scale set");
    assert_eq!(removed, vec![app.id.clone()]);
    assert_not_found(&ss0, &by_client).await;
    assert_not_found(&ss1, &by_client).await;
    let state = arm.state();
    let ss = state
        .resources
        .iter()
        .find(|r| r.id == vmss)
        .expect("scale set in state");
    let attached = serde_json::to_value(&ss.identity).expect("json");
    assert!(!attached.to_string().contains("/id-app"), "{attached}");
    assert!(
        arm.propagations().iter().all(|p| p.result.is_ok()),
        "{:?}",
        arm.propagations()
    );

    // The journal names the caller from its verified token.
    let journal = arm.journal();
    let patches: Vec<_> = journal.iter().filter(|j| j.method == "PATCH").collect();
    assert_eq!(patches.len(), 3);
    assert!(
        patches
            .iter()
            .all(|j| j.caller_appid.as_deref() == controller["appid"].as_str())
    );
    assert!(
        patches
            .iter()
            .all(|j| j.caller_oid.as_deref() == controller["oid"].as_str())
    );
    assert!(patches[0].body.contains("\"UserAssigned\""));
}
