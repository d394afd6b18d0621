//! The api-version catalogue: every version the real service lists, the newest three it advertises in its
//! `newest-versions` error, when each category root was introduced (REFERENCE B.2), and the
//! `/metadata/versions` endpoint. This module only answers "is this version valid for this path"; it does not
//! render errors (see `error`) nor decide which fields a document carries (see `instance`).

use axum::{Json, Router, routing::get};
use serde_json::json;

/// Every api-version the current documentation lists, oldest first (REFERENCE B.2).
pub const SUPPORTED: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2023-07-01",
    "2023-11-15",
    "2024-03-15",
    "2024-07-17",
    "2025-04-07",
];

/// Scheduled events has its own version history (REFERENCE B.7); some of these are not in [`SUPPORTED`].
pub const SCHEDULED_EVENTS_EXTRA: &[&str] = &[
    "2017-03-01",
    "2017-08-01",
    "2017-11-01",
    "2019-01-01",
    "2019-04-01",
    "2019-08-01",
    "2020-07-01",
];

/// The newest version, used by documentation and tests.
pub const NEWEST: &str = "2025-04-07";

/// The three newest versions, newest first, exactly as the 400 body's `newest-versions` lists them.
pub fn newest_three() -> [&'static str; 3] {
    let n = SUPPORTED.len();
    [SUPPORTED[n - 1], SUPPORTED[n - 2], SUPPORTED[n - 3]]
}

/// A category root of the IMDS URL space. Each has an introduction version (REFERENCE B.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Instance,
    Identity,
    Attested,
    ScheduledEvents,
    LoadBalancer,
    /// `/metadata/versions`: unversioned.
    Versions,
    /// `/metadata/reprovisiondata` (cloud-init): treated like instance metadata.
    Reprovision,
}

impl Category {
    /// Which category a (normalised) path belongs to, if any.
    pub fn of_path(path: &str) -> Option<Category> {
        let rest = path.strip_prefix("/metadata/")?;
        let root = rest.split('/').next().unwrap_or("");
        match root {
            "instance" => Some(Category::Instance),
            "identity" => Some(Category::Identity),
            "attested" => Some(Category::Attested),
            "scheduledevents" => Some(Category::ScheduledEvents),
            "loadbalancer" => Some(Category::LoadBalancer),
            "versions" => Some(Category::Versions),
            "reprovisiondata" => Some(Category::Reprovision),
            _ => None,
        }
    }

    /// The first api-version in which the category exists, `None` when unversioned.
    pub fn introduced(self) -> Option<&'static str> {
        match self {
            Category::Instance | Category::Reprovision => Some("2017-04-02"),
            Category::Identity => Some("2018-02-01"),
            Category::Attested => Some("2018-10-01"),
            Category::ScheduledEvents => Some("2017-08-01"),
            Category::LoadBalancer => Some("2020-10-01"),
            Category::Versions => None,
        }
    }

    /// Whether `version` is accepted on this category.
    pub fn accepts(self, version: &str) -> bool {
        let Some(intro) = self.introduced() else {
            return true;
        };
        if self == Category::ScheduledEvents && SCHEDULED_EVENTS_EXTRA.contains(&version) {
            return true;
        }
        // Dates in ISO form compare correctly as strings.
        SUPPORTED.contains(&version) && version >= intro
    }
}

/// `GET /metadata/versions` (it needs no state).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/metadata/versions", get(versions))
}

async fn versions() -> Json<serde_json::Value> {
    Json(json!({ "apiVersions": SUPPORTED }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_three_are_newest_first() {
        assert_eq!(newest_three(), ["2025-04-07", "2024-07-17", "2024-03-15"]);
    }

    #[test]
    fn category_introduction_is_enforced() {
        assert!(!Category::Identity.accepts("2017-12-01"));
        assert!(Category::Identity.accepts("2018-02-01"));
        assert!(!Category::LoadBalancer.accepts("2020-09-01"));
        assert!(Category::LoadBalancer.accepts("2020-10-01"));
        assert!(Category::ScheduledEvents.accepts("2020-07-01"));
        assert!(!Category::Instance.accepts("2017-07-01"));
        assert!(Category::Versions.accepts("anything"));
    }

    #[test]
    fn supported_is_sorted_and_unique() {
        let mut sorted = SUPPORTED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, SUPPORTED);
    }
}
