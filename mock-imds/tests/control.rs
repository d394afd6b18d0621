//! The `/_mock/` control API (INTERFACES §1): health, journal (not journaling itself), identities, faults,
//! rate-limit switch, scheduled events, reset, discovery documents; `--no-control`, and the control API on
//! its own listener (`--control-listen`).

mod common;

use common::*;
use mock_imds::MockImds;
use mock_imds::journal::JournalEntry;
use serde_json::{Value, json};

const EVENTS: &str = "/metadata/scheduledevents?api-version=2020-07-01";

async fn mock() -> MockImds {
    start(seeded_config(21)).await
}

async fn ctl(
    m: &MockImds,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut req = client().request(method, format!("{}/_mock{path}", m.uri()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("control request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

#[tokio::test]
async fn health_and_journal() {
    let m = mock().await;
    assert_eq!(
        ctl(&m, reqwest::Method::GET, "/health", None).await,
        (200, "ok".to_string())
    );
    get(&m, INSTANCE, &[("x-ms-client-request-id", "abc")]).await;
    let (s, body) = ctl(&m, reqwest::Method::GET, "/journal", None).await;
    assert_eq!(s, 200);
    let entries: Vec<JournalEntry> = serde_json::from_str(&body).expect("journal JSON");
    assert_eq!(
        entries.len(),
        1,
        "control requests are not journaled: {body}"
    );
    let e = &entries[0];
    assert_eq!(
        (
            e.method.as_str(),
            e.path.as_str(),
            e.query.as_str(),
            e.status
        ),
        ("GET", "/metadata/instance", "api-version=2021-02-01", 200)
    );
    assert!(
        e.headers
            .iter()
            .any(|(n, v)| n == "x-ms-client-request-id" && v == "abc")
    );
    assert!(e.source.starts_with("127.0.0.1:"));
    assert!(chrono::DateTime::parse_from_rfc3339(&e.time).is_ok());
    assert_eq!(
        ctl(&m, reqwest::Method::DELETE, "/journal", None).await.0,
        204
    );
    assert!(m.journal().is_empty());
}

#[tokio::test]
async fn identities_can_be_assigned_and_unassigned() {
    let m = mock().await;
    let cid = "3c9a8f51-07b6-4c0e-9a3e-2a7c2f9d1e44";
    let q = format!("{TOKEN}&client_id={cid}");
    assert_eq!(get(&m, &q, &[]).await.status, 400);
    let (s, body) = ctl(
        &m,
        reqwest::Method::POST,
        "/identities",
        Some(json!({"client_id": cid})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let stored: Value = serde_json::from_str(&body).expect("json");
    assert!(
        stored["resource_id"]
            .as_str()
            .is_some_and(|r| r.contains("/userAssignedIdentities/"))
    );
    assert_eq!(get(&m, &q, &[]).await.status, 200);
    let (_, list) = ctl(&m, reqwest::Method::GET, "/identities", None).await;
    assert!(list.contains(cid));
    let unassign = format!("/identities/{cid}");
    for expected in [204, 404] {
        let (status, _) = ctl(&m, reqwest::Method::DELETE, &unassign, None).await;
        assert_eq!(status, expected, "DELETE {unassign}");
    }
    assert_eq!(get(&m, &q, &[]).await.status, 400);
}

#[tokio::test]
async fn faults_over_http() {
    let m = mock().await;
    let faults = json!({"rules": [{"path_prefix": "/metadata/instance", "status": 500}]});
    assert_eq!(
        ctl(&m, reqwest::Method::PUT, "/faults", Some(faults))
            .await
            .0,
        200
    );
    assert_eq!(get(&m, INSTANCE, &[]).await.status, 500);
    let (_, body) = ctl(&m, reqwest::Method::GET, "/faults", None).await;
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["rules"][0]["status"], 500);
    assert_eq!(
        ctl(&m, reqwest::Method::DELETE, "/faults", None).await.0,
        204
    );
    assert_eq!(get(&m, INSTANCE, &[]).await.status, 200);
    // Rate-limit switch.
    let (s, body) = ctl(
        &m,
        reqwest::Method::PUT,
        "/rate-limits",
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!((s, body.as_str()), (200, r#"{"enabled":true}"#));
}

#[tokio::test]
async fn scheduled_events_and_reset() {
    let m = mock().await;
    let (s, body) = ctl(
        &m,
        reqwest::Method::POST,
        "/scheduledevents",
        Some(json!({"EventType": "Freeze"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let ev: Value = serde_json::from_str(&body).expect("json");
    let id = ev["EventId"].as_str().unwrap_or_default().to_string();
    let doc = get(&m, EVENTS, &[]).await.json();
    assert_eq!(doc["Events"][0]["EventType"], "Freeze");
    assert_eq!(doc["Events"][0]["EventStatus"], "Scheduled");
    assert!(doc["DocumentIncarnation"].is_u64());
    let ack = post(
        &m,
        EVENTS,
        &format!(r#"{{"StartRequests":[{{"EventId":"{id}"}}]}}"#),
    )
    .await;
    assert_eq!(ack.status, 200);
    let doc = get(&m, EVENTS, &[]).await.json();
    assert_eq!(doc["Events"][0]["EventStatus"], "Started");
    // Unknown ids are accepted by default (open question 11); malformed payloads are 400.
    let unknown = post(&m, EVENTS, r#"{"StartRequests":[{"EventId":"nope"}]}"#).await;
    assert_eq!(unknown.status, 200);
    let bad = post(&m, EVENTS, "{").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Bad Request."))
    );
    // Reset: back to the configured state.
    assert_eq!(ctl(&m, reqwest::Method::POST, "/reset", None).await.0, 204);
    let doc = get(&m, EVENTS, &[]).await.json();
    assert_eq!(doc["Events"], json!([]));
    assert_eq!(m.journal().len(), 1, "reset cleared the journal");
}

#[tokio::test]
async fn discovery_documents_match_the_tokens() {
    let m = mock().await;
    let (s, body) = ctl(
        &m,
        reqwest::Method::GET,
        "/.well-known/openid-configuration",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let oidc: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        oidc["jwks_uri"],
        format!("{}/_mock/discovery/keys", m.uri())
    );
    let token = get(&m, TOKEN, &[]).await.json();
    let (header, claims) = jwt_parts(token["access_token"].as_str().unwrap_or_default());
    assert_eq!(oidc["issuer"], claims["iss"]);
    let (_, jwks) = ctl(&m, reqwest::Method::GET, "/discovery/keys", None).await;
    let jwks: Value = serde_json::from_str(&jwks).expect("json");
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    let (s, pem) = ctl(&m, reqwest::Method::GET, "/attested/chain.pem", None).await;
    assert_eq!(s, 200);
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 3);
}

#[tokio::test]
async fn discovery_without_host_header_names_the_listener() {
    let m = mock().await;
    // HTTP/1.0 needs no Host header: the jwks_uri must still reach this mock (its address and port).
    let r = raw(
        &m,
        b"GET /_mock/.well-known/openid-configuration HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["jwks_uri"],
        format!("{}/_mock/discovery/keys", m.uri())
    );
}

#[tokio::test]
async fn no_control_leaves_only_imds() {
    let m = MockImds::builder()
        .config(seeded_config(21))
        .control(false)
        .start()
        .await
        .expect("start");
    let r = get(&m, "/_mock/health", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.header("server").is_some_and(|s| s.starts_with("IMDS/")));
    assert_eq!(
        m.journal().len(),
        1,
        "without control, /_mock is just another (unknown) IMDS path"
    );
}

#[tokio::test]
async fn journal_is_bounded() {
    let mut c = seeded_config(21);
    c.server.journal_capacity = 3;
    let m = start(c).await;
    for i in 0..5 {
        get(&m, &format!("{INSTANCE}&n={i}"), &[]).await;
    }
    let j = m.journal();
    assert_eq!(j.len(), 3);
    assert_eq!(j.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
    assert!(j[2].query.ends_with("n=4"));
}

#[tokio::test]
async fn acknowledgement_with_document_incarnation_is_accepted() {
    let m = mock().await;
    let event = m.add_scheduled_event(mock_imds::config::ScheduledEvent {
        event_type: "Reboot".into(),
        ..Default::default()
    });
    // The 2017-03-01 documentation's sample payload carries DocumentIncarnation (as a string).
    let body = format!(
        r#"{{"DocumentIncarnation":"5", "StartRequests": [{{"EventId": "{}"}}]}}"#,
        event.event_id
    );
    let ack = post(
        &m,
        "/metadata/scheduledevents?api-version=2017-03-01",
        &body,
    )
    .await;
    assert_eq!(ack.status, 200, "{}", ack.text());
    let doc = get(&m, EVENTS, &[]).await.json();
    assert_eq!(doc["Events"][0]["EventStatus"], "Started");
}

/// `GET /_mock/journal` is streamed in chunks; the document is byte for byte the JSON of the entries.
#[tokio::test]
async fn journal_is_streamed_byte_identical() {
    let m = mock().await;
    let padding = "p".repeat(200);
    for i in 0..600 {
        let r = get(
            &m,
            &format!("/metadata/versions?n={i}"),
            &[("x-padding", &padding)],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let resp = client()
        .get(format!("{}/_mock/journal", m.uri()))
        .send()
        .await
        .expect("journal");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert!(
        resp.content_length().is_none(),
        "streamed (chunked), not built whole"
    );
    let body = resp.bytes().await.expect("body");
    assert!(body.len() > 3 * 64 * 1024, "spans several chunks");
    let expected = serde_json::to_vec(&m.journal()).expect("json");
    assert_eq!(body.as_ref(), expected.as_slice());
    // Empty journal: `[]`, as before.
    m.clear_journal();
    let (s, body) = ctl(&m, reqwest::Method::GET, "/journal", None).await;
    assert_eq!((s, body.as_str()), (200, "[]"));
}

/// The control API on its own listener: the IMDS listener answers `/_mock/...` exactly as a mock without a
/// control API does (the real service's unknown-path answer), never reaches it, and the journal survives.
#[tokio::test]
async fn control_listener_takes_the_control_api_off_the_imds_listener() {
    let m = MockImds::builder()
        .config(seeded_config(21))
        .control_listen("127.0.0.1:0".parse().expect("addr"))
        .start()
        .await
        .expect("start");
    // One key generation for both mocks (RSA in a debug build is slow; the other tests run meanwhile).
    let keys = m.signing_keys().await.expect("keys");
    let none = MockImds::builder()
        .config(seeded_config(21))
        .keys(keys)
        .control(false)
        .start()
        .await
        .expect("start");
    let control = m.control_addr().expect("a control listener");
    assert_ne!(control, m.addr());
    assert_eq!(m.control_uri(), Some(format!("http://{control}")));
    assert_eq!(none.control_uri(), None);
    get(&m, INSTANCE, &[("x-ms-client-request-id", "before")]).await;
    for (method, path, metadata) in [
        (reqwest::Method::GET, "/_mock/journal", true),
        (reqwest::Method::GET, "/_mock/journal", false),
        (reqwest::Method::GET, "/_mock/config", true),
        (reqwest::Method::DELETE, "/_mock/journal", true),
        (reqwest::Method::POST, "/_mock/reset", true),
    ] {
        let ours = request(&m, method.clone(), path, metadata, &[], None).await;
        let reference = request(&none, method.clone(), path, metadata, &[], None).await;
        assert_eq!(
            (ours.status, ours.text(), ours.header("content-type")),
            (
                reference.status,
                reference.text(),
                reference.header("content-type")
            ),
            "{method} {path} (Metadata: {metadata}) on the IMDS listener"
        );
        assert!(ours.status >= 400, "{method} {path}: {}", ours.status);
        assert!(
            ours.header("server")
                .is_some_and(|s| s.starts_with("IMDS/"))
        );
    }
    // Every one of those was an ordinary (unknown-path) IMDS request: journaled, and nothing was erased.
    let journal = m.journal();
    assert_eq!(journal.len(), 6, "{journal:?}");
    assert_eq!(journal[0].path, "/metadata/instance");
    // The control listener serves the control API, and only it.
    let base = m.control_uri().expect("control uri");
    let body: Vec<JournalEntry> = client()
        .get(format!("{base}/_mock/journal"))
        .send()
        .await
        .expect("journal over the control listener")
        .json()
        .await
        .expect("journal JSON");
    assert_eq!(body.len(), 6);
    let config: Value = client()
        .get(format!("{base}/_mock/config"))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("config JSON");
    assert_eq!(config["server"]["control_listen"], control.to_string());
    let r = client()
        .get(format!("{base}/metadata/instance?api-version=2021-02-01"))
        .header("Metadata", "true")
        .send()
        .await
        .expect("IMDS path on the control listener");
    assert_eq!(r.status().as_u16(), 404);
    let text = r.text().await.expect("body");
    assert!(
        !text.contains(&m.config().compute.vm_id),
        "no IMDS data on the control listener: {text}"
    );
    let deleted = client()
        .delete(format!("{base}/_mock/journal"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status().as_u16(), 204);
    assert!(m.journal().is_empty());
}

#[tokio::test]
async fn a_pre_bound_control_listener_is_used_and_control_off_binds_nothing() {
    let pre = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = pre.local_addr().expect("addr");
    let keys = mock_imds::keys::SigningKeys::generate(Some(21)).expect("keys");
    let m = MockImds::builder()
        .config(seeded_config(21))
        .keys(keys.clone())
        .control_listener(pre)
        .start()
        .await
        .expect("start");
    assert_eq!(m.control_addr(), Some(addr));
    let r = client()
        .get(format!("http://{addr}/_mock/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.text().await.expect("body"), "ok");
    // Control off wins: no second listener, and the IMDS listener has no control API either.
    let off = MockImds::builder()
        .config(seeded_config(21))
        .keys(keys)
        .control(false)
        .control_listen("127.0.0.1:0".parse().expect("addr"))
        .start()
        .await
        .expect("start");
    assert_eq!(off.control_addr(), None);
    assert_eq!(get(&off, "/_mock/health", &[]).await.status, 404);
}
