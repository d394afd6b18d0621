//! The request journal: a bounded ring of every ARM request mock-arm answered — method, path, query, body,
//! the caller's `appid`/`oid` from its token, final status — so tests and the conformance harness can see
//! what a controller sent. Bounded in entries (`journal_capacity`) and in bytes ([`MAX_JOURNAL_BYTES`]);
//! bodies are kept up to [`MAX_BODY_KEPT`] bytes. Control-API requests are never recorded. Storage only.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Most bytes of request data the journal holds (oldest entries dropped beyond it).
pub const MAX_JOURNAL_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes of one request body kept (the rest replaced by `…`).
pub const MAX_BODY_KEPT: usize = 64 * 1024;

/// One request as mock-arm saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Monotonic sequence number (never reused, also across `clear`).
    pub seq: u64,
    /// Arrival time, RFC 3339 (from the mock's clock).
    pub time: String,
    pub method: String,
    pub path: String,
    /// Raw query string, empty when absent.
    pub query: String,
    /// Request body as text (lossy UTF-8, truncated at [`MAX_BODY_KEPT`]); empty for GET.
    pub body: String,
    /// The caller token's `appid` and `oid` (also when authentication is off and the token unverified).
    pub caller_appid: Option<String>,
    pub caller_oid: Option<String>,
    /// Peer address "ip:port" ("unknown" in-process).
    pub source: String,
    pub status: u16,
}

impl JournalEntry {
    fn size(&self) -> usize {
        self.time.len()
            + self.method.len()
            + self.path.len()
            + self.query.len()
            + self.body.len()
            + self.source.len()
            + self.caller_appid.as_ref().map_or(0, String::len)
            + self.caller_oid.as_ref().map_or(0, String::len)
    }
}

/// Turns a request body into the journal's text form.
pub fn body_text(body: &[u8]) -> String {
    if body.len() <= MAX_BODY_KEPT {
        return String::from_utf8_lossy(body).into_owned();
    }
    let mut s = String::from_utf8_lossy(&body[..MAX_BODY_KEPT]).into_owned();
    s.push('…');
    s
}

#[derive(Debug, Default)]
struct Inner {
    next_seq: u64,
    bytes: usize,
    entries: VecDeque<JournalEntry>,
}

/// Bounded, thread-safe journal.
#[derive(Debug)]
pub struct Journal {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Journal {
    pub fn new(capacity: usize) -> Self {
        Journal {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Appends `entry` (its `seq` is assigned here).
    pub fn record(&self, mut entry: JournalEntry) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = mock_support::sync::lock(&self.inner);
        entry.seq = inner.next_seq;
        inner.next_seq += 1;
        inner.bytes += entry.size();
        inner.entries.push_back(entry);
        while inner.entries.len() > self.capacity || inner.bytes > MAX_JOURNAL_BYTES {
            match inner.entries.pop_front() {
                Some(old) => inner.bytes -= old.size(),
                None => break,
            }
        }
    }

    pub fn entries(&self) -> Vec<JournalEntry> {
        mock_support::sync::lock(&self.inner)
            .entries
            .iter()
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        let mut inner = mock_support::sync::lock(&self.inner);
        inner.entries.clear();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &str) -> JournalEntry {
        JournalEntry {
            seq: 0,
            time: String::new(),
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            body: body.into(),
            caller_appid: None,
            caller_oid: None,
            source: "unknown".into(),
            status: 200,
        }
    }

    #[test]
    fn bounded_by_capacity_with_monotonic_seq() {
        let j = Journal::new(2);
        for b in ["a", "b", "c"] {
            j.record(entry(b));
        }
        let e = j.entries();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].seq, e[1].seq), (1, 2));
        j.clear();
        j.record(entry("d"));
        assert_eq!(j.entries()[0].seq, 3);
        assert!(body_text(&vec![b'x'; MAX_BODY_KEPT + 1]).ends_with('…'));
    }
}
