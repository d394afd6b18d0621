//! Every answer mock-arm gives, pinned with insta (status, headers, body): the VM, scale-set and identity
//! documents, a PATCH and its long-running operation through to completion, and every ARM error it emits.
//! In-process, fixed clock, seeded estate: the snapshots are deterministic (per-request ids are masked).

mod common;

use chrono::Duration;
use common::{API, call, config, identity_patch, manual_clock, render};
use mock_arm::config::{Bucket, Policy};
use mock_arm::faults::{FaultRule, Faults, IdentityFailure};
use serde_json::json;

#[tokio::test]
async fn documents_and_a_patch_through_its_operation() {
    let clock = manual_clock();
    let c = config(11);
    let (vm, vmss, app) = (
        c.virtual_machines[0].id.clone(),
        c.scale_sets[0].id.clone(),
        c.identities[1].id.clone(),
    );
    let router = mock_arm::router(c.clone(), clock.clone(), None);
    insta::assert_snapshot!(
        "get_vm",
        render(&call(&router, "GET", &format!("{vm}?{API}"), None, &[]).await)
    );
    insta::assert_snapshot!(
        "get_vmss",
        render(&call(&router, "GET", &format!("{vmss}?{API}"), None, &[]).await)
    );
    insta::assert_snapshot!(
        "get_identity",
        render(
            &call(
                &router,
                "GET",
                &format!("{app}?api-version=2023-01-31"),
                None,
                &[]
            )
            .await
        )
    );

    let kubelet = c.identities[0].id.clone();
    let body = identity_patch("UserAssigned", &[(&app, true), (&kubelet, true)]);
    let patched = call(&router, "PATCH", &format!("{vm}?{API}"), Some(&body), &[]).await;
    insta::assert_snapshot!("patch_vm_add", render(&patched));
    let op = patched
        .header("azure-asyncoperation")
        .expect("operation url");
    let op_path = op
        .strip_prefix("http://management.azure.com")
        .expect("same host");
    insta::assert_snapshot!(
        "operation_in_progress",
        render(&call(&router, "GET", op_path, None, &[]).await)
    );
    let monitor = patched.header("location").expect("location");
    let monitor_path = monitor
        .strip_prefix("http://management.azure.com")
        .expect("same host");
    insta::assert_snapshot!(
        "location_in_progress",
        render(&call(&router, "GET", monitor_path, None, &[]).await)
    );

    clock.advance(Duration::seconds(15));
    insta::assert_snapshot!(
        "operation_succeeded",
        render(&call(&router, "GET", op_path, None, &[]).await)
    );
    insta::assert_snapshot!(
        "location_succeeded",
        render(&call(&router, "GET", monitor_path, None, &[]).await)
    );

    let remove = identity_patch("UserAssigned", &[(&app.to_uppercase(), false)]);
    let removed = call(&router, "PATCH", &format!("{vm}?{API}"), Some(&remove), &[]).await;
    insta::assert_snapshot!("patch_vm_remove_case_insensitive", render(&removed));
}

#[tokio::test]
async fn arm_errors() {
    let clock = manual_clock();
    let mut c = config(12);
    c.throttling.subscription_writes = Bucket {
        capacity: 6,
        refill_per_sec: 1.0,
    };
    c.throttling.vm_get = vec![Policy {
        name: "LowCostGet3Min".into(),
        capacity: 1,
        window_secs: 180,
    }];
    let (vm, vmss, app, forbidden) = (
        c.virtual_machines[0].id.clone(),
        c.scale_sets[0].id.clone(),
        c.identities[1].id.clone(),
        c.identities[2].id.clone(),
    );
    let router = mock_arm::router(c.clone(), clock.clone(), None);
    let missing_vm = vm.replace("aks-agentpool-12345678-0", "no-such-vm");
    let snap = |name: &str, r: &common::Reply| insta::assert_snapshot!(name.to_string(), render(r));

    snap(
        "error_resource_not_found",
        &call(&router, "GET", &format!("{missing_vm}?{API}"), None, &[]).await,
    );
    snap(
        "error_missing_api_version",
        &call(&router, "GET", &vm, None, &[]).await,
    );
    snap(
        "error_old_api_version",
        &call(
            &router,
            "GET",
            &format!("{vm}?api-version=2017-12-01"),
            None,
            &[],
        )
        .await,
    );
    snap(
        "error_unknown_path",
        &call(
            &router,
            "GET",
            &format!("/subscriptions/x/foo?{API}"),
            None,
            &[],
        )
        .await,
    );
    snap(
        "error_method",
        &call(&router, "DELETE", &format!("{vm}?{API}"), None, &[]).await,
    );
    snap(
        "error_bad_json",
        &call(&router, "PATCH", &format!("{vm}?{API}"), Some("{"), &[]).await,
    );
    let bad_ids = identity_patch(
        "UserAssigned",
        &[
            (&format!("{app}-missing"), true),
            ("/subscriptions/x/not-an-id", true),
        ],
    );
    snap(
        "error_invalid_identity_values",
        &call(
            &router,
            "PATCH",
            &format!("{vm}?{API}"),
            Some(&bad_ids),
            &[],
        )
        .await,
    );
    let bad_type = json!({"identity": {"type": "Managed"}}).to_string();
    snap(
        "error_invalid_type",
        &call(
            &router,
            "PATCH",
            &format!("{vm}?{API}"),
            Some(&bad_type),
            &[],
        )
        .await,
    );
    let denied = identity_patch("UserAssigned", &[(&forbidden, true)]);
    snap(
        "error_linked_authorization_failed",
        &call(&router, "PATCH", &format!("{vm}?{API}"), Some(&denied), &[]).await,
    );

    // A scale set runs one operation at a time.
    let add = identity_patch("UserAssigned", &[(&app, true)]);
    assert_eq!(
        call(&router, "PATCH", &format!("{vmss}?{API}"), Some(&add), &[])
            .await
            .status,
        200
    );
    snap(
        "error_conflict",
        &call(&router, "PATCH", &format!("{vmss}?{API}"), Some(&add), &[]).await,
    );

    // Every GET of the VM so far was refused before throttling: this one takes the only LowCostGet3Min
    // token, the next one is refused by Compute.
    assert_eq!(
        call(&router, "GET", &format!("{vm}?{API}"), None, &[])
            .await
            .status,
        200
    );
    snap(
        "error_compute_throttled",
        &call(&router, "GET", &format!("{vm}?{API}"), None, &[]).await,
    );
    // The subscription's write bucket (6) is empty after the PATCHes above.
    snap(
        "error_subscription_throttled",
        &call(&router, "PATCH", &format!("{vmss}?{API}"), Some(&add), &[]).await,
    );
}

#[tokio::test]
async fn injected_faults_and_identity_failures() {
    let clock = manual_clock();
    let c = config(13);
    let (vmss, app) = (c.scale_sets[0].id.clone(), c.identities[1].id.clone());
    let arm = mock_arm::MockArm::builder()
        .config(c)
        .clock(clock)
        .start()
        .await
        .expect("starts");
    arm.set_faults(Faults {
        rules: vec![FaultRule {
            method: Some("GET".into()),
            status: Some(503),
            retry_after: Some(7),
            times: Some(1),
            ..FaultRule::default()
        }],
        identity_failures: vec![IdentityFailure {
            identity: app.to_uppercase(),
            status: 429,
            retry_after: 20,
            times: None,
        }],
    })
    .expect("valid faults");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let get = |path: String| {
        let client = client.clone();
        async move { client.get(path).send().await.expect("request") }
    };
    let r = get(format!("{}{vmss}?{API}", arm.uri())).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    let body: serde_json::Value = r.json().await.expect("json");
    insta::assert_json_snapshot!("error_injected_503", body);
    assert_eq!(
        get(format!("{}{vmss}?{API}", arm.uri())).await.status(),
        200,
        "times: 1"
    );

    let add = identity_patch("UserAssigned", &[(&app, true)]);
    let r = client
        .patch(format!("{}{vmss}?{API}", arm.uri()))
        .header("content-type", "application/json")
        .body(add)
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "20");
    let body: serde_json::Value = r.json().await.expect("json");
    insta::assert_json_snapshot!("error_failed_identity_operation", body);
}

#[tokio::test]
async fn authentication_errors() {
    let clock = manual_clock();
    let mut c = config(14);
    c.auth.enabled = true;
    let vm = c.virtual_machines[0].id.clone();
    let keys = mock_imds::keys::SigningKeys::generate(Some(14)).expect("keys");
    let jwks = serde_json::from_value(keys.jwks()).expect("jwks");
    let router = mock_arm::router(c, clock, Some(jwks));
    let path = format!("{vm}?{API}");
    let now = common::t0().timestamp();
    let token = |aud: &str, exp: i64| {
        keys.sign_jwt(&json!({"aud": aud, "iss": "https://sts.windows.net/t/", "exp": exp, "nbf": now - 300,
                              "appid": "11111111-2222-3333-4444-555555555555", "oid": "66666666-7777-8888-9999-000000000000"}))
            .expect("sign")
    };
    let snap = |name: &str, r: &common::Reply| insta::assert_snapshot!(name.to_string(), render(r));
    snap(
        "auth_missing",
        &call(&router, "GET", &path, None, &[]).await,
    );
    snap(
        "auth_not_bearer",
        &call(
            &router,
            "GET",
            &path,
            None,
            &[("authorization", "Basic eDp5")],
        )
        .await,
    );
    snap(
        "auth_garbage",
        &call(
            &router,
            "GET",
            &path,
            None,
            &[("authorization", "Bearer abc.def.ghi")],
        )
        .await,
    );
    let wrong = format!("Bearer {}", token("https://vault.azure.net", now + 3600));
    snap(
        "auth_wrong_audience",
        &call(&router, "GET", &path, None, &[("authorization", &wrong)]).await,
    );
    let expired = format!(
        "Bearer {}",
        token("https://management.azure.com/", now - 3600)
    );
    snap(
        "auth_expired",
        &call(&router, "GET", &path, None, &[("authorization", &expired)]).await,
    );
    let good = format!(
        "Bearer {}",
        token("https://management.azure.com", now + 3600)
    );
    assert_eq!(
        call(&router, "GET", &path, None, &[("authorization", &good)])
            .await
            .status,
        200
    );
}
