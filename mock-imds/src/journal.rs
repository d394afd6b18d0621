//! The request journal: a bounded ring of every IMDS request the mock answered (or dropped), with source
//! address and final status — bounded in entries (`journal_capacity`) and in bytes ([`MAX_JOURNAL_BYTES`]),
//! as a request may carry up to 128 KiB of head that the journal keeps verbatim — so tests and the
//! conformance harness can see exactly what reached "IMDS". Control-API requests are never recorded. This
//! module only stores entries (the rules layer fills them in) and writes them out as JSON in chunks
//! ([`Journal::write_json_chunk`], for the streamed `GET /_mock/journal`).
//!
//! The byte bound counts the memory the journal really holds, not an estimate of the request's text: for
//! each entry its boxed record, every heap buffer it owns (at its capacity, rounded up to the allocator's
//! chunk size, see [`alloc_size`]) and its slot in the ring, plus the ring's unused slots. An ordinary
//! request costs ~400 bytes, so the default 64 MiB hold ~160,000 of them.
//!
//! The request path records a compact [`RequestRecord`] (one byte buffer for path, query and headers, the
//! arrival time and peer address unformatted) and the journal turns it into a [`JournalEntry`] only when it
//! is read: building the entry's dozen strings and formatting the time per request cost ~10% of a request's
//! CPU (measured by `just bench`), while journals are read rarely.

use std::collections::VecDeque;
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

/// Most bytes of memory the journal holds (entries, their buffers, the ring; module docs); the oldest entries
/// are dropped beyond it, as beyond the entry capacity. 10,000 ordinary requests take ~4 MiB.
pub const MAX_JOURNAL_BYTES: usize = 64 * 1024 * 1024;

/// Bytes the allocator really uses for a request of `n` bytes: glibc malloc's chunks (8 bytes of header,
/// 16-byte granules, 32 bytes at least); nothing for `n == 0` (no allocation). Other allocators differ by a
/// few bytes per allocation.
pub fn alloc_size(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        n.saturating_add(8 + 15).max(32) & !15
    }
}

/// Memory of a `String` or `Vec` buffer of `capacity` elements of `elem` bytes.
fn buffer(capacity: usize, elem: usize) -> usize {
    alloc_size(capacity.saturating_mul(elem))
}

/// Heap bytes of a method: the standard ones are constants; an extension longer than 15 bytes is boxed (a
/// shorter one is inline, counted as if boxed: an upper bound).
fn method_bytes(m: &Method) -> usize {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::PATCH,
        Method::TRACE,
    ];
    if STANDARD.contains(m) {
        0
    } else {
        alloc_size(m.as_str().len())
    }
}

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
    /// Memory of the entries (each: box, buffers, ring slot); the ring's unused slots are added on top.
    bytes: usize,
    /// Boxed: a ring slot is then 8 bytes, so the ring's spare capacity costs little.
    entries: VecDeque<Box<Stored>>,
}

impl Inner {
    fn total_bytes(&self) -> usize {
        let spare = self.entries.capacity().saturating_sub(self.entries.len());
        self.bytes
            .saturating_add(spare.saturating_mul(std::mem::size_of::<Box<Stored>>()))
    }
}

/// An entry as the journal holds it.
#[derive(Debug)]
enum Stored {
    Entry(JournalEntry),
    Request(RequestRecord),
}

impl Stored {
    /// Memory this entry holds in the journal: its box, its buffers and its ring slot.
    fn size(&self) -> usize {
        let own = match self {
            Stored::Entry(e) => e.heap_bytes(),
            Stored::Request(r) => r.heap_bytes,
        };
        alloc_size(std::mem::size_of::<Stored>())
            .saturating_add(own)
            .saturating_add(std::mem::size_of::<Box<Stored>>())
    }

    fn seq(&self) -> u64 {
        match self {
            Stored::Entry(e) => e.seq,
            Stored::Request(r) => r.seq,
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
    /// Heap memory of `method`, `data` and `header_lens`.
    heap_bytes: usize,
    pub status: u16,
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
        for (n, v) in headers {
            data.extend_from_slice(n.as_str().as_bytes());
            data.extend_from_slice(v.as_bytes());
            // u32: a header block is bounded by the server's 128 KiB head limit.
            header_lens.push((
                u32::try_from(n.as_str().len()).unwrap_or(u32::MAX),
                u32::try_from(v.len()).unwrap_or(u32::MAX),
            ));
        }
        let heap_bytes = method_bytes(method)
            + buffer(data.capacity(), 1)
            + buffer(header_lens.capacity(), std::mem::size_of::<(u32, u32)>());
        RequestRecord {
            seq: 0,
            arrival,
            method: method.clone(),
            data,
            path_len: path.len(),
            query_len: query.len(),
            header_lens,
            source,
            heap_bytes,
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
    /// Heap memory of this entry: every string and the header list at their capacities, as allocated.
    pub fn heap_bytes(&self) -> usize {
        let s = |t: &String| buffer(t.capacity(), 1);
        s(&self.time)
            + s(&self.method)
            + s(&self.path)
            + s(&self.query)
            + s(&self.source)
            + buffer(
                self.headers.capacity(),
                std::mem::size_of::<(String, String)>(),
            )
            + self.headers.iter().map(|(n, v)| s(n) + s(v)).sum::<usize>()
    }

    /// Bytes of request text this entry holds (strings only).
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
        // Boxed before taking the lock.
        let size = entry.size();
        let mut inner = self.lock();
        entry.set_seq(inner.next_seq);
        inner.next_seq += 1;
        inner.bytes += size;
        inner.entries.push_back(Box::new(entry));
        while inner.entries.len() > 1
            && (inner.entries.len() > self.capacity || inner.total_bytes() > self.max_bytes)
        {
            if let Some(old) = inner.entries.pop_front() {
                inner.bytes -= old.size();
            }
        }
    }

    pub fn entries(&self) -> Vec<JournalEntry> {
        self.lock().entries.iter().map(|s| s.to_entry()).collect()
    }

    /// Memory the journal holds now (what [`MAX_JOURNAL_BYTES`] bounds; module docs).
    pub fn bytes(&self) -> usize {
        self.lock().total_bytes()
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Appends to `out` the JSON of the entries with sequence numbers from `from` (or the oldest kept, if
    /// later) up to `until` (exclusive), each preceded by a comma unless `*first`, stopping once `out` holds
    /// `chunk_bytes`. Returns where to continue (`>= until`: done). The entries are written exactly as
    /// `serde_json` writes a `Vec<JournalEntry>`, so "[" + chunks + "]" is byte for byte that document,
    /// built a chunk at a time instead of all at once.
    pub fn write_json_chunk(
        &self,
        from: u64,
        until: u64,
        first: &mut bool,
        out: &mut Vec<u8>,
        chunk_bytes: usize,
    ) -> u64 {
        let inner = self.lock();
        let Some(oldest) = inner.entries.front().map(|e| e.seq()) else {
            return until;
        };
        let start = from.max(oldest);
        let skip = usize::try_from(start - oldest).unwrap_or(usize::MAX);
        let mut next = start;
        for stored in inner.entries.iter().skip(skip) {
            if next >= until || out.len() >= chunk_bytes {
                return next;
            }
            if !std::mem::take(first) {
                out.push(b',');
            }
            // Serialising plain strings and numbers into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &stored.to_entry());
            next = stored.seq() + 1;
        }
        // Everything kept is written; entries recorded meanwhile are beyond `until` or come later.
        until.max(next)
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
        // The compact record holds the request's bytes once, plus its box and ring slot.
        let inner = j.lock();
        let text: usize = e[0].path.len() + e[0].query.len() + 8 + 4 + 14 + 14 + 10 + 5;
        assert!(inner.entries[0].size() >= text + std::mem::size_of::<Stored>());
        assert_eq!(
            inner.bytes,
            inner.entries.iter().map(|s| s.size()).sum::<usize>()
        );
    }

    #[test]
    fn alloc_size_follows_malloc_chunks() {
        assert_eq!(alloc_size(0), 0);
        assert_eq!(alloc_size(1), 32);
        assert_eq!(alloc_size(24), 32);
        assert_eq!(alloc_size(25), 48);
        assert_eq!(alloc_size(3000), 3008);
        assert_eq!(alloc_size(usize::MAX), usize::MAX & !15);
    }

    #[test]
    fn json_chunks_concatenate_to_the_whole_document() {
        let j = Journal::new(100);
        for i in 0..40 {
            let mut e = entry(&format!("/p{i}"));
            e.headers = vec![("h".into(), "\"quoted\" \u{e9}".repeat(i))];
            j.record(e);
        }
        let whole = serde_json::to_vec(&j.entries()).expect("json");
        for chunk_bytes in [1, 100, 1000, usize::MAX] {
            let (mut out, mut first, mut at) = (vec![b'['], true, 0);
            let until = j.next_seq();
            while at < until {
                let limit = out.len().saturating_add(chunk_bytes);
                at = j.write_json_chunk(at, until, &mut first, &mut out, limit);
            }
            out.push(b']');
            assert_eq!(out, whole, "chunks of {chunk_bytes} bytes");
        }
        // Entries recorded after `until` are not written; dropped ones are skipped.
        let (mut out, mut first) = (Vec::new(), true);
        let until = j.next_seq();
        j.record(entry("/later"));
        assert_eq!(
            j.write_json_chunk(0, until, &mut first, &mut out, usize::MAX),
            until
        );
        assert!(!String::from_utf8_lossy(&out).contains("/later"));
        j.clear();
        let (mut out, mut first) = (Vec::new(), true);
        assert_eq!(
            j.write_json_chunk(0, until, &mut first, &mut out, usize::MAX),
            until
        );
        assert!(out.is_empty());
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
        assert!(j.bytes() <= 10 * 1024, "{}", j.bytes());
        // Each entry holds 3,000 bytes of header value and some 300 of strings, box and slot.
        assert_eq!(e.len(), 3, "three such entries fit in 10 KiB, four do not");
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
