//! Acceptance (issue 2): insta snapshots of every endpoint for api-versions 2017-08-01, 2019-06-01,
//! 2021-02-01 and the newest. Deterministic: fixed seed (ids, keys) and a manual clock; only the per-request
//! `x-ms-request-id` and the PKCS#7 signature (its CMS signing time is wall-clock) are redacted.

mod common;

use axum::body::Body;
use common::*;
use serde_json::{Value, json};

const VERSIONS: [&str; 4] = ["2017-08-01", "2019-06-01", "2021-02-01", "2025-04-07"];
const SEED: u64 = 4242;

fn router() -> axum::Router {
    let mut config = seeded_config(SEED);
    config
        .scheduled_events
        .events
        .push(mock_imds::config::ScheduledEvent {
            event_id: "602d9444-d2cd-49c7-8624-8643e7171297".into(),
            not_before: "Fri, 08 Mar 2024 12:15:00 GMT".into(),
            ..Default::default()
        });
    mock_imds::router(config, manual_clock())
}

/// Status, the stable headers and the body, as one JSON value for the snapshot.
fn shape(reply: &Reply) -> Value {
    let body = match serde_json::from_slice::<Value>(&reply.body) {
        Ok(v) => v,
        Err(_) => Value::String(reply.text()),
    };
    json!({
        "status": reply.status,
        "content-type": reply.header("content-type"),
        "server": reply.header("server"),
        "x-ms-request-id": reply.header("x-ms-request-id").map(|v| if uuid::Uuid::parse_str(&v).is_ok() { "<uuid>" } else { "NOT A UUID" }),
        "date": reply.header("date"),
        "body": body,
    })
}

async fn snap(router: &axum::Router, name: &str, path: &str) -> Reply {
    let reply = oneshot_get(router, path).await;
    insta::assert_json_snapshot!(name, shape(&reply));
    reply
}

/// Snapshots `{name}_{v}` of `{path}` (with `{v}` substituted) for every version of [`VERSIONS`].
async fn snap_per_version(router: &axum::Router, cases: &[(&str, &str)]) {
    for v in VERSIONS {
        for (name, path) in cases {
            snap(router, &format!("{name}_{v}"), &path.replace("{v}", v)).await;
        }
    }
}

#[tokio::test]
async fn instance_document_per_version() {
    snap_per_version(
        &router(),
        &[
            ("instance", "/metadata/instance?api-version={v}"),
            ("instance_compute", "/metadata/instance/compute?api-version={v}"),
            (
                "instance_network_interface0",
                "/metadata/instance/network/interface/0?api-version={v}",
            ),
            (
                "instance_text_vmid",
                "/metadata/instance/compute/vmId?api-version={v}&format=text",
            ),
            ("instance_text_root", "/metadata/instance?api-version={v}&format=text"),
            (
                "instance_text_public_ip",
                "/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress?api-version={v}&format=text",
            ),
            (
                "instance_userdata",
                "/metadata/instance/compute/userData?api-version={v}&format=text",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn cloud_init_extended_request() {
    let r = router();
    let reply = snap(
        &r,
        "instance_extended_2021-08-01",
        "/metadata/instance?api-version=2021-08-01&extended=true",
    )
    .await;
    assert_eq!(reply.json()["extended"]["compute"]["ppsType"], "None");
}

#[tokio::test]
async fn versions_endpoint() {
    snap(&router(), "versions", "/metadata/versions").await;
}

#[tokio::test]
async fn identity_endpoints_per_version() {
    let r = router();
    let config = seeded_config(SEED);
    let uami = &config.identities.user_assigned[0];
    for v in VERSIONS {
        let sys = snap_token(&r, &format!("token_system_{v}"), &format!("/metadata/identity/oauth2/token?api-version={v}&resource=https://management.azure.com/")).await;
        let user = snap_token(
            &r,
            &format!("token_user_{v}"),
            &format!("/metadata/identity/oauth2/token?api-version={v}&resource=https%3A%2F%2Fvault.azure.net&client_id={}", uami.client_id),
        )
        .await;
        if v >= "2018-02-01" {
            assert_eq!(sys.status, 200);
            assert_eq!(
                user.json()["client_id"],
                Value::String(uami.client_id.clone())
            );
        } else {
            assert_eq!(sys.status, 400, "identity did not exist at {v}");
        }
        snap(
            &r,
            &format!("identity_info_{v}"),
            &format!("/metadata/identity/info?api-version={v}"),
        )
        .await;
    }
}

/// Snapshots a token response with the JWT replaced by its decoded header and claims (stable with the seed
/// and the manual clock; the signature is covered by tests/jwks_verify.rs).
async fn snap_token(router: &axum::Router, name: &str, path: &str) -> Reply {
    let reply = oneshot_get(router, path).await;
    let mut s = shape(&reply);
    if let Some(token) = reply.json().get("access_token").and_then(Value::as_str) {
        let (header, claims) = jwt_parts(token);
        s["body"]["access_token"] = json!({ "header": header, "claims": claims });
    }
    insta::assert_json_snapshot!(name, s);
    reply
}

#[tokio::test]
async fn attested_scheduledevents_loadbalancer_per_version() {
    let r = router();
    for v in VERSIONS {
        let reply = oneshot_get(
            &r,
            &format!("/metadata/attested/document?api-version={v}&nonce=1234567890"),
        )
        .await;
        let mut s = shape(&reply);
        if reply.status == 200 {
            let sig = reply.json()["signature"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_default();
            use base64::Engine as _;
            let der = base64::engine::general_purpose::STANDARD
                .decode(&sig)
                .expect("base64 signature");
            assert_eq!(der.first(), Some(&0x30), "DER SEQUENCE");
            // The signed content is embedded verbatim: check it and snapshot it (deterministic: seed + clock).
            let content =
                mock_imds::attested::signed_content(&seeded_config(SEED), v, "1234567890", t0());
            let bytes = serde_json::to_vec(&content).expect("content JSON");
            assert!(
                der.windows(bytes.len()).any(|w| w == bytes.as_slice()),
                "signed content embedded at {v}"
            );
            s["body"]["signature"] =
                json!({ "pkcs7_der_base64": "<redacted>", "signed_content": content });
        } else {
            assert!(v < "2018-10-01", "attested exists from 2018-10-01");
        }
        insta::assert_json_snapshot!(format!("attested_{v}"), s);
    }
    snap_per_version(
        &r,
        &[
            (
                "scheduledevents",
                "/metadata/scheduledevents?api-version={v}",
            ),
            ("loadbalancer", "/metadata/loadbalancer?api-version={v}"),
        ],
    )
    .await;
    snap(
        &r,
        "scheduledevents_2020-07-01",
        "/metadata/scheduledevents?api-version=2020-07-01",
    )
    .await;
}

#[tokio::test]
async fn scheduled_event_acknowledgement() {
    let r = router();
    let req = http::Request::post("/metadata/scheduledevents?api-version=2020-07-01")
        .header("Metadata", "true")
        .body(Body::from(
            r#"{"StartRequests":[{"EventId":"602d9444-d2cd-49c7-8624-8643e7171297"}]}"#,
        ))
        .expect("request");
    let ack = oneshot(&r, req).await;
    assert_eq!(ack.status, 200, "{}", ack.text());
    snap(
        &r,
        "scheduledevents_after_ack",
        "/metadata/scheduledevents?api-version=2020-07-01",
    )
    .await;
}

#[tokio::test]
async fn load_balancer_absent() {
    let mut config = seeded_config(SEED);
    config.load_balancer = Default::default();
    let r = mock_imds::router(config, manual_clock());
    snap(
        &r,
        "loadbalancer_none",
        "/metadata/loadbalancer?api-version=2020-10-01",
    )
    .await;
}
