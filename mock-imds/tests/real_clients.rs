//! Real SDK clients against the mock over loopback (issue 2 acceptance, REFERENCE D): Python `azure-identity`
//! and `msal`, and Node `@azure/identity`, unmodified and pinned, pointed at the mock with
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST`. Each must obtain a token for the system-assigned identity and for the
//! user-assigned one (by client id, object id and resource id), and must end with its documented
//! "identity not assigned / unavailable" failure for an unassigned client id. The attested document is
//! checked with the client Azure's documentation uses for it: the `openssl` CLI.
//!
//! The clients are installed into throw-away directories (a virtualenv, an npm prefix) created once per test
//! run under a tempdir; the scripts they run live in `tests/real_clients/`. A missing interpreter or package
//! manager, or an unreachable package index, is a loud `SKIP:` — never a silent pass. Owns only this file and
//! `tests/real_clients/`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{discover, first_uami, start_seeded, validation, verify};
use mock_imds::MockImds;
use mock_support::clients::{self, PythonVenv, run};
use serde_json::{Value, json};
use tokio::process::Command;

const ARM: &str = "https://management.azure.com/";
/// What scope-based clients send for [`ARM`]: `https://management.azure.com/.default` minus `/.default`.
const ARM_NO_SLASH: &str = "https://management.azure.com";
const VAULT: &str = "https://vault.azure.net";
/// A client id assigned to nothing on the mock VM.
const UNASSIGNED: &str = "0badc0de-0000-4000-8000-00000000abcd";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/real_clients")
}

fn tail(s: &str) -> &str {
    clients::tail(s, clients::SKIP_TAIL_BYTES)
}

/// Environment for a client process: the mock as authority, nothing else that could redirect or configure
/// managed identity, no proxy for loopback.
fn client_env(cmd: &mut Command, mock: &MockImds) {
    for var in [
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "MSAL_FORCE_REGION",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AZURE_POD_IDENTITY_AUTHORITY_HOST", mock.uri())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
}

async fn setup_step(cmd: &mut Command, why: &str) -> bool {
    clients::setup_step(cmd, why, INSTALL_TIMEOUT).await
}

/// The failed case `name` (an unassigned client id): the client reported an error of type `error_type`;
/// returns the error message for client-specific checks.
fn unassigned_error<'a>(results: &'a Value, name: &str, error_type: &str) -> &'a str {
    let r = &results[name];
    assert_eq!(
        r["ok"], false,
        "{name}: unassigned client id must fail: {r}"
    );
    assert_eq!(r["error_type"], error_type, "{name}: {r}");
    r["error"].as_str().unwrap_or_default()
}

/// Runs a client script (`cmd`: the interpreter and the script) on the JSON `cases` against `mock` with
/// [`client_env`]; returns the JSON results it prints (one entry per case name).
async fn run_cases(mut cmd: Command, mock: &MockImds, cases: &Value, script: &str) -> Value {
    cmd.arg(cases.to_string());
    client_env(&mut cmd, mock);
    let (ok, stdout, stderr) = run(&mut cmd, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("cannot start {script}"));
    assert!(ok, "{script} failed: {}", tail(&stderr));
    let results: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "script output is not JSON ({e}): {stdout}\n{}",
            tail(&stderr)
        )
    });
    eprintln!("{script} results: {results}");
    results
}

/// The successful cases: `(case name, audience, issued to the system-assigned identity?)`. Each token verifies
/// against the JWKS the mock publishes (fetched through its discovery document), has audience `aud` and
/// was issued to the expected identity (`appid`); the client reported a positive expiry.
///
/// Scope-based clients (azure-identity, Node) turn the scope `https://x/.default` into the resource
/// `https://x` (no trailing slash), so their audience differs from msal's, which passes `resource` through.
async fn check_ok(mock: &MockImds, results: &Value, cases: &[(&str, &str, bool)]) {
    let (issuer, jwks) = discover(mock).await;
    let system = mock.config().identities.system_client_id.clone();
    let ua = first_uami(mock).client_id;
    assert_ne!(system, ua, "system and user-assigned identities differ");
    for &(name, aud, is_system) in cases {
        let r = &results[name];
        assert_eq!(r["ok"], true, "{name}: client failed: {r}");
        let token = r["token"].as_str().expect("token");
        let claims = verify(token, &jwks, &validation(aud, &issuer)).unwrap_or_else(|e| {
            panic!("{name}: the token the client received does not verify: {e}")
        });
        let appid = if is_system { &system } else { &ua };
        assert_eq!(
            claims["appid"],
            appid.as_str(),
            "{name}: wrong identity: {claims}"
        );
        let expiry = r["expires_on"]
            .as_i64()
            .or_else(|| r["expires_in"].as_i64());
        assert!(
            expiry.is_some_and(|x| x > 0),
            "{name}: no usable expiry: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_azure_identity_and_msal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(PythonVenv {
        python: venv_python,
        version,
    }) = clients::python_venv(
        dir.path(),
        &assets().join("requirements.txt"),
        "the Python real-client test (azure-identity, msal)",
        "azure-identity/msal",
        INSTALL_TIMEOUT,
    )
    .await
    else {
        return;
    };
    eprintln!(
        "real clients: {} with azure-identity 1.27.0, msal 1.39.0",
        version.trim()
    );

    let mock = start_seeded(77).await;
    let ua = first_uami(&mock);
    let cases = json!([
        {"name": "ai-system", "client": "azure-identity", "resource": ARM},
        {"name": "ai-ua-client-id", "client": "azure-identity", "resource": VAULT, "client_id": ua.client_id},
        {"name": "ai-ua-object-id", "client": "azure-identity", "resource": ARM, "object_id": ua.object_id},
        {"name": "ai-ua-resource-id", "client": "azure-identity", "resource": ARM, "resource_id": ua.resource_id},
        {"name": "ai-unassigned", "client": "azure-identity", "resource": ARM, "client_id": UNASSIGNED},
        {"name": "msal-system", "client": "msal", "resource": ARM},
        {"name": "msal-ua-client-id", "client": "msal", "resource": ARM, "client_id": ua.client_id},
        {"name": "msal-unassigned", "client": "msal", "resource": ARM, "client_id": UNASSIGNED},
    ]);
    let mut cmd = Command::new(&venv_python);
    cmd.arg(assets().join("python_clients.py"));
    let results = run_cases(cmd, &mock, &cases, "python_clients.py").await;
    check_ok(
        &mock,
        &results,
        &[
            ("ai-system", ARM_NO_SLASH, true),
            ("ai-ua-client-id", VAULT, false),
            ("ai-ua-object-id", ARM_NO_SLASH, false),
            ("ai-ua-resource-id", ARM_NO_SLASH, false),
            ("msal-system", ARM, true),
            ("msal-ua-client-id", ARM, false),
        ],
    )
    .await;

    // azure-identity 1.27 (which delegates to msal) turns IMDS's 400 into CredentialUnavailableError
    // "…Token request error: (invalid_request) Identity not found" (releases before the msal switch said
    // "No identity has been assigned to this resource"); IMDS's error code and text reach the user verbatim.
    let msg = unassigned_error(&results, "ai-unassigned", "CredentialUnavailableError");
    assert!(
        msg.contains("(invalid_request) Identity not found"),
        "{msg}"
    );
    // msal returns IMDS's error body as is.
    let msg = unassigned_error(&results, "msal-unassigned", "invalid_request");
    assert_eq!(msg, "Identity not found");

    // The requests really went through the mock (not some other endpoint): journal has the client's
    // unencoded resource (azure-identity's quirk, REFERENCE D) from loopback.
    let journal = mock.journal();
    assert!(
        journal
            .iter()
            .any(|j| j.path == "/metadata/identity/oauth2/token"
                && j.query.contains("resource=https://management.azure.com")
                && j.source.starts_with("127.0.0.1:")),
        "no unencoded azure-identity token request in the journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_azure_identity() {
    let Some((true, version, _)) = run(Command::new("node").arg("--version"), RUN_TIMEOUT).await
    else {
        eprintln!("SKIP: node not found; the Node real-client test (@azure/identity) did not run");
        return;
    };
    if !matches!(
        run(Command::new("npm").arg("--version"), RUN_TIMEOUT).await,
        Some((true, _, _))
    ) {
        eprintln!("SKIP: npm not found; the Node real-client test (@azure/identity) did not run");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["package.json", "package-lock.json", "node_clients.js"] {
        std::fs::copy(assets().join("node").join(f), dir.path().join(f)).expect("copy node assets");
    }
    if !setup_step(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir.path()),
        "npm could not install the pinned @azure/identity (no registry?)",
    )
    .await
    {
        return;
    }
    eprintln!(
        "real clients: node {} with @azure/identity 4.14.1",
        version.trim()
    );

    let mock = start_seeded(78).await;
    let ua = first_uami(&mock);
    let cases = json!([
        {"name": "system", "resource": ARM},
        {"name": "ua-client-id", "resource": VAULT, "client_id": ua.client_id},
        {"name": "ua-object-id", "resource": ARM, "object_id": ua.object_id},
        {"name": "ua-resource-id", "resource": ARM, "resource_id": ua.resource_id},
        {"name": "unassigned", "resource": ARM, "client_id": UNASSIGNED},
    ]);
    let mut cmd = Command::new("node");
    cmd.arg(dir.path().join("node_clients.js"))
        .current_dir(dir.path());
    let results = run_cases(cmd, &mock, &cases, "node_clients.js").await;
    check_ok(
        &mock,
        &results,
        &[
            ("system", ARM_NO_SLASH, true),
            ("ua-client-id", VAULT, false),
            ("ua-object-id", ARM_NO_SLASH, false),
            ("ua-resource-id", ARM_NO_SLASH, false),
        ],
    )
    .await;
    // @azure/identity (msal-node underneath) reports CredentialUnavailableError carrying IMDS's text.
    let msg = unassigned_error(&results, "unassigned", "CredentialUnavailableError");
    assert!(
        msg.contains("invalid_request") && msg.contains("Identity not found"),
        "{msg}"
    );

    // Node's quirk (REFERENCE D): trailing slash on the token path (and a Content-Type on a GET); the
    // tokens above prove the mock served it — this pins that the quirk was really exercised.
    let journal = mock.journal();
    assert!(
        journal
            .iter()
            .any(|j| j.path == "/metadata/identity/oauth2/token/" && j.status == 200),
        "no successful trailing-slash token request from Node in the journal: {:?}",
        journal
            .iter()
            .map(|j| (&j.path, j.status))
            .collect::<Vec<_>>()
    );
}

/// The attested document as Azure's documentation verifies it, with the `openssl` CLI: the PKCS#7 from
/// `/metadata/attested/document` verifies (`smime -verify -noverify`, the documented step), chains to the
/// root the mock publishes at `/_mock/attested/chain.pem` (`cms -verify -CAfile`), is signed by a
/// `*.metadata.azure.com` certificate, and embeds the caller's nonce and the VM's id.
#[tokio::test]
async fn openssl_verifies_attested_document() {
    if !matches!(
        run(Command::new("openssl").arg("version"), RUN_TIMEOUT).await,
        Some((true, _, _))
    ) {
        eprintln!("SKIP: openssl CLI not found; the attested-document verification did not run");
        return;
    }
    let mock = start_seeded(79).await;
    let client = reqwest::Client::new();
    let doc: Value = client
        .get(format!(
            "{}/metadata/attested/document?api-version=2021-12-13&nonce=1234567890",
            mock.uri()
        ))
        .header("Metadata", "true")
        .send()
        .await
        .expect("attested request")
        .json()
        .await
        .expect("attested JSON");
    assert_eq!(doc["encoding"], "pkcs7", "{doc}");
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(doc["signature"].as_str().expect("signature string"))
        .expect("signature is base64");
    let chain_pem = client
        .get(format!("{}/_mock/attested/chain.pem", mock.uri()))
        .send()
        .await
        .expect("chain request")
        .text()
        .await
        .expect("chain text");
    let root_pem = chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .expect("chain starts with the root");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| {
        dir.path()
            .join(name)
            .to_str()
            .expect("utf-8 path")
            .to_owned()
    };
    std::fs::write(path("sig.der"), &der).expect("write signature");
    std::fs::write(path("root.pem"), root_pem).expect("write root");
    let openssl = |args: Vec<String>| async move {
        run(Command::new("openssl").args(&args), RUN_TIMEOUT)
            .await
            .expect("openssl runs")
    };
    let (ok, _, err) = openssl(
        [
            "smime",
            "-verify",
            "-inform",
            "DER",
            "-noverify",
            "-in",
            &path("sig.der"),
            "-out",
            &path("a.json"),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(ok, "openssl smime -verify -noverify: {err}");
    let (ok, _, err) = openssl(
        [
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-purpose",
            "any",
            "-CAfile",
            &path("root.pem"),
            "-in",
            &path("sig.der"),
            "-out",
            &path("b.json"),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(ok, "openssl cms -verify against the published root: {err}");
    let (ok, certs, err) = openssl(
        [
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            &path("sig.der"),
            "-print_certs",
            "-text",
            "-noout",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(ok, "openssl pkcs7 -print_certs: {err}");
    assert!(
        certs.contains("DNS:*.metadata.azure.com"),
        "signer SAN missing:\n{certs}"
    );

    let content: Value = serde_json::from_slice(&std::fs::read(path("b.json")).expect("content"))
        .expect("content is JSON");
    assert_eq!(content["nonce"], "1234567890");
    assert_eq!(content["vmId"], mock.config().compute.vm_id.as_str());
}
