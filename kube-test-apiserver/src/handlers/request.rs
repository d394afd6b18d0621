//! Request parsing: what a path names ([`Route`]), the query parameters ([`Params`]), request bodies
//! (JSON or YAML), continue tokens, and the parameter grammars kube-apiserver uses (Go booleans,
//! resourceVersions, selectors). Nothing here touches the store.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::Value;

use crate::resources::{self, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::ObjectRef;

/// What a request path names.
pub(super) enum Route {
    ApiVersions,
    CoreResources,
    Groups,
    Group(String),
    GroupResources(String, String),
    Version,
    Collection {
        rt: &'static ResourceType,
        namespace: Option<String>,
    },
    Object {
        rt: &'static ResourceType,
        namespace: String,
        name: String,
        sub: Option<String>,
    },
}

pub(super) fn parse_path(path: &str) -> Option<Route> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Some(Route::ApiVersions),
        ["api", "v1"] => return Some(Route::CoreResources),
        ["apis"] => return Some(Route::Groups),
        ["version"] => return Some(Route::Version),
        ["apis", g] if resources::serves_group_version(g, "v1") => {
            return Some(Route::Group((*g).to_owned()));
        }
        ["apis", g, v] if resources::serves_group_version(g, v) => {
            return Some(Route::GroupResources((*g).to_owned(), (*v).to_owned()));
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    match rest {
        [plural] => Some(Route::Collection {
            rt: resources::by_path(group, version, plural)?,
            namespace: None,
        }),
        ["namespaces", ns, plural] => Some(Route::Collection {
            rt: resources::by_path(group, version, plural).filter(|rt| rt.namespaced)?,
            namespace: Some((*ns).to_owned()),
        }),
        ["namespaces", ns, plural, name] => Some(Route::Object {
            rt: resources::by_path(group, version, plural).filter(|rt| rt.namespaced)?,
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
            sub: None,
        }),
        ["namespaces", ns, plural, name, sub] => Some(Route::Object {
            rt: resources::by_path(group, version, plural).filter(|rt| rt.namespaced)?,
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
            sub: Some((*sub).to_owned()),
        }),
        // Cluster-scoped objects: `/api/v1/nodes/{name}[/{sub}]`, stored under the empty namespace.
        [plural, name] => Some(Route::Object {
            rt: resources::by_path(group, version, plural).filter(|rt| !rt.namespaced)?,
            namespace: String::new(),
            name: (*name).to_owned(),
            sub: None,
        }),
        [plural, name, sub] => Some(Route::Object {
            rt: resources::by_path(group, version, plural).filter(|rt| !rt.namespaced)?,
            namespace: String::new(),
            name: (*name).to_owned(),
            sub: Some((*sub).to_owned()),
        }),
        _ => None,
    }
}

/// Query parameters of list, watch and write requests (unknown ones are ignored, as Kubernetes
/// ignores parameters a verb does not use).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Params {
    pub(super) watch: Option<String>,
    pub(super) resource_version: Option<String>,
    pub(super) resource_version_match: Option<String>,
    pub(super) label_selector: Option<String>,
    pub(super) field_selector: Option<String>,
    #[serde(rename = "continue")]
    pub(super) continue_: Option<String>,
    pub(super) limit: Option<String>,
    pub(super) dry_run: Option<String>,
    pub(super) timeout_seconds: Option<String>,
    pub(super) allow_watch_bookmarks: Option<String>,
    pub(super) send_initial_events: Option<String>,
}

/// The JSON of a POST/PUT body. JSON and YAML are accepted, as by kube-apiserver; protobuf and
/// CBOR are not served here (415, so a client can tell "unsupported" from "malformed").
pub(super) fn write_body(headers: &HeaderMap, body: &Bytes) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "" | "application/json" | "*/*" => Ok(body.clone()),
        "application/yaml" => {
            let value: Value = serde_norway::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))?;
            Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
        }
        _ => Err(ApiError::unsupported_media_type(content_type)),
    }
}

/// A continue token: the list's revision and the last key served. Opaque to clients (hex of
/// `rv NUL namespace NUL name`), like kube-apiserver's base64 tokens.
pub(super) struct Continue {
    pub(super) rv: u64,
    /// The last object of the previous page.
    pub(super) last: ObjectRef,
}

impl Continue {
    pub(super) fn encode(&self) -> String {
        let raw = format!("{}\0{}\0{}", self.rv, self.last.namespace, self.last.name);
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub(super) fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
        if !token.len().is_multiple_of(2) || !token.is_ascii() {
            return Err(invalid());
        }
        let bytes: Vec<u8> = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| invalid())?;
        let raw = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = raw.split('\0');
        let (Some(rv), Some(namespace), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        Ok(Continue {
            rv: rv.parse().map_err(|_| invalid())?,
            last: ObjectRef::new(namespace, name),
        })
    }
}

/// Go's strconv.ParseBool, which kube-apiserver uses for boolean query parameters.
pub(super) fn parse_bool(name: &str, v: Option<&str>) -> Result<Option<bool>, ApiError> {
    match v {
        None => Ok(None),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "failed to parse {name}: strconv.ParseBool: parsing {other:?}: invalid syntax"
        ))),
    }
}

pub(super) fn parse_rv(v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resource version {v:?}: expected a decimal integer"
        ))
    })
}

pub(super) fn selectors(
    rt: &ResourceType,
    p: &Params,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(p.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(p.field_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    for r in &fields.requirements {
        if !rt.supports_field(&r.field) {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {}",
                r.field
            )));
        }
    }
    Ok((labels, fields))
}
