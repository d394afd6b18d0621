//! The SDK opt-ins beyond NMI, end to end over loopback (mock-imds + test API server + the proxy
//! in-process): `--sdk-friendly-errors` answers the token path's errors in IMDS's JSON shape with IMDS's
//! statuses, `--identity-wait-bound-sec` ends NMI's identity wait loop early, and neither changes which
//! identity a pod gets. The NMI-exact defaults are pinned by `tests/loopback.rs`.

mod common;

use common::*;
use serde_json::{Value, json};

fn opt_in(s: &mut imds_proxy::Settings) {
    // NMI's real loop (16 + 4 lookups, 5 s apart: ~80 s for a pod without identity); the bound ends it
    // after 1 s. Were the bound ignored, the answer would be NMI's "after 16 attempts" message.
    s.retry_attempts_for_created = 16;
    s.retry_attempts_for_assigned = 4;
    s.find_identity_retry_interval = 5;
    s.sdk_friendly_errors = true;
    s.identity_wait_bound_sec = 1;
}

async fn json_error(
    resp: reqwest::Response,
) -> Result<(u16, Value), Box<dyn std::error::Error + Send + Sync>> {
    let status = resp.status().as_u16();
    assert_eq!(
        header(&resp, "content-type"),
        Some("application/json; charset=utf-8")
    );
    let body: Value = serde_json::from_str(&resp.text().await?)?;
    Ok((status, body))
}

#[tokio::test]
async fn pod_without_identity_gets_imds_identity_not_found_within_the_bound() -> TestResult {
    let f = Fixture::start(opt_in).await?;
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.wait_for_pod("127.0.0.2").await?;
    let (status, body) = json_error(f.token(&client_from("127.0.0.2")?, "").await?).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(
        body["error_description"],
        "Identity not found: no identity is assigned to pod default/p1: no AzureAssignedIdentity names the pod after waiting 1s (--identity-wait-bound-sec). Check MIC pod logs for identity assignment errors"
    );
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
    // With a selector the message names it (redacted, as NMI does).
    let (status, body) = json_error(
        f.token(
            &client_from("127.0.0.2")?,
            "&client_id=abcdabcd-0000-0000-0000-00000000dcba",
        )
        .await?,
    )
    .await?;
    assert_eq!(status, 400);
    let text = body["error_description"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("Identity not found: clientID in request: abcd##### REDACTED #####dcba, no identity is assigned to pod default/p1"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn identity_still_created_is_reported_as_not_assigned() -> TestResult {
    let f = Fixture::start(opt_in).await?;
    let a = f.mock.assign_identity(uami(0xb2, "id-b"));
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.aai("p1", &a, NODE, "Created")?;
    f.wait_for_pod("127.0.0.2").await?;
    f.wait_for_aais("p1", 1, "Created").await?;
    let (status, body) = json_error(f.token(&client_from("127.0.0.2")?, "").await?).await?;
    assert_eq!(status, 400);
    let text = body["error_description"].as_str().unwrap_or_default();
    assert!(
        text.contains("none of its AzureAssignedIdentities is ASSIGNED and matches the request"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn retry_after_keeps_its_503_with_an_imds_shaped_body() -> TestResult {
    let f = Fixture::start(|s| {
        opt_in(s);
        s.set_retry_after_header = true;
    })
    .await?;
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.wait_for_pod("127.0.0.2").await?;
    let resp = f.token(&client_from("127.0.0.2")?, "").await?;
    assert_eq!(header(&resp, "retry-after"), Some("20"));
    let (status, body) = json_error(resp).await?;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "service_unavailable");
    Ok(())
}

#[tokio::test]
async fn imds_refusal_for_the_pods_identity_is_relayed_with_imds_status() -> TestResult {
    // Assigned in the cluster, absent from the VM: IMDS refuses the token (NMI: 403 with adal's text).
    let f = Fixture::start(opt_in).await?;
    let ghost = uami(0xc2, "id-ghost");
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.aai("p1", &ghost, NODE, "Assigned")?;
    f.wait_for_pod("127.0.0.2").await?;
    f.wait_for_aais("p1", 1, "Assigned").await?;
    let (status, body) = json_error(f.token(&client_from("127.0.0.2")?, "").await?).await?;
    assert!((400..500).contains(&status), "{status} {body}");
    assert_ne!(status, 403, "IMDS's own status, not NMI's 403: {body}");
    let text = body["error_description"].as_str().unwrap_or_default();
    assert!(text.contains("relayed by imds-proxy"), "{text}");
    Ok(())
}

#[tokio::test]
async fn tokens_and_other_errors_are_unchanged_in_substance() -> TestResult {
    let (f, a) = one_pod(opt_in).await?;
    let c = client_from("127.0.0.2")?;
    let resp = f.token(&c, "").await?;
    assert_eq!(resp.status(), 200);
    let token: Value = resp.json().await?;
    assert!(
        token["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    // The identity the pod has is the one asked of IMDS, exactly as without the opt-ins.
    let asked: Vec<String> = f
        .mock
        .journal()
        .into_iter()
        .filter(|e| e.path == "/metadata/identity/oauth2/token")
        .filter_map(|e| {
            e.query
                .split('&')
                .find_map(|kv| kv.strip_prefix("client_id=").map(str::to_string))
        })
        .collect();
    assert_eq!(asked, vec![a.client_id.clone()]);
    // The Metadata header answer is already IMDS's JSON (with NMI's trailing newline): unchanged.
    let resp = c.get(f.url(&token_path(""))).send().await?;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await?.ends_with("not specified\"}\n"));
    // A missing resource is IMDS-shaped too, same status as NMI.
    let resp = get_md(
        &c,
        f.url("/metadata/identity/oauth2/token?api-version=2018-02-01"),
    )
    .await?;
    let (status, body) = json_error(resp).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    Ok(())
}
