//! Connection handling: the accept loop, per-connection HTTP/1.1 serving, graceful shutdown, and the
//! simulated outage at the connection level.
//!
//! A real API server that is down refuses or resets connections; clients see transport errors,
//! not HTTP statuses (kube-rs, for one, silently retries 503 for minutes but reports a reset at
//! once). So while unavailable, new connections are accepted and reset at once (SO_LINGER 0), and
//! open connections are closed gracefully — their watch streams have already ended. This module
//! owns sockets only; what is said over them is `handlers`' business.

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
        tokio::spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            shared.clone(),
        ));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let svc = router.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
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
