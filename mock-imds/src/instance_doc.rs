//! The instance document (REFERENCE B.3) as data: fields present only from the version that introduced them
//! ([`INTRODUCED`], the single table of those facts), keys in the real service's order, path navigation,
//! `format=text`, cloud-init's `extended` block, and the per-mock [`DocCache`]. The document depends only on
//! the immutable base configuration, the api-version and `extended`, so each one is built once per running
//! mock and kept with its serialised JSON: building it (serialising the config to a `Value`, stripping newer
//! fields, sorting keys) cost ~50 µs of CPU per request and capped `/metadata/instance` at ~0.15× of a bare
//! hyper server (measured by `just bench`). The HTTP side is `instance`; the state holds the cache.

use std::sync::OnceLock;

use axum::body::Bytes;
use serde_json::{Map, Value};

use crate::config::Config;

/// When each field of the instance document appeared (REFERENCE B.3). Paths name object keys only (array
/// indexes are transparent); a field absent here exists since the first instance version (2017-04-02) or
/// since its parent appeared.
pub const INTRODUCED: &[(&str, &str)] = &[
    ("compute/additionalCapabilities", "2021-11-01"),
    ("compute/azEnvironment", "2018-10-01"),
    ("compute/customData", "2019-02-01"),
    ("compute/evictionPolicy", "2020-12-01"),
    ("compute/extendedLocation", "2021-03-01"),
    ("compute/host", "2021-11-15"),
    ("compute/hostGroup", "2021-11-15"),
    ("compute/isHostCompatibilityLayerVm", "2020-06-01"),
    ("compute/licenseType", "2020-09-01"),
    ("compute/osProfile", "2020-07-15"),
    (
        "compute/osProfile/disablePasswordAuthentication",
        "2020-10-01",
    ),
    ("compute/physicalZone", "2023-11-15"),
    ("compute/placementGroupId", "2017-08-01"),
    ("compute/plan", "2018-04-02"),
    ("compute/platformSubFaultDomain", "2021-10-01"),
    ("compute/priority", "2020-12-01"),
    ("compute/provider", "2018-10-01"),
    ("compute/publicKeys", "2018-04-02"),
    ("compute/resourceGroupName", "2017-08-01"),
    ("compute/resourceId", "2019-03-11"),
    ("compute/securityProfile", "2020-06-01"),
    ("compute/securityProfile/encryptionAtHost", "2021-11-01"),
    ("compute/securityProfile/securityType", "2021-12-13"),
    ("compute/storageProfile", "2019-06-01"),
    (
        "compute/storageProfile/imageReference/communityGalleryImageId",
        "2023-07-01",
    ),
    (
        "compute/storageProfile/imageReference/exactVersion",
        "2023-07-01",
    ),
    (
        "compute/storageProfile/imageReference/sharedGalleryImageId",
        "2023-07-01",
    ),
    ("compute/storageProfile/resourceDisk", "2021-02-01"),
    ("compute/subscriptionId", "2017-08-01"),
    ("compute/tags", "2017-08-01"),
    ("compute/tagsList", "2019-06-04"),
    ("compute/userData", "2021-01-01"),
    ("compute/virtualMachineScaleSet", "2021-03-01"),
    ("compute/vmScaleSetName", "2017-12-01"),
    ("compute/zone", "2017-12-01"),
];

/// The full document for `version` (keys sorted as the real service sorts them: byte order).
pub fn document(config: &Config, version: &str, extended: bool) -> Value {
    let mut compute = serde_json::to_value(&config.compute).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut compute {
        let tags = config
            .compute
            .tags_list
            .iter()
            .map(|t| format!("{}:{}", t.name, t.value))
            .collect::<Vec<_>>()
            .join(";");
        m.insert("tags".into(), Value::String(tags));
    }
    let network = serde_json::to_value(&config.network).unwrap_or(Value::Null);
    let mut root = Map::new();
    root.insert("compute".into(), compute);
    root.insert("network".into(), network);
    let mut doc = Value::Object(root);
    strip_newer(&mut doc, "", version);
    if extended {
        let ext = serde_json::json!({ "compute": &config.extended });
        if let Value::Object(m) = &mut doc {
            m.insert("extended".into(), ext);
        }
    }
    sort_keys(&mut doc);
    doc
}

/// One rendered instance document: the value (for path queries and `format=text`) and its JSON bytes,
/// exactly what `Json(document)` would serialise.
#[derive(Debug)]
pub struct Rendered {
    pub doc: Value,
    pub json: Bytes,
}

impl Rendered {
    pub fn new(doc: Value) -> Rendered {
        // Serialising a `Value` cannot fail (string keys only); an empty body would be caught by every test.
        let json = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        Rendered { doc, json }
    }
}

/// The documents of one mock, built on first use: one slot per supported api-version and `extended` flag.
/// Valid only for the configuration it was first filled from (the state's immutable base config).
#[derive(Debug)]
pub struct DocCache {
    slots: Vec<[OnceLock<Rendered>; 2]>,
}

impl Default for DocCache {
    fn default() -> Self {
        DocCache {
            slots: crate::versions::SUPPORTED
                .iter()
                .map(|_| [OnceLock::new(), OnceLock::new()])
                .collect(),
        }
    }
}

impl DocCache {
    /// The cached document for `version`; `None` for a version outside the catalogue (not cached: the
    /// rules layer refuses those before the handler runs, so this only guards direct callers).
    pub fn get(&self, config: &Config, version: &str, extended: bool) -> Option<&Rendered> {
        let i = crate::versions::SUPPORTED
            .iter()
            .position(|v| *v == version)?;
        let slot = self.slots.get(i)?.get(usize::from(extended))?;
        Some(slot.get_or_init(|| Rendered::new(document(config, version, extended))))
    }
}

fn introduced(path: &str) -> Option<&'static str> {
    INTRODUCED.iter().find(|(p, _)| *p == path).map(|(_, v)| *v)
}

fn strip_newer(value: &mut Value, path: &str, version: &str) {
    match value {
        Value::Object(m) => {
            m.retain(|k, _| {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}/{k}")
                };
                introduced(&child).is_none_or(|v| v <= version)
            });
            for (k, v) in m.iter_mut() {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}/{k}")
                };
                strip_newer(v, &child, version);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| strip_newer(v, path, version)),
        _ => {}
    }
}

fn sort_keys(value: &mut Value) {
    match value {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, mut v) in entries {
                sort_keys(&mut v);
                m.insert(k, v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// Navigates `segments` (object keys and array indexes) into the document.
pub fn navigate<'a>(doc: &'a Value, segments: &[&str]) -> Option<&'a Value> {
    segments.iter().try_fold(doc, |node, seg| match node {
        Value::Object(m) => m.get(*seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

pub fn is_leaf(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// `format=text` rendering: a leaf is its bare value; a container lists its keys (or indexes), one per line,
/// with a trailing `/` on children that are containers themselves (README, decision on open question 3).
pub fn text(v: &Value) -> String {
    let child = |name: String, c: &Value| if is_leaf(c) { name } else { format!("{name}/") };
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, c)| child(k.clone(), c))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, c)| child(i.to_string(), c))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_appear_with_their_version() {
        let c = Config::generate(Some(1));
        let old = document(&c, "2017-04-02", false);
        assert!(old["compute"].get("subscriptionId").is_none());
        assert!(old["compute"].get("vmId").is_some());
        let v = document(&c, "2021-01-01", false);
        assert!(v["compute"]["storageProfile"].get("resourceDisk").is_none());
        assert!(v["compute"].get("userData").is_some());
        let new = document(&c, "2025-04-07", false);
        assert!(
            new["compute"]["storageProfile"]["imageReference"]
                .get("exactVersion")
                .is_some()
        );
        assert!(
            new["compute"]["securityProfile"]
                .get("securityType")
                .is_some()
        );
        assert_eq!(
            new["compute"]["tags"],
            "environment:test;owner:imds-conformance"
        );
    }

    #[test]
    fn every_introduced_path_exists_in_the_newest_document() {
        let c = Config::generate(Some(1));
        let new = document(&c, "2025-04-07", false);
        for (path, _) in INTRODUCED {
            let segs: Vec<&str> = path.split('/').collect();
            assert!(
                navigate(&new, &segs).is_some(),
                "{path} missing from the newest document"
            );
        }
    }

    /// Every documented version serves a document, and a later version never drops a field an earlier one had.
    #[test]
    fn every_version_only_adds_fields() {
        fn paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => m.iter().for_each(|(k, c)| {
                    let p = format!("{prefix}/{k}");
                    out.push(p.clone());
                    paths(c, &p, out);
                }),
                Value::Array(a) => a.iter().for_each(|c| paths(c, prefix, out)),
                _ => {}
            }
        }
        let c = Config::generate(Some(1));
        let mut previous: Vec<String> = Vec::new();
        for v in crate::versions::SUPPORTED
            .iter()
            .filter(|v| crate::versions::Category::Instance.accepts(v))
        {
            let mut now = Vec::new();
            paths(&document(&c, v, false), "", &mut now);
            for p in &previous {
                assert!(now.contains(p), "{p} disappeared at {v}");
            }
            assert!(now.len() >= previous.len());
            previous = now;
        }
        assert!(previous.contains(&"/compute/physicalZone".to_string()));
    }

    /// The cache serves exactly the document `document` builds, for every version and both `extended` values.
    #[test]
    fn cache_matches_fresh_rendering() {
        let c = Config::generate(Some(3));
        let cache = DocCache::default();
        for v in crate::versions::SUPPORTED {
            for ext in [false, true] {
                let fresh = document(&c, v, ext);
                let cached = cache.get(&c, v, ext).expect("supported version is cached");
                assert_eq!(cached.doc, fresh);
                assert_eq!(cached.json, serde_json::to_vec(&fresh).expect("serialises"));
                // Second lookup hits the same slot.
                assert!(std::ptr::eq(cached, cache.get(&c, v, ext).expect("cached")));
            }
        }
        assert!(cache.get(&c, "2099-01-01", false).is_none());
    }

    #[test]
    fn text_listing() {
        let v = serde_json::json!({"a": "1", "b": {"c": "2"}, "d": ["x", {"y": "z"}]});
        assert_eq!(text(&v), "a\nb/\nd/");
        assert_eq!(text(&v["d"]), "0\n1/");
        assert_eq!(text(&v["a"]), "1");
    }
}
