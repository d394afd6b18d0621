//! Loopback integration tests: mock-imds + test API server + imds-proxy in-process (SPEC §4 "loopback").
//! Pods are distinct 127.0.0.x source addresses, the host is 127.0.0.1. Test names carry the conformance
//! area ids (HDR, BLK, RTA, LBL, TOK, ISO, PT) of SPEC §3.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use imds_proxy::cluster::memory::MemoryView;
use imds_proxy::errors::ViewUnavailable;
use imds_proxy::{Proxy, Settings};
use serde_json::{Value, json};

const METADATA_BODY: &str = "{\"error\":\"invalid_request\",\"error_description\":\"Required metadata header not specified\"}\n";

fn fast_retries(s: &mut Settings) {
    s.retry_attempts_for_created = 1;
    s.retry_attempts_for_assigned = 1;
    s.find_identity_retry_interval = 1;
}

/// Token requests the mock received, as their `client_id` query values ("" = system-assigned).
fn upstream_token_client_ids(f: &Fixture) -> Vec<String> {
    f.mock
        .journal()
        .into_iter()
        .filter(|e| e.path == "/metadata/identity/oauth2/token")
        .map(|e| {
            e.query
                .split('&')
                .find_map(|kv| kv.strip_prefix("client_id=").map(str::to_string))
                .unwrap_or_default()
        })
        .collect()
}

// ---- HDR: metadata header ----------------------------------------------------------------------------

#[tokio::test]
async fn hdr_001_token_and_pass_through_need_metadata_true() -> TestResult {
    let (f, _) = one_pod(|_| {}).await?;
    let c = client_from("127.0.0.2")?;
    for hdr in [None, Some("True"), Some("false"), Some("")] {
        for path in [
            token_path(""),
            "/metadata/versions".to_string(),
            "/doesnotexist".to_string(),
        ] {
            let mut rb = c.get(f.url(&path));
            if let Some(v) = hdr {
                rb = rb.header("Metadata", v);
            }
            let resp = rb.send().await?;
            assert_eq!(resp.status(), 400, "{path} {hdr:?}");
            assert_eq!(
                header(&resp, "content-type"),
                Some("application/json; charset=utf-8")
            );
            assert_eq!(resp.text().await?, METADATA_BODY);
        }
    }
    assert!(
        f.mock.journal().is_empty(),
        "nothing may reach IMDS: {:?}",
        journal_paths(&f.mock)
    );
    // Header name is case-insensitive.
    let resp = c
        .get(f.url(&token_path("")))
        .header("mEtAdAtA", "true")
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    Ok(())
}

#[tokio::test]
async fn hdr_006_feature_off_lets_imds_answer() -> TestResult {
    let (f, _) = one_pod(|s| s.metadata_header_required = false).await?;
    let c = client_from("127.0.0.2")?;
    let resp = c
        .get(f.url("/metadata/instance?api-version=2021-02-01"))
        .send()
        .await?;
    // The request reached the mock, which itself insists on the header.
    assert_eq!(resp.status(), 400);
    assert!(journal_paths(&f.mock).contains(&"/metadata/instance".to_string()));
    // The token handler does not check it either.
    let resp = c.get(f.url(&token_path(""))).send().await?;
    assert_eq!(resp.status(), 200);
    Ok(())
}

// ---- BLK: instance block --------------------------------------------------------------------------------

const SPELLINGS: &[&str] = &[
    "/metadata/instance",
    "/metadata/instance/",
    "/Metadata/instance",
    "/METADATA/INSTANCE",
    "/metadata/Instance",
    "/metadata/instance?api-version=2021-02-01",
    "/metadata/instance/compute?api-version=2021-02-01",
    "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
    "/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress?api-version=2021-02-01&format=text",
    "//metadata/instance?api-version=2021-02-01",
    "/metadata//instance?api-version=2021-02-01",
    "/./metadata/instance?api-version=2021-02-01",
    "/metadata/./instance?api-version=2021-02-01",
    "/metadata/x/../instance?api-version=2021-02-01",
    "/../metadata/instance?api-version=2021-02-01",
    "/metadata/%69nstance?api-version=2021-02-01",
    "/metadata/%49NSTANCE?api-version=2021-02-01",
    "/%6detadata/instance?api-version=2021-02-01",
    "/metadata%2finstance?api-version=2021-02-01",
    "/metadata%2Finstance?api-version=2021-02-01",
    "/metadata/%2569nstance?api-version=2021-02-01",
    "/metadata;x=1/instance?api-version=2021-02-01",
    "/metadata/instance;jsessionid=1?api-version=2021-02-01",
    "/metadata/%2e/instance?api-version=2021-02-01",
    "/metadata/%2E%2E/metadata/instance?api-version=2021-02-01",
    "/metadata%5cinstance?api-version=2021-02-01",
];

#[tokio::test]
async fn blk_001_every_spelling_of_instance_is_blocked() -> TestResult {
    let (f, _) = one_pod(|s| s.block_instance_metadata = true).await?;
    assert!(SPELLINGS.len() >= 20);
    for target in SPELLINGS {
        for hdr in ["Metadata: true\r\n", ""] {
            let (status, body) = raw_get("127.0.0.2", f.proxy.addr(), target, hdr).await?;
            assert_eq!(status, 403, "{target} {hdr:?}");
            assert_eq!(
                body, "Request blocked by AAD Pod Identity NMI\n",
                "{target}"
            );
        }
    }
    // Headers as Go's http.Error.
    let resp = get_md(&client_from("127.0.0.2")?, f.url("/metadata/instance")).await?;
    assert_eq!(
        header(&resp, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
    let leaked: Vec<String> = journal_paths(&f.mock);
    assert!(
        leaked.is_empty(),
        "blocked requests reached IMDS: {leaked:?}"
    );
    // Other paths are not blocked.
    let (status, _) = f.raw_md("127.0.0.2", "/metadata/versions").await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn blk_006_feature_off_passes_through_byte_identical() -> TestResult {
    let (f, _) = one_pod(|_| {}).await?;
    let path = "/metadata/instance?api-version=2021-02-01";
    let via = get_md(&client_from("127.0.0.2")?, f.url(path)).await?;
    let direct = get_md(&reqwest::Client::new(), format!("{}{path}", f.mock.uri())).await?;
    assert_eq!(via.status(), 200);
    assert_eq!(via.status(), direct.status());
    for h in ["content-type", "server"] {
        assert_eq!(via.headers().get(h), direct.headers().get(h), "{h}");
    }
    assert_eq!(via.bytes().await?, direct.bytes().await?);
    // A canonicalised spelling is forwarded in its canonical form.
    let (status, _) = f
        .raw_md("127.0.0.2", "/metadata/./%69nstance?api-version=2021-02-01")
        .await?;
    assert_eq!(status, 200);
    assert!(
        journal_paths(&f.mock)
            .iter()
            .all(|p| p == "/metadata/instance"),
        "{:?}",
        journal_paths(&f.mock)
    );
    Ok(())
}

// ---- RTA: Retry-After ---------------------------------------------------------------------------------------

#[tokio::test]
async fn rta_001_created_gives_503_retry_after_then_assigned_gives_200() -> TestResult {
    let f = Fixture::start(|s| {
        fast_retries(s);
        s.set_retry_after_header = true;
    })
    .await?;
    let a = f.mock.assign_identity(uami(0xb1, "id-b"));
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.aai("p1", &a, NODE, "Created")?;
    f.wait_for_pod("127.0.0.2").await?;
    f.wait_for_aais("p1", 1, "Created").await?;
    let c = client_from("127.0.0.2")?;
    let resp = f.token(&c, "").await?;
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "retry-after"), Some("20"));
    assert!(
        resp.text()
            .await?
            .contains("in ASSIGNED state failed after 2 attempts")
    );
    assert!(upstream_token_client_ids(&f).is_empty());

    f.aai("p1", &a, NODE, "Assigned")?;
    f.wait_for_aais("p1", 1, "Assigned").await?;
    let resp = f.token(&c, "").await?;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("retry-after").is_none());
    assert_eq!(upstream_token_client_ids(&f), vec![a.client_id.clone()]);
    Ok(())
}

#[tokio::test]
async fn rta_003_token_errors_are_not_503_retry_after() -> TestResult {
    // The AAI is Assigned but the identity is not on the VM: IMDS says 404 (retried by adal, then 403).
    let f = Fixture::start(|s| s.set_retry_after_header = true).await?;
    let ghost = uami(0xc1, "id-ghost");
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.aai("p1", &ghost, NODE, "Assigned")?;
    f.wait_for_pod("127.0.0.2").await?;
    f.wait_for_aais("p1", 1, "Assigned").await?;
    let resp = f.token(&client_from("127.0.0.2")?, "").await?;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("retry-after").is_none());
    let body = resp.text().await?;
    assert!(
        body.starts_with(
            "failed to refresh token, error: adal: Refresh request failed. Status Code = '"
        ),
        "{body}"
    );
    // The mock answers an unknown identity with a status adal does not retry: exactly one attempt.
    assert_eq!(upstream_token_client_ids(&f), vec![ghost.client_id.clone()]);
    Ok(())
}

#[tokio::test]
async fn rta_006_feature_off_404_after_retry_budget() -> TestResult {
    let f = Fixture::start(fast_retries).await?;
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.wait_for_pod("127.0.0.2").await?;
    let started = Instant::now();
    let resp = f.token(&client_from("127.0.0.2")?, "").await?;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().get("retry-after").is_none());
    assert_eq!(
        resp.text().await?,
        "getting assigned identities for pod default/p1 in CREATED state failed after 1 attempts, retry duration [1]s, error: <nil>. Check MIC pod logs for identity assignment errors\n"
    );
    // One lookup, one 1 s sleep, one more lookup (generous upper bound: this is not a benchmark).
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    Ok(())
}

// ---- LBL: label filtering -------------------------------------------------------------------------------------

/// Pods p1 (127.0.0.2) and p2 (127.0.0.3) with AAIs on this node, three on another node and one unlabelled
/// for p2 (`id-legacy`); checks that `sent` AAIs reached the proxy's client.
async fn label_fixture(
    scale: bool,
    sent: u64,
) -> Result<Fixture, Box<dyn std::error::Error + Send + Sync>> {
    let mock = mock().await?;
    let api = kube_test_apiserver::ApiServer::start("127.0.0.1:0".parse()?).await?;
    let mine = mock.assign_identity(uami(0xd1, "id-mine"));
    let legacy = mock.assign_identity(uami(0xd2, "id-legacy"));
    // Two AAIs for this node, three for another node, one unlabelled (created before scale features).
    api.apply(pod_json("p1", "default", "127.0.0.2", NODE, json!({})))?;
    api.apply(pod_json("p2", "default", "127.0.0.3", NODE, json!({})))?;
    api.apply(aai_json("p1", "default", &mine, NODE, "Assigned", true))?;
    api.apply(aai_json(
        "p2",
        "default",
        &uami(0xd3, "id-other"),
        NODE,
        "Assigned",
        true,
    ))?;
    for i in 0..3u8 {
        api.apply(aai_json(
            &format!("q{i}"),
            "default",
            &uami(0xe0 + i, "id-far"),
            "node-2",
            "Assigned",
            true,
        ))?;
    }
    let mut unlabelled = aai_json("p2", "default", &legacy, NODE, "Assigned", false);
    if let Some(m) = unlabelled
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        m.clear();
    }
    api.apply(unlabelled)?;
    let f = Fixture::start_with(mock, api, |s| {
        fast_retries(s);
        s.enable_scale_features = scale;
    })
    .await?;
    let stats = f.api.stats();
    assert_eq!(
        stats.objects_sent(&f.client_key, "azureassignedidentities"),
        sent,
        "{stats:?}"
    );
    Ok(f)
}

#[tokio::test]
async fn lbl_001_scale_features_on_only_this_nodes_aais_arrive() -> TestResult {
    let f = label_fixture(true, 2).await?;
    // The unlabelled AAI is invisible: p2 asking for it is refused.
    let legacy = uami(0xd2, "id-legacy");
    let resp = f
        .token(&client_from("127.0.0.3")?, &client_id(&legacy))
        .await?;
    assert_eq!(resp.status(), 404);
    let resp = f.token(&client_from("127.0.0.2")?, "").await?;
    assert_eq!(resp.status(), 200);
    Ok(())
}

#[tokio::test]
async fn lbl_003_scale_features_off_every_aai_arrives_and_unlabelled_is_served() -> TestResult {
    let f = label_fixture(false, 6).await?;
    f.wait_for_aais("p2", 2, "Assigned").await?;
    let legacy = uami(0xd2, "id-legacy");
    let resp = f
        .token(&client_from("127.0.0.3")?, &client_id(&legacy))
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        upstream_token_client_ids(&f),
        vec![legacy.client_id.clone()]
    );
    Ok(())
}

// ---- TOK: identity selection, body shape, host token ---------------------------------------------------------

#[tokio::test]
async fn tok_001_selection_by_none_client_id_msi_res_id_mi_res_id() -> TestResult {
    let f = Fixture::start(fast_retries).await?;
    let a = f.mock.assign_identity(uami(0x11, "id-a"));
    let b = f.mock.assign_identity(uami(0x22, "id-b"));
    f.pod("p1", "127.0.0.2", NODE, json!({}))?;
    f.aai("p1", &a, NODE, "Assigned")?;
    f.aai("p1", &b, NODE, "Assigned")?;
    f.wait_for_pod("127.0.0.2").await?;
    f.wait_for_aais("p1", 2, "Assigned").await?;
    let c = client_from("127.0.0.2")?;
    let cases = [
        ("".to_string(), &a), // no id: the first AAI by name (p1-default-id-a)
        (client_id(&b), &b),
        (format!("&client_id={}", a.client_id.to_uppercase()), &a), // NMI would 404 here (case-sensitive pick)
        (format!("&msi_res_id={}", urlencode(&a.resource_id)), &a),
        (format!("&mi_res_id={}", urlencode(&b.resource_id)), &b),
    ];
    for (extra, want) in cases {
        f.mock.clear_journal();
        let resp = f.token(&c, &extra).await?;
        assert_eq!(resp.status(), 200, "{extra}");
        assert_eq!(header(&resp, "content-type"), Some("application/json"));
        let body: serde_json::Map<String, Value> = serde_json::from_slice(&resp.bytes().await?)?;
        let keys: Vec<&str> = body.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "access_token",
                "refresh_token",
                "expires_in",
                "expires_on",
                "not_before",
                "resource",
                "token_type"
            ]
        );
        assert!(body.values().all(Value::is_string), "all strings: {body:?}");
        assert_eq!(body["refresh_token"], "");
        assert_eq!(body["resource"], RESOURCE);
        assert_eq!(
            upstream_token_client_ids(&f),
            vec![want.client_id.clone()],
            "{extra}"
        );
        let q = &f.mock.journal()[0];
        assert!(
            q.query.starts_with("api-version=2018-02-01&client_id="),
            "{}",
            q.query
        );
        assert!(
            q.headers
                .iter()
                .any(|(k, v)| k == "metadata" && v == "true")
        );
    }
    // An id the pod does not hold: 404, never someone else's token.
    f.mock.clear_journal();
    let other = uami(0x33, "id-c");
    let resp = f.token(&c, &client_id(&other)).await?;
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await?.starts_with(
        "clientID in request: 3333##### REDACTED #####6633, getting assigned identities"
    ));
    assert!(upstream_token_client_ids(&f).is_empty());
    Ok(())
}

#[tokio::test]
async fn tok_006_missing_resource_is_400() -> TestResult {
    let (f, _) = one_pod(|_| {}).await?;
    let resp = get_md(
        &client_from("127.0.0.2")?,
        f.url("/metadata/identity/oauth2/token?api-version=2018-02-01"),
    )
    .await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await?, "parameter resource cannot be empty\n");
    Ok(())
}

#[tokio::test]
async fn tok_008_host_token_only_from_host() -> TestResult {
    let (f, a) = one_pod(|_| {}).await?;
    let url = f.url(&format!("/host/token/?resource={}", urlencode(RESOURCE)));
    let both = [("podname", "p1"), ("podns", "default")];
    let host = client_from("127.0.0.1")?;
    let resp = get_with(&host, &url, &both).await?;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await?;
    assert_eq!(body["clientid"], Value::String(a.client_id.clone()));
    assert!(
        body["token"]["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3)
    );
    let resp = get_with(&host, &url, &both[..1]).await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.text().await?,
        "missing 'podname' and 'podns' from request header\n"
    );
    let resp = get_with(&client_from("127.0.0.2")?, &url, &both).await?;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.text().await?,
        "request remote address is not from a host\n"
    );
    Ok(())
}

#[tokio::test]
async fn tok_invalid_token_paths_are_400() -> TestResult {
    let (f, _) = one_pod(|_| {}).await?;
    for target in [
        "/metadata/identity%5coauth2/token/?resource=x",
        "/metadata/identityXoauth2Ytoken?resource=x",
    ] {
        let (status, body) = f.raw_md("127.0.0.2", target).await?;
        assert_eq!(
            (status, body.as_str()),
            (400, "Invalid request\n"),
            "{target}"
        );
    }
    assert!(f.mock.journal().is_empty());
    Ok(())
}

#[tokio::test]
async fn tok_exception_pods_get_tokens_straight_from_imds() -> TestResult {
    let f = Fixture::start(|_| {}).await?;
    f.pod("ex", "127.0.0.4", NODE, json!({"app": "Bypass"}))?;
    f.api.apply(json!({
        "apiVersion": AAI_API, "kind": "AzurePodIdentityException",
        "metadata": {"name": "bypass", "namespace": "default"},
        "spec": {"podLabels": {"app": "bypass"}}
    }))?;
    f.wait_for_pod("127.0.0.4").await?;
    let c = client_from("127.0.0.4")?;
    eventually("exception in the proxy's view", || {
        !f.proxy.view().exceptions_in("default").is_empty()
    })
    .await?;
    let resp = f.token(&c, "").await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        upstream_token_client_ids(&f),
        vec![String::new()],
        "system-assigned, no client_id"
    );
    Ok(())
}

#[tokio::test]
async fn tok_managed_mode_uses_bindings() -> TestResult {
    let f = Fixture::start(|s| {
        s.operation_mode = imds_proxy::config::OperationMode::Managed;
        s.force_namespaced = true;
    })
    .await?;
    let a = f.mock.assign_identity(uami(0x44, "id-m"));
    f.pod("pm", "127.0.0.5", NODE, json!({"aadpodidbinding": "sel-m"}))?;
    f.api
        .apply(json!({"apiVersion": AAI_API, "kind": "AzureIdentity",
        "metadata": {"name": "id-m", "namespace": "default"},
        "spec": {"type": 0, "resourceID": a.resource_id, "clientID": a.client_id}}))?;
    f.api.apply(
        json!({"apiVersion": AAI_API, "kind": "AzureIdentityBinding",
        "metadata": {"name": "bind-m", "namespace": "default"},
        "spec": {"azureIdentity": "id-m", "selector": "sel-m"}}),
    )?;
    f.wait_for_pod("127.0.0.5").await?;
    let c = client_from("127.0.0.5")?;
    let status = f
        .token_status_until_ok(&c, 50, Duration::from_millis(100))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(upstream_token_client_ids(&f).last(), Some(&a.client_id));
    // No AzureAssignedIdentity watch in managed mode.
    assert_eq!(
        f.api
            .stats()
            .client(&f.client_key)
            .resource("azureassignedidentities")
            .requests
            .len(),
        0
    );
    Ok(())
}

// ---- ISO: fail closed, spoofing ---------------------------------------------------------------------------------

#[tokio::test]
async fn iso_unknown_and_ambiguous_callers_get_nothing() -> TestResult {
    let (f, a) = one_pod(|_| {}).await?;
    let resp = f.token(&client_from("127.0.0.99")?, "").await?;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await?, "pod list is empty\n");
    // A second pod claims p1's address: refuse rather than guess.
    f.pod("p1-twin", "127.0.0.2", NODE, json!({}))?;
    f.aai("p1-twin", &a, NODE, "Assigned")?;
    let ip = "127.0.0.2".parse()?;
    eventually("twin pod in the proxy's view", || {
        f.proxy.view().pods_with_ip(ip).len() == 2
    })
    .await?;
    let resp = f.token(&client_from("127.0.0.2")?, "").await?;
    assert_eq!(resp.status(), 500);
    assert!(
        resp.text()
            .await?
            .starts_with("failed to match pod IP 127.0.0.2 with [")
    );
    assert!(upstream_token_client_ids(&f).is_empty());
    Ok(())
}

#[tokio::test]
async fn iso_spoofed_headers_change_nothing_and_xff_is_never_forwarded() -> TestResult {
    let (f, a) = one_pod(fast_retries).await?;
    f.pod("p2", "127.0.0.3", NODE, json!({}))?;
    f.wait_for_pod("127.0.0.3").await?;
    // p2 (no identity) pretends to be p1.
    let resp = get_with(
        &client_from("127.0.0.3")?,
        f.url(&token_path(&client_id(&a))),
        &[
            ("Metadata", "true"),
            ("X-Forwarded-For", "127.0.0.2"),
            ("podname", "p1"),
            ("podns", "default"),
        ],
    )
    .await?;
    assert_eq!(resp.status(), 404);
    assert!(upstream_token_client_ids(&f).is_empty());
    // Pass-through drops a client's X-Forwarded-For (IMDS would refuse it; and it is a lie).
    let resp = get_with(
        &client_from("127.0.0.3")?,
        f.url("/metadata/versions"),
        &[
            ("Metadata", "true"),
            ("X-Forwarded-For", "10.9.9.9"),
            ("Forwarded", "for=10.9.9.9"),
        ],
    )
    .await?;
    assert_eq!(resp.status(), 200);
    let entry = f
        .mock
        .journal()
        .into_iter()
        .find(|e| e.path == "/metadata/versions")
        .ok_or("not forwarded")?;
    assert!(
        !entry
            .headers
            .iter()
            .any(|(k, _)| k == "x-forwarded-for" || k == "forwarded"),
        "{:?}",
        entry.headers
    );
    Ok(())
}

#[tokio::test]
async fn iso_005_api_server_down_fails_closed_then_recovers() -> TestResult {
    let (f, _) = one_pod(|_| {}).await?;
    let c = client_from("127.0.0.2")?;
    let resp = f.token(&c, "").await?;
    assert_eq!(resp.status(), 200);
    f.mock.clear_journal();
    f.api.set_available(false);
    let mut status = 200;
    for _ in 0..100 {
        if f.proxy.view().ready().is_err() {
            let resp = f.token(&c, "").await?;
            status = resp.status().as_u16();
            assert!(resp.text().await?.contains("cluster view unavailable"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 500, "API server outage must fail closed");
    assert!(upstream_token_client_ids(&f).is_empty());
    f.api.set_available(true);
    let status = f
        .token_status_until_ok(&c, 120, Duration::from_millis(500))
        .await?;
    assert_eq!(status, 200, "recovers after the outage");
    Ok(())
}

#[tokio::test]
async fn iso_not_yet_synced_view_refuses_and_health_says_not_active() -> TestResult {
    let mock = mock().await?;
    let view = MemoryView::new();
    view.set_ready(Err(ViewUnavailable::NotSynced { resource: "pods" }));
    view.set_pods(vec![imds_proxy::cluster::model::PodInfo {
        namespace: "default".into(),
        name: "p1".into(),
        ip: "127.0.0.2".parse().ok(),
        phase: "Running".into(),
        labels: BTreeMap::new(),
        replicaset: None,
        host_network: false,
    }]);
    let proxy = Proxy::start_with_view(
        Settings::for_tests(mock.addr(), NODE),
        Arc::new(view.clone()),
    )
    .await?;
    let health = format!("http://{}/healthz", proxy.probe_addr());
    assert_eq!(reqwest::get(&health).await?.text().await?, "Not Active");
    let resp = get_md(
        &client_from("127.0.0.2")?,
        format!("http://{}{}", proxy.addr(), token_path("")),
    )
    .await?;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await?, "cluster view not yet synced (pods)\n");
    view.set_ready(Ok(()));
    tokio::time::timeout(Duration::from_secs(10), proxy.ready()).await??;
    assert_eq!(reqwest::get(&health).await?.text().await?, "Active");
    proxy.shutdown().await?;
    Ok(())
}

// ---- PT, health, metrics ------------------------------------------------------------------------------------------

#[tokio::test]
async fn pt_001_status_headers_body_relayed_and_metrics_exposed() -> TestResult {
    let (f, _) = one_pod(|_| {}).await?;
    let c = client_from("127.0.0.2")?;
    let resp = get_md(&c, f.url("/doesnotexist")).await?;
    let direct = get_md(
        &reqwest::Client::new(),
        format!("{}/doesnotexist", f.mock.uri()),
    )
    .await?;
    assert_eq!(resp.status(), direct.status());
    assert_eq!(
        resp.headers().get("content-type"),
        direct.headers().get("content-type")
    );
    assert_eq!(resp.bytes().await?, direct.bytes().await?);
    let resp = c
        .post(f.url("/metadata/scheduledevents?api-version=2020-07-01"))
        .header("Metadata", "true")
        .body("{\"StartRequests\":[]}")
        .send()
        .await?;
    assert!(resp.status().is_success() || resp.status().is_client_error());
    assert!(
        f.mock
            .journal()
            .iter()
            .any(|e| e.method == "POST" && e.path == "/metadata/scheduledevents")
    );

    let health = reqwest::get(format!("http://{}/healthz", f.proxy.probe_addr())).await?;
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await?, "Active");
    let _ = f.token(&c, "").await?;
    let metrics = reqwest::get(format!("http://{}/metrics", f.proxy.metrics_addr()))
        .await?
        .text()
        .await?;
    for name in [
        "aadpodidentity_nmi_operations_duration_seconds_bucket",
        "aadpodidentity_imds_operations_duration_seconds_count",
        "imds_proxy_requests_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    assert!(metrics.contains("decision=\"token\""), "{metrics}");
    Ok(())
}
