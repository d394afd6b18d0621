//! The controller's own ARM token: from the node's IMDS (managed identity, system- or user-assigned) or from
//! Azure AD with a client secret, as MIC gets it (go-autorest's adal). Cached until five minutes before it
//! expires (or half its lifetime, for short-lived tokens). Owns no ARM logic.

use std::time::{Duration, Instant};

use http::Method;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::cloudconfig::Credential;
use crate::http_client::{HttpClient, HttpError};

/// Percent-encoding of path segments, query values and form values: everything but RFC 3986's unreserved
/// characters.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token request: {0}")]
    Http(#[from] HttpError),
    #[error("token request to {endpoint} answered {status}: {body}")]
    Refused {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("token answer from {endpoint} is not a token: {source}")]
    Decode {
        endpoint: String,
        source: serde_json::Error,
    },
}

/// A token answer (IMDS and Azure AD v1 share these fields; numbers may come as strings).
#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

fn seconds(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Where tokens come from and the cached one.
#[derive(Debug)]
pub struct TokenSource {
    http: HttpClient,
    credential: Credential,
    imds_endpoint: String,
    aad_endpoint: String,
    resource: String,
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    pub fn new(
        http: HttpClient,
        credential: Credential,
        imds_endpoint: String,
        aad_endpoint: String,
        resource: String,
    ) -> Self {
        TokenSource {
            http,
            credential,
            imds_endpoint,
            aad_endpoint,
            resource,
            cached: Mutex::new(None),
        }
    }

    /// A valid bearer token (cached, or fetched now).
    pub async fn token(&self) -> Result<String, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        let margin = Duration::from_secs(300).min(lifetime / 2);
        *cached = Some((token.clone(), Instant::now() + lifetime - margin));
        Ok(token)
    }

    /// Forgets the cached token (after ARM refused it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<(String, Duration), TokenError> {
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, COMPONENT).to_string();
        let (endpoint, answer) = match &self.credential {
            Credential::ManagedIdentity { client_id } => {
                let mut uri = format!(
                    "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                    self.imds_endpoint,
                    enc(&self.resource)
                );
                if let Some(id) = client_id {
                    uri.push_str(&format!("&client_id={}", enc(id)));
                }
                let answer = self
                    .http
                    .call(Method::GET, &uri, &[("Metadata", "true".into())], None)
                    .await?;
                (self.imds_endpoint.clone(), answer)
            }
            Credential::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => {
                let uri = format!("{}/{}/oauth2/token", self.aad_endpoint, enc(tenant_id));
                let form = format!(
                    "grant_type=client_credentials&client_id={}&client_secret={}&resource={}",
                    enc(client_id),
                    enc(secret),
                    enc(&self.resource)
                );
                let answer = self
                    .http
                    .call(
                        Method::POST,
                        &uri,
                        &[("Content-Type", "application/x-www-form-urlencoded".into())],
                        Some(form.into_bytes()),
                    )
                    .await?;
                (uri, answer)
            }
        };
        if !answer.status.is_success() {
            return Err(TokenError::Refused {
                endpoint,
                status: answer.status.as_u16(),
                body: String::from_utf8_lossy(&answer.body)
                    .chars()
                    .take(500)
                    .collect(),
            });
        }
        let t: TokenAnswer = serde_json::from_slice(&answer.body)
            .map_err(|source| TokenError::Decode { endpoint, source })?;
        let lifetime = seconds(t.expires_in.as_ref()).unwrap_or(3600).max(2);
        Ok((t.access_token, Duration::from_secs(lifetime)))
    }
}
