//! The request journal: a bounded ring of every IMDS request the mock answered (or dropped), with source
//! address and final status — bounded in entries (`journal_capacity`) and in bytes ([`MAX_JOURNAL_BYTES`]),
//! as a request may carry up to 128 KiB of head that the journal keeps verbatim — so tests and the conformance harness can see exactly what reached "IMDS".
//! Control-API requests are never recorded. This module only stores entries; the rules layer fills them in.
//!
//! The request path records a compact [`RequestRecord`] (one byte buffer for path, query and headers, the
//! arrival time and peer address unformatted) and the journal turns it into a [`JournalEntry`] only when it
//! is read: building the entry's dozen strings and formatting the time per request cost ~10% of a request's
//! CPU (measured by `just bench`), while journals are read rarely.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::http::{HeaderMap, Method};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One request as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Monotonic sequence number (never reused, also across `clear`).
    pub seq: u64,
    /// Arrival time, RFC 3339 (from the mock's clock).
    pub time: String,
    pub method: String,
    /// Path as received (before trailing-slash normalisation), without the query.
    pub path: String,
    /// Raw query string, empty when absent.
    pub query: String,
    /// Request headers in arrival order (names lower-case; repeated names grouped); non-UTF-8 bytes replaced.
    pub headers: Vec<(String, String)>,
    /// Peer address "ip:port" ("unknown" when driven in-process without a socket).
    pub source: String,
    /// Final status; 0 when the connection was reset instead of answered.
    pub status: u16,
}

/// Most bytes of request data (path, query, header names and values, ...) the journal holds; the oldest
/// entries are dropped beyond it, as beyond the entry capacity. 10 000 ordinary requests take ~5 MiB; the
/// bound matters only for requests with very large heads.
pub const MAX_JOURNAL_BYTES: usize = 64 * 1024 * 1024;

/// Bounded, thread-safe journal.
#[derive(Debug)]
pub struct Journal {
    capacity: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    bytes: usize,
    entries: VecDeque<Stored>,
}

/// An entry as the journal holds it.
#[derive(Debug)]
enum Stored {
    Entry(JournalEntry),
    Request(RequestRecord),
}

impl Stored {
    fn size(&self) -> usize {
        match self {
            Stored::Entry(e) => e.size(),
            Stored::Request(r) => r.size,
        }
    }

    fn set_seq(&mut self, seq: u64) {
        match self {
            Stored::Entry(e) => e.seq = seq,
            Stored::Request(r) => r.seq = seq,
        }
    }

    fn to_entry(&self) -> JournalEntry {
        match self {
            Stored::Entry(e) => e.clone(),
            Stored::Request(r) => r.to_entry(),
        }
    }
}

/// Length of the journal's time format (`2026-01-02T03:04:05.250Z`) for years 0–9999.
const TIME_LEN: usize = 24;

/// One request in compact form, built on the request path; becomes a [`JournalEntry`] when read.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    seq: u64,
    arrival: DateTime<Utc>,
    method: Method,
    /// Path, query, then each header's name and value, back to back (raw bytes: values need not be UTF-8).
    data: Vec<u8>,
    path_len: usize,
    query_len: usize,
    /// (name length, value length) of each header, in `HeaderMap` iteration order.
    header_lens: Vec<(u32, u32)>,
    source: Option<SocketAddr>,
    /// What [`JournalEntry::size`] of the converted entry will be (the journal's byte bound counts this).
    size: usize,
    pub status: u16,
}

/// Counts the bytes a `Display` value formats to, without allocating.
struct Counter(usize);

impl std::fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Decimal digits of `n`.
fn digits(n: u32) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Length of `addr.to_string()`, computed without formatting for IPv4 (the common case; formatting it
/// showed in the request path's profile) and by counting the formatted bytes for IPv6.
fn display_len(addr: SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(a) => {
            let octets: usize = a.ip().octets().iter().map(|o| digits(u32::from(*o))).sum();
            octets + 3 + 1 + digits(u32::from(a.port()))
        }
        SocketAddr::V6(a) => {
            let mut c = Counter(0);
            let _ = write!(c, "{a}");
            c.0
        }
    }
}

impl RequestRecord {
    /// Records the request as it arrived: `path` and `query` raw (before normalisation, query without `?`),
    /// `source` the peer (`None` when driven in-process without a socket). Status starts at 0.
    pub fn new(
        arrival: DateTime<Utc>,
        method: &Method,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        source: Option<SocketAddr>,
    ) -> RequestRecord {
        let header_bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        let mut data = Vec::with_capacity(path.len() + query.len() + header_bytes);
        data.extend_from_slice(path.as_bytes());
        data.extend_from_slice(query.as_bytes());
        let mut header_lens = Vec::with_capacity(headers.len());
        let mut size = TIME_LEN + method.as_str().len() + path.len() + query.len();
        for (n, v) in headers {
            data.extend_from_slice(n.as_str().as_bytes());
            data.extend_from_slice(v.as_bytes());
            // u32: a header block is bounded by the server's 128 KiB head limit.
            header_lens.push((
                u32::try_from(n.as_str().len()).unwrap_or(u32::MAX),
                u32::try_from(v.len()).unwrap_or(u32::MAX),
            ));
            size += n.as_str().len()
                + match std::str::from_utf8(v.as_bytes()) {
                    Ok(_) => v.len(),
                    // The entry will hold the lossy conversion, which can be longer.
                    Err(_) => String::from_utf8_lossy(v.as_bytes()).len(),
                };
        }
        size += source.map_or("unknown".len(), display_len);
        RequestRecord {
            seq: 0,
            arrival,
            method: method.clone(),
            data,
            path_len: path.len(),
            query_len: query.len(),
            header_lens,
            source,
            size,
            status: 0,
        }
    }

    /// The peer address, "unknown" without one (as [`JournalEntry::source`] holds it).
    pub fn source(&self) -> String {
        self.source
            .map_or_else(|| "unknown".to_string(), |a| a.to_string())
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The raw path (lossy if the bytes were not UTF-8, which the URI parser does not allow anyway).
    pub fn path(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.data[..self.path_len])
    }

    fn to_entry(&self) -> JournalEntry {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let query_end = self.path_len + self.query_len;
        let mut at = query_end;
        let headers = self
            .header_lens
            .iter()
            .map(|&(n, v)| {
                let (n, v) = (n as usize, v as usize);
                let name = text(self.data.get(at..at + n).unwrap_or_default());
                let value = text(self.data.get(at + n..at + n + v).unwrap_or_default());
                at += n + v;
                (name, value)
            })
            .collect();
        JournalEntry {
            seq: self.seq,
            time: self
                .arrival
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            method: self.method.to_string(),
            path: text(&self.data[..self.path_len]),
            query: text(&self.data[self.path_len..query_end]),
            headers,
            source: self.source(),
            status: self.status,
        }
    }
}

impl JournalEntry {
    /// Bytes of request data this entry holds (what the journal's byte bound counts).
    pub fn size(&self) -> usize {
        self.time.len()
            + self.method.len()
            + self.path.len()
            + self.query.len()
            + self.source.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }
}

impl Journal {
    /// A journal of at most `capacity` entries and [`MAX_JOURNAL_BYTES`].
    pub fn new(capacity: usize) -> Self {
        Self::with_max_bytes(capacity, MAX_JOURNAL_BYTES)
    }

    /// A journal of at most `capacity` entries and `max_bytes` of request data (the newest entry is always
    /// kept).
    pub fn with_max_bytes(capacity: usize, max_bytes: usize) -> Self {
        Journal {
            capacity: capacity.max(1),
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the ring inconsistent (push/pop are atomic w.r.t. panics).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an entry, assigning its sequence number; drops the oldest entries while the journal holds
    /// more than its capacity of entries or of bytes.
    pub fn record(&self, entry: JournalEntry) {
        self.push(Stored::Entry(entry));
    }

    /// Records a request captured on the request path (the cheap form of [`Journal::record`]).
    pub fn record_request(&self, request: RequestRecord) {
        self.push(Stored::Request(request));
    }

    fn push(&self, mut entry: Stored) {
        let mut inner = self.lock();
        entry.set_seq(inner.next_seq);
        inner.next_seq += 1;
        inner.bytes += entry.size();
        inner.entries.push_back(entry);
        while inner.entries.len() > 1
            && (inner.entries.len() > self.capacity || inner.bytes > self.max_bytes)
        {
            if let Some(old) = inner.entries.pop_front() {
                inner.bytes -= old.size();
            }
        }
    }

    pub fn entries(&self) -> Vec<JournalEntry> {
        self.lock().entries.iter().map(Stored::to_entry).collect()
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.bytes = 0;
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> JournalEntry {
        JournalEntry {
            seq: 0,
            time: String::new(),
            method: "GET".into(),
            path: path.into(),
            query: String::new(),
            headers: vec![],
            source: "unknown".into(),
            status: 200,
        }
    }

    #[test]
    fn ring_drops_oldest_and_keeps_sequence() {
        let j = Journal::new(2);
        for p in ["/a", "/b", "/c"] {
            j.record(entry(p));
        }
        let e = j.entries();
        assert_eq!(
            e.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["/b", "/c"]
        );
        assert_eq!(e.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        j.clear();
        j.record(entry("/d"));
        assert_eq!(j.entries()[0].seq, 3);
    }

    /// A compact record reads back exactly as the entry built from the same request, size included.
    #[test]
    fn request_record_reads_back_as_an_entry() {
        let mut headers = HeaderMap::new();
        headers.insert("metadata", "true".parse().expect("value"));
        headers.append("x-multi", "a".parse().expect("value"));
        headers.append("x-multi", "b".parse().expect("value"));
        headers.insert(
            "x-bin",
            axum::http::HeaderValue::from_bytes(b"caf\xe9").expect("value"),
        );
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.250Z")
            .expect("time")
            .with_timezone(&Utc);
        let peer: SocketAddr = "[::1]:54321".parse().expect("addr");
        let j = Journal::new(10);
        for source in [Some(peer), None] {
            let mut r = RequestRecord::new(
                at,
                &Method::GET,
                "/metadata/instance/",
                "api-version=2021-02-01&format=json",
                &headers,
                source,
            );
            r.status = 404;
            j.record_request(r);
        }
        let e = j.entries();
        assert_eq!(
            e[0],
            JournalEntry {
                seq: 0,
                time: "2026-01-02T03:04:05.250Z".into(),
                method: "GET".into(),
                path: "/metadata/instance/".into(),
                query: "api-version=2021-02-01&format=json".into(),
                headers: vec![
                    ("metadata".into(), "true".into()),
                    ("x-multi".into(), "a".into()),
                    ("x-multi".into(), "b".into()),
                    ("x-bin".into(), "caf\u{fffd}".into()),
                ],
                source: "[::1]:54321".into(),
                status: 404,
            }
        );
        assert_eq!(e[1].source, "unknown");
        assert_eq!(e[1].seq, 1);
        let inner = j.lock();
        for (stored, entry) in inner.entries.iter().zip(&e) {
            assert_eq!(stored.size(), entry.size());
        }
    }

    #[test]
    fn display_len_matches_formatting() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:54321",
            "10.20.255.9:80",
            "255.255.255.255:65535",
            "[::1]:8080",
            "[fe80::1%3]:9",
        ] {
            let addr: SocketAddr = a.parse().expect("addr");
            assert_eq!(display_len(addr), addr.to_string().len(), "{a}");
        }
    }

    #[test]
    fn byte_bound_drops_oldest_but_keeps_newest() {
        let j = Journal::with_max_bytes(1000, 10 * 1024);
        let big = |i: usize| {
            let mut e = entry(&format!("/{i}"));
            e.headers = vec![("x-big".into(), "b".repeat(3000))];
            e
        };
        for i in 0..10 {
            j.record(big(i));
        }
        let e = j.entries();
        assert!(e.iter().map(JournalEntry::size).sum::<usize>() <= 10 * 1024);
        assert_eq!(e.len(), 3, "three 3 KB entries fit in 10 KiB");
        assert_eq!(e.last().map(|e| e.path.as_str()), Some("/9"));
        // An entry larger than the whole bound is still kept (alone).
        let mut huge = entry("/huge");
        huge.query = "q".repeat(20 * 1024);
        j.record(huge);
        assert_eq!(j.entries().len(), 1);
        // Default bound for a real journal.
        assert_eq!(Journal::new(5).max_bytes, MAX_JOURNAL_BYTES);
    }
}
