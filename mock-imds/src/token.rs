//! Managed-identity tokens (REFERENCE B.4, B.5): `/metadata/identity/oauth2/token` and
//! `/metadata/identity/info`. Owns identity selection (a pure function: [`select_identity`]), the
//! per-(identity, resource) token cache (bounded: `token_cache`), the claims of the RS256 access token and the response document.
//! Signing itself is `keys::SigningKeys`'s business; request validation happened in `rules`.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Digest as _;

use crate::config::Config;
use crate::error::{ErrorKind, ImdsError};
use crate::rules::ImdsQuery;
use crate::state::{AppState, IdentityRegistry, lock};
pub use crate::token_cache::CachedToken;

/// How far `iat`/`nbf` (and the response's `not_before`) lie before the moment of issue. Entra back-dates
/// them five minutes so that relying parties with a slow clock accept a fresh token; the token documentation's
/// sample shows it in the response body too (`expires_in` 3599, `expires_on - not_before` = 3900).
pub const CLOCK_SKEW_SECS: i64 = 300;

/// How the caller chose an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// No selector: the system-assigned identity, or the only user-assigned one.
    Default,
    ClientId(String),
    ObjectId(String),
    /// `msi_res_id` (MSAL, Swagger) or `mi_res_id` (adal): ARM resource id of a user-assigned identity.
    ResourceId(String),
}

impl Selector {
    /// Reads the selector from the query; more than one is refused (open question 6).
    pub fn from_query(q: &ImdsQuery) -> Result<Selector, ErrorKind> {
        let present = |k: &str| q.get(k).filter(|v| !v.is_empty()).map(str::to_string);
        let found: Vec<Selector> = [
            present("client_id").map(Selector::ClientId),
            present("object_id").map(Selector::ObjectId),
            present("msi_res_id").map(Selector::ResourceId),
            present("mi_res_id").map(Selector::ResourceId),
        ]
        .into_iter()
        .flatten()
        .collect();
        match found.len() {
            0 => Ok(Selector::Default),
            1 => Ok(found.into_iter().next().unwrap_or(Selector::Default)),
            _ => Err(ErrorKind::ConflictingSelectors),
        }
    }
}

/// The identity a token is issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub client_id: String,
    pub object_id: String,
    /// ARM id for `xms_mirid`: the UAMI's id, or the VM's id for the system-assigned identity.
    pub resource_id: String,
    pub system: bool,
}

/// Chooses the identity for a token request. Identities assigned less than `delay_secs` ago are invisible
/// (identity-assignment delay fault). GUIDs and ARM ids compare case-insensitively, as Azure treats them.
pub fn select_identity(
    reg: &IdentityRegistry,
    config: &Config,
    selector: &Selector,
    now: DateTime<Utc>,
    delay_secs: u64,
) -> Result<Chosen, ErrorKind> {
    // A delay reaching beyond chrono's range hides the identity for good.
    let visible = |at: DateTime<Utc>| {
        crate::clock::add_secs(at, delay_secs).is_some_and(|visible_from| now >= visible_from)
    };
    // Only the chosen identity is copied out (this runs on every token request).
    let has_system = reg.system_assigned.is_some_and(visible);
    let system = || Chosen {
        client_id: config.identities.system_client_id.clone(),
        object_id: config.identities.system_object_id.clone(),
        resource_id: config.compute.resource_id.clone(),
        system: true,
    };
    let mut users = reg
        .user_assigned
        .iter()
        .filter(|a| visible(a.assigned_at))
        .map(|a| &a.identity);
    let user = |i: &crate::config::UserAssignedIdentity| Chosen {
        client_id: i.client_id.clone(),
        object_id: i.object_id.clone(),
        resource_id: i.resource_id.clone(),
        system: false,
    };
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match selector {
        Selector::Default => {
            if has_system {
                return Ok(system());
            }
            match (users.next(), users.next()) {
                (None, _) => Err(ErrorKind::IdentityNotFound),
                (Some(only), None) => Ok(user(only)),
                (Some(_), Some(_)) => Err(ErrorKind::MultipleUserAssigned),
            }
        }
        Selector::ClientId(id) if has_system && eq(&config.identities.system_client_id, id) => {
            Ok(system())
        }
        Selector::ObjectId(id) if has_system && eq(&config.identities.system_object_id, id) => {
            Ok(system())
        }
        Selector::ClientId(id) => users
            .find(|u| eq(&u.client_id, id))
            .map(user)
            .ok_or(ErrorKind::IdentityNotFound),
        Selector::ObjectId(id) => users
            .find(|u| eq(&u.object_id, id))
            .map(user)
            .ok_or(ErrorKind::IdentityNotFound),
        Selector::ResourceId(id) => users
            .find(|u| eq(&u.resource_id, id))
            .map(user)
            .ok_or(ErrorKind::IdentityNotFound),
    }
}

/// Claims of the access token, in the order Entra ID v1 tokens carry them.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    aio: String,
    appid: &'a str,
    appidacr: &'static str,
    idp: String,
    idtyp: &'static str,
    oid: &'a str,
    sub: &'a str,
    tid: &'a str,
    uti: String,
    ver: &'static str,
    xms_mirid: &'a str,
}

/// `/metadata/identity/oauth2/token` and `/metadata/identity/info`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metadata/identity/oauth2/token", get(token))
        .route("/metadata/identity/info", get(info))
}

fn b64url_hash(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&h.finalize()[..16])
}

async fn token(
    State(state): State<AppState>,
    Extension(q): Extension<ImdsQuery>,
) -> Result<Response, ImdsError> {
    let resource = q
        .get("resource")
        .filter(|r| !r.is_empty())
        .ok_or(ImdsError::identity(ErrorKind::MissingResource))?;
    let selector = Selector::from_query(&q).map_err(ImdsError::identity)?;
    let ids = &state.config.identities;
    if ids.unknown_resources.iter().any(|r| r == resource) {
        return Err(ImdsError::identity(ErrorKind::UnknownResource {
            resource: resource.to_string(),
            tenant: ids.tenant_id.clone(),
        }));
    }
    let now = state.now();
    let delay = lock(&state.faults).faults().identity_assignment_delay_secs;
    let chosen = {
        let reg = lock(&state.identities);
        select_identity(&reg, &state.config, &selector, now, delay).map_err(ImdsError::identity)?
    };
    let keys = state.keys(crate::error::Surface::Identity).await?;
    let key = (chosen.client_id.to_ascii_lowercase(), resource.to_string());
    let bypass = q
        .get("bypass_cache")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let lifetime = i64::try_from(ids.token_lifetime_secs).unwrap_or(86_399);
    let margin = i64::try_from(ids.token_refresh_margin_secs).unwrap_or(300);
    let t = now.timestamp();
    // Saturating: a configured lifetime near i64::MAX must not overflow (nor panic in debug builds).
    let not_before = t.saturating_sub(CLOCK_SKEW_SECS);
    let expires_on = t.saturating_add(lifetime);
    // The response is rendered straight from the cache entry under the cache lock (no copy of the token).
    let render = |c: &CachedToken| {
        render_token(&TokenBody {
            access_token: &c.access_token,
            refresh_token: ids.include_refresh_token.then_some(""),
            client_id: &chosen.client_id,
            expires_in: c.expires_on.saturating_sub(t).to_string(),
            expires_on: c.expires_on.to_string(),
            ext_expires_in: lifetime.to_string(),
            not_before: c.not_before.to_string(),
            resource,
            token_type: "Bearer",
        })
    };
    let hit = if bypass {
        None
    } else {
        let mut tokens = lock(&state.tokens);
        match tokens
            .get_mut(&key)
            .filter(|c| t < c.expires_on.saturating_sub(margin) && t >= c.not_before)
        {
            None => None,
            Some(c) => Some(match &c.rendered {
                Some((at, cid, body)) if *at == t && *cid == chosen.client_id => Ok(body.clone()),
                _ => render(c).map(|body| {
                    let body = axum::body::Bytes::from(body);
                    c.rendered = Some((t, chosen.client_id.clone(), body.clone()));
                    body
                }),
            }),
        }
    };
    let body = match hit {
        Some(body) => body?,
        None => {
            let iss = format!("https://sts.windows.net/{}/", ids.tenant_id);
            let claims = Claims {
                aud: resource,
                iss: iss.clone(),
                iat: not_before,
                nbf: not_before,
                exp: expires_on,
                aio: b64url_hash(&["aio", &chosen.client_id, resource, &t.to_string()]),
                appid: &chosen.client_id,
                appidacr: "2",
                idp: iss,
                idtyp: "app",
                oid: &chosen.object_id,
                sub: &chosen.object_id,
                tid: &ids.tenant_id,
                uti: b64url_hash(&["uti", &chosen.client_id, resource, &t.to_string()]),
                ver: "1.0",
                xms_mirid: &chosen.resource_id,
            };
            let access_token = keys
                .sign_jwt(&claims)
                .map_err(|e| ImdsError::identity(ErrorKind::Internal(e.to_string())))?;
            let mut c = CachedToken::new(access_token, not_before, expires_on);
            let body = axum::body::Bytes::from(render(&c)?);
            c.rendered = Some((t, chosen.client_id.clone(), body.clone()));
            lock(&state.tokens).insert(key, c);
            body
        }
    };
    let mut response = Body::from(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Serialises the token response into a buffer sized for it up front (the ~1.2 KB token would otherwise
/// grow the buffer several times); the same bytes `Json(body)` produces.
fn render_token(body: &TokenBody<'_>) -> Result<Vec<u8>, ImdsError> {
    let mut out = Vec::with_capacity(body.access_token.len() + 512);
    serde_json::to_writer(&mut out, body)
        .map_err(|e| ImdsError::identity(ErrorKind::Internal(e.to_string())))?;
    Ok(out)
}

/// The token response, fields in the order the real service sends them, every value a string. Serialised
/// straight from borrowed fields (no `Value` map, no copy of the ~1.2 KB access token per request).
#[derive(Debug, Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    client_id: &'a str,
    expires_in: String,
    expires_on: String,
    ext_expires_in: String,
    not_before: String,
    resource: &'a str,
    token_type: &'static str,
}

async fn info(State(state): State<AppState>) -> Result<Response, ImdsError> {
    let reg = lock(&state.identities);
    if reg.system_assigned.is_none() && reg.user_assigned.is_empty() {
        return Err(ImdsError::identity(ErrorKind::IdentityNotFound));
    }
    drop(reg);
    let mut body = Map::new();
    body.insert(
        "tenantId".into(),
        Value::String(state.config.identities.tenant_id.clone()),
    );
    Ok(Json(Value::Object(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserAssignedIdentity;
    use crate::state::Assigned;
    use proptest::prelude::*;

    fn uami(n: u8) -> UserAssignedIdentity {
        UserAssignedIdentity {
            client_id: format!("00000000-0000-0000-0000-0000000000{n:02}"),
            object_id: format!("10000000-0000-0000-0000-0000000000{n:02}"),
            resource_id: format!(
                "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id{n}"
            ),
            name: format!("id{n}"),
        }
    }

    fn reg(system: bool, users: u8, at: DateTime<Utc>) -> IdentityRegistry {
        IdentityRegistry {
            system_assigned: system.then_some(at),
            user_assigned: (0..users)
                .map(|n| Assigned {
                    identity: uami(n),
                    assigned_at: at,
                })
                .collect(),
        }
    }

    #[test]
    fn default_selection_follows_the_real_service() {
        let c = Config::generate(Some(1));
        let now = Utc::now();
        assert!(
            select_identity(&reg(true, 3, now), &c, &Selector::Default, now, 0)
                .is_ok_and(|x| x.system)
        );
        assert_eq!(
            select_identity(&reg(false, 1, now), &c, &Selector::Default, now, 0)
                .map(|x| x.client_id),
            Ok(uami(0).client_id)
        );
        assert_eq!(
            select_identity(&reg(false, 2, now), &c, &Selector::Default, now, 0),
            Err(ErrorKind::MultipleUserAssigned)
        );
        assert_eq!(
            select_identity(&reg(false, 0, now), &c, &Selector::Default, now, 0),
            Err(ErrorKind::IdentityNotFound)
        );
    }

    #[test]
    fn selectors_are_case_insensitive_and_delay_hides() {
        let c = Config::generate(Some(1));
        let now = Utc::now();
        let r = reg(false, 2, now);
        let sel = Selector::ResourceId(uami(1).resource_id.to_uppercase());
        assert_eq!(
            select_identity(&r, &c, &sel, now, 0).map(|x| x.object_id),
            Ok(uami(1).object_id)
        );
        let sel = Selector::ObjectId(uami(0).object_id);
        assert!(select_identity(&r, &c, &sel, now, 0).is_ok());
        assert_eq!(
            select_identity(&r, &c, &sel, now, 10),
            Err(ErrorKind::IdentityNotFound)
        );
        assert!(select_identity(&r, &c, &sel, now + chrono::Duration::seconds(10), 10).is_ok());
    }

    proptest! {
        /// A client_id selector only ever returns the identity with that client id (never another one).
        #[test]
        fn client_id_selection_is_exact(users in 0u8..5, system: bool, pick in 0u8..8) {
            let c = Config::generate(Some(2));
            let now = Utc::now();
            let wanted = uami(pick).client_id;
            match select_identity(&reg(system, users, now), &c, &Selector::ClientId(wanted.clone()), now, 0) {
                Ok(chosen) => prop_assert!(chosen.client_id.eq_ignore_ascii_case(&wanted)),
                Err(e) => { prop_assert_eq!(e, ErrorKind::IdentityNotFound); prop_assert!(pick >= users); }
            }
        }
    }
}
