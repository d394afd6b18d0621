//! The two small HTTP listeners: the health probe (`/healthz` on `--http-probe-port`: 200 "Active" once
//! this replica leads and ran its first cycle, 200 "Not Active" before, as MIC's probe answers) and the
//! metrics (`/metrics` on `--prometheus-port`). HTTP/1.1 only, bounded: at most [`MAX_CONNECTIONS`] connections, request heads
//! within [`HEADER_READ_TIMEOUT`] and [`MAX_HEAD_BYTES`], every answer within [`ANSWER_TIMEOUT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::metrics::Metrics;

pub const MAX_CONNECTIONS: usize = 64;
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Health probe router.
pub fn probe_router(active: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(active): State<Arc<AtomicBool>>| async move {
                // Always 200, as MIC's probe: a replica waiting for the lock is alive, not broken.
                if active.load(Ordering::Relaxed) {
                    (StatusCode::OK, "Active")
                } else {
                    (StatusCode::OK, "Not Active")
                }
            }),
        )
        .with_state(active)
}

/// Metrics router.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Metrics>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .with_state(metrics)
}

/// Serves `app` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = crate::stopped(&mut shutdown) => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let app = app.clone();
                    conns.spawn(async move {
                        let _permit = permit;
                        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let app = app.clone();
                            async move {
                                match tokio::time::timeout(ANSWER_TIMEOUT, app.oneshot(req)).await {
                                    Ok(r) => r,
                                    Err(_) => Ok(axum::response::IntoResponse::into_response(StatusCode::SERVICE_UNAVAILABLE)),
                                }
                            }
                        });
                        let mut b = hyper::server::conn::http1::Builder::new();
                        b.timer(TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .max_buf_size(MAX_HEAD_BYTES);
                        let _ = tokio::time::timeout(Duration::from_secs(300), b.serve_connection(TokioIo::new(stream), service)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}
