//! Acceptance (issue 2): every documented error body byte-for-byte, with its status, Content-Length and the
//! headers the real service sends (REFERENCE B.1, B.2, B.4, B.8), over a real socket.

mod common;

use common::*;
use mock_imds::MockImds;

async fn mock() -> MockImds {
    start(seeded_config(7)).await
}

/// Asserts status, exact body bytes, Content-Length and the IMDS headers.
fn assert_exact(reply: &Reply, status: u16, body: &str) {
    assert_eq!(reply.status, status, "status; body {}", reply.text());
    assert_eq!(reply.text(), body, "body bytes");
    assert_eq!(
        reply.header("content-length"),
        Some(body.len().to_string()),
        "Content-Length"
    );
    assert_imds_headers(reply);
}

const NEWEST: &str = r#"{"error":"Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds","newest-versions":["2025-04-07","2024-07-17","2024-03-15"]}"#;

#[tokio::test]
async fn missing_metadata_header_instance() {
    let m = mock().await;
    assert_exact(
        &get_bare(&m, INSTANCE, &[]).await,
        400,
        r#"{"error":"Bad request: . Required metadata header not specified"}"#,
    );
}

#[tokio::test]
async fn missing_metadata_header_token_is_88_bytes() {
    let m = mock().await;
    let r = get_bare(&m, TOKEN, &[]).await;
    assert_exact(
        &r,
        400,
        r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#,
    );
    assert_eq!(r.body.len(), 88);
}

#[tokio::test]
async fn metadata_value_case_rules() {
    let m = mock().await;
    // waagent sends `True` to instance metadata: accepted.
    let capital = [("Metadata", "True")];
    let r = get_bare(
        &m,
        "/metadata/instance/compute?api-version=2018-02-01",
        &capital,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The token endpoint requires lower-case `true` (token documentation), by default.
    assert_eq!(get_bare(&m, TOKEN, &capital).await.status, 400);
    let r = get_bare(&m, INSTANCE, &[("Metadata", "false")]).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn api_version_missing_and_invalid() {
    let m = mock().await;
    for path in [
        "/metadata/instance",
        "/metadata/instance?format=json",
        "/metadata/instance?api-version=2017-07-01",
        "/metadata/instance?api-version=banana",
        // Category introduced later than the version asked for.
        "/metadata/loadbalancer?api-version=2020-09-01",
        "/metadata/attested/document?api-version=2018-04-02",
    ] {
        assert_exact(&get(&m, path, &[]).await, 400, NEWEST);
    }
    // Identity speaks OAuth.
    let r = get(&m, "/metadata/identity/oauth2/token?resource=x", &[]).await;
    assert_exact(
        &r,
        400,
        r#"{"error":"invalid_request","error_description":"Required query variable 'api-version' is missing"}"#,
    );
    let r = get(
        &m,
        "/metadata/identity/oauth2/token?resource=x&api-version=2017-12-01",
        &[],
    )
    .await;
    assert_exact(
        &r,
        400,
        r#"{"error":"invalid_request","error_description":"Invalid 'api-version' requested"}"#,
    );
    // versions needs none.
    assert_eq!(get(&m, "/metadata/versions", &[]).await.status, 200);
}

#[tokio::test]
async fn legacy_api_version_style_is_configurable() {
    let mut c = seeded_config(7);
    c.behavior.api_version_style = mock_imds::error::ApiVersionStyle::LegacyNotFound;
    let m = start(c).await;
    assert_exact(
        &get(&m, "/metadata/instance?api-version=2017-07-01", &[]).await,
        404,
        r#"{"error":"Not found. Invalid version requested"}"#,
    );
    assert_exact(&get(&m, "/metadata/instance", &[]).await, 400, NEWEST);
}

#[tokio::test]
async fn identity_errors_byte_exact() {
    let m = mock().await;
    let r = get(
        &m,
        &format!("{TOKEN}&client_id=00000000-0000-0000-0000-000000000000"),
        &[],
    )
    .await;
    assert_exact(
        &r,
        400,
        r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
    );
    assert_eq!(r.body.len(), 68);
    let r = get(
        &m,
        "/metadata/identity/oauth2/token?api-version=2018-02-01",
        &[],
    )
    .await;
    assert_exact(
        &r,
        400,
        r#"{"error":"invalid_request","error_description":"Required query variable 'resource' is missing"}"#,
    );
}

#[tokio::test]
async fn multiple_user_assigned_is_168_bytes() {
    let mut c = seeded_config(7);
    c.identities.system_assigned = false;
    c.identities
        .user_assigned
        .push(mock_imds::config::UserAssignedIdentity {
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            object_id: String::new(),
            resource_id: String::new(),
            name: String::new(),
        });
    c.complete_identities();
    let m = start(c).await;
    let r = get(&m, TOKEN, &[]).await;
    assert_exact(
        &r,
        400,
        r#"{"error":"invalid_request","error_description":"Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"}"#,
    );
    assert_eq!(r.body.len(), 168);
}

#[tokio::test]
async fn no_identity_at_all_is_identity_not_found() {
    let mut c = seeded_config(7);
    c.identities.system_assigned = false;
    c.identities.user_assigned.clear();
    let m = start(c).await;
    assert_exact(
        &get(&m, TOKEN, &[]).await,
        400,
        r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
    );
    assert_exact(
        &get(&m, "/metadata/identity/info?api-version=2018-02-01", &[]).await,
        400,
        r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
    );
}

#[tokio::test]
async fn forwarded_for_is_rejected() {
    let m = mock().await;
    let r = get(
        &m,
        "/metadata/instance?api-version=2021-02-01",
        &[("X-Forwarded-For", "10.0.0.9")],
    )
    .await;
    assert_exact(
        &r,
        400,
        r#"{"error":"Bad request. X-Forwarded-For header is not allowed"}"#,
    );
    let r = get(&m, TOKEN, &[("X-Forwarded-For", "10.0.0.9")]).await;
    assert_exact(
        &r,
        400,
        r#"{"error":"invalid_request","error_description":"X-Forwarded-For header is not allowed"}"#,
    );
}

#[tokio::test]
async fn duplicate_query_keys_are_rejected() {
    let m = mock().await;
    let r = get(
        &m,
        "/metadata/instance?api-version=2021-02-01&api-version=2021-02-01",
        &[],
    )
    .await;
    assert_exact(
        &r,
        400,
        r#"{"error":"Bad request. Duplicate query parameter 'api-version'"}"#,
    );
    let r = get(&m, &format!("{TOKEN}&resource=x"), &[]).await;
    assert_exact(
        &r,
        400,
        r#"{"error":"invalid_request","error_description":"Duplicate query variable 'resource'"}"#,
    );
}

#[tokio::test]
async fn other_verbs_get_405() {
    let m = mock().await;
    let r = request(
        &m,
        reqwest::Method::PUT,
        "/metadata/instance?api-version=2021-02-01",
        true,
        &[],
        None,
    )
    .await;
    assert_exact(
        &r,
        405,
        r#"{"error":"Http method isn't allowed: Path = \"/metadata/instance\", Method = \"PUT\""}"#,
    );
    let r = request(&m, reqwest::Method::POST, TOKEN, true, &[], None).await;
    assert_exact(
        &r,
        405,
        r#"{"error":"method_not_allowed","error_description":"Http method isn't allowed: Path = \"/metadata/identity/oauth2/token\", Method = \"POST\""}"#,
    );
    let brew = reqwest::Method::from_bytes(b"BREW").expect("method");
    let r = request(
        &m,
        brew,
        "/metadata/instance?api-version=2021-02-01",
        true,
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn not_found_and_leaf_without_text() {
    let m = mock().await;
    const NOT_FOUND: &str = r#"{"error":"Not found"}"#;
    const LEAF: &str = r#"{"error":"Bad request. Querying a leaf node requires format=text"}"#;
    for (path, status, body) in [
        (
            "/metadata/instance/compute/nosuch?api-version=2021-02-01",
            404,
            NOT_FOUND,
        ),
        (
            "/metadata/instance/network/interface/7?api-version=2021-02-01",
            404,
            NOT_FOUND,
        ),
        // A field not yet introduced in the requested version does not exist.
        (
            "/metadata/instance/compute/userData?api-version=2020-12-01&format=text",
            404,
            NOT_FOUND,
        ),
        (
            "/metadata/instance/compute/vmId?api-version=2021-02-01",
            400,
            LEAF,
        ),
        (
            "/metadata/instance/compute/vmId?api-version=2021-02-01&format=json",
            400,
            LEAF,
        ),
        ("/metadata/nosuch?api-version=2021-02-01", 404, NOT_FOUND),
    ] {
        assert_exact(&get(&m, path, &[]).await, status, body);
    }
}

#[tokio::test]
async fn load_balancer_not_configured() {
    let mut c = seeded_config(7);
    c.load_balancer = Default::default();
    let m = start(c).await;
    let r = get(&m, "/metadata/loadbalancer?api-version=2020-10-01", &[]).await;
    assert_exact(
        &r,
        404,
        r#"{"error":"No load balancer metadata is found. Please check if your VM is using any non-basic SKU load balancer and retry later."}"#,
    );
}

#[tokio::test]
async fn unknown_resource_is_aadsts500011() {
    let mut c = seeded_config(7);
    c.identities
        .unknown_resources
        .push("https://nope.example".into());
    let tenant = c.identities.tenant_id.clone();
    let m = start(c).await;
    let r = get(
        &m,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://nope.example",
        &[],
    )
    .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"], "invalid_resource");
    let d = v["error_description"].as_str().unwrap_or_default();
    assert!(d.starts_with("AADSTS500011: The resource principal named https://nope.example was not found in the tenant named "));
    assert!(d.contains(&tenant));
}

#[tokio::test]
async fn success_responses_carry_the_same_headers() {
    let m = mock().await;
    let r = get(&m, "/metadata/instance?api-version=2021-02-01", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert!(
        r.header("server")
            .unwrap_or_default()
            .starts_with("IMDS/150.870.65.")
    );
    assert!(r.header("x-ms-request-id").is_some());
    // Compact JSON: no whitespace between tokens.
    assert!(!r.text().contains(": ") && !r.text().contains(", ") && !r.text().contains('\n'));
    let t = get(
        &m,
        "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
        &[],
    )
    .await;
    assert_eq!(
        t.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(t.text(), m.config().compute.vm_id);
}
