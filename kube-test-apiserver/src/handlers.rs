//! The HTTP surface: routing, the `/_test/*` control endpoints, the accounting + availability
//! middleware, and the dispatch of Kubernetes requests to [`request`] (parsing), [`read`] (get,
//! list, watch parameters) and [`write`] (create, update, patch, delete).
//!
//! Handlers translate HTTP into store calls and store results into Kubernetes JSON; the write
//! rules live in `store`, the watch machinery in `watch`, selector grammar in `selectors`. Every
//! error leaves as a Kubernetes `Status` (never a panic, never a bare string).

mod read;
mod request;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;

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
use serde_json::Value;

use super::Shared;
use super::resources::{self, ResourceType};
use super::serve::PathClientKey;
use super::status::ApiError;
use super::store::WriteScope;
use super::watch;
use request::{Params, Route, parse_bool, parse_path, write_body};

/// Accounting key of the caller: bearer token, else source IP.
#[derive(Debug, Clone)]
pub struct ClientKey(pub String);

/// Which resource a response belongs to, for byte accounting (set by handlers on the response).
#[derive(Debug, Clone, Copy)]
struct ResourceTag(&'static str);

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
    let write = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    // Writes are counted in flight (and delayed, when asked) from here until their answer is ready.
    let in_flight = write.then(|| {
        let resource = match parse_path(req.uri().path()) {
            Some(Route::Collection { rt, .. } | Route::Object { rt, .. }) => rt.plural,
            _ => "other",
        };
        shared.stats.begin_write(&client, resource)
    });
    let latency = *shared.write_latency.borrow();
    if write && !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = next.run(req).await;
    drop(in_flight);
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
        (Route::ApiVersions, &Method::GET) => {
            discovery(resources::api_versions(&shared.server_address))
        }
        (Route::CoreResources, &Method::GET) => discovery(resources::api_resource_list("", "v1")),
        (Route::Groups, &Method::GET) => discovery(resources::api_group_list()),
        (Route::Group(g), &Method::GET) => discovery(resources::api_group(&g)),
        (Route::GroupResources(g, v), &Method::GET) => {
            discovery(resources::api_resource_list(&g, &v))
        }
        (Route::Version, &Method::GET) => discovery(resources::version()),
        (Route::Collection { rt, namespace }, m) => {
            let ctx = ResourceRequest {
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
                    None if !rt.namespaced => {
                        write_body(&headers, &body).and_then(|body| ctx.create("", &body))
                    }
                    None => Err(ApiError::method_not_allowed()),
                },
                Method::DELETE => ctx.delete_collection(namespace.as_deref(), &params),
                _ => Err(ApiError::method_not_allowed()),
            };
            result.unwrap_or_else(|e| ctx.fail(e))
        }
        (
            Route::Object {
                rt,
                namespace,
                name,
                sub,
            },
            m,
        ) => {
            let ctx = ResourceRequest {
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
struct ResourceRequest<'a> {
    shared: &'a Arc<Shared>,
    client: &'a str,
    rt: &'static ResourceType,
}

impl ResourceRequest<'_> {
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
            write_latency: tokio::sync::watch::channel(Duration::ZERO).0,
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
