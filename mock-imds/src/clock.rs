//! Injectable wall clock. Token expiry, rate-limit windows, attested timestamps and "first N seconds
//! unavailable" all read time through [`Clock`], so tests substitute a [`ManualClock`] and get deterministic
//! results. Latency injection deliberately uses real (tokio) time: it models the network, not the service.

use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// `t` plus `secs` seconds, or `None` beyond chrono's range (about 262,000 years): fault delays and token
/// lifetimes come from configuration and the control API, and `DateTime + Duration` panics on overflow.
pub fn add_secs(t: DateTime<Utc>, secs: u64) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(secs).ok()?;
    t.checked_add_signed(Duration::try_seconds(secs)?)
}

/// Source of "now" for the emulated service.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward (or backward, with a negative duration).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        // Beyond chrono's range the clock stays where it is.
        if let Some(t) = now.checked_add_signed(by) {
            *now = t;
        }
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `Date` header value of the current second, formatted once per second instead of once per request.
/// Keyed by the exact Unix second of the mock's clock, so a fake clock that jumps (or goes back) gets the
/// right value too.
#[derive(Debug, Default)]
pub struct HttpDate(std::sync::Mutex<Option<(i64, axum::http::HeaderValue)>>);

impl HttpDate {
    pub fn get(&self, now: chrono::DateTime<chrono::Utc>) -> Option<axum::http::HeaderValue> {
        let second = now.timestamp();
        // httpdate panics outside 1970-01-01 ..= 9999-12-31 (a fake clock can be anywhere): no header then.
        if !(0..=253_402_300_799).contains(&second) {
            return None;
        }
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, v)) = cached.as_ref()
            && *s == second
        {
            return Some(v.clone());
        }
        let v = axum::http::HeaderValue::from_str(&httpdate::fmt_http_date(
            std::time::SystemTime::from(now),
        ))
        .ok()?;
        *cached = Some((second, v.clone()));
        Some(v)
    }
}
