//! The testcontainers module against a real Docker engine: `MockImdsImage` starts the mock-imds image, and
//! an ordinary HTTP client gets instance metadata and a managed-identity token through the mapped port.
//!
//! The image is never pulled. By default the test builds it (`ci/docker/test-image.sh`) from
//! `ci/docker/mock-imds.Dockerfile` (the release image's Dockerfile, FROM scratch) with the `mock-imds` binary
//! cargo built for this test run plus the shared libraries it loads — so it always tests the code of this checkout without a static release
//! build. `IMDS_MOCK_IMAGE=name:tag` tests a prebuilt image instead (e.g. the one `ci/build-images.sh`
//! built). Needs the `testcontainers` feature, a `docker` CLI and an engine (`eval "$(ci/dockerd.sh start)"`);
//! without an engine every test prints `SKIP: <reason>` and returns. Every container is removed, and the
//! test checks the engine no longer lists it.
#![cfg(feature = "testcontainers")]

use std::path::Path;
use std::sync::OnceLock;

use mock_imds::config::Config;
use mock_imds::testcontainers::{MockImdsContainer, MockImdsImage};
use mock_support::images::{self, DockerError, assert_container_gone};
use serde_json::Value;
use testcontainers::runners::AsyncRunner;

const TEST_IMAGE: &str = "imds-conformance/mock-imds";

/// Builds the test image once per test binary (or names the prebuilt one). An error here is a failure, not a
/// skip: with an engine present the image must build.
fn image() -> &'static Result<(String, String), DockerError> {
    static IMAGE: OnceLock<Result<(String, String), DockerError>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        images::test_image(
            "IMDS_MOCK_IMAGE",
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
            Path::new(env!("CARGO_BIN_EXE_mock-imds")),
            "ci/docker/mock-imds.Dockerfile",
            TEST_IMAGE,
        )
    })
}

/// The image to start, or `None` after printing why the test is skipped.
fn test_image(test: &str) -> Option<MockImdsImage> {
    if let Some(reason) = images::engine_missing() {
        eprintln!("SKIP: {test}: {reason}");
        return None;
    }
    match image() {
        Ok((name, tag)) => Some(MockImdsImage::default().with_image(name, tag)),
        Err(e) => panic!("{test}: cannot provide the mock-imds image: {e}"),
    }
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(url)
        .header("Metadata", "true")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .json::<Value>()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"));
    (status, body)
}

#[tokio::test]
async fn default_image_serves_instance_metadata_and_a_token_through_the_mapped_port() {
    let Some(image) = test_image("default_image_serves_instance_metadata_and_a_token") else {
        return;
    };
    let mock = image
        .with_rate_limits(false)
        .start()
        .await
        .unwrap_or_else(|e| panic!("start mock-imds container: {e}"));
    let id = mock.id().to_owned();
    let uri = mock.uri().await.unwrap_or_else(|e| panic!("uri: {e}"));
    eprintln!("started container {id} at {uri}");
    assert!(uri.starts_with("http://"), "{uri}");

    let (status, instance) = get(&format!("{uri}/metadata/instance?api-version=2021-02-01")).await;
    assert_eq!(status, 200, "{instance}");
    let vm_id = instance["compute"]["vmId"].as_str().unwrap_or_default();
    assert_eq!(vm_id.len(), 36, "vmId is a GUID: {instance}");

    let (status, token) = get(&format!(
        "{uri}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"
    ))
    .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer", "{token}");
    assert_eq!(
        token["resource"], "https://management.azure.com/",
        "{token}"
    );
    let jwt = token["access_token"].as_str().unwrap_or_default();
    assert_eq!(jwt.split('.').count(), 3, "a JWT: {jwt}");

    // The mock inside the container saw exactly these two requests (control API on by default).
    let (status, journal) = get(&format!("{uri}/_mock/journal")).await;
    assert_eq!(status, 200, "{journal}");
    let paths: Vec<&str> = journal
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["path"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        paths,
        ["/metadata/instance", "/metadata/identity/oauth2/token"],
        "{journal}"
    );

    mock.rm()
        .await
        .unwrap_or_else(|e| panic!("remove container: {e}"));
    assert_container_gone(&id);
    eprintln!("removed container {id}");
}

#[tokio::test]
async fn config_and_seed_reach_the_container() {
    let Some(image) = test_image("config_and_seed_reach_the_container") else {
        return;
    };
    let mut config = Config::generate(Some(7));
    config.compute.name = "tc-config-vm".to_owned();
    let mock = image
        .with_config(&config)
        .unwrap_or_else(|e| panic!("config to TOML: {e}"))
        .with_seed(7)
        .with_control(false)
        .start()
        .await
        .unwrap_or_else(|e| panic!("start mock-imds container: {e}"));
    let id = mock.id().to_owned();
    let uri = mock.uri().await.unwrap_or_else(|e| panic!("uri: {e}"));
    eprintln!("started container {id} at {uri}");

    let (status, compute) = get(&format!(
        "{uri}/metadata/instance/compute?api-version=2021-02-01"
    ))
    .await;
    assert_eq!(status, 200, "{compute}");
    assert_eq!(compute["name"], "tc-config-vm", "{compute}");
    assert_eq!(compute["vmId"], config.compute.vm_id.as_str(), "{compute}");

    // --no-control: the control API is not served; the path falls through to IMDS's own 404.
    let response = reqwest::Client::new()
        .get(format!("{uri}/_mock/health"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /_mock/health: {e}"));
    assert_eq!(response.status().as_u16(), 404);

    mock.rm()
        .await
        .unwrap_or_else(|e| panic!("remove container: {e}"));
    assert_container_gone(&id);
    eprintln!("removed container {id}");
}
