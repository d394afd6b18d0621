//! The ARM surface: `GET`/`PATCH` of virtual machines and scale sets, `GET` of user-assigned identities and
//! of Compute operation statuses. One handler takes every non-control request through ARM's pipeline in
//! ARM's order — injected fault, authentication, api-version, throttling, resource lookup, body validation
//! ([`crate::patch`]), linked authorization, identity-operation faults, scale-set conflict — then answers,
//! adds the standard headers and journals the request. Decisions live in the modules it calls.

use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt as _;

use crate::auth::Caller;
use crate::error::ArmError;
use crate::estate::Estate;
use crate::headers::{JSON_CONTENT_TYPE, add_standard, authority};
use crate::ids::{Kind, ResourceId};
use crate::journal::{JournalEntry, body_text};
use crate::patch::{denied, plan};
use crate::server::ConnInfo;
use crate::state::{AppState, lock};
use crate::throttle::Access;

/// A client must send its whole body within this time.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Resource(ResourceId),
    Operation {
        subscription: String,
        location: String,
        name: String,
    },
    Unknown,
}

/// Parses a request path (segment names case-insensitive).
pub fn route(path: &str) -> Route {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let path = decoded.trim_end_matches('/');
    if let Some(rid) = ResourceId::parse(path) {
        return Route::Resource(rid);
    }
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    if let [s, sub, p, ns, l, loc, o, name] = segs.as_slice() {
        let is = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if is(s, "subscriptions")
            && is(p, "providers")
            && is(ns, "Microsoft.Compute")
            && is(l, "locations")
            && is(o, "operations")
            && ![sub, loc, name].iter().any(|v| v.is_empty())
        {
            return Route::Operation {
                subscription: (*sub).to_string(),
                location: (*loc).to_string(),
                name: (*name).to_string(),
            };
        }
    }
    Route::Unknown
}

/// The value of query parameter `name` (case-insensitive name, percent-decoded value).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        k.eq_ignore_ascii_case(name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// `yyyy-mm-dd` or `yyyy-mm-dd-preview`.
fn well_formed_version(v: &str) -> bool {
    let date = v.strip_suffix("-preview").unwrap_or(v);
    let b = date.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Checks `api-version` for a route; Compute refuses versions older than the map form of identities.
fn check_api_version(query: &str, kind: Option<Kind>, location: &str) -> Result<String, ArmError> {
    let v = query_param(query, "api-version").ok_or_else(ArmError::missing_api_version)?;
    if !well_formed_version(&v) {
        return Err(ArmError::invalid_api_version(&v));
    }
    if let Some(k @ (Kind::VirtualMachine | Kind::ScaleSet)) = kind
        && v.as_str() < "2018-06-01"
    {
        let rtype = k.type_name().rsplit('/').next().unwrap_or_default();
        return Err(ArmError::no_registered_provider(&v, rtype, location));
    }
    Ok(v)
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_default();
    let mut r = (status, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    r
}

/// Everything of a request the pipeline needs, read once.
struct Incoming {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: bytes::Bytes,
    authority: String,
}

/// The handler for every ARM request.
pub async fn handle(
    State(s): State<AppState>,
    conn: Option<Extension<ConnInfo>>,
    req: Request,
) -> Response {
    let now = s.now();
    let (parts, body) = req.into_parts();
    let conn = conn.map(|Extension(c)| c);
    let source = conn
        .as_ref()
        .map_or_else(|| "unknown".to_string(), |c| c.peer.to_string());
    let limit = s.config.limits.max_body_bytes;
    let body = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await;
    let (bytes, failure) = match body {
        Ok(Ok(b)) => (b.to_bytes(), None),
        Ok(Err(_)) => (
            bytes::Bytes::new(),
            Some(ArmError::request_too_large(limit)),
        ),
        Err(_) => (
            bytes::Bytes::new(),
            Some(ArmError::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                "The request body was not received in time.",
            )),
        ),
    };
    let incoming = Incoming {
        authority: authority(&parts.headers, conn.as_ref()),
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts.headers,
        body: bytes,
    };
    let mut caller = Caller::default();
    let mut response = match failure {
        None => pipeline(&s, &incoming, now, &mut caller).await,
        Some(e) => e.into_response(),
    };
    add_standard(
        response.headers_mut(),
        now,
        &s.config.server.region,
        incoming.headers.get("x-ms-correlation-request-id"),
    );
    s.journal.record(JournalEntry {
        seq: 0,
        time: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        method: incoming.method.to_string(),
        path: incoming.path.clone(),
        query: incoming.query.clone(),
        body: body_text(&incoming.body),
        caller_appid: caller.appid,
        caller_oid: caller.oid,
        source,
        status: response.status().as_u16(),
    });
    response
}

async fn pipeline(
    s: &AppState,
    req: &Incoming,
    now: DateTime<Utc>,
    caller: &mut Caller,
) -> Response {
    let rule = lock(&s.faults).take_rule(req.method.as_str(), &req.path);
    if let Some(rule) = rule {
        if let Some(ms) = rule.latency_ms {
            tokio::time::sleep(std::time::Duration::from_millis(
                ms.min(crate::faults::MAX_LATENCY_MS),
            ))
            .await;
        }
        if let Some(status) = rule.status {
            return ArmError::injected(status, rule.retry_after).into_response();
        }
    }
    let tenant = s.config.tenant_id.clone();
    match s
        .verifier
        .authenticate(&req.headers, &s.config.auth, s.auth_enabled(), &tenant, now)
        .await
    {
        Ok(c) => *caller = c,
        Err(e) => return e.into_response(),
    }
    serve(s, req, now, caller)
}

/// Adds the throttling headers of an admitted request to any answer.
fn with_remaining(mut r: Response, remaining: &crate::throttle::Remaining) -> Response {
    for (name, value) in &remaining.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

fn serve(s: &AppState, req: &Incoming, now: DateTime<Utc>, caller: &Caller) -> Response {
    let mut remaining = None;
    let r = serve_inner(s, req, now, caller, &mut remaining)
        .unwrap_or_else(IntoResponse::into_response);
    match remaining {
        Some(rem) => with_remaining(r, &rem),
        None => r,
    }
}

/// Serves an authenticated request; `remaining` receives the throttling headers once it is admitted.
fn serve_inner(
    s: &AppState,
    req: &Incoming,
    now: DateTime<Utc>,
    caller: &Caller,
    remaining: &mut Option<crate::throttle::Remaining>,
) -> Result<Response, ArmError> {
    let actor = caller.oid.clone().unwrap_or_default();
    match route(&req.path) {
        Route::Unknown => Err(ArmError::invalid_resource_type(&req.path)),
        Route::Operation {
            subscription,
            location,
            name,
        } => {
            check_api_version(&req.query, None, &location)?;
            if req.method != Method::GET {
                return Err(ArmError::method_not_allowed(req.method.as_str()));
            }
            *remaining = Some(
                s.throttle
                    .admit(now, &subscription, None, Access::Read, &actor)?,
            );
            let estate = lock(&s.estate);
            let found = estate.operation_status(&name, now).filter(|_| {
                estate
                    .operations
                    .get(&name)
                    .is_some_and(|op| op.subscription.eq_ignore_ascii_case(&subscription))
            });
            let Some((status, done)) = found else {
                return Err(ArmError::operation_not_found(&name));
            };
            let monitor = query_param(&req.query, "monitor").is_some_and(|m| m == "true");
            let mut r = match (monitor, done) {
                // The Location (monitor) form: 202 while running, then the resource as the result.
                (true, false) => StatusCode::ACCEPTED.into_response(),
                (true, true) => {
                    let op = estate.operations.get(&name).map(|o| o.resource.clone());
                    match op.and_then(|key| estate.resources.get(&key)) {
                        Some(res) => json_response(StatusCode::OK, &estate.document(res, now)),
                        None => json_response(StatusCode::OK, &status),
                    }
                }
                (false, _) => json_response(StatusCode::OK, &status),
            };
            if !done {
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(s.config.lro.retry_after_secs),
                );
            }
            Ok(r)
        }
        Route::Resource(rid) => {
            let location = lock(&s.estate)
                .resources
                .get(&rid.key())
                .map_or_else(|| s.config.server.region.clone(), |r| r.location.clone());
            let version = check_api_version(&req.query, Some(rid.kind), &location)?;
            let access = match req.method {
                Method::GET => Access::Read,
                Method::PATCH if rid.kind != Kind::Identity => Access::Write,
                _ => return Err(ArmError::method_not_allowed(req.method.as_str())),
            };
            let key = rid.key();
            let compute = (rid.kind != Kind::Identity).then_some((rid.kind, key.as_str()));
            *remaining = Some(
                s.throttle
                    .admit(now, &rid.subscription, compute, access, &actor)?,
            );
            match (access, rid.kind) {
                (Access::Read, Kind::Identity) => lock(&s.estate)
                    .identity_document(&rid)
                    .map(|d| json_response(StatusCode::OK, &d)),
                (Access::Read, _) => {
                    let estate = lock(&s.estate);
                    estate
                        .resource(&rid)
                        .map(|r| json_response(StatusCode::OK, &estate.document(r, now)))
                }
                (Access::Write, _) => patch(s, req, &rid, &version, now, caller),
            }
        }
    }
}

/// PATCH of a VM or scale set.
fn patch(
    s: &AppState,
    req: &Incoming,
    rid: &ResourceId,
    version: &str,
    now: DateTime<Utc>,
    caller: &Caller,
) -> Result<Response, ArmError> {
    let mut estate = lock(&s.estate);
    let resource = estate.resource(rid)?.clone();
    let limit = s.config.limits.max_user_assigned_per_resource;
    let exists = |id: &str| estate.identity(id).is_some();
    let p = plan(
        &Estate::identity_state(&resource),
        &req.body,
        &exists,
        limit,
    )?;

    let changed: Vec<String> = p.added.iter().chain(&p.removed).cloned().collect();
    let refused: Vec<String> = changed
        .iter()
        .filter(|id| {
            estate.identity(id).is_some_and(|i| {
                denied(
                    &i.deny_assign,
                    caller.oid.as_deref(),
                    caller.appid.as_deref(),
                )
            })
        })
        .cloned()
        .collect();
    if !refused.is_empty() {
        let who = caller
            .oid
            .clone()
            .or_else(|| caller.appid.clone())
            .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into());
        return Err(ArmError::linked_authorization_failed(
            &who,
            &rid.kind.write_action(),
            &resource.id,
            &refused,
        ));
    }
    if let Some(f) = lock(&s.faults).identity_failure(&changed) {
        return Err(ArmError::failed_identity_operation(
            &resource.id,
            f.status,
            f.retry_after,
        ));
    }
    if Estate::busy(&resource, now) {
        return Err(ArmError::conflict());
    }
    let (duration, delay) = match rid.kind {
        Kind::ScaleSet => (s.config.lro.vmss_secs, s.config.propagation.vmss_delay_secs),
        _ => (s.config.lro.vm_secs, s.config.propagation.vm_delay_secs),
    };
    let key = rid.key();
    let op = estate
        .apply(&key, &p, now, duration, delay)
        .ok_or_else(|| {
            ArmError::resource_not_found(rid.kind.type_name(), &rid.name, &rid.resource_group)
        })?;
    let updated = estate.resource(rid)?;
    let mut r = json_response(StatusCode::OK, &estate.document(updated, now));
    let op_url = format!(
        "{}://{}/subscriptions/{}/providers/Microsoft.Compute/locations/{}/operations/{}?api-version={}",
        s.scheme,
        req.authority,
        op.subscription,
        op.location,
        op.name,
        // Validated: digits, '-' and "preview" only.
        version
    );
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&op_url) {
        h.insert("azure-asyncoperation", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{op_url}&monitor=true")) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from(s.config.lro.retry_after_secs),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(
            route(
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v/"
            ),
            Route::Resource(_)
        ));
        assert_eq!(
            route("/subscriptions/s/providers/microsoft.compute/Locations/eastus/operations/o"),
            Route::Operation {
                subscription: "s".into(),
                location: "eastus".into(),
                name: "o".into()
            }
        );
        assert_eq!(route("/"), Route::Unknown);
        assert_eq!(
            query_param("a=1&API-VERSION=2019-12-01", "api-version").as_deref(),
            Some("2019-12-01")
        );
        assert!(well_formed_version("2024-03-01-preview"));
        assert!(!well_formed_version("2024-3-01"));
    }
}
