//! Reads: get, list (paging with continue tokens, resourceVersion semantics, selectors) and the
//! parameters of a watch (the stream itself is `crate::watch`).

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::request::{Continue, Params, parse_bool, parse_rv, selectors};
use super::{ResourceRequest, json_response};
use crate::status::ApiError;
use crate::store::ObjectRef;
use crate::watch::{Start, WatchSpec};

/// Watch timeout when the client gives none (kube-apiserver's --min-request-timeout).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// List metadata as kube-apiserver writes it (`continue`/`remainingItemCount` only when paging).
fn list_meta(rv: u64, next: Option<String>, remaining: usize) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("resourceVersion".into(), json!(rv.to_string()));
    if let Some(token) = next {
        m.insert("continue".into(), json!(token));
        m.insert("remainingItemCount".into(), json!(remaining));
    }
    Value::Object(m)
}

impl ResourceRequest<'_> {
    pub(super) fn list(&self, namespace: Option<&str>, p: &Params) -> Result<Response, ApiError> {
        self.count("list");
        let (labels, fields) = selectors(self.rt, p)?;
        let continuation = match p.continue_.as_deref().filter(|c| !c.is_empty()) {
            Some(token) => {
                if p.resource_version.as_deref().is_some_and(|v| !v.is_empty()) {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                Some(Continue::decode(token)?)
            }
            None => None,
        };
        let limit = match p.limit.as_deref().filter(|l| !l.is_empty()) {
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let current = self.shared.store.current_rv();
        let rv = p.resource_version.as_deref().filter(|v| !v.is_empty());
        match (
            rv,
            p.resource_version_match
                .as_deref()
                .filter(|v| !v.is_empty()),
        ) {
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: \
                     resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            (Some(v), Some("Exact")) => {
                let want = parse_rv(v)?;
                if want > current {
                    return Err(ApiError::too_large_resource_version(want, current));
                }
                if want < current {
                    // Only the latest revision is materialised; older snapshots are "compacted".
                    return Err(ApiError::expired(want, current));
                }
            }
            (Some(v), None | Some("NotOlderThan")) => {
                let want = parse_rv(v)?;
                if want > current {
                    return Err(ApiError::too_large_resource_version(want, current));
                }
            }
            (Some(_), Some(other)) => {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    format!(
                        "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Unsupported value: \
                         {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                    ),
                ));
            }
            (None, None) => {}
        }
        // Pagination. Later pages are cut from the current state but carry the first page's
        // revision, so a client that watches from it replays every change made in between and
        // converges (the contract informers rely on). resourceVersion=0 is served "from the
        // cache", which ignores limit, as kube-apiserver's watch cache does.
        let mut rv = None;
        let mut after = None;
        if let Some(c) = &continuation {
            if c.rv < self.shared.store.oldest_rv() {
                return Err(ApiError::continue_expired());
            }
            rv = Some(c.rv);
            after = Some(c.last.clone());
        }
        let paginate = limit > 0 && p.resource_version.as_deref() != Some("0");
        let page = usize::try_from(limit).ok().filter(|_| paginate);
        let (current_rv, mut items, remaining) = self.shared.store.list_page(
            self.rt,
            namespace,
            |o| labels.matches_object(o) && fields.matches(|f| self.rt.field_value(o, f)),
            after.as_ref(),
            page,
        );
        let rv = rv.unwrap_or(current_rv);
        let mut next = None;
        if remaining > 0
            && let Some(last) = items.last()
        {
            next = Some(
                Continue {
                    rv,
                    last: ObjectRef::of(last),
                }
                .encode(),
            );
        }
        if self.rt.group.is_empty() {
            // Typed (built-in) lists carry kind/apiVersion only on the list, not on each item.
            for item in &mut items {
                if let Some(m) = item.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
            }
        }
        self.shared
            .stats
            .objects(self.client, self.rt.plural, items.len() as u64);
        let doc = json!({
            "kind": self.rt.list_kind(),
            "apiVersion": self.rt.api_version(),
            "metadata": list_meta(rv, next, remaining),
            "items": items,
        });
        Ok(json_response(StatusCode::OK, &doc, self.rt.plural))
    }

    pub(super) fn watch_spec(
        &self,
        namespace: Option<String>,
        p: &Params,
    ) -> Result<WatchSpec, ApiError> {
        let (labels, fields) = selectors(self.rt, p)?;
        let bookmarks =
            parse_bool("allowWatchBookmarks", p.allow_watch_bookmarks.as_deref())?.unwrap_or(false);
        let initial = parse_bool("sendInitialEvents", p.send_initial_events.as_deref())?;
        let rv_match = p
            .resource_version_match
            .as_deref()
            .filter(|v| !v.is_empty());
        let rv = p.resource_version.as_deref().filter(|v| !v.is_empty());
        let invalid = |msg: &str| {
            ApiError::invalid(
                "ListOptions",
                "",
                format!("ListOptions.meta.k8s.io \"\" is invalid: {msg}"),
            )
        };
        let start = match initial {
            Some(send) => {
                if rv_match != Some("NotOlderThan") {
                    return Err(invalid(
                        "resourceVersionMatch: Forbidden: sendInitialEvents requires setting \
                         resourceVersionMatch to NotOlderThan",
                    ));
                }
                if send && !bookmarks {
                    return Err(invalid(
                        "allowWatchBookmarks: Required value: allowWatchBookmarks must be set to true \
                         when sendInitialEvents is set",
                    ));
                }
                match (send, rv) {
                    (true, _) => Start::StreamingList,
                    (false, None | Some("0")) => Start::After(self.shared.store.current_rv()),
                    (false, Some(v)) => Start::After(parse_rv(v)?),
                }
            }
            None => {
                if rv_match.is_some() {
                    return Err(invalid(
                        "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch \
                         unless sendInitialEvents is provided",
                    ));
                }
                match rv {
                    None | Some("0") => Start::CurrentState,
                    Some(v) => Start::After(parse_rv(v)?),
                }
            }
        };
        let timeout = match p.timeout_seconds.as_deref().filter(|v| !v.is_empty()) {
            Some(t) => Duration::from_secs(
                t.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
            ),
            None => DEFAULT_WATCH_TIMEOUT,
        };
        Ok(WatchSpec {
            resource: self.rt,
            namespace,
            labels,
            fields,
            start,
            bookmarks,
            timeout,
            client: self.client.to_owned(),
        })
    }

    pub(super) fn get(&self, namespace: &str, name: &str) -> Result<Response, ApiError> {
        self.count("get");
        let obj = self
            .shared
            .store
            .get(self.rt, namespace, name)
            .ok_or_else(|| ApiError::not_found(self.rt, name))?;
        self.object(StatusCode::OK, &obj)
    }
}
