//! Bearer-token authentication as ARM does it: `Authorization: Bearer <JWT>`, RS256 signature verified with
//! the keys of a JWKS (mock-imds publishes its token keys at `/_mock/discovery/keys`, so a controller that
//! gets its ARM token from mock-imds — as MIC does with a managed identity — works end to end), an ARM
//! audience, not expired (against the injected clock). Refusals are ARM's 401 bodies. With authentication
//! switched off the token is still read, unverified, so the journal can name the caller.
//!
//! Owns the key cache; the JWKS is fetched on first use and again (at most every [`REFETCH_AFTER`]) when a
//! token names an unknown `kid`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, header};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::client::Client;
use crate::config::AuthConfig;
use crate::error::ArmError;

/// Unknown `kid`s trigger a new JWKS fetch at most this often.
pub const REFETCH_AFTER: Duration = Duration::from_secs(5);

/// Who called, from the token's claims (verified or not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub appid: Option<String>,
    pub oid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    oid: Option<String>,
}

/// Where the verification keys come from.
#[derive(Debug, Clone)]
pub enum Keys {
    /// Given up front (library mode).
    Static(JwkSet),
    /// Fetched from this URI.
    Uri(String),
    /// None configured: every token is invalid.
    Missing,
}

#[derive(Debug)]
pub struct Verifier {
    keys: Keys,
    cache: Mutex<Option<(JwkSet, Instant)>>,
    client: Client,
}

fn bearer(headers: &HeaderMap, tenant: &str) -> Result<String, ArmError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ArmError::missing_authorization(tenant));
    };
    let value = value
        .to_str()
        .map_err(|_| ArmError::invalid_authentication_header(tenant))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ArmError::invalid_authentication_header(tenant))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ArmError::invalid_authentication_header(tenant));
    }
    Ok(token.to_string())
}

/// The claims of a JWT without verifying it (`None` if it is not a JWT with a JSON payload).
fn unverified_claims(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// ARM's time form in its 401 messages: `3/8/2024 1:05:00 PM`.
fn arm_401_time(t: DateTime<Utc>) -> String {
    t.format("%-m/%-d/%Y %-I:%M:%S %p").to_string()
}

impl Verifier {
    pub fn new(keys: Keys, client: Client) -> Self {
        Verifier {
            keys,
            cache: Mutex::new(None),
            client,
        }
    }

    async fn key_set(&self, kid: &str) -> Option<JwkSet> {
        let uri = match &self.keys {
            Keys::Static(set) => return Some(set.clone()),
            Keys::Missing => return None,
            Keys::Uri(uri) => uri,
        };
        let mut cache = self.cache.lock().await;
        let stale = match cache.as_ref() {
            None => true,
            Some((set, at)) => set.find(kid).is_none() && at.elapsed() >= REFETCH_AFTER,
        };
        if stale {
            match self.client.call(Method::GET, uri, &[], None).await {
                Ok(answer) if answer.status.is_success() => {
                    match serde_json::from_slice(&answer.body) {
                        Ok(set) => *cache = Some((set, Instant::now())),
                        Err(e) => tracing::warn!(%uri, error = %e, "JWKS is not a key set"),
                    }
                }
                Ok(answer) => tracing::warn!(%uri, status = %answer.status, "JWKS fetch refused"),
                Err(e) => tracing::warn!(error = %e, "JWKS fetch failed"),
            }
        }
        cache.as_ref().map(|(set, _)| set.clone())
    }

    /// The caller of a request; with `config.enabled` the token must be valid, else it is only read.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        config: &AuthConfig,
        enabled: bool,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<Caller, ArmError> {
        if !enabled {
            let claims = bearer(headers, tenant)
                .ok()
                .and_then(|t| unverified_claims(&t));
            return Ok(claims.map_or_else(Caller::default, |c| Caller {
                appid: c.appid,
                oid: c.oid,
            }));
        }
        let token = bearer(headers, tenant)?;
        let invalid = || ArmError::invalid_token(tenant);
        let header = jsonwebtoken::decode_header(&token).map_err(|_| invalid())?;
        if header.alg != Algorithm::RS256 {
            return Err(invalid());
        }
        let kid = header.kid.ok_or_else(invalid)?;
        let set = self.key_set(&kid).await.ok_or_else(invalid)?;
        let jwk = set.find(&kid).ok_or_else(invalid)?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| invalid())?;
        // Signature only here; audience and time are checked below against ARM's rules and our clock.
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(&token, &key, &v)
            .map_err(|_| invalid())?
            .claims;
        let audiences: Vec<String> = match &claims.aud {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if !audiences
            .iter()
            .any(|a| config.audiences.iter().any(|ok| ok.eq_ignore_ascii_case(a)))
        {
            return Err(ArmError::wrong_audience(&audiences.join(","), tenant));
        }
        let leeway = i64::try_from(config.leeway_secs).unwrap_or(0);
        let exp = claims.exp.ok_or_else(invalid)?;
        if exp.saturating_add(leeway) < now.timestamp() {
            let exp_t = DateTime::from_timestamp(exp, 0).unwrap_or_default();
            return Err(ArmError::expired_token(
                &arm_401_time(exp_t),
                &arm_401_time(now),
                tenant,
            ));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf.saturating_sub(leeway) > now.timestamp())
        {
            return Err(invalid());
        }
        Ok(Caller {
            appid: claims.appid,
            oid: claims.oid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(
            bearer(&h, "t").expect_err("missing").body.code,
            "AuthenticationFailed"
        );
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("value"));
        assert_eq!(
            bearer(&h, "t").expect_err("basic").body.code,
            "AuthenticationFailedInvalidHeader"
        );
        h.insert(
            header::AUTHORIZATION,
            "bearer x.y.z".parse().expect("value"),
        );
        assert_eq!(bearer(&h, "t").expect("token"), "x.y.z");
    }

    #[test]
    fn arm_time_in_401_messages() {
        let t = DateTime::from_timestamp(1_709_903_100, 0).expect("time");
        assert_eq!(arm_401_time(t), "3/8/2024 1:05:00 PM");
    }
}
