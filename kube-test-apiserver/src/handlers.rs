//! The HTTP surface: path and query parsing, discovery, list/get/create/update/patch/delete, the
//! `/_test/*` control endpoints, and the accounting + availability middleware.
//!
//! Handlers translate HTTP into store calls and store results into Kubernetes JSON; the write
//! rules live in `store`, the watch machinery in `watch`, selector grammar in `selectors`. Every
//! error leaves as a Kubernetes `Status` (never a panic, never a bare string).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::serve::PathClientKey;
use super::status::ApiError;
use super::store::WriteScope;
use super::watch::{self, Start, WatchSpec};

/// Accounting key of the caller: bearer token, else source IP.
#[derive(Debug, Clone)]
pub struct ClientKey(pub String);

/// Which resource a response belongs to, for byte accounting (set by handlers on the response).
#[derive(Debug, Clone, Copy)]
struct ResourceTag(&'static str);

/// Watch timeout when the client gives none (kube-apiserver's --min-request-timeout).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_test/stats", get(get_stats).delete(reset_stats))
        .route("/_test/available", get(get_available).put(put_available))
        .route("/_test/health", get(|| async { "ok" }))
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(shared.clone(), accounting))
        .with_state(shared)
}

async fn get_stats(State(shared): State<Arc<Shared>>) -> Json<super::Stats> {
    Json(shared.stats.snapshot())
}

async fn reset_stats(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.stats.reset();
    StatusCode::NO_CONTENT
}

/// Body of `GET|PUT /_test/available`. While the server is down it cannot be reached over HTTP,
/// so an HTTP-driven outage names its own end with `restore_after_ms`.
#[derive(Debug, serde::Serialize, Deserialize)]
struct Availability {
    available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restore_after_ms: Option<u64>,
}

async fn get_available(State(shared): State<Arc<Shared>>) -> Json<Availability> {
    Json(Availability {
        available: *shared.available.borrow(),
        restore_after_ms: None,
    })
}

async fn put_available(
    State(shared): State<Arc<Shared>>,
    Json(a): Json<Availability>,
) -> Json<Availability> {
    shared.available.send_replace(a.available);
    if let (false, Some(ms)) = (a.available, a.restore_after_ms) {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            shared.available.send_replace(true);
        });
    }
    Json(a)
}

/// The accounting key: a `/clients/{key}` base-URL prefix, else the bearer token, else the
/// source IP.
fn client_key(req: &Request) -> String {
    if let Some(PathClientKey(key)) = req.extensions().get::<PathClientKey>() {
        return key.clone();
    }
    if let Some(token) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return token.to_owned();
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Outage simulation and per-client byte accounting, applied once around every route.
async fn accounting(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/_test/") {
        return next.run(req).await;
    }
    let client = client_key(&req);
    if !*shared.available.borrow() {
        // A request that raced the switch on an open connection; the connection is closed so
        // that the client's retry meets the reset of a down server.
        shared.stats.refused(&client);
        let mut resp = ApiError::unavailable().into_response();
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    req.extensions_mut().insert(ClientKey(client.clone()));
    let resp = next.run(req).await;
    let resource = resp
        .extensions()
        .get::<ResourceTag>()
        .map(|t| t.0)
        .unwrap_or("other");
    let stats = shared.stats.clone();
    // Count bytes as hyper pulls them, so a watch is accounted event by event while it streams.
    resp.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                stats.bytes(&client, resource, data.len() as u64);
            }
            frame
        }))
    })
}

fn json_response(status: StatusCode, value: &Value, tag: &'static str) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = (status, [(CONTENT_TYPE, "application/json")], body).into_response();
    resp.extensions_mut().insert(ResourceTag(tag));
    resp
}

fn error_response(err: ApiError, tag: &'static str) -> Response {
    let mut resp = err.into_response();
    resp.extensions_mut().insert(ResourceTag(tag));
    resp
}

/// What a request path names.
enum Target {
    ApiVersions,
    CoreResources,
    Groups,
    Group(String),
    GroupResources(String, String),
    Version,
    Collection {
        rt: &'static ResourceType,
        namespace: Option<String>,
    },
    Object {
        rt: &'static ResourceType,
        namespace: String,
        name: String,
        sub: Option<String>,
    },
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Some(Target::ApiVersions),
        ["api", "v1"] => return Some(Target::CoreResources),
        ["apis"] => return Some(Target::Groups),
        ["version"] => return Some(Target::Version),
        ["apis", g] if resources::serves_group_version(g, "v1") => {
            return Some(Target::Group((*g).to_owned()));
        }
        ["apis", g, v] if resources::serves_group_version(g, v) => {
            return Some(Target::GroupResources((*g).to_owned(), (*v).to_owned()));
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    match rest {
        [plural] => Some(Target::Collection {
            rt: resources::by_path(group, version, plural)?,
            namespace: None,
        }),
        ["namespaces", ns, plural] => Some(Target::Collection {
            rt: resources::by_path(group, version, plural)?,
            namespace: Some((*ns).to_owned()),
        }),
        ["namespaces", ns, plural, name] => Some(Target::Object {
            rt: resources::by_path(group, version, plural)?,
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
            sub: None,
        }),
        ["namespaces", ns, plural, name, sub] => Some(Target::Object {
            rt: resources::by_path(group, version, plural)?,
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
            sub: Some((*sub).to_owned()),
        }),
        _ => None,
    }
}

/// Query parameters of list, watch and write requests (unknown ones are ignored, as Kubernetes
/// ignores parameters a verb does not use).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<String>,
    resource_version: Option<String>,
    resource_version_match: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
    limit: Option<String>,
    dry_run: Option<String>,
    timeout_seconds: Option<String>,
    allow_watch_bookmarks: Option<String>,
    send_initial_events: Option<String>,
}

/// The JSON of a POST/PUT body. JSON and YAML are accepted, as by kube-apiserver; protobuf and
/// CBOR are not served here (415, so a client can tell "unsupported" from "malformed").
fn write_body(headers: &HeaderMap, body: &Bytes) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "" | "application/json" | "*/*" => Ok(body.clone()),
        "application/yaml" => {
            let value: Value = serde_norway::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))?;
            Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
        }
        _ => Err(ApiError::unsupported_media_type(content_type)),
    }
}

/// `(namespace, name)` of a stored object: the order lists are served in.
fn object_key(obj: &Value) -> (&str, &str) {
    let get = |f: &str| {
        obj.get("metadata")
            .and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    (get("namespace"), get("name"))
}

/// List metadata as kube-apiserver writes it (`continue`/`remainingItemCount` only when paging).
fn list_meta(rv: u64, next: Option<String>, remaining: usize) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("resourceVersion".into(), json!(rv.to_string()));
    if let Some(token) = next {
        m.insert("continue".into(), json!(token));
        m.insert("remainingItemCount".into(), json!(remaining));
    }
    Value::Object(m)
}

/// A continue token: the list's revision and the last key served. Opaque to clients (hex of
/// `rv NUL namespace NUL name`), like kube-apiserver's base64 tokens.
struct Continue {
    rv: u64,
    namespace: String,
    name: String,
}

impl Continue {
    fn encode(&self) -> String {
        let raw = format!("{}\0{}\0{}", self.rv, self.namespace, self.name);
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
        if !token.len().is_multiple_of(2) || !token.is_ascii() {
            return Err(invalid());
        }
        let bytes: Vec<u8> = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| invalid())?;
        let raw = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = raw.split('\0');
        let (Some(rv), Some(namespace), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        Ok(Continue {
            rv: rv.parse().map_err(|_| invalid())?,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Go's strconv.ParseBool, which kube-apiserver uses for boolean query parameters.
fn parse_bool(name: &str, v: Option<&str>) -> Result<Option<bool>, ApiError> {
    match v {
        None => Ok(None),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "failed to parse {name}: strconv.ParseBool: parsing {other:?}: invalid syntax"
        ))),
    }
}

fn parse_rv(v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resource version {v:?}: expected a decimal integer"
        ))
    })
}

fn selectors(rt: &ResourceType, p: &Params) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(p.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(p.field_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    for r in &fields.requirements {
        if !rt.supports_field(&r.field) {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {}",
                r.field
            )));
        }
    }
    Ok((labels, fields))
}

async fn dispatch(
    State(shared): State<Arc<Shared>>,
    Extension(ClientKey(client)): Extension<ClientKey>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(target) = parse_path(uri.path()) else {
        shared.stats.request(&client, "other", method.as_str());
        return error_response(ApiError::no_such_resource(), "other");
    };
    let params = match axum::extract::Query::<Params>::try_from_uri(&uri) {
        Ok(q) => q.0,
        Err(e) => {
            return error_response(
                ApiError::bad_request(format!("invalid query: {e}")),
                "other",
            );
        }
    };
    let writes = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if writes && params.dry_run.as_deref().is_some_and(|d| !d.is_empty()) {
        // Refused loudly rather than applied: a dry run that changed state would corrupt a test.
        return error_response(
            ApiError::bad_request("dryRun is not supported by the test API server"),
            "other",
        );
    }
    let discovery = |doc: Value| {
        shared.stats.request(&client, "discovery", "get");
        json_response(StatusCode::OK, &doc, "discovery")
    };
    match (target, &method) {
        (Target::ApiVersions, &Method::GET) => {
            discovery(resources::api_versions(&shared.server_address))
        }
        (Target::CoreResources, &Method::GET) => discovery(resources::api_resource_list("", "v1")),
        (Target::Groups, &Method::GET) => discovery(resources::api_group_list()),
        (Target::Group(g), &Method::GET) => discovery(resources::api_group(&g)),
        (Target::GroupResources(g, v), &Method::GET) => {
            discovery(resources::api_resource_list(&g, &v))
        }
        (Target::Version, &Method::GET) => discovery(resources::version()),
        (Target::Collection { rt, namespace }, m) => {
            let ctx = Ctx {
                shared: &shared,
                client: &client,
                rt,
            };
            let result = match *m {
                Method::GET => {
                    let watching = match parse_bool("watch", params.watch.as_deref()) {
                        Ok(w) => w.unwrap_or(false),
                        Err(e) => return ctx.fail(e),
                    };
                    if watching {
                        shared.stats.request(&client, rt.plural, "watch");
                        return match ctx.watch_spec(namespace, &params) {
                            Ok(spec) => {
                                let mut resp = watch::serve(shared.clone(), spec);
                                resp.extensions_mut().insert(ResourceTag(rt.plural));
                                resp
                            }
                            Err(e) => ctx.fail(e),
                        };
                    }
                    ctx.list(namespace.as_deref(), &params)
                }
                Method::POST => match namespace {
                    Some(ns) => write_body(&headers, &body).and_then(|body| ctx.create(&ns, &body)),
                    None => Err(ApiError::method_not_allowed()),
                },
                Method::DELETE => ctx.delete_collection(namespace.as_deref(), &params),
                _ => Err(ApiError::method_not_allowed()),
            };
            result.unwrap_or_else(|e| ctx.fail(e))
        }
        (
            Target::Object {
                rt,
                namespace,
                name,
                sub,
            },
            m,
        ) => {
            let ctx = Ctx {
                shared: &shared,
                client: &client,
                rt,
            };
            let scope = match sub.as_deref() {
                None => WriteScope::Main,
                Some("status") if rt.status_subresource => WriteScope::Status,
                Some(_) => return ctx.fail(ApiError::no_such_resource()),
            };
            let result = match *m {
                Method::GET => ctx.get(&namespace, &name),
                Method::PUT => write_body(&headers, &body)
                    .and_then(|body| ctx.update(&namespace, &name, &body, scope)),
                Method::PATCH => ctx.patch(&namespace, &name, &headers, &body, scope),
                Method::DELETE if scope == WriteScope::Main => ctx.delete(&namespace, &name, &body),
                _ => Err(ApiError::method_not_allowed()),
            };
            result.unwrap_or_else(|e| ctx.fail(e))
        }
        _ => {
            shared.stats.request(&client, "other", method.as_str());
            error_response(ApiError::method_not_allowed(), "other")
        }
    }
}

/// One request against one resource type.
struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    client: &'a str,
    rt: &'static ResourceType,
}

impl Ctx<'_> {
    fn fail(&self, e: ApiError) -> Response {
        error_response(e, self.rt.plural)
    }

    fn count(&self, verb: &str) {
        self.shared.stats.request(self.client, self.rt.plural, verb);
    }

    /// Respond with one object and count it as sent.
    fn object(&self, status: StatusCode, obj: &Value) -> Result<Response, ApiError> {
        self.shared.stats.objects(self.client, self.rt.plural, 1);
        Ok(json_response(status, obj, self.rt.plural))
    }

    fn list(&self, namespace: Option<&str>, p: &Params) -> Result<Response, ApiError> {
        self.count("list");
        let (labels, fields) = selectors(self.rt, p)?;
        let continuation = match p.continue_.as_deref().filter(|c| !c.is_empty()) {
            Some(token) => {
                if p.resource_version.as_deref().is_some_and(|v| !v.is_empty()) {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                Some(Continue::decode(token)?)
            }
            None => None,
        };
        let limit = match p.limit.as_deref().filter(|l| !l.is_empty()) {
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let current = self.shared.store.current_rv();
        let rv = p.resource_version.as_deref().filter(|v| !v.is_empty());
        match (
            rv,
            p.resource_version_match
                .as_deref()
                .filter(|v| !v.is_empty()),
        ) {
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: \
                     resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            (Some(v), Some("Exact")) => {
                let want = parse_rv(v)?;
                if want > current {
                    return Err(ApiError::too_large_resource_version(want, current));
                }
                if want < current {
                    // Only the latest revision is materialised; older snapshots are "compacted".
                    return Err(ApiError::expired(want, current));
                }
            }
            (Some(v), None | Some("NotOlderThan")) => {
                let want = parse_rv(v)?;
                if want > current {
                    return Err(ApiError::too_large_resource_version(want, current));
                }
            }
            (Some(_), Some(other)) => {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    format!(
                        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Unsupported value: \
                         {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                    ),
                ));
            }
            (None, None) => {}
        }
        // Pagination. Later pages are cut from the current state but carry the first page's
        // revision, so a client that watches from it replays every change made in between and
        // converges (the contract informers rely on). resourceVersion=0 is served "from the
        // cache", which ignores limit, as kube-apiserver's watch cache does.
        let mut rv = None;
        let mut after = None;
        if let Some(c) = &continuation {
            if c.rv < self.shared.store.oldest_rv() {
                return Err(ApiError::continue_expired());
            }
            rv = Some(c.rv);
            after = Some((c.namespace.clone(), c.name.clone()));
        }
        let paginate = limit > 0 && p.resource_version.as_deref() != Some("0");
        let page = usize::try_from(limit).ok().filter(|_| paginate);
        let (current_rv, mut items, remaining) = self.shared.store.list_page(
            self.rt,
            namespace,
            |o| labels.matches_object(o) && fields.matches(|f| self.rt.field_value(o, f)),
            after.as_ref(),
            page,
        );
        let rv = rv.unwrap_or(current_rv);
        let mut next = None;
        if remaining > 0
            && let Some(last) = items.last()
        {
            let (namespace, name) = object_key(last);
            next = Some(
                Continue {
                    rv,
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }
                .encode(),
            );
        }
        if self.rt.group.is_empty() {
            // Typed (built-in) lists carry kind/apiVersion only on the list, not on each item.
            for item in &mut items {
                if let Some(m) = item.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
            }
        }
        self.shared
            .stats
            .objects(self.client, self.rt.plural, items.len() as u64);
        let doc = json!({
            "kind": self.rt.list_kind(),
            "apiVersion": self.rt.api_version(),
            "metadata": list_meta(rv, next, remaining),
            "items": items,
        });
        Ok(json_response(StatusCode::OK, &doc, self.rt.plural))
    }

    fn watch_spec(&self, namespace: Option<String>, p: &Params) -> Result<WatchSpec, ApiError> {
        let (labels, fields) = selectors(self.rt, p)?;
        let bookmarks =
            parse_bool("allowWatchBookmarks", p.allow_watch_bookmarks.as_deref())?.unwrap_or(false);
        let initial = parse_bool("sendInitialEvents", p.send_initial_events.as_deref())?;
        let rv_match = p
            .resource_version_match
            .as_deref()
            .filter(|v| !v.is_empty());
        let rv = p.resource_version.as_deref().filter(|v| !v.is_empty());
        let invalid = |msg: &str| {
            ApiError::invalid(
                "ListOptions",
                "",
                format!("ListOptions.meta.k8s.io \"\" is invalid: {msg}"),
            )
        };
        let start = match initial {
            Some(send) => {
                if rv_match != Some("NotOlderThan") {
                    return Err(invalid(
                        "resourceVersionMatch: Forbidden: sendInitialEvents requires setting \
                         resourceVersionMatch to NotOlderThan",
                    ));
                }
                if send && !bookmarks {
                    return Err(invalid(
                        "allowWatchBookmarks: Required value: allowWatchBookmarks must be set to true \
                         when sendInitialEvents is set",
                    ));
                }
                match (send, rv) {
                    (true, _) => Start::StreamingList,
                    (false, None | Some("0")) => Start::After(self.shared.store.current_rv()),
                    (false, Some(v)) => Start::After(parse_rv(v)?),
                }
            }
            None => {
                if rv_match.is_some() {
                    return Err(invalid(
                        "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch \
                         unless sendInitialEvents is provided",
                    ));
                }
                match rv {
                    None | Some("0") => Start::CurrentState,
                    Some(v) => Start::After(parse_rv(v)?),
                }
            }
        };
        let timeout = match p.timeout_seconds.as_deref().filter(|v| !v.is_empty()) {
            Some(t) => Duration::from_secs(
                t.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
            ),
            None => DEFAULT_WATCH_TIMEOUT,
        };
        Ok(WatchSpec {
            resource: self.rt,
            namespace,
            labels,
            fields,
            start,
            bookmarks,
            timeout,
            client: self.client.to_owned(),
        })
    }

    fn get(&self, namespace: &str, name: &str) -> Result<Response, ApiError> {
        self.count("get");
        let obj = self
            .shared
            .store
            .get(self.rt, namespace, name)
            .ok_or_else(|| ApiError::not_found(self.rt, name))?;
        self.object(StatusCode::OK, &obj)
    }

    /// Parse a request body and check it against the URL, as the API server does before storing.
    fn body_object(
        &self,
        body: &[u8],
        namespace: &str,
        name: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut obj: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        })?;
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        };
        let api_version = self.rt.api_version();
        match map.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != api_version => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            _ => {}
        }
        match map.get("kind").and_then(Value::as_str) {
            Some(k) if k != self.rt.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    self.rt.kind
                )));
            }
            _ => {}
        }
        // kind/apiVersion first, as the API server serialises objects.
        let mut out = serde_json::Map::new();
        out.insert("kind".into(), json!(self.rt.kind));
        out.insert("apiVersion".into(), json!(api_version));
        for (k, v) in std::mem::take(map) {
            if k != "kind" && k != "apiVersion" {
                out.insert(k, v);
            }
        }
        let mut obj = Value::Object(out);
        let meta = obj
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(namespace));
            }
        }
        if let Some(name) = name {
            match meta.get("name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != name => {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
                _ => {
                    meta.insert("name".into(), json!(name));
                }
            }
        }
        Ok(obj)
    }

    fn create(&self, namespace: &str, body: &[u8]) -> Result<Response, ApiError> {
        self.count("create");
        let obj = self.body_object(body, namespace, None)?;
        let stored = self.shared.store.create(self.rt, namespace, obj)?;
        self.object(StatusCode::CREATED, &stored)
    }

    fn update(
        &self,
        namespace: &str,
        name: &str,
        body: &[u8],
        scope: WriteScope,
    ) -> Result<Response, ApiError> {
        self.count("update");
        let obj = self.body_object(body, namespace, Some(name))?;
        let stored = self
            .shared
            .store
            .update(self.rt, namespace, name, obj, scope)?;
        self.object(StatusCode::OK, &stored)
    }

    fn patch(
        &self,
        namespace: &str,
        name: &str,
        headers: &HeaderMap,
        body: &[u8],
        scope: WriteScope,
    ) -> Result<Response, ApiError> {
        self.count("patch");
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        let mut doc = self
            .shared
            .store
            .get(self.rt, namespace, name)
            .ok_or_else(|| ApiError::not_found(self.rt, name))?;
        // Without an explicit resourceVersion in the patch, a patch is unconditional: drop the
        // stored one so that it cannot fail as a stale precondition.
        let unconditional = |doc: &mut Value| {
            if let Some(m) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
        };
        match content_type.as_str() {
            // Strategic merge patch is treated as a JSON merge patch: list fields are replaced rather
            // than merged by key. Enough for metadata, labels, status and scalar spec edits.
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let patch: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("invalid merge patch: {e}")))?;
                unconditional(&mut doc);
                json_patch::merge(&mut doc, &patch);
            }
            "application/json-patch+json" => {
                let patch: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                unconditional(&mut doc);
                json_patch::patch(&mut doc, &patch).map_err(|e| {
                    ApiError::invalid(
                        self.rt.kind,
                        name,
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                })?;
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        }
        if let Some(m) = doc.as_object_mut() {
            m.insert("kind".into(), json!(self.rt.kind));
            m.insert("apiVersion".into(), json!(self.rt.api_version()));
        }
        let stored = self
            .shared
            .store
            .update(self.rt, namespace, name, doc, scope)?;
        self.object(StatusCode::OK, &stored)
    }

    fn delete(&self, namespace: &str, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        self.count("delete");
        let options: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        let rv = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str);
        let uid = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str);
        let (obj, removed) = self
            .shared
            .store
            .delete(self.rt, namespace, name, rv, uid, false)?;
        if !removed {
            // Finalizers pending: the object lives on, marked for deletion (202 like kube-apiserver).
            return self.object(StatusCode::ACCEPTED, &obj);
        }
        if self.rt.delete_returns_object {
            return self.object(StatusCode::OK, &obj);
        }
        let mut details = serde_json::Map::new();
        details.insert("name".into(), json!(name));
        details.insert("group".into(), json!(self.rt.group));
        details.insert("kind".into(), json!(self.rt.plural));
        details.insert(
            "uid".into(),
            obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        );
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        });
        Ok(json_response(StatusCode::OK, &status, self.rt.plural))
    }

    fn delete_collection(&self, namespace: Option<&str>, p: &Params) -> Result<Response, ApiError> {
        self.count("deletecollection");
        let (labels, fields) = selectors(self.rt, p)?;
        let (_, items) = self.shared.store.list(self.rt, namespace, |o| {
            labels.matches_object(o) && fields.matches(|f| self.rt.field_value(o, f))
        });
        let mut deleted = Vec::new();
        for item in items {
            let ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            match self
                .shared
                .store
                .delete(self.rt, ns, name, None, None, false)
            {
                Ok((obj, _)) => deleted.push(obj),
                // Deleted concurrently: nothing left to do for this one.
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        self.shared
            .stats
            .objects(self.client, self.rt.plural, deleted.len() as u64);
        let doc = json!({
            "kind": self.rt.list_kind(),
            "apiVersion": self.rt.api_version(),
            "metadata": {"resourceVersion": self.shared.store.current_rv().to_string()},
            "items": deleted,
        });
        Ok(json_response(StatusCode::OK, &doc, self.rt.plural))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use tower::ServiceExt;

    use super::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            store: super::super::store::Store::new(100),
            stats: super::super::stats::Recorder::default(),
            available: tokio::sync::watch::channel(true).0,
            shutdown: tokio::sync::watch::channel(false).0,
            hung: tokio::sync::watch::channel(false).0,
            bookmark_interval: Duration::from_secs(60),
            server_address: "127.0.0.1:1".into(),
        })
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("api".to_owned()),
            Just("apis".to_owned()),
            Just("v1".to_owned()),
            Just("namespaces".to_owned()),
            Just("default".to_owned()),
            Just("pods".to_owned()),
            Just("status".to_owned()),
            Just("aadpodidentity.k8s.io".to_owned()),
            Just("azureassignedidentities".to_owned()),
            Just("azureidentities".to_owned()),
            Just("%ff%00".to_owned()),
            "[a-z0-9.%-]{0,8}",
        ]
    }

    fn query() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("watch"),
            Just("resourceVersion"),
            Just("resourceVersionMatch"),
            Just("labelSelector"),
            Just("fieldSelector"),
            Just("limit"),
            Just("continue"),
            Just("timeoutSeconds"),
            Just("sendInitialEvents"),
            Just("allowWatchBookmarks"),
        ];
        prop::collection::vec((key, "[a-zA-Z0-9=!,()%. -]{0,12}"), 0..4).prop_map(|kv| {
            kv.iter()
                .map(|(k, v)| format!("{k}={}", v.replace(' ', "%20")))
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        /// Whatever arrives, the answer is a Kubernetes-shaped response: success, or a Status whose
        /// `code` is the HTTP status. Never a panic, never a bare string.
        #[test]
        fn any_request_gets_a_kubernetes_answer(
            method in prop_oneof![Just(Method::GET), Just(Method::POST), Just(Method::PUT), Just(Method::PATCH), Just(Method::DELETE)],
            segments in prop::collection::vec(segment(), 0..7),
            query in query(),
            body in prop_oneof![Just(Vec::new()), Just(br#"{"metadata":{"name":"x"}}"#.to_vec()), prop::collection::vec(any::<u8>(), 0..32)],
            content_type in prop_oneof![Just("application/json"), Just("application/merge-patch+json"), Just("application/json-patch+json"), Just("text/plain")],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let uri = format!("/{}?{query}", segments.join("/"));
                let Ok(req) = axum::http::Request::builder()
                    .method(method)
                    .uri(&uri)
                    .header(CONTENT_TYPE, content_type)
                    .body(Body::from(body))
                else {
                    return Ok(()); // not a valid HTTP request line: never reaches a server
                };
                let resp = router(shared()).oneshot(req).await.unwrap();
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    return Ok(());
                }
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                let doc: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| TestCaseError::fail(format!("{uri}: non-JSON {status} body: {e}")))?;
                prop_assert_eq!(&doc["kind"], "Status");
                prop_assert_eq!(doc["code"].as_u64(), Some(u64::from(status)));
                Ok(())
            })?;
        }
    }
}
