//! The request journal: a bounded ring of every IMDS request the mock answered (or dropped), with source
//! address and final status — bounded in entries (`journal_capacity`) and in bytes ([`MAX_JOURNAL_BYTES`]),
//! as a request may carry up to 128 KiB of head that the journal keeps verbatim — so tests and the conformance harness can see exactly what reached "IMDS".
//! Control-API requests are never recorded. This module only stores entries; the rules layer fills them in.

use std::collections::VecDeque;
use std::sync::Mutex;

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
    entries: VecDeque<JournalEntry>,
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
    pub fn record(&self, mut entry: JournalEntry) {
        let mut inner = self.lock();
        entry.seq = inner.next_seq;
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
        self.lock().entries.iter().cloned().collect()
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
