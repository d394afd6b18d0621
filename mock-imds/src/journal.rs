//! The request journal: a bounded ring of every IMDS request the mock answered (or dropped), with source
//! address and final status, so tests and the conformance harness can see exactly what reached "IMDS".
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

/// Bounded, thread-safe journal.
#[derive(Debug)]
pub struct Journal {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    entries: VecDeque<JournalEntry>,
}

impl Journal {
    pub fn new(capacity: usize) -> Self {
        Journal {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the ring inconsistent (push/pop are atomic w.r.t. panics).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an entry, assigning its sequence number; drops the oldest entry when full.
    pub fn record(&self, mut entry: JournalEntry) {
        let mut inner = self.lock();
        entry.seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.entries.len() >= self.capacity {
            inner.entries.pop_front();
        }
        inner.entries.push_back(entry);
    }

    pub fn entries(&self) -> Vec<JournalEntry> {
        self.lock().entries.iter().cloned().collect()
    }

    pub fn clear(&self) {
        self.lock().entries.clear();
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
}
