//! The mock-arm image against a real Docker engine, through the testcontainers module: `MockArmImage` starts
//! the FROM scratch image built from `ci/docker/mock-arm.Dockerfile`, and an ordinary HTTP client reads a VM,
//! PATCHes a user-assigned identity onto it, follows the long-running operation to `Succeeded` and sees the
//! identity on the VM — all through the mapped port. With auth on (the image's default), a request without a
//! bearer token gets ARM's 401.
//!
//! The image is never pulled. By default the test builds it (`ci/docker/test-image.sh`) from the `mock-arm`
//! binary cargo built for this test run and the shared libraries it loads, so it always tests this checkout's
//! code; `MOCK_ARM_IMAGE=name:tag` tests a prebuilt image instead (e.g. the one `ci/build-images.sh` built).
//! Needs the `testcontainers` feature, a `docker` CLI and an engine (`eval "$(ci/dockerd.sh start)"`); without
//! an engine every test prints `SKIP: <reason>` and returns. Every container is removed, and the test checks
//! that the engine no longer lists it.
#![cfg(feature = "testcontainers")]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mock_arm::config::Config;
use mock_arm::testcontainers::{MockArmContainer, MockArmImage};
use mock_support::images::{self, DockerError, assert_container_gone};
use serde_json::{Value, json};
use testcontainers::runners::AsyncRunner;

const TEST_IMAGE: &str = "imds-conformance/mock-arm";
const API: &str = "api-version=2019-12-01";

/// Builds the test image once per test binary (or names the prebuilt one). An error here is a failure, not a
/// skip: with an engine present the image must build.
fn image() -> &'static Result<(String, String), DockerError> {
    static IMAGE: OnceLock<Result<(String, String), DockerError>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        images::test_image(
            "MOCK_ARM_IMAGE",
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
            Path::new(env!("CARGO_BIN_EXE_mock-arm")),
            "ci/docker/mock-arm.Dockerfile",
            TEST_IMAGE,
        )
    })
}

/// The image to start, or `None` after printing why the test is skipped.
fn test_image(test: &str) -> Option<MockArmImage> {
    if let Some(reason) = images::engine_missing() {
        eprintln!("SKIP: {test}: {reason}");
        return None;
    }
    match image() {
        Ok((name, tag)) => Some(MockArmImage::default().with_image(name, tag)),
        Err(e) => panic!("{test}: cannot provide the mock-arm image: {e}"),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `(status, headers, JSON body)` of one request.
async fn send(
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http().request(method.clone(), url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {url}: body is not JSON ({e}): {text}"));
    (status, headers, body)
}

#[tokio::test]
async fn image_serves_a_vm_and_assigns_an_identity_through_its_long_running_operation() {
    let test = "image_serves_a_vm_and_assigns_an_identity";
    let Some(image) = test_image(test) else {
        return;
    };
    let mut config = Config::generate(Some(7));
    config.lro.vm_secs = 0.5;
    config.lro.retry_after_secs = 1;
    let vm = config.virtual_machines[0].id.clone();
    let identity = config
        .identities
        .iter()
        .map(|i| i.id.clone())
        .find(|id| {
            !config.virtual_machines[0]
                .user_assigned
                .iter()
                .any(|u| u.eq_ignore_ascii_case(id))
        })
        .expect("the generated estate has an identity the first VM lacks");
    let arm = image
        .with_config(&config)
        .unwrap_or_else(|e| panic!("config to TOML: {e}"))
        .with_auth(false)
        .with_throttling(false)
        .start()
        .await
        .unwrap_or_else(|e| panic!("start mock-arm container: {e}"));
    let id = arm.id().to_owned();
    let uri = arm.uri().await.unwrap_or_else(|e| panic!("uri: {e}"));
    eprintln!("started container {id} at {uri}");

    let (status, _, doc) = send(reqwest::Method::GET, &format!("{uri}{vm}?{API}"), None).await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["id"]
            .as_str()
            .is_some_and(|i| i.eq_ignore_ascii_case(&vm)),
        "{doc}"
    );

    let patch = json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {identity.clone(): {}}}});
    let (status, headers, doc) = send(
        reqwest::Method::PATCH,
        &format!("{uri}{vm}?{API}"),
        Some(patch),
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["properties"]["provisioningState"], "Updating", "{doc}");
    // The operation URL is built from the request's own host: reachable through the mapped port.
    let operation = headers
        .get("azure-asyncoperation")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no Azure-AsyncOperation header: {headers:?}"))
        .to_owned();
    assert!(
        operation.starts_with(&uri),
        "{operation} is not under {uri}"
    );
    let began = Instant::now();
    loop {
        let (status, headers, op) = send(reqwest::Method::GET, &operation, None).await;
        assert_eq!(status, 200, "{op}");
        match op["status"].as_str() {
            Some("Succeeded") => break,
            Some("InProgress") => {
                assert!(headers.contains_key("retry-after"), "{headers:?}");
            }
            other => panic!("operation status {other:?}: {op}"),
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the 0.5 s operation never finished"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, _, doc) = send(reqwest::Method::GET, &format!("{uri}{vm}?{API}"), None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["properties"]["provisioningState"], "Succeeded", "{doc}");
    let assigned = doc["identity"]["userAssignedIdentities"]
        .as_object()
        .map(|m| m.keys().any(|k| k.eq_ignore_ascii_case(&identity)))
        .unwrap_or(false);
    assert!(assigned, "{identity} not on the VM: {doc}");

    // The journal inside the container holds what was sent (control API on by default).
    let (status, _, journal) =
        send(reqwest::Method::GET, &format!("{uri}/_mock/journal"), None).await;
    assert_eq!(status, 200, "{journal}");
    let patches = journal
        .as_array()
        .map(|a| a.iter().filter(|e| e["method"] == "PATCH").count())
        .unwrap_or(0);
    assert_eq!(patches, 1, "{journal}");

    arm.rm()
        .await
        .unwrap_or_else(|e| panic!("remove container: {e}"));
    assert_container_gone(&id);
    eprintln!("removed container {id}");
}

#[tokio::test]
async fn image_with_auth_on_answers_arms_401_without_a_bearer_token() {
    let test = "image_with_auth_on_answers_arms_401";
    let Some(image) = test_image(test) else {
        return;
    };
    let config = Config::generate(Some(8));
    let vm = config.virtual_machines[0].id.clone();
    let arm = image
        .with_config(&config)
        .unwrap_or_else(|e| panic!("config to TOML: {e}"))
        .start()
        .await
        .unwrap_or_else(|e| panic!("start mock-arm container: {e}"));
    let id = arm.id().to_owned();
    let uri = arm.uri().await.unwrap_or_else(|e| panic!("uri: {e}"));
    let (status, headers, body) =
        send(reqwest::Method::GET, &format!("{uri}{vm}?{API}"), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(headers.contains_key("www-authenticate"), "{headers:?}");
    arm.rm()
        .await
        .unwrap_or_else(|e| panic!("remove container: {e}"));
    assert_container_gone(&id);
}
