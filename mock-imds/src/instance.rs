//! `/metadata/instance` (REFERENCE B.3), the HTTP side: the document for the requested api-version (from
//! the state's `instance_doc::DocCache`), path-based queries into it, `format=text`, and cloud-init's
//! `extended=true`. Request validation (header, api-version) already happened in `rules`; this module only
//! renders and navigates. The document itself is `instance_doc`.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::error::{ErrorKind, ImdsError};
use crate::instance_doc::is_leaf;
pub use crate::instance_doc::{DocCache, INTRODUCED, Rendered, document, navigate, text};
use crate::rules::{ImdsQuery, TEXT_CONTENT_TYPE};
use crate::state::AppState;

/// `GET /metadata/instance[/<path>]`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metadata/instance", get(instance))
        .route("/metadata/instance/{*rest}", get(instance))
}

async fn instance(
    State(state): State<AppState>,
    Extension(q): Extension<ImdsQuery>,
    uri: Uri,
) -> Result<Response, ImdsError> {
    let version = q.get("api-version").unwrap_or_default();
    let as_text = match q.get("format") {
        None => false,
        Some(f) if f.eq_ignore_ascii_case("json") => false,
        Some(f) if f.eq_ignore_ascii_case("text") => true,
        Some(f) => return Err(ImdsError::metadata(ErrorKind::InvalidFormat(f.to_string()))),
    };
    let extended = q
        .get("extended")
        .is_some_and(|e| e.eq_ignore_ascii_case("true"));
    let fresh;
    let rendered = match state.instance_docs.get(&state.config, version, extended) {
        Some(r) => r,
        None => {
            fresh = Rendered::new(document(&state.config, version, extended));
            &fresh
        }
    };
    let rest = uri
        .path()
        .strip_prefix("/metadata/instance")
        .unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() && !as_text {
        // The whole document as JSON, the common request: the cached bytes, as `Json` would send them.
        let mut response = Body::from(rendered.json.clone()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(response);
    }
    let node =
        navigate(&rendered.doc, &segments).ok_or(ImdsError::metadata(ErrorKind::NotFound))?;
    if as_text {
        let mut response = text(node).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(TEXT_CONTENT_TYPE),
        );
        return Ok(response);
    }
    if is_leaf(node) {
        return Err(ImdsError::metadata(ErrorKind::LeafRequiresText));
    }
    Ok(Json(node.clone()).into_response())
}
