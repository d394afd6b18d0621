//! Acceptance test (issue 2): an access token issued by the mock verifies with `jsonwebtoken` using nothing
//! but what the mock publishes over HTTP — the OpenID discovery document and the JWKS it names — and
//! verification fails for tampered tokens, foreign keys and the wrong audience.
//!
//! Owns only this file; talks to the mock exclusively over HTTP (no access to its keys).

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mock_imds::MockImds;
use serde_json::Value;

const RESOURCE: &str = "https://management.azure.com/";

async fn get_json(client: &reqwest::Client, url: &str, imds: bool) -> Value {
    let mut req = client.get(url);
    if imds {
        req = req.header("Metadata", "true");
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("body of {url}: {e}"));
    assert!(status.is_success(), "GET {url} -> {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON of {url}: {e}: {body}"))
}

async fn token(client: &reqwest::Client, mock: &MockImds, resource: &str, extra: &str) -> Value {
    // azure-identity style: resource sent unencoded (REFERENCE D); the mock must accept it.
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}{extra}",
        mock.uri()
    );
    get_json(client, &url, true).await
}

/// Discovery → jwks_uri → JWKS, the way a relying party bootstraps. Returns (issuer, JWKS).
async fn discover(client: &reqwest::Client, mock: &MockImds) -> (String, JwkSet) {
    let doc = get_json(
        client,
        &format!("{}/_mock/.well-known/openid-configuration", mock.uri()),
        false,
    )
    .await;
    let issuer = doc["issuer"]
        .as_str()
        .expect("issuer is a string")
        .to_owned();
    let jwks_uri = doc["jwks_uri"].as_str().expect("jwks_uri is a string");
    assert!(
        jwks_uri.starts_with(&mock.uri()),
        "jwks_uri {jwks_uri} must point at the mock {}",
        mock.uri()
    );
    assert!(
        doc["id_token_signing_alg_values_supported"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "RS256")),
        "discovery must advertise RS256: {doc}"
    );
    let jwks: JwkSet =
        serde_json::from_value(get_json(client, jwks_uri, false).await).expect("JWKS parses");
    (issuer, jwks)
}

fn validation(aud: &str, iss: &str) -> Validation {
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[aud]);
    v.set_issuer(&[iss]);
    v.set_required_spec_claims(&["exp", "aud", "iss", "nbf"]);
    v.validate_nbf = true;
    v
}

fn verify(token: &str, jwks: &JwkSet, v: &Validation) -> jsonwebtoken::errors::Result<Value> {
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header
        .kid
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidToken)?;
    let jwk = jwks
        .find(&kid)
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidToken)?;
    let key = DecodingKey::from_jwk(jwk)?;
    Ok(jsonwebtoken::decode::<Value>(token, &key, v)?.claims)
}

#[tokio::test]
async fn token_verifies_with_fetched_jwks_only() {
    let mock = MockImds::builder()
        .seed(4242)
        .start()
        .await
        .expect("mock starts");
    let client = reqwest::Client::new();

    let body = token(&client, &mock, RESOURCE, "").await;
    let access_token = body["access_token"].as_str().expect("access_token string");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["resource"], RESOURCE);

    let (issuer, jwks) = discover(&client, &mock).await;
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
    let ua = mock
        .config()
        .identities
        .user_assigned
        .first()
        .expect("default config has a user-assigned identity")
        .clone();
    let body = token(
        &client,
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
    let mock = MockImds::builder()
        .seed(4243)
        .start()
        .await
        .expect("mock starts");
    let other = MockImds::builder()
        .seed(4244)
        .start()
        .await
        .expect("second mock starts");
    let client = reqwest::Client::new();
    let (issuer, jwks) = discover(&client, &mock).await;
    let v = validation(RESOURCE, &issuer);

    let body = token(&client, &mock, RESOURCE, "").await;
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
    let foreign = token(&client, &other, RESOURCE, "").await;
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
