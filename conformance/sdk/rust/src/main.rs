//! `imds-sdk-client`: the Rust Azure SDK's `azure_identity::ManagedIdentityCredential` asking for one token,
//! unmodified, as an application in a pod would. The conformance harness's SDK area (`catalog/sdk.rs`) runs
//! it inside a pod's network namespace, where `169.254.169.254` is what the pod sees (the interceptor under
//! test), and reads the one JSON line it prints:
//!
//! `{"sdk":"azure_identity 1.0.0","ok":true,"elapsed_ms":12,"token":"eyJ…"}` or
//! `{"sdk":…,"ok":false,"elapsed_ms":…,"error_type":"…","error":"…"}`.
//!
//! Usage: `imds-sdk-client RESOURCE [CLIENT_ID]`. The time is measured around the credential's
//! construction and `get_token`, not the process start. Exit status 0 whenever the SDK was driven (a failed
//! token request is data for the harness), 2 on a usage error. The harness bounds the run with its own
//! timeout: the SDK may wait much longer than any case should.

use std::error::Error as _;
use std::time::Instant;

use anyhow::{Context as _, bail};
use azure_core::credentials::TokenCredential as _;
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use serde_json::{Value, json};

/// What this client reports as its SDK.
const SDK: &str = "azure_identity 1.0.0";

/// The SDK's error and its sources, one line.
fn chain(e: &azure_core::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

async fn token(resource: &str, client_id: Option<String>) -> Value {
    let started = Instant::now();
    let options = ManagedIdentityCredentialOptions {
        user_assigned_id: client_id.map(UserAssignedId::ClientId),
        ..Default::default()
    };
    let scope = format!("{}/.default", resource.trim_end_matches('/'));
    let result = match ManagedIdentityCredential::new(Some(options)) {
        Ok(credential) => credential.get_token(&[scope.as_str()], None).await,
        Err(e) => Err(e),
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(t) => json!({
            "sdk": SDK, "ok": true, "elapsed_ms": elapsed_ms, "token": t.token.secret(),
        }),
        Err(e) => json!({
            "sdk": SDK, "ok": false, "elapsed_ms": elapsed_ms,
            "error_type": format!("{:?}", e.kind()), "error": chain(&e),
        }),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let resource = args
        .next()
        .context("usage: imds-sdk-client RESOURCE [CLIENT_ID]")?;
    let client_id = args.next();
    if args.next().is_some() {
        bail!("usage: imds-sdk-client RESOURCE [CLIENT_ID]");
    }
    println!("{}", token(&resource, client_id).await);
    Ok(())
}
