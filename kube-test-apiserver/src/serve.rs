//! Connection handling: the accept loop, per-connection HTTP/1.1 serving, graceful shutdown, and the
//! simulated outage at the connection level.
//!
//! A real API server that is down refuses or resets connections; clients see transport errors,
//! not HTTP statuses (kube-rs, for one, silently retries 503 for minutes but reports a reset at
//! once). So while unavailable, new connections are accepted and reset at once (SO_LINGER 0), and
//! open connections are closed gracefully — their watch streams have already ended. This module
//! owns sockets only; what is said over them is `handlers`' business. A simulated hang holds every
//! request (new connections included) until it ends; watches go silent in `watch`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use super::Shared;

/// How long an open connection may take to finish its in-flight response once the server goes
/// down or stops, before it is dropped.
const GRACE: Duration = Duration::from_secs(5);

/// Resolve once the flag equals `want` (or its sender is gone).
pub(crate) async fn until(flag: &mut watch::Receiver<bool>, want: bool) {
    let _ = flag.wait_for(|v| *v == want).await.map(|_| ());
}

/// Accept connections until shutdown; then the listener is dropped (new connections refused).
pub(crate) async fn accept_loop(listener: TcpListener, router: Router, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = until(&mut shutdown, true) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Transient (EMFILE, ECONNABORTED): keep serving, but do not spin.
                tracing::debug!(error = %e, "test API server accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !*shared.available.borrow() {
            // Reset, as a client of a crashed API server experiences it.
            let _ = stream.set_zero_linger();
            shared.stats.refused_connection();
            drop(stream);
            continue;
        }
        // While hung, `serve_connection` holds each request until the hang ends.
        tokio::spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            shared.clone(),
        ));
    }
}

/// Prefix of per-client base URLs: a kubeconfig for client `k` points at `http://ADDR/clients/k`,
/// and clients append API paths to it (kube-rs and client-go both keep a server URL's path).
pub const CLIENT_PREFIX: &str = "/clients/";

/// The accounting key named by a `/clients/{key}` path prefix, taken off before routing.
#[derive(Debug, Clone)]
pub struct PathClientKey(pub String);

/// Move a `/clients/{key}` prefix from the path into a [`PathClientKey`] extension. Routing must
/// see the plain Kubernetes path, so this runs outside the router. Why a path and not only the
/// bearer token: client-go never sends credentials to a plain-http server.
fn strip_client_prefix<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let Some(rest) = req.uri().path().strip_prefix(CLIENT_PREFIX) else {
        return req;
    };
    let (key, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let key = percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .into_owned();
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    if key.is_empty() {
        return req;
    }
    let mut parts = req.uri().clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => parts.path_and_query = Some(pq),
        // Not reachable for a path that was valid with its prefix; leave the request untouched.
        Err(_) => return req,
    }
    if let Ok(uri) = axum::http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
        req.extensions_mut().insert(PathClientKey(key));
    }
    req
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let router = router.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        strip_client_prefix(req)
    });
    let hang = shared.hung.clone();
    let svc = tower::service_fn(move |req: axum::http::Request<Incoming>| {
        let (router, mut hung) = (router.clone(), hang.subscribe());
        async move {
            // A hung server reads the request and never answers, until the hang ends.
            until(&mut hung, false).await;
            router.oneshot(req).await
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut available = shared.available.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "test API server connection ended with an error");
            }
            return;
        }
        _ = until(&mut available, false) => {}
        _ = until(&mut shutdown, true) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(GRACE, conn).await;
}
