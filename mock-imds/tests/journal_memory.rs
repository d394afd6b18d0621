//! The journal's byte bound is true: a counting allocator (this test binary only, counting this thread's
//! allocations) measures the memory the journal really holds, which must never exceed what the journal
//! counts (`Journal::bytes`), which never exceeds its bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use axum::http::{HeaderMap, HeaderValue, Method};
use mock_imds::journal::{Journal, RequestRecord};

struct Counting;

thread_local! {
    /// Bytes requested and not yet freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: no counting while the thread-local is being torn down.
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

fn size(layout: Layout) -> isize {
    isize::try_from(layout.size()).unwrap_or(isize::MAX)
}

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(size(layout));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-size(layout));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(isize::try_from(new_size).unwrap_or(isize::MAX) - size(layout));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// A request as clients send them, sized by `i` (a few with very large heads).
fn record(i: usize) -> RequestRecord {
    let mut headers = HeaderMap::new();
    headers.insert("metadata", HeaderValue::from_static("true"));
    headers.insert("host", HeaderValue::from_static("169.254.169.254"));
    headers.insert(
        "user-agent",
        HeaderValue::from_static(
            "azsdk-python-identity/1.17.1 Python/3.12.3 (Linux-6.8.0-x86_64-with-glibc2.39)",
        ),
    );
    if i.is_multiple_of(1000) {
        let big = "x".repeat(30_000);
        headers.insert(
            "x-big",
            HeaderValue::from_str(&big).unwrap_or(HeaderValue::from_static("x")),
        );
    }
    let query = format!(
        "api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id={i:08}"
    );
    let peer = std::net::SocketAddr::from(([10, 244, 1, 7], 40_000 + (i % 20_000) as u16));
    let method = if i.is_multiple_of(500) {
        Method::from_bytes(b"SOMEVERYLONGEXTENSIONMETHOD").unwrap_or(Method::GET)
    } else {
        Method::GET
    };
    RequestRecord::new(
        chrono::Utc::now(),
        &method,
        "/metadata/identity/oauth2/token",
        &query,
        &headers,
        Some(peer),
    )
}

#[test]
fn the_byte_bound_counts_real_memory() {
    const MAX: usize = 8 * 1024 * 1024;
    let before = live();
    let journal = Journal::with_max_bytes(1_000_000, MAX);
    for i in 0..60_000 {
        journal.record_request(record(i));
        if i % 5_000 == 4_999 {
            let held = usize::try_from(live() - before).unwrap_or(usize::MAX);
            let counted = journal.bytes();
            assert!(counted <= MAX, "counted {counted} > bound {MAX}");
            assert!(
                held <= counted,
                "after {} requests the journal holds {held} bytes but counts {counted}",
                i + 1
            );
            // Not a wild overestimate either (allocator rounding and headers only).
            assert!(
                counted <= held + held / 4,
                "counts {counted} for {held} bytes held"
            );
        }
    }
    let per_entry = journal.bytes() / journal.entries().len();
    eprintln!(
        "journal: {} entries in {} bytes ({per_entry} bytes each, bound {MAX})",
        journal.entries().len(),
        journal.bytes()
    );
}
