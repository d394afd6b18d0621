//! Acceptance test (issue 2): an access token issued by the mock verifies with `jsonwebtoken` using nothing
//! but what the mock publishes over HTTP — the OpenID discovery document and the JWKS it names — and
//! verification fails for tampered tokens, foreign keys and the wrong audience.
//!
//! Talks to the mock exclusively over HTTP (no access to its keys); discovery and verification are the shared
//! `common::{discover, validation, verify}`, which the real-client tests use too.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use mock_imds::MockImds;
use serde_json::Value;

const RESOURCE: &str = "https://management.azure.com/";

async fn token(mock: &MockImds, resource: &str, extra: &str) -> Value {
    // azure-identity style: resource sent unencoded (REFERENCE D); the mock must accept it.
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}{extra}",
        mock.uri()
    );
    get_json(&url, true).await
}

#[tokio::test]
async fn token_verifies_with_fetched_jwks_only() {
    let mock = start_seeded(4242).await;

    let body = token(&mock, RESOURCE, "").await;
    let access_token = body["access_token"].as_str().expect("access_token string");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["resource"], RESOURCE);

    let (issuer, jwks) = discover(&mock).await;
    let header = jsonwebtoken::decode_header(access_token).expect("JWT header");
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));

    let claims =
        verify(access_token, &jwks, &validation(RESOURCE, &issuer)).expect("token verifies");
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["iss"], issuer.as_str());
    // The identity in the token is the one the response names (REFERENCE B.4: client_id always present).
    assert_eq!(
        claims["appid"], body["client_id"],
        "appid claim = client_id of the response"
    );
    for claim in ["tid", "oid", "xms_mirid", "iat", "nbf", "exp"] {
        assert!(
            claims.get(claim).is_some(),
            "claim {claim} missing: {claims}"
        );
    }
    // expires_on in the body is the token's exp (both as the real service: body strings, claim number).
    let expires_on: i64 = body["expires_on"]
        .as_str()
        .expect("expires_on is a string")
        .parse()
        .expect("expires_on is an integer");
    assert_eq!(claims["exp"].as_i64(), Some(expires_on));

    // A user-assigned identity's token verifies too and names that identity.
    let ua = first_uami(&mock);
    let body = token(
        &mock,
        "https://vault.azure.net",
        &format!("&client_id={}", ua.client_id),
    )
    .await;
    let claims = verify(
        body["access_token"].as_str().expect("token"),
        &jwks,
        &validation("https://vault.azure.net", &issuer),
    )
    .expect("user-assigned token verifies");
    assert_eq!(claims["appid"], ua.client_id.as_str());
    assert_eq!(claims["oid"], ua.object_id.as_str());
}

#[tokio::test]
async fn tampered_foreign_and_misaddressed_tokens_fail() {
    let mock = start_seeded(4243).await;
    let other = start_seeded(4244).await;
    let (issuer, jwks) = discover(&mock).await;
    let v = validation(RESOURCE, &issuer);

    let body = token(&mock, RESOURCE, "").await;
    let good = body["access_token"].as_str().expect("token").to_owned();
    verify(&good, &jwks, &v).expect("untampered token verifies (control)");

    // Payload tampering: swap the audience inside the signed payload, keep the signature.
    let parts: Vec<&str> = good.split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&engine.decode(parts[1]).expect("payload b64"))
        .expect("payload json");
    payload["oid"] = Value::String("00000000-0000-0000-0000-000000000000".into());
    let forged_payload = engine.encode(serde_json::to_vec(&payload).expect("json"));
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let err = verify(&forged, &jwks, &v).expect_err("tampered payload must not verify");
    assert!(
        matches!(
            err.kind(),
            jsonwebtoken::errors::ErrorKind::InvalidSignature
        ),
        "expected InvalidSignature, got {err:?}"
    );

    // Signature tampering: flip one signature byte.
    let mut sig = engine.decode(parts[2]).expect("sig b64");
    sig[0] ^= 0x01;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], engine.encode(&sig));
    assert!(
        verify(&flipped, &jwks, &v).is_err(),
        "flipped signature must not verify"
    );

    // A token from another mock (other key) presented with this mock's kid must not verify.
    let foreign = token(&other, RESOURCE, "").await;
    let foreign = foreign["access_token"].as_str().expect("token");
    let fparts: Vec<&str> = foreign.split('.').collect();
    let relabelled = format!("{}.{}.{}", parts[0], fparts[1], fparts[2]);
    assert!(
        verify(foreign, &jwks, &v).is_err(),
        "foreign kid is not in this JWKS"
    );
    assert!(
        verify(&relabelled, &jwks, &v).is_err(),
        "foreign signature must not verify"
    );

    // Wrong audience / issuer are rejected even with a valid signature.
    assert!(
        verify(
            &good,
            &jwks,
            &validation("https://vault.azure.net", &issuer)
        )
        .is_err()
    );
    assert!(verify(&good, &jwks, &validation(RESOURCE, "https://evil.example/")).is_err());
}
