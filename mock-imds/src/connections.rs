//! Bounds on the connections of every listener (README "Limits"): the configurable timeouts and connection
//! limits ([`ConnectionLimits`], `[server.limits]`), the per-listener [`ConnTable`] that admits connections
//! with per-source fairness, and the per-connection [`Conn`] activity record the server's watchdog reads.
//! `server::serve` is the only user; every listener of the mock goes through it and so gets these bounds.
//!
//! Fairness: a source is the peer's IP address. No source holds more than `max_connections_per_source`
//! connections; at that bound a new connection from it replaces its own oldest idle connection (none idle:
//! the new one is refused). At `max_connections` in total, a new connection replaces the oldest idle
//! connection of the heaviest source that holds more connections than the newcomer's source (else one of
//! the newcomer's own); only when no such idle connection exists is it refused. So thousands of idle
//! connections from one client cost that client its own connections, never another client's. "Idle" means no
//! request in flight (a connection that has sent nothing, or part of a request head, is idle).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Method, Uri};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Longest accepted timeout or grace, in seconds (one day): keeps every deadline far inside `Instant`'s range.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// Largest accepted `max_connections`.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Timeouts and connection limits of every listener (`[server.limits]` in the configuration file; the
/// `--header-read-timeout`, `--idle-timeout`, `--max-connections`, `--max-connections-per-source` and
/// `--shutdown-grace` flags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// A request head must be complete this many seconds after its first byte arrived, and a request body
    /// within this many seconds after its head; otherwise the connection is closed.
    pub header_read_timeout_secs: u64,
    /// A connection with no request in flight on which nothing arrives for this many seconds is closed
    /// (before its first request and between keep-alive requests).
    pub idle_timeout_secs: u64,
    /// Most connections open at once on one listener.
    pub max_connections: usize,
    /// Most connections open at once from one source IP address on one listener (above `max_connections`:
    /// `max_connections`).
    pub max_connections_per_source: usize,
    /// On shutdown, requests in flight get this many seconds to finish before they are cut.
    pub shutdown_grace_secs: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout_secs: 10,
            idle_timeout_secs: 30,
            max_connections: 512,
            max_connections_per_source: 128,
            // Token requests through an interceptor may legitimately take 52-80 s (issue 10).
            shutdown_grace_secs: 90,
        }
    }
}

/// A limit outside its accepted range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server.limits.{field} = {value} is out of range ({range})")]
pub struct LimitError {
    pub field: &'static str,
    pub value: u64,
    pub range: &'static str,
}

impl ConnectionLimits {
    /// Checks every value against its range (timeouts 1 s to one day, grace 0 to one day, 1 to a million
    /// connections; a per-source limit above the total acts as the total).
    pub fn validate(&self) -> Result<(), LimitError> {
        let secs = |field, value: u64, min| {
            if (min..=MAX_TIMEOUT_SECS).contains(&value) {
                Ok(())
            } else {
                Err(LimitError {
                    field,
                    value,
                    range: if min == 0 { "0..=86400" } else { "1..=86400" },
                })
            }
        };
        secs("header_read_timeout_secs", self.header_read_timeout_secs, 1)?;
        secs("idle_timeout_secs", self.idle_timeout_secs, 1)?;
        secs("shutdown_grace_secs", self.shutdown_grace_secs, 0)?;
        let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(LimitError {
                field: "max_connections",
                value: as_u64(self.max_connections),
                range: "1..=1000000",
            });
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections_per_source) {
            return Err(LimitError {
                field: "max_connections_per_source",
                value: as_u64(self.max_connections_per_source),
                range: "1..=1000000",
            });
        }
        Ok(())
    }

    fn secs(value: u64, min: u64) -> Duration {
        Duration::from_secs(value.clamp(min, MAX_TIMEOUT_SECS))
    }

    /// The header (and body) read timeout, clamped into range (a library caller may skip validation).
    pub fn header_read_timeout(&self) -> Duration {
        Self::secs(self.header_read_timeout_secs, 1)
    }

    pub fn idle_timeout(&self) -> Duration {
        Self::secs(self.idle_timeout_secs, 1)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Self::secs(self.shutdown_grace_secs, 0)
    }

    fn max_total(&self) -> usize {
        self.max_connections.clamp(1, MAX_CONNECTIONS)
    }

    fn max_per_source(&self) -> usize {
        self.max_connections_per_source.clamp(1, self.max_total())
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("its source holds max_connections_per_source connections, none idle")]
    SourceFull,
    #[error("the listener holds max_connections connections, none idle that fairness lets go")]
    Full,
}

/// Counters of one listener (reported in the shutdown log line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnCounters {
    pub accepted: u64,
    pub refused: u64,
    /// Idle connections closed to make room for another connection.
    pub evicted: u64,
    pub idle_timeouts: u64,
    pub header_timeouts: u64,
}

/// Sentinel for "no head byte since the connection became idle".
const NONE: u64 = u64::MAX;

/// One open connection: who it is from and what it is doing, for admission, the watchdog and shutdown.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    source: IpAddr,
    pub peer: SocketAddr,
    accepted: Instant,
    in_flight: AtomicU32,
    /// Milliseconds after `accepted` when the connection last became idle (no request in flight).
    idle_since_ms: AtomicU64,
    /// Milliseconds after `accepted` of the first byte read while idle (a request head started), or NONE.
    head_started_ms: AtomicU64,
    /// Notified when the table evicts this connection.
    pub close: Notify,
    /// Notified when a request head starts and its header read deadline comes before the one the watchdog
    /// sleeps for (see [`Conn::arm`]); otherwise the watchdog finds the head when it wakes.
    pub head_started: Notify,
    /// Milliseconds after `accepted` the watchdog sleeps until (NONE: not yet sleeping).
    armed_ms: AtomicU64,
    /// The header read timeout in milliseconds (for `on_read` to compare with `armed_ms`).
    header_read_ms: u64,
    /// The request in flight (the latest one, when pipelining), for the shutdown report.
    current: Mutex<Option<(Method, Uri, Instant)>>,
}

/// What the watchdog found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    HeaderRead,
}

impl Conn {
    fn millis_since_accept(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.accepted).as_millis()).unwrap_or(NONE - 1)
    }

    /// Bytes arrived from the client: when no request is in flight they start a request head.
    pub fn on_read(&self) {
        self.on_read_at(Instant::now());
    }

    fn on_read_at(&self, at: Instant) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Acquire) == NONE
        {
            let now = self.millis_since_accept(at);
            // SeqCst pairs with `arm`: either the watchdog sees this head when it re-checks after arming, or
            // this load sees what it armed. Waking it for every head cost a task wake-up and a timer re-arm
            // per request (measured by `just bench`); only a deadline earlier than the armed one needs it.
            if self
                .head_started_ms
                .compare_exchange(NONE, now, Ordering::SeqCst, Ordering::Acquire)
                .is_ok()
                && self.armed_ms.load(Ordering::SeqCst) > now.saturating_add(self.header_read_ms)
            {
                self.head_started.notify_one();
            }
        }
    }

    /// A request head is complete and the request goes to the application; the guard ends it.
    pub fn request_started(self: &Arc<Self>, method: &Method, uri: &Uri) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(NONE, Ordering::Release);
        *lock(&self.current) = Some((method.clone(), uri.clone(), Instant::now()));
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The request in flight as `METHOD /path?query (N s)`, if any.
    pub fn describe_request(&self, now: Instant) -> Option<String> {
        if self.in_flight() == 0 {
            return None;
        }
        lock(&self.current).as_ref().map(|(m, u, at)| {
            format!(
                "{m} {u} from {} ({} ms)",
                self.peer,
                now.saturating_duration_since(*at).as_millis()
            )
        })
    }

    /// Records that the watchdog sleeps until `at`; it then re-reads the state (`next_deadline`) and re-arms
    /// if a head started meanwhile.
    pub fn arm(&self, at: Instant) {
        self.armed_ms
            .store(self.millis_since_accept(at), Ordering::SeqCst);
    }

    /// When the watchdog should look again, given the current state.
    pub fn next_deadline(&self, limits: &ConnectionLimits, now: Instant) -> Instant {
        let check_again = now + limits.idle_timeout().min(limits.header_read_timeout());
        if self.in_flight() > 0 {
            return check_again;
        }
        let at = |ms: u64, timeout: Duration| {
            self.accepted
                .checked_add(Duration::from_millis(ms))
                .and_then(|t| t.checked_add(timeout))
                .unwrap_or(check_again)
        };
        match self.head_started_ms.load(Ordering::Acquire) {
            NONE => at(
                self.idle_since_ms.load(Ordering::Acquire),
                limits.idle_timeout(),
            ),
            started => at(started, limits.header_read_timeout()),
        }
    }

    /// Whether the connection has outlived a timeout in its current state.
    pub fn expired(&self, limits: &ConnectionLimits, now: Instant) -> Option<Expiry> {
        if self.in_flight() > 0 || now < self.next_deadline(limits, now) {
            return None;
        }
        Some(match self.head_started_ms.load(Ordering::Acquire) {
            NONE => Expiry::Idle,
            _ => Expiry::HeaderRead,
        })
    }
}

/// Ends a request's in-flight state when dropped (response produced, or the request future dropped).
#[derive(Debug)]
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.millis_since_accept(Instant::now());
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The open connections of one listener, by source.
#[derive(Debug)]
pub struct ConnTable {
    limits: ConnectionLimits,
    inner: Mutex<TableInner>,
}

#[derive(Debug, Default)]
struct TableInner {
    next_id: u64,
    total: usize,
    /// Connections of each source, oldest first.
    sources: HashMap<IpAddr, Vec<Arc<Conn>>>,
    counters: ConnCounters,
}

/// A connection's place in the table; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted {
    table: Arc<ConnTable>,
    pub conn: Arc<Conn>,
}

impl Admitted {
    /// The table the connection belongs to.
    pub fn table(&self) -> &Arc<ConnTable> {
        &self.table
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table.remove(&self.conn);
    }
}

impl ConnTable {
    pub fn new(limits: ConnectionLimits) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            limits,
            inner: Mutex::new(TableInner::default()),
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Admits a connection from `peer`, evicting an idle connection when a limit is reached (module docs).
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Admitted, Refused> {
        let source = peer.ip().to_canonical();
        let mut inner = lock(&self.inner);
        let own = inner.sources.get(&source).map_or(0, Vec::len);
        if own >= self.limits.max_per_source() {
            if !inner.evict_idle_of(source) {
                inner.counters.refused += 1;
                return Err(Refused::SourceFull);
            }
        } else if inner.total >= self.limits.max_total() {
            let heavier = inner
                .sources
                .iter()
                .filter(|(ip, conns)| {
                    **ip != source && conns.len() > own && conns.iter().any(|c| c.in_flight() == 0)
                })
                .max_by_key(|(_, conns)| conns.len())
                .map(|(ip, _)| *ip);
            let evicted = match heavier {
                Some(ip) => inner.evict_idle_of(ip),
                None => inner.evict_idle_of(source),
            };
            if !evicted {
                inner.counters.refused += 1;
                return Err(Refused::Full);
            }
        }
        let now = Instant::now();
        let conn = Arc::new(Conn {
            id: inner.next_id,
            source,
            peer,
            accepted: now,
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NONE),
            close: Notify::new(),
            head_started: Notify::new(),
            armed_ms: AtomicU64::new(NONE),
            header_read_ms: u64::try_from(self.limits.header_read_timeout().as_millis())
                .unwrap_or(NONE - 1),
            current: Mutex::new(None),
        });
        inner.next_id += 1;
        inner.total += 1;
        inner.counters.accepted += 1;
        inner.sources.entry(source).or_default().push(conn.clone());
        Ok(Admitted {
            table: self.clone(),
            conn,
        })
    }

    fn remove(&self, conn: &Conn) {
        let mut inner = lock(&self.inner);
        inner.take(conn.source, conn.id);
    }

    /// Counts a connection closed by the watchdog.
    pub fn count_expiry(&self, expiry: Expiry) {
        let mut inner = lock(&self.inner);
        match expiry {
            Expiry::Idle => inner.counters.idle_timeouts += 1,
            Expiry::HeaderRead => inner.counters.header_timeouts += 1,
        }
    }

    pub fn counters(&self) -> ConnCounters {
        lock(&self.inner).counters
    }

    /// Open connections (admitted and not yet closed or evicted).
    pub fn open(&self) -> usize {
        lock(&self.inner).total
    }

    /// Every connection with a request in flight.
    pub fn busy(&self) -> Vec<Arc<Conn>> {
        lock(&self.inner)
            .sources
            .values()
            .flatten()
            .filter(|c| c.in_flight() > 0)
            .cloned()
            .collect()
    }
}

impl TableInner {
    /// Removes a connection from the table (no-op when it is gone already); returns it.
    fn take(&mut self, source: IpAddr, id: u64) -> Option<Arc<Conn>> {
        let conns = self.sources.get_mut(&source)?;
        let i = conns.iter().position(|c| c.id == id)?;
        let conn = conns.remove(i);
        if conns.is_empty() {
            self.sources.remove(&source);
        }
        self.total = self.total.saturating_sub(1);
        Some(conn)
    }

    /// Evicts the oldest idle connection of `source`; `false` when it has none.
    fn evict_idle_of(&mut self, source: IpAddr) -> bool {
        let Some(id) = self
            .sources
            .get(&source)
            .and_then(|conns| conns.iter().find(|c| c.in_flight() == 0))
            .map(|c| c.id)
        else {
            return false;
        };
        if let Some(conn) = self.take(source, id) {
            conn.close.notify_one();
            self.counters.evicted += 1;
        }
        true
    }
}

/// A request body that fails when it is not complete within its deadline (the header read timeout, counted
/// from the end of the head): a client trickling a body cannot hold a request open forever.
#[derive(Debug)]
pub struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// The error a [`TimedBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?}")]
pub struct BodyTimeout(Duration);

impl TimedBody {
    pub fn new(inner: Incoming, timeout: Duration) -> TimedBody {
        let now = Instant::now();
        TimedBody {
            inner,
            deadline: now.checked_add(timeout).unwrap_or(now),
            timeout,
            sleep: None,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => return Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {}
        }
        // Created only when the body is actually waited for (most requests have none).
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: total,
            max_connections_per_source: per_source,
            ..ConnectionLimits::default()
        }
    }

    fn peer(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], port))
    }

    #[tokio::test]
    async fn a_source_at_its_limit_recycles_its_own_idle_connections() {
        let table = ConnTable::new(limits(100, 2));
        let a = table.admit(peer(2, 1)).expect("first");
        let b = table.admit(peer(2, 2)).expect("second");
        let c = table
            .admit(peer(2, 3))
            .expect("third replaces the oldest idle");
        assert_eq!(table.open(), 2);
        assert_eq!(table.counters().evicted, 1);
        // All busy: the next one is refused.
        let _ga = b
            .conn
            .request_started(&Method::GET, &Uri::from_static("/x"));
        let _gc = c
            .conn
            .request_started(&Method::GET, &Uri::from_static("/y"));
        assert_eq!(
            table.admit(peer(2, 4)).map(|_| ()),
            Err(Refused::SourceFull)
        );
        // Another source is not affected.
        assert!(table.admit(peer(3, 1)).is_ok());
        drop(a);
        assert_eq!(table.counters().refused, 1);
    }

    #[tokio::test]
    async fn at_the_total_limit_the_heaviest_source_yields() {
        let table = ConnTable::new(limits(4, 4));
        let heavy: Vec<_> = (0..3)
            .map(|p| table.admit(peer(2, p)).expect("heavy"))
            .collect();
        let light = table.admit(peer(3, 1)).expect("light");
        assert_eq!(table.open(), 4);
        // A newcomer from a third source takes the heavy source's oldest idle connection.
        let newcomer = table.admit(peer(4, 1)).expect("newcomer");
        assert_eq!(table.open(), 4);
        let count = |ip: u8| {
            lock(&table.inner)
                .sources
                .get(&IpAddr::from([127, 0, 0, ip]))
                .map_or(0, Vec::len)
        };
        assert_eq!(count(2), 2, "the heavy source went from 3 to 2");
        // The heavy source asking for more only recycles its own.
        let again = table.admit(peer(2, 9)).expect("own idle recycled");
        assert_eq!((count(2), count(3), count(4)), (2, 1, 1));
        drop((heavy, light, newcomer, again));
        assert_eq!(table.open(), 0);
    }

    #[test]
    fn watchdog_deadlines_follow_the_state() {
        let l = ConnectionLimits {
            idle_timeout_secs: 5,
            header_read_timeout_secs: 2,
            ..ConnectionLimits::default()
        };
        let table = ConnTable::new(l.clone());
        let c = table.admit(peer(2, 1)).expect("admit");
        let start = c.conn.accepted;
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(c.conn.next_deadline(&l, start), at(5));
        assert_eq!(c.conn.expired(&l, at(4)), None);
        c.conn.on_read_at(at(1));
        assert_eq!(c.conn.next_deadline(&l, at(1)), at(3));
        assert_eq!(c.conn.expired(&l, at(2)), None);
        assert_eq!(c.conn.expired(&l, at(3)), Some(Expiry::HeaderRead));
        let guard = c.conn.request_started(&Method::GET, &Uri::from_static("/"));
        assert_eq!(
            c.conn.expired(&l, at(100)),
            None,
            "busy connections never expire"
        );
        assert!(c.conn.describe_request(at(100)).is_some());
        drop(guard);
        assert!(c.conn.describe_request(at(100)).is_none());
        let now = Instant::now();
        assert_eq!(c.conn.expired(&l, now), None);
        assert_eq!(
            c.conn.expired(&l, now + Duration::from_secs(5)),
            Some(Expiry::Idle)
        );
    }

    #[test]
    fn limits_are_validated() {
        assert!(ConnectionLimits::default().validate().is_ok());
        let bad = ConnectionLimits {
            idle_timeout_secs: 0,
            ..ConnectionLimits::default()
        };
        assert_eq!(
            bad.validate().map_err(|e| e.field),
            Err("idle_timeout_secs")
        );
        let bad = ConnectionLimits {
            max_connections_per_source: 0,
            ..ConnectionLimits::default()
        };
        assert!(bad.validate().is_err());
        let wide = ConnectionLimits {
            max_connections: 10,
            max_connections_per_source: 600,
            ..ConnectionLimits::default()
        };
        assert!(wide.validate().is_ok());
        assert_eq!(wide.max_per_source(), 10);
        let huge = ConnectionLimits {
            header_read_timeout_secs: u64::MAX,
            ..ConnectionLimits::default()
        };
        assert!(huge.validate().is_err());
        assert_eq!(
            huge.header_read_timeout(),
            Duration::from_secs(MAX_TIMEOUT_SECS)
        );
    }
}
