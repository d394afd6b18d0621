//! Managed-identity tokens (SPEC §1, REFERENCE B.4): identity selection by each selector, the token cache with
//! a decreasing `expires_in` under an injected clock, re-issue near expiry, claims, assignment at run time and
//! the identity-assignment delay.

mod common;

use chrono::Duration;
use common::*;
use mock_imds::MockImds;
use mock_imds::config::UserAssignedIdentity;

fn second_uami() -> UserAssignedIdentity {
    UserAssignedIdentity {
        client_id: "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d".into(),
        object_id: "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0".into(),
        resource_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/second".into(),
        name: "second".into(),
    }
}

#[tokio::test]
async fn response_fields_order_and_types() {
    let m = start_with_clock(seeded_config(5), manual_clock()).await;
    let r = get(&m, TOKEN, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let keys: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        [
            "access_token",
            "client_id",
            "expires_in",
            "expires_on",
            "ext_expires_in",
            "not_before",
            "resource",
            "token_type"
        ]
    );
    assert!(
        v.as_object()
            .is_some_and(|o| o.values().all(|x| x.is_string())),
        "all strings: {v}"
    );
    assert_eq!(
        v["client_id"],
        m.config().identities.system_client_id.as_str()
    );
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_on"], (t0().timestamp() + 86_399).to_string());
    let (header, claims) = jwt_parts(v["access_token"].as_str().unwrap_or_default());
    assert_eq!(header["alg"], "RS256");
    assert!(header["kid"].is_string());
    let ids = &m.config().identities;
    assert_eq!(claims["aud"], "https://management.azure.com/");
    assert_eq!(
        claims["iss"],
        format!("https://sts.windows.net/{}/", ids.tenant_id)
    );
    assert_eq!(claims["tid"], ids.tenant_id.as_str());
    assert_eq!(claims["oid"], ids.system_object_id.as_str());
    assert_eq!(claims["appid"], ids.system_client_id.as_str());
    assert_eq!(claims["xms_mirid"], m.config().compute.resource_id.as_str());
    assert_eq!(claims["idtyp"], "app");
    // iat/nbf back-dated 5 minutes for clock skew, as Entra does; the body's not_before is the nbf.
    assert_eq!(claims["iat"], t0().timestamp() - 300);
    assert_eq!(claims["nbf"], t0().timestamp() - 300);
    assert_eq!(v["not_before"], (t0().timestamp() - 300).to_string());
    assert_eq!(claims["exp"], t0().timestamp() + 86_399);
}

#[tokio::test]
async fn refresh_token_echo_is_configurable() {
    let mut c = seeded_config(5);
    c.identities.include_refresh_token = true;
    let m = start_with_clock(c, manual_clock()).await;
    let v = get(&m, TOKEN, &[]).await.json();
    assert_eq!(v["refresh_token"], "");
}

#[tokio::test]
async fn cache_returns_same_token_with_decreasing_expires_in() {
    let clock = manual_clock();
    let m = start_with_clock(seeded_config(5), clock.clone()).await;
    let first = get(&m, TOKEN, &[]).await.json();
    assert_eq!(first["expires_in"], "86399");
    clock.advance(Duration::seconds(100));
    let second = get(&m, TOKEN, &[]).await.json();
    assert_eq!(
        second["access_token"], first["access_token"],
        "cached token reused"
    );
    assert_eq!(second["expires_in"], "86299");
    assert_eq!(second["expires_on"], first["expires_on"]);
    assert_eq!(second["ext_expires_in"], "86399");
    // A different resource is a different cache entry.
    let other = get(
        &m,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
        &[],
    )
    .await
    .json();
    assert_ne!(other["access_token"], first["access_token"]);
    assert_eq!(other["expires_in"], "86399");
    // bypass_cache=true issues a fresh token.
    let fresh = get(&m, &format!("{TOKEN}&bypass_cache=true"), &[])
        .await
        .json();
    assert_eq!(fresh["expires_in"], "86399");
    assert_ne!(fresh["access_token"], first["access_token"]);
    // Near expiry (inside the refresh margin) a new token is issued.
    clock.advance(Duration::seconds(86_399 - 200));
    let renewed = get(&m, TOKEN, &[]).await.json();
    assert_eq!(renewed["expires_in"], "86399");
}

#[tokio::test]
async fn selection_by_every_selector() {
    let mut c = seeded_config(5);
    c.identities.user_assigned.push(second_uami());
    let m = start_with_clock(c, manual_clock()).await;
    let u = second_uami();
    let first = m.config().identities.user_assigned[0].clone();
    for (selector, expect) in [
        (format!("client_id={}", u.client_id), &u),
        (format!("client_id={}", u.client_id.to_uppercase()), &u),
        (format!("object_id={}", u.object_id), &u),
        (format!("msi_res_id={}", u.resource_id), &u),
        (format!("mi_res_id={}", u.resource_id.to_lowercase()), &u),
        (
            format!(
                "msi_res_id={}",
                percent_encoding::utf8_percent_encode(
                    &first.resource_id,
                    percent_encoding::NON_ALPHANUMERIC
                )
            ),
            &first,
        ),
        (format!("client_id={}", first.client_id), &first),
    ] {
        let r = get(&m, &format!("{TOKEN}&{selector}"), &[]).await;
        assert_eq!(r.status, 200, "{selector}: {}", r.text());
        let v = r.json();
        assert_eq!(v["client_id"], expect.client_id.as_str(), "{selector}");
        let (_, claims) = jwt_parts(v["access_token"].as_str().unwrap_or_default());
        assert_eq!(claims["xms_mirid"], expect.resource_id.as_str());
        assert_eq!(claims["oid"], expect.object_id.as_str());
    }
    // The system-assigned identity can be named by its client id too.
    let sys = &m.config().identities.system_client_id;
    let v = get(&m, &format!("{TOKEN}&client_id={sys}"), &[])
        .await
        .json();
    assert_eq!(v["client_id"], sys.as_str());
    // Two selectors at once are refused.
    let r = get(
        &m,
        &format!(
            "{TOKEN}&client_id={}&msi_res_id={}",
            u.client_id, u.resource_id
        ),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
}

#[tokio::test]
async fn trailing_slash_and_unencoded_resource_work() {
    let m = start_with_clock(seeded_config(5), manual_clock()).await;
    // Node's spelling: trailing slash before the query.
    let r = get(&m, "/metadata/identity/oauth2/token/?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["resource"], "https://management.azure.com/");
}

#[tokio::test]
async fn assignment_at_run_time_and_delay() {
    let clock = manual_clock();
    let mut c = seeded_config(5);
    c.faults.identity_assignment_delay_secs = 30;
    let m = start_with_clock(c, clock.clone()).await;
    let u = second_uami();
    let q = format!("{TOKEN}&client_id={}", u.client_id);
    assert_eq!(
        get(&m, &q, &[]).await.json()["error_description"],
        "Identity not found"
    );
    clock.advance(Duration::seconds(60));
    m.assign_identity(u.clone());
    // Within the delay: not yet visible.
    clock.advance(Duration::seconds(29));
    let r = get(&m, &q, &[]).await;
    assert_eq!(
        (r.status, r.json()["error_description"].clone()),
        (400, "Identity not found".into())
    );
    clock.advance(Duration::seconds(1));
    assert_eq!(get(&m, &q, &[]).await.status, 200);
    assert!(m.unassign_identity(&u.client_id));
    assert_eq!(
        get(&m, &q, &[]).await.status,
        400,
        "unassigned identity and its cached tokens are gone"
    );
}

#[tokio::test]
async fn identity_info_returns_tenant() {
    let m = start_with_clock(seeded_config(5), manual_clock()).await;
    let r = get(&m, "/metadata/identity/info?api-version=2018-02-01", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        format!(r#"{{"tenantId":"{}"}}"#, m.config().identities.tenant_id)
    );
}

#[tokio::test]
async fn signing_keys_are_generated_at_start() {
    // Unseeded: nothing cached in this process for it, so readiness proves a generation started with the mock.
    let m = MockImds::builder()
        .rate_limits(false)
        .start()
        .await
        .expect("start");
    // Bounded wait (RSA generation takes seconds on a loaded machine); no request is made meanwhile.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !m.signing_keys_ready() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        m.signing_keys_ready(),
        "keys not generated in the background after start()"
    );
    assert!(
        m.journal().is_empty(),
        "no request triggered the generation"
    );
    let r = get(&m, TOKEN, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
