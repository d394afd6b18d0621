//! The listeners' connection handling, shared by the IMDS port, the health probe and the metrics port.
//!
//! Each listener speaks plain HTTP/1.1 only, as NMI's Go `net/http` server does (no h2c: an HTTP/2 preface is
//! closed, an `Upgrade: h2c` header ignored); an HTTP/0.9 request line is answered 400 at once. Every
//! connection is bounded: a header-read timeout (from accept, or from the first byte of a later request on a
//! kept-alive connection, to the end of the request header), an idle timeout (a kept-alive connection waiting
//! for its next request), a global connection limit and a per-source-address limit, so one pod's connections
//! cannot starve another's. A connection over a limit is answered `503` and closed at once, never queued.
//! Handlers themselves are not timed here: a token request may legitimately wait ~80 s for its identity.
//! Shutdown is a drain: stop accepting, let in-flight requests finish (kept-alive connections close after
//! their current answer), and after the grace cut what is still running, counting it. This module also
//! raises RLIMIT_NOFILE and fits the IMDS listener's limit below it. It knows nothing about IMDS: it serves
//! whatever `Router` it is given.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::Settings;
use crate::metrics::Metrics;

/// Which listener a connection belongs to (the `listener` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// The IMDS-facing listener (`--nmi-port`).
    Imds,
    /// `/healthz` (`--http-probe-port`).
    Probe,
    /// `/metrics` (`--prometheus-port`).
    Metrics,
}

impl ListenerKind {
    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Imds => "imds",
            ListenerKind::Probe => "probe",
            ListenerKind::Metrics => "metrics",
        }
    }
}

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Limits {
    /// The IMDS listener's bounds from the flags (`--max-connections`, `--max-connections-per-ip`).
    pub fn imds(s: &Settings) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(s.header_read_timeout_sec),
            idle_timeout: Duration::from_secs(s.idle_timeout_sec),
            max_connections: to_usize(s.max_connections).max(1),
            max_connections_per_ip: to_usize(s.max_connections_per_ip).max(1),
        }
    }

    /// The health and metrics listeners' bounds (`--probe-max-connections`, `--probe-max-connections-per-ip`).
    pub fn probe(s: &Settings) -> Self {
        Self {
            max_connections: to_usize(s.probe_max_connections).max(1),
            max_connections_per_ip: to_usize(s.probe_max_connections_per_ip).max(1),
            ..Self::imds(s)
        }
    }
}

/// Where the servers are in their life; sent to every listener and connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServePhase {
    /// Accepting and serving.
    Serve,
    /// Not accepting; in-flight requests finish, then their connections close.
    Drain,
    /// Grace over: every connection is closed now, in-flight requests are cut.
    Cut,
}

/// Why a connection was refused at accept (the `reason` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// Which timeout closed a connection (the `timeout` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    HeaderRead,
    Idle,
}

impl Timeout {
    pub fn label(self) -> &'static str {
        match self {
            Timeout::HeaderRead => "header_read",
            Timeout::Idle => "idle",
        }
    }
}

/// The answer to a connection over a limit: written without waiting (best effort), then the socket is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: 21\r\n\r\ntoo many connections\n";

/// Live counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    open: AtomicUsize,
    in_flight: AtomicUsize,
    refused: AtomicU64,
    timeouts: AtomicU64,
    cut: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ListenerStats {
    /// Open connections.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    /// Requests whose handler is running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
    /// Requests cut at the end of the shutdown grace.
    pub fn cut(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
    /// Connections refused at the limits since the previous call.
    pub fn take_refused(&self) -> u64 {
        self.refused.swap(0, Ordering::Relaxed)
    }
    /// Connections closed by a timeout since the previous call.
    pub fn take_timeouts(&self) -> u64 {
        self.timeouts.swap(0, Ordering::Relaxed)
    }

    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &Limits,
        kind: ListenerKind,
        metrics: &Metrics,
    ) -> Result<Admission, Refusal> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::SeqCst) >= limits.max_connections {
            return Err(Refusal::MaxConnections);
        }
        match per_ip.get_mut(&ip) {
            Some(n) if *n >= limits.max_connections_per_ip => {
                return Err(Refusal::MaxConnectionsPerIp);
            }
            Some(n) => *n += 1,
            None => {
                per_ip.insert(ip, 1);
            }
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        metrics.connection_opened(kind.label());
        Ok(Admission {
            stats: self.clone(),
            ip,
            kind,
            metrics: metrics.clone(),
        })
    }
}

/// One admitted connection's place under the limits; given back when dropped.
struct Admission {
    stats: Arc<ListenerStats>,
    ip: IpAddr,
    kind: ListenerKind,
    metrics: Metrics,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut per_ip = self.stats.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.stats.open.fetch_sub(1, Ordering::SeqCst);
        self.metrics.connection_closed(self.kind.label());
    }
}

/// "No time recorded" in [`ConnClock`]'s millisecond fields.
const NONE: u64 = u64::MAX;

/// What the timeouts of one connection look at: requests in flight, when the connection last went idle, and
/// when the current request header started to arrive. Updated by the socket wrapper and the service.
///
/// The watchdog sleeps until the next deadline (or, while a handler runs, until a re-check) and is woken
/// early only when a deadline moves *earlier* than the one it sleeps for: a header starting to arrive while
/// it waits for a later idle deadline. Starting and ending a request only move deadlines later, so they wake
/// nothing; the watchdog finds the new state when it wakes. (Waking it for every request start and end cost
/// two task wake-ups and a timer re-arm per request, a cost `just bench` measured.)
struct ConnClock {
    origin: Instant,
    in_flight: AtomicU32,
    /// Milliseconds since `origin` of the last answer finished or written.
    idle_since: AtomicU64,
    /// Milliseconds since `origin` of the first byte of the next request (`NONE`: none arrived yet).
    head_started: AtomicU64,
    /// Milliseconds since `origin` the watchdog sleeps until (`NONE`: not sleeping yet).
    armed: AtomicU64,
    /// The header read timeout, for `on_read` to tell whether its deadline comes before `armed`.
    header_read_ms: u64,
    changed: Notify,
}

impl ConnClock {
    fn new(limits: &Limits) -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            // As Go's ReadHeaderTimeout: a new connection's header time runs from accept.
            head_started: AtomicU64::new(0),
            armed: AtomicU64::new(NONE),
            header_read_ms: u64::try_from(limits.header_read_timeout.as_millis())
                .unwrap_or(NONE - 1),
            changed: Notify::new(),
        }
    }

    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(NONE - 1)
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0
            && self.head_started.load(Ordering::SeqCst) == NONE
        {
            let now = self.now_ms();
            self.head_started.store(now, Ordering::SeqCst);
            // SeqCst pairs with `arm`: either the watchdog sees this head when it re-checks after arming,
            // or this load sees what it armed.
            if self.armed.load(Ordering::SeqCst) > now.saturating_add(self.header_read_ms) {
                self.changed.notify_one();
            }
        }
    }

    fn on_write(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            self.idle_since.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(NONE, Ordering::SeqCst);
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    /// The next deadline and the timeout it belongs to; `None` while a handler runs.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Timeout)> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let at = |ms: u64, d: Duration| self.origin + Duration::from_millis(ms) + d;
        match self.head_started.load(Ordering::SeqCst) {
            NONE => Some((
                at(self.idle_since.load(Ordering::SeqCst), limits.idle_timeout),
                Timeout::Idle,
            )),
            started => Some((at(started, limits.header_read_timeout), Timeout::HeaderRead)),
        }
    }

    /// When the watchdog should look next: the deadline, or while a handler runs a re-check after the
    /// shorter timeout (the handler may end meanwhile without telling it).
    fn wake_at(&self, limits: &Limits, now: Instant) -> Instant {
        match self.deadline(limits) {
            Some((at, _)) => at,
            None => now + limits.idle_timeout.min(limits.header_read_timeout),
        }
    }

    /// Records that the watchdog sleeps until `at`.
    fn arm(&self, at: Instant) {
        self.armed.store(self.ms_at(at), Ordering::SeqCst);
    }
}

/// A request being handled; counted on its connection and listener until dropped.
struct InFlight {
    clock: Arc<ConnClock>,
    stats: Arc<ListenerStats>,
}

impl InFlight {
    fn begin(clock: &Arc<ConnClock>, stats: &Arc<ListenerStats>) -> Self {
        clock.begin();
        stats.in_flight.fetch_add(1, Ordering::SeqCst);
        Self {
            clock: clock.clone(),
            stats: stats.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.clock.end();
    }
}

/// The client socket, telling the clock when bytes move.
struct Watched {
    inner: TcpStream,
    clock: Arc<ConnClock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.on_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.on_write();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.clock.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A running listener.
pub struct Server {
    kind: ListenerKind,
    stats: Arc<ListenerStats>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `app` on `listener` until `phase` leaves [`ServePhase::Serve`].
    pub fn spawn(
        listener: TcpListener,
        kind: ListenerKind,
        limits: Limits,
        app: Router,
        metrics: Metrics,
        phase: watch::Receiver<ServePhase>,
    ) -> Self {
        let stats = Arc::new(ListenerStats::default());
        let task = tokio::spawn(accept_loop(
            listener,
            kind,
            limits,
            app,
            metrics,
            stats.clone(),
            phase,
        ));
        Self { kind, stats, task }
    }

    pub fn kind(&self) -> ListenerKind {
        self.kind
    }

    pub fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    /// The counters, shareable (the periodic summary reads them).
    pub fn stats_handle(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    /// Waits (at most `bound`) for the accept loop to end; it ends as soon as the phase leaves `Serve`.
    pub async fn join(&mut self, bound: Duration) {
        if tokio::time::timeout(bound, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }

    /// Stops the accept loop now (connections already running see the phase themselves).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// The caller's address with an IPv4-mapped IPv6 address read as IPv4 (one pod, one key).
fn source_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Accept errors that concern one connection only (the next accept may well succeed).
fn per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
    )
}

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    limits: Limits,
    app: Router,
    metrics: Metrics,
    stats: Arc<ListenerStats>,
    mut phase: watch::Receiver<ServePhase>,
) {
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p != ServePhase::Serve) => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if per_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or similar: back off briefly instead of spinning, and
                // say so at most once a second.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(listener = kind.label(), error = %e, "accept failed");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admission = match stats.admit(source_ip(peer), &limits, kind, &metrics) {
            Ok(a) => a,
            Err(refusal) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                metrics.connection_refused(kind.label(), refusal.label());
                tracing::debug!(listener = kind.label(), %peer, reason = refusal.label(), "connection refused");
                // Best effort and never waiting: a fresh socket's send buffer takes this at once.
                let _ = stream.try_write(REFUSAL);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            peer,
            admission,
            app.clone(),
            limits,
            stats.clone(),
            metrics.clone(),
            phase.clone(),
        ));
    }
    tracing::debug!(listener = kind.label(), "stopped accepting");
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    admission: Admission,
    app: Router,
    limits: Limits,
    stats: Arc<ListenerStats>,
    metrics: Metrics,
    mut phase: watch::Receiver<ServePhase>,
) {
    let kind = admission.kind;
    let clock = Arc::new(ConnClock::new(&limits));
    let io = TokioIo::new(Watched {
        inner: stream,
        clock: clock.clone(),
    });
    let svc = {
        let (clock, stats) = (clock.clone(), stats.clone());
        hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            let guard = InFlight::begin(&clock, &stats);
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await;
                drop(guard);
                resp
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The header and idle timeouts are ours (below): hyper's own header timer would also run while a
        // kept-alive connection waits, merging the two.
        .header_read_timeout(None)
        .keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let now_phase = *phase.borrow_and_update();
        if now_phase == ServePhase::Cut {
            let cut = clock.in_flight.load(Ordering::SeqCst) as usize;
            if cut > 0 {
                stats.cut.fetch_add(cut, Ordering::SeqCst);
                tracing::debug!(listener = kind.label(), %peer, cut, "request cut at shutdown");
            }
            break;
        }
        if now_phase == ServePhase::Drain && !draining {
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        let now = Instant::now();
        let wake = clock.wake_at(&limits, now);
        clock.arm(wake);
        if clock.wake_at(&limits, now) < wake {
            // A header started while arming (see `ConnClock::on_read`): arm for its deadline instead.
            continue;
        }
        let expiry = tokio::time::sleep_until(wake);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(listener = kind.label(), %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = clock.changed.notified() => {}
            changed = phase.changed() => {
                if changed.is_err() {
                    // The servers' owner is gone: nothing will drain us any more.
                    break;
                }
            }
            _ = expiry => {
                if let Some((at, timeout)) = clock.deadline(&limits)
                    && at <= Instant::now()
                {
                    stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    metrics.connection_timeout(kind.label(), timeout.label());
                    tracing::debug!(listener = kind.label(), %peer, timeout = timeout.label(), "connection timed out");
                    break;
                }
            }
        }
    }
    drop(admission);
}

/// Descriptors kept for everything but client connections (API watches, IMDS pool spares, logs, listeners).
pub const FD_RESERVE: u64 = 256;

/// The largest `--max-connections` the descriptor limit `nofile` can hold: every IMDS connection may hold
/// one upstream connection too, and the health and metrics listeners may hold `probe_total` between them.
pub fn fit_to_nofile(max_connections: usize, probe_total: usize, nofile: u64) -> usize {
    let probe = u64::try_from(probe_total).unwrap_or(u64::MAX);
    let available = nofile.saturating_sub(FD_RESERVE.saturating_add(probe)) / 2;
    max_connections.min(to_usize(available)).max(1)
}

/// The process's RLIMIT_NOFILE as (soft, hard).
pub fn nofile_limit() -> nix::Result<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
}

/// Raises the soft RLIMIT_NOFILE to the hard one (capped at 1 Mi when the hard limit is infinite); returns
/// (soft before, soft now).
pub fn raise_nofile_limit() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    let (soft, hard) = nofile_limit()?;
    let target = if hard == RLIM_INFINITY { 1 << 20 } else { hard };
    if soft >= target {
        return Ok((soft, soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    Ok((soft, target))
}

#[cfg(test)]
mod tests;
