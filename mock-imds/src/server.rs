//! The HTTP/1.1 server under the router: accept loop with connection limits and per-source fairness,
//! per-connection hyper settings with explicit limits, the idle / header-read watchdog, graceful shutdown that
//! drains in-flight requests up to a grace and reports what it cut, the connection-reset fault (a real RST:
//! `SO_LINGER` 0, then close), and the rewrite of hyper's own parse-error answers into IMDS-shaped JSON. Owns
//! sockets and connections only; what a request means is the router's business. Every listener of the mock
//! is served by [`serve`], so every listener gets the same bounds.
//!
//! Limits (README "Limits"): the request line plus headers must fit in [`MAX_HEAD_BYTES`] and at most
//! [`MAX_HEADERS`] header fields; a request target longer than ~64 KiB (the `http` crate's URI limit) is
//! refused. hyper answers those itself (414/431/400); [`ImdsShapedErrors`] replaces its empty body with an IMDS
//! JSON error and the usual headers. Smaller violations are answered by the rules layer with 400. Timeouts
//! and connection limits are [`ConnectionLimits`] (see `connections`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderValue;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;

pub use crate::connections::ConnectionLimits;
use crate::connections::{Admitted, Conn, ConnCounters, ConnTable, TimedBody};

/// Largest request head (request line + headers) hyper buffers.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 128;

/// Per-connection facts handed to the router as a request extension.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The address this connection reached (the listener's address, specific even on a wildcard bind).
    pub local: SocketAddr,
    /// Notified by the rules layer to drop this connection with a reset.
    pub reset: Arc<Notify>,
}

/// What a listener's shutdown did (also logged: `info` when nothing was cut, `warn` otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The listener's address.
    pub local: Option<SocketAddr>,
    /// Connections open when shutdown began, and requests in flight on them.
    pub open_at_shutdown: usize,
    pub in_flight_at_shutdown: usize,
    /// Requests still in flight when the grace expired, as `METHOD target from PEER (age)`; they got no answer.
    pub cut: Vec<String>,
    /// Connections closed at the grace's expiry without a request in flight (e.g. a half-sent head).
    pub closed_idle_at_expiry: usize,
    pub counters: ConnCounters,
}

/// Serves `app` on `listener` until `shutdown` turns true (or its sender is dropped), within `limits`; then
/// stops accepting, lets requests in flight finish for up to `limits.shutdown_grace_secs`, cuts the rest and
/// reports (and logs) what it cut.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    server_header: HeaderValue,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) -> ShutdownReport {
    let local = listener.local_addr().ok();
    let table = ConnTable::new(limits);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match table.admit(peer) {
                    Ok(admitted) => {
                        conns.spawn(connection(
                            stream,
                            admitted,
                            app.clone(),
                            server_header.clone(),
                            shutdown.clone(),
                        ));
                    }
                    Err(refused) => {
                        // Closing it at once is the answer; per-event logging would let a flood fill the log.
                        tracing::debug!(%peer, reason = %refused, "connection refused");
                        drop(stream);
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let mut report = ShutdownReport {
        local,
        open_at_shutdown: table.open(),
        in_flight_at_shutdown: table.busy().len(),
        ..ShutdownReport::default()
    };
    let grace = table.limits().shutdown_grace();
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        let now = Instant::now();
        report.cut = table
            .busy()
            .iter()
            .filter_map(|c| c.describe_request(now))
            .collect();
        report.closed_idle_at_expiry = table.open().saturating_sub(report.cut.len());
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    report.counters = table.counters();
    log_shutdown(&report, grace);
    report
}

fn log_shutdown(r: &ShutdownReport, grace: Duration) {
    let addr = r.local.map_or_else(|| "?".to_string(), |a| a.to_string());
    let c = &r.counters;
    if r.cut.is_empty() {
        tracing::info!(
            listener = %addr,
            open = r.open_at_shutdown,
            in_flight = r.in_flight_at_shutdown,
            closed_idle_at_expiry = r.closed_idle_at_expiry,
            accepted = c.accepted, refused = c.refused, evicted = c.evicted,
            idle_timeouts = c.idle_timeouts, header_timeouts = c.header_timeouts,
            "listener stopped; every request in flight finished within the shutdown grace"
        );
    } else {
        const SHOWN: usize = 20;
        let mut list = r
            .cut
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if r.cut.len() > SHOWN {
            list.push_str(&format!("; and {} more", r.cut.len() - SHOWN));
        }
        tracing::warn!(
            listener = %addr,
            grace_secs = grace.as_secs(),
            cut = r.cut.len(),
            in_flight = r.in_flight_at_shutdown,
            "listener stopped; shutdown grace expired, cut {} request(s) in flight without an answer: {list}",
            r.cut.len()
        );
    }
}

async fn connection(
    stream: TcpStream,
    admitted: Admitted,
    app: Router,
    server_header: HeaderValue,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = admitted.conn.clone();
    let limits = admitted.table().limits().clone();
    let peer = activity.peer;
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => return tracing::warn!(error = %e, "connection has no local address"),
    };
    // A second descriptor of the same socket, so the reset fault can set SO_LINGER 0 after hyper owns the
    // stream; closing both descriptors then sends an RST instead of a FIN.
    let (stream, twin) = match stream
        .into_std()
        .and_then(|s| s.try_clone().map(|t| (s, t)))
    {
        Ok((s, t)) => match TcpStream::from_std(s) {
            Ok(s) => (s, t),
            Err(e) => return tracing::warn!(error = %e, "cannot re-register connection"),
        },
        Err(e) => return tracing::warn!(error = %e, "cannot duplicate connection socket"),
    };
    let reset = Arc::new(Notify::new());
    let info = ConnInfo {
        peer,
        local,
        reset: reset.clone(),
    };
    let body_timeout = limits.header_read_timeout();
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_flight = tracked.request_started(req.method(), req.uri());
        let mut req = req.map(|body| TimedBody::new(body, body_timeout));
        req.extensions_mut().insert(info.clone());
        let response = app.clone().oneshot(req);
        async move {
            let response = response.await;
            drop(in_flight);
            response
        }
    });
    let io = TokioIo::new(ImdsShapedErrors::new(stream, server_header).tracking(activity.clone()));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The watchdog below times heads (from their first byte) and idle connections separately.
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        let now = Instant::now();
        let deadline = activity.next_deadline(&limits, now);
        activity.arm(deadline);
        if activity.next_deadline(&limits, now) < deadline {
            // A head started while arming: arm for its header read deadline instead.
            continue;
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                break;
            }
            () = reset.notified() => {
                let _ = socket2::SockRef::from(&twin).set_linger(Some(Duration::ZERO));
                // Returning drops `conn` (hyper's descriptor) and `twin`: the kernel sends RST.
                break;
            }
            () = activity.close.notified() => {
                // Evicted for another connection while idle; a request that arrived meanwhile may finish.
                tracing::debug!(%peer, "idle connection evicted");
                if activity.in_flight() > 0 {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
                break;
            }
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
                break;
            }
            // A head started: the deadline moves (back to the top of the loop).
            () = activity.head_started.notified() => {}
            () = tokio::time::sleep_until(deadline) => {
                if let Some(expiry) = activity.expired(&limits, Instant::now()) {
                    tracing::debug!(%peer, ?expiry, "connection timed out");
                    admitted.table().count_expiry(expiry);
                    break;
                }
            }
        }
    }
    drop(admitted);
}

/// Wraps the connection's stream and replaces the bare error answers hyper writes for requests it cannot
/// parse (no `Server: IMDS/...` header, empty body) with an IMDS-shaped JSON error of the same status.
/// Relies on hyper flattening each response head into one write (we report no vectored-write support).
pub struct ImdsShapedErrors {
    inner: TcpStream,
    server_header: HeaderValue,
    /// Told about every read (a request head starting), for the watchdog.
    activity: Option<Arc<Conn>>,
    /// Replacement bytes still to write, how many are written, and the length of hyper's buffer to report.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl ImdsShapedErrors {
    pub fn new(inner: TcpStream, server_header: HeaderValue) -> Self {
        ImdsShapedErrors {
            inner,
            server_header,
            activity: None,
            pending: None,
        }
    }

    /// Reports reads to `conn` (see [`Conn::on_read`]).
    pub fn tracking(mut self, conn: Arc<Conn>) -> Self {
        self.activity = Some(conn);
        self
    }
}

/// If `buf` starts with a response head lacking our `Server` header, the IMDS-shaped replacement.
pub fn rewrite_parse_error(buf: &[u8], server_header: &[u8]) -> Option<Vec<u8>> {
    if !(buf.starts_with(b"HTTP/1.1 4")
        || buf.starts_with(b"HTTP/1.1 5")
        || buf.starts_with(b"HTTP/1.0 4"))
    {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("\r\nserver:") {
        return None;
    }
    let status: u16 = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
    let (reason, text) = match status {
        400 => (
            "Bad Request",
            "Bad request. The request could not be parsed",
        ),
        408 => (
            "Request Timeout",
            "Bad request. The request was not received in time",
        ),
        413 => ("Payload Too Large", "Bad request. The request is too large"),
        414 => ("URI Too Long", "Bad request. The request URI is too long"),
        431 => (
            "Request Header Fields Too Large",
            "Bad request. The request headers are too large",
        ),
        505 => (
            "HTTP Version Not Supported",
            "Bad request. The HTTP version is not supported",
        ),
        _ => ("Bad Request", "Bad request"),
    };
    let body = serde_json::json!({ "error": text }).to_string();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    out.extend_from_slice(b"content-type: ");
    out.extend_from_slice(crate::error::JSON_CONTENT_TYPE.as_bytes());
    out.extend_from_slice(b"\r\nserver: ");
    out.extend_from_slice(server_header);
    out.extend_from_slice(format!("\r\nx-ms-request-id: {}", uuid::Uuid::new_v4()).as_bytes());
    out.extend_from_slice(
        format!(
            "\r\ndate: {}",
            httpdate::fmt_http_date(std::time::SystemTime::now())
        )
        .as_bytes(),
    );
    out.extend_from_slice(
        format!(
            "\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl AsyncRead for ImdsShapedErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(conn)) = (&result, &self.activity)
            && buf.filled().len() > before
        {
            conn.on_read();
        }
        result
    }
}

impl AsyncWrite for ImdsShapedErrors {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match rewrite_parse_error(buf, this.server_header.as_bytes()) {
                Some(replacement) => this.pending = Some((replacement, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        loop {
            let Some((data, written, reported)) = this.pending.as_mut() else {
                return Poll::Ready(Ok(0));
            };
            if *written >= data.len() {
                let n = *reported;
                this.pending = None;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut this.inner).poll_write(cx, &data[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_foreign_error_heads_are_rewritten() {
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = rewrite_parse_error(hyper_414, b"IMDS/150.870.65.1103").expect("rewritten");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(text.ends_with(r#"{"error":"Bad request. The request URI is too long"}"#));
        let ours = b"HTTP/1.1 400 Bad Request\r\nserver: IMDS/150.870.65.1103\r\n\r\n{}";
        assert!(rewrite_parse_error(ours, b"IMDS").is_none());
        assert!(rewrite_parse_error(b"HTTP/1.1 200 OK\r\n\r\n", b"IMDS").is_none());
    }
}
