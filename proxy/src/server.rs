//! HTTP front ends: the IMDS-facing listener (token, host token, invalid token path, instance block,
//! pass-through — REFERENCE A.2/A.3 in NMI's order), the health probe and the metrics endpoint.
//!
//! Handlers gather data (caller address, headers, query, cluster view) and apply `policy` decisions; every
//! answer's status, content type and body follow NMI byte for byte, errors rendered like Go's `http.Error`
//! (`text/plain; charset=utf-8`, `X-Content-Type-Options: nosniff`, message + `\n`). Each request runs in a
//! tracing span naming caller, pod, decision, status and latency, logged at debug level (`-v=4`) and counted
//! in `metrics` (the periodic info-level summary in `lib.rs` reads those counts). Handlers never panic and
//! never return another pod's identity: any doubt about the caller or the cluster view is a refusal.
//! Connections and their bounds belong to `listener`, listener lifecycles to `lib.rs`, kernel rules to
//! `netfilter`, the request path's error types to `errors`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde::Serialize;
use tracing::Instrument;

use crate::cluster::ClusterView;
use crate::config::{OperationMode, Settings};
use crate::errors::{CallerError, FetchError, PodMatchError, SelectError, ViewUnavailable};
use crate::metrics::{Metrics, RequestRecord};
use crate::model::{IDENTITY_TYPE_USER_ASSIGNED_MSI, IdentityInfo, PodInfo};
use crate::policy::{self, Decision, IdentityRequest, RetryBudget, Route, StandardStep};
use crate::sdk_friendly;
use crate::upstream::{MAX_BODY, MsiToken, Upstream};

/// Pod lookups by IP: NMI tries 5 times, 300 ms apart, so a pod that just started is found (A.5).
const POD_LOOKUP_ATTEMPTS: u32 = 5;
const POD_LOOKUP_INTERVAL: Duration = Duration::from_millis(300);

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub view: Arc<dyn ClusterView>,
    pub upstream: Upstream,
    pub metrics: Metrics,
    /// Health: true once the first reconcile (and sync) is done.
    pub initialized: Arc<AtomicBool>,
}

/// A response plus what to log and count about it.
struct Outcome {
    response: Response,
    decision: Decision,
    pod: Option<String>,
    namespace: String,
}

impl Outcome {
    fn new(response: Response, decision: Decision) -> Self {
        Self {
            response,
            decision,
            pod: None,
            namespace: String::new(),
        }
    }
    fn pod(mut self, pod: &PodInfo) -> Self {
        self.pod = Some(format!("{}/{}", pod.namespace, pod.name));
        self.namespace = pod.namespace.clone();
        self
    }
    fn host_pod(mut self, ns: &str, name: &str) -> Self {
        self.pod = Some(format!("{ns}/{name}"));
        self.namespace = ns.to_string();
        self
    }
}

/// Go's `http.Error`.
pub fn go_error(status: u16, msg: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, policy::go_error_body(msg)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// An error of the pod-facing token handler: Go's `http.Error`, or with `--sdk-friendly-errors` IMDS's
/// JSON shape (same status; `sdk_friendly`).
fn token_error(st: &AppState, status: u16, msg: &str) -> Response {
    if st.settings.sdk_friendly_errors {
        let (status, e) = sdk_friendly::generic(status, msg);
        sdk_friendly::response(status, &e)
    } else {
        go_error(status, msg)
    }
}

fn metadata_required() -> Response {
    let mut resp = (StatusCode::BAD_REQUEST, policy::METADATA_REQUIRED_BODY).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if crate::mutant!(HeaderRefusalPlainText) {
            "text/plain; charset=utf-8"
        } else {
            "application/json; charset=utf-8"
        }),
    );
    resp
}

fn json_ok<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => go_error(500, &e.to_string()),
    }
}

/// First value of query parameter `key`, form-decoded (Go `url.Values.Get`).
pub fn query_get(query: &str, key: &str) -> String {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // A key without escapes is its own decoding: compared as is, without allocating.
        let matches = if k.bytes().any(|b| b == b'%' || b == b'+') {
            decode(k) == key
        } else {
            k == key
        };
        if matches {
            return decode(v);
        }
    }
    String::new()
}

fn identity_request(query: &str) -> IdentityRequest {
    let mut resource_id = if crate::mutant!(MsiResIdIgnored) {
        String::new()
    } else {
        query_get(query, "msi_res_id")
    };
    if resource_id.is_empty() && !crate::mutant!(MiResIdIgnored) {
        resource_id = query_get(query, "mi_res_id");
    }
    IdentityRequest {
        client_id: if crate::mutant!(ClientIdIgnored) {
            String::new()
        } else {
            query_get(query, "client_id")
        },
        resource_id,
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The IMDS-facing router: one fallback handler, because routing happens on the canonical path.
pub fn router(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    // A clone of the URI shares its bytes (no copy); it outlives `req`, which the pass-through moves.
    let uri = req.uri().clone();
    let raw_path = uri.path();
    let query = uri.query().unwrap_or("");
    let routed = policy::route(
        raw_path,
        st.settings.block_instance_metadata && !crate::mutant!(BlockOff),
    );
    // Debug level, like the `handled` line it carries: at info level it would be built (fields formatted,
    // span allocated) for every request and never shown.
    let span = tracing::debug_span!(
        "request",
        method = %req.method(),
        path = %raw_path,
        route = ?routed.route,
        caller = %peer,
        pod = tracing::field::Empty,
        decision = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let outcome = async {
        match routed.route {
            Route::Token => token(&st, peer, req.headers(), query).await,
            Route::InvalidTokenPath => Outcome::new(
                go_error(400, policy::INVALID_REQUEST_MESSAGE),
                Decision::InvalidTokenPath,
            ),
            Route::HostToken => host_token(&st, peer, req.headers(), query).await,
            Route::BlockedInstance => {
                if crate::mutant!(BlockAfterForward) {
                    let _ = pass_through(&st, req, &routed.forward_path, query).await;
                }
                Outcome::new(
                    go_error(403, policy::BLOCKED_MESSAGE),
                    Decision::BlockedInstance,
                )
            }
            Route::PassThrough => pass_through(&st, req, &routed.forward_path, query).await,
        }
    }
    .instrument(span.clone())
    .await;
    let status = outcome.response.status().as_u16();
    let latency = started.elapsed();
    span.record("pod", outcome.pod.as_deref().unwrap_or("-"));
    span.record("decision", outcome.decision.label());
    span.record("status", status);
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    // Per request at debug: at 1,000 req/s an info line each would be ~1.5 GB/h of logs. The info-level
    // summary (lib.rs) reports the counts per decision instead.
    span.in_scope(|| tracing::debug!("handled"));
    let route_name = route_label(routed.route);
    // Labels must stay bounded whatever pods send: the path label is a known IMDS path or "other", and the
    // resource label is kept only for answered tokens (IMDS vouched for the resource).
    let metric_path = metric_path(routed.route, &routed.forward_path);
    let resource = if status == 200 {
        query_get(query, "resource")
    } else {
        String::new()
    };
    st.metrics.request(&RequestRecord {
        path: metric_path,
        status,
        namespace: &outcome.namespace,
        resource: &resource,
        route: route_name,
        decision: outcome.decision,
        secs: latency.as_secs_f64(),
    });
    outcome.response
}

fn route_label(route: Route) -> &'static str {
    match route {
        Route::Token => "token",
        Route::InvalidTokenPath => "invalid_token_path",
        Route::HostToken => "host_token",
        Route::BlockedInstance => "instance_block",
        Route::PassThrough => "pass_through",
    }
}

/// NMI labels durations with the request path; a fixed vocabulary keeps the series count bounded.
fn metric_path(route: Route, forward_path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "/metadata/instance",
        "/metadata/attested",
        "/metadata/scheduledevents",
        "/metadata/identity",
        "/metadata/loadbalancer",
        "/metadata/versions",
    ];
    match route {
        Route::Token => "/metadata/identity/oauth2/token",
        Route::HostToken => "/host/token",
        Route::BlockedInstance => "/metadata/instance",
        Route::InvalidTokenPath => "invalid_token_path",
        // Case-insensitive prefix match, without lower-casing a copy of the path.
        Route::PassThrough => KNOWN
            .iter()
            .copied()
            .find(|k| {
                forward_path
                    .as_bytes()
                    .get(..k.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(k.as_bytes()))
            })
            .unwrap_or("other"),
    }
}

/// The caller address as NMI sees it: IPv4 only (NMI's `parseRemoteAddr` yields "" for `[v6]:port`).
fn caller_ip(peer: SocketAddr) -> Option<IpAddr> {
    match peer.ip() {
        IpAddr::V4(v4) => Some(IpAddr::V4(v4)),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
    }
}

/// The answer while the cluster view cannot be trusted: 500 with its reason, never a token.
fn view_unavailable(e: &ViewUnavailable) -> Outcome {
    Outcome::new(
        go_error(500, &e.to_string()),
        Decision::ClusterViewUnavailable,
    )
}

async fn find_pod(st: &AppState, ip: IpAddr) -> Result<PodInfo, CallerError> {
    let mut last = CallerError::NoMatch(PodMatchError::Empty);
    for attempt in 0..POD_LOOKUP_ATTEMPTS {
        st.view.ready()?;
        match policy::match_pod(&st.view.pods_with_ip(ip), ip) {
            Ok(p) => {
                // The cached view may lag (by up to the staleness bound) behind a pod deleted and its
                // address reused: the API server confirms the caller before anything is handed out.
                if !crate::mutant!(CallerNotConfirmed | CacheServedWhenStale) {
                    st.view.confirm_caller(&p, ip).await?;
                }
                return Ok(p);
            }
            Err(e) => last = CallerError::NoMatch(e),
        }
        if attempt + 1 < POD_LOOKUP_ATTEMPTS {
            tokio::time::sleep(POD_LOOKUP_INTERVAL).await;
        }
    }
    Err(last)
}

/// Identity selection for `pod` in the configured mode (A.6). `Err` carries the message of the 404/503.
async fn select_identity(
    st: &AppState,
    pod: &PodInfo,
    req: &IdentityRequest,
) -> Result<IdentityInfo, SelectError> {
    let s = &st.settings;
    if s.operation_mode == OperationMode::Managed {
        st.view.ready()?;
        let bindings = st.view.bindings_in(&pod.namespace);
        let identities = st.view.identities_in(&pod.namespace);
        return Ok(policy::pick_managed(&bindings, &identities, pod, req)?);
    }
    let budget = RetryBudget {
        attempts_for_created: s.retry_attempts_for_created,
        attempts_for_assigned: s.retry_attempts_for_assigned,
        interval_secs: s.find_identity_retry_interval,
    };
    // `--identity-wait-bound-sec` (beyond NMI): the loop ends with "no identity" once the bound has passed.
    let bound =
        (s.identity_wait_bound_sec > 0).then(|| Duration::from_secs(s.identity_wait_bound_sec));
    let started = Instant::now();
    for attempt in 0..budget.total_attempts() {
        // Re-checked every round: an outage during the wait must not let a stale cache answer.
        st.view.ready()?;
        let aais = st.view.assigned_identities_for(&pod.namespace, &pod.name);
        match policy::standard_step(&aais, pod, req, attempt, &budget) {
            StandardStep::Found(candidates) => {
                return Ok(policy::pick_standard(
                    &candidates,
                    pod,
                    req,
                    s.force_namespaced,
                )?);
            }
            StandardStep::Fail(e) => return Err(SelectError::NotFound(e)),
            StandardStep::Wait => {
                let mut pause = Duration::from_secs(budget.interval_secs);
                if let Some(bound) = bound {
                    let left = bound.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(SelectError::NotFound(policy::wait_bound_failure(
                            &aais,
                            pod,
                            req,
                            bound.as_secs(),
                        )));
                    }
                    pause = pause.min(left);
                }
                tracing::debug!(attempt, "no assigned identity yet; waiting");
                tokio::time::sleep(pause).await;
            }
        }
    }
    Err(SelectError::NotFound(policy::assigned_failure(
        pod, &budget,
    )))
}

async fn fetch_token(
    st: &AppState,
    identity: &IdentityInfo,
    resource: &str,
) -> Result<MsiToken, FetchError> {
    match identity.identity_type {
        IDENTITY_TYPE_USER_ASSIGNED_MSI => st
            .upstream
            .token(Some(&identity.client_id), resource)
            .await
            .map_err(FetchError::Token),
        kind @ (1 | 2) => Err(FetchError::ServicePrincipal {
            namespace: identity.namespace.clone(),
            name: identity.name.clone(),
            kind,
        }),
        other => Err(FetchError::UnsupportedType(other)),
    }
}

/// Token handler, A.3.1 steps 1–9.
async fn token(st: &AppState, peer: SocketAddr, headers: &HeaderMap, query: &str) -> Outcome {
    let s = &st.settings;
    // 1. Metadata header.
    if s.metadata_header_required
        && !crate::mutant!(HeaderIgnoredOnToken)
        && !policy::metadata_header_ok(headers.get_all("metadata").iter().map(|v| v.as_bytes()))
    {
        if crate::mutant!(HeaderRefusalForwarded) {
            let _ = st.upstream.token(None, &query_get(query, "resource")).await;
        }
        return Outcome::new(metadata_required(), Decision::MetadataHeaderMissing);
    }
    // 2. Caller address.
    // The header is read only by the mutation suite's defect; the shipped build never parses it.
    let forwarded_for = || {
        header_str(headers, "x-forwarded-for")
            .split(',')
            .next()
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    };
    let peer_ip = if crate::mutant!(ForwardedForTrusted) {
        forwarded_for().or_else(|| caller_ip(peer))
    } else {
        caller_ip(peer)
    };
    let Some(ip) = peer_ip else {
        return Outcome::new(
            token_error(st, 500, "request remote address is empty"),
            Decision::NoCallerAddress,
        );
    };
    // 3. resource.
    let resource = query_get(query, "resource");
    if resource.is_empty() && !crate::mutant!(ResourceNotRequired) {
        return Outcome::new(
            token_error(st, 400, "parameter resource cannot be empty"),
            Decision::ResourceMissing,
        );
    }
    // 4. Pod lookup (fails closed when the view is not synced or unavailable, or the caller is ambiguous).
    let pod = match find_pod(st, ip).await {
        Ok(p) => p,
        Err(e) => {
            return Outcome::new(
                token_error(st, 500, &e.to_string()),
                Decision::UnknownCaller,
            );
        }
    };
    tracing::Span::current().record("pod", format!("{}/{}", pod.namespace, pod.name));
    // 5./6. Exceptions and MIC: token straight from IMDS for the requested client id (or system-assigned).
    let exceptions = st.view.exceptions_in(&pod.namespace);
    let req = identity_request(query);
    if policy::is_excepted(&pod, &exceptions) || policy::is_mic(&pod, &s.mic_namespace) {
        let client_id = (!req.client_id.is_empty()).then_some(req.client_id.as_str());
        return match st.upstream.token(client_id, &resource).await {
            Ok(t) => Outcome::new(json_ok(&t), Decision::ExceptionToken).pod(&pod),
            Err(e) => Outcome::new(
                token_error(
                    st,
                    403,
                    &format!("failed to get service principal token, error: {e}"),
                ),
                Decision::ExceptionTokenError,
            )
            .pod(&pod),
        };
    }
    // 7. Identity selection.
    let identity = match select_identity(st, &pod, &req).await {
        Ok(i) => i,
        Err(SelectError::View(e)) => {
            return Outcome::new(
                token_error(st, 500, &e.to_string()),
                Decision::ClusterViewUnavailable,
            )
            .pod(&pod);
        }
        Err(SelectError::NotFound(e)) => {
            if crate::mutant!(NoIdentityForwarded)
                && let Ok(t) = st.upstream.token(None, &resource).await
            {
                return Outcome::new(json_ok(&t), Decision::Token).pod(&pod);
            }
            let (status, retry_after) = policy::identity_failure_status(s.set_retry_after_header);
            let mut resp = if s.sdk_friendly_errors {
                let (status, body) =
                    sdk_friendly::identity_not_found(&e.to_string(), retry_after.is_some());
                sdk_friendly::response(status, &body)
            } else {
                go_error(status, &e.to_string())
            };
            if let Some(secs) = retry_after
                && !crate::mutant!(RetryAfterMissing)
            {
                let secs = if crate::mutant!(RetryAfterWrongValue) {
                    "30"
                } else {
                    secs
                };
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
            }
            return Outcome::new(resp, Decision::IdentityNotFound).pod(&pod);
        }
    };
    // 8./9. Token acquisition.
    match fetch_token(st, &identity, &resource).await {
        Ok(t) if crate::mutant!(TokenBodyNumbers) => {
            let mut body = serde_json::to_value(&t).unwrap_or_default();
            body["expires_in"] = serde_json::json!(t.expires_in.parse::<u64>().unwrap_or(0));
            Outcome::new(json_ok(&body), Decision::Token).pod(&pod)
        }
        Ok(t) => Outcome::new(json_ok(&t), Decision::Token).pod(&pod),
        Err(e) if crate::mutant!(RetryAfterOnTokenErrors) => {
            let mut resp = go_error(503, &e.to_string());
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(policy::RETRY_AFTER_SECS),
            );
            Outcome::new(resp, Decision::TokenError).pod(&pod)
        }
        Err(e) if s.sdk_friendly_errors => {
            let (status, body) = sdk_friendly::fetch_failed(&e);
            Outcome::new(sdk_friendly::response(status, &body), Decision::TokenError).pod(&pod)
        }
        Err(e) => {
            Outcome::new(go_error(e.status(), &e.to_string()), Decision::TokenError).pod(&pod)
        }
    }
}

/// Pass-through, A.3.3: header check, then forward the canonical path and raw query.
async fn pass_through(
    st: &AppState,
    req: axum::extract::Request,
    forward_path: &str,
    query: &str,
) -> Outcome {
    if st.settings.metadata_header_required
        && !crate::mutant!(HeaderIgnoredOnPassThrough)
        && !policy::metadata_header_ok(
            req.headers()
                .get_all("metadata")
                .iter()
                .map(|v| v.as_bytes()),
        )
    {
        return Outcome::new(metadata_required(), Decision::MetadataHeaderMissing);
    }
    let (parts, body) = req.into_parts();
    // The body is bounded in size and, like the header, in time (`--header-read-timeout-sec`).
    let read = http_body_util::Limited::new(body, MAX_BODY).collect();
    let limit = Duration::from_secs(st.settings.header_read_timeout_sec);
    let body: Bytes = match tokio::time::timeout(limit, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return Outcome::new(
                go_error(400, &format!("reading request body: {e}")),
                Decision::BadRequestBody,
            );
        }
        Err(_) => {
            return Outcome::new(
                go_error(
                    400,
                    &format!("reading request body: no body within {}s", limit.as_secs()),
                ),
                Decision::BadRequestBody,
            );
        }
    };
    if crate::mutant!(UnknownPathsRefused)
        && forward_path != "/metadata/versions"
        && !forward_path.starts_with("/metadata/instance")
    {
        return Outcome::new(go_error(404, "404 page not found"), Decision::PassThrough);
    }
    let path_and_query = if query.is_empty() || crate::mutant!(QueryDropped) {
        forward_path.to_string()
    } else {
        format!("{forward_path}?{query}")
    };
    let method: Method = if crate::mutant!(PostAsGet) {
        Method::GET
    } else {
        parts.method
    };
    match st
        .upstream
        .forward(method, &path_and_query, &parts.headers, body)
        .await
    {
        Ok(resp) => Outcome::new(resp.map(Body::new), Decision::PassThrough),
        Err(e) => Outcome::new(go_error(500, &e.to_string()), Decision::UpstreamUnreachable),
    }
}

/// `/healthz` on the probe port: always 200, `Active` once initialised and while the cluster view is current
/// (A.10; NMI stays `Active` through an API server outage, imds-proxy does not).
pub fn probe_router(initialized: Arc<AtomicBool>, view: Arc<dyn ClusterView>) -> Router {
    Router::new().route(
        "/healthz",
        get(move || {
            let active = initialized.load(Ordering::SeqCst) && view.ready().is_ok();
            async move { if active { "Active" } else { "Not Active" } }
        }),
    )
}

/// `/metrics` on the Prometheus port.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    )
}

mod host_token;
#[cfg(test)]
use host_token::HostTokenResponse;
use host_token::host_token;

#[cfg(test)]
pub(crate) mod tests;
