//! Writes: create, update (main resource or `status`), patch (JSON patch, merge patch) and delete
//! (one object or a collection). Bodies are checked against the URL here; the write rules
//! (resourceVersion conflicts, generation, status scope) live in `crate::store`.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::request::{Params, selectors};
use super::{ResourceRequest, json_response};
use crate::status::ApiError;
use crate::store::WriteScope;

impl ResourceRequest<'_> {
    /// Parse a request body and check it against the URL, as the API server does before storing.
    fn body_object(
        &self,
        body: &[u8],
        namespace: &str,
        name: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut obj: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        })?;
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        };
        let api_version = self.rt.api_version();
        match map.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != api_version => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            _ => {}
        }
        match map.get("kind").and_then(Value::as_str) {
            Some(k) if k != self.rt.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    self.rt.kind
                )));
            }
            _ => {}
        }
        // kind/apiVersion first, as the API server serialises objects.
        let mut out = serde_json::Map::new();
        out.insert("kind".into(), json!(self.rt.kind));
        out.insert("apiVersion".into(), json!(api_version));
        for (k, v) in std::mem::take(map) {
            if k != "kind" && k != "apiVersion" {
                out.insert(k, v);
            }
        }
        let mut obj = Value::Object(out);
        let meta = obj
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ if namespace.is_empty() => {
                meta.remove("namespace");
            }
            _ => {
                meta.insert("namespace".into(), json!(namespace));
            }
        }
        if let Some(name) = name {
            match meta.get("name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != name => {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
                _ => {
                    meta.insert("name".into(), json!(name));
                }
            }
        }
        Ok(obj)
    }

    pub(super) fn create(&self, namespace: &str, body: &[u8]) -> Result<Response, ApiError> {
        self.count("create");
        let obj = self.body_object(body, namespace, None)?;
        let stored = self.shared.store.create(self.rt, namespace, obj)?;
        self.object(StatusCode::CREATED, &stored)
    }

    pub(super) fn update(
        &self,
        namespace: &str,
        name: &str,
        body: &[u8],
        scope: WriteScope,
    ) -> Result<Response, ApiError> {
        self.count("update");
        let obj = self.body_object(body, namespace, Some(name))?;
        let stored = self
            .shared
            .store
            .update(self.rt, namespace, name, obj, scope)?;
        self.object(StatusCode::OK, &stored)
    }

    pub(super) fn patch(
        &self,
        namespace: &str,
        name: &str,
        headers: &HeaderMap,
        body: &[u8],
        scope: WriteScope,
    ) -> Result<Response, ApiError> {
        self.count("patch");
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        let mut doc = self
            .shared
            .store
            .get(self.rt, namespace, name)
            .ok_or_else(|| ApiError::not_found(self.rt, name))?;
        // Without an explicit resourceVersion in the patch, a patch is unconditional: drop the
        // stored one so that it cannot fail as a stale precondition.
        let unconditional = |doc: &mut Value| {
            if let Some(m) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
        };
        match content_type.as_str() {
            // Strategic merge patch is treated as a JSON merge patch: list fields are replaced rather
            // than merged by key. Enough for metadata, labels, status and scalar spec edits.
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let patch: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("invalid merge patch: {e}")))?;
                unconditional(&mut doc);
                json_patch::merge(&mut doc, &patch);
            }
            "application/json-patch+json" => {
                let patch: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                unconditional(&mut doc);
                json_patch::patch(&mut doc, &patch).map_err(|e| {
                    ApiError::invalid(
                        self.rt.kind,
                        name,
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                })?;
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        }
        if let Some(m) = doc.as_object_mut() {
            m.insert("kind".into(), json!(self.rt.kind));
            m.insert("apiVersion".into(), json!(self.rt.api_version()));
        }
        let stored = self
            .shared
            .store
            .update(self.rt, namespace, name, doc, scope)?;
        self.object(StatusCode::OK, &stored)
    }

    pub(super) fn delete(
        &self,
        namespace: &str,
        name: &str,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        self.count("delete");
        let options: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        let rv = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str);
        let uid = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str);
        let (obj, removed) = self
            .shared
            .store
            .delete(self.rt, namespace, name, rv, uid, false)?;
        if !removed {
            // Finalizers pending: the object lives on, marked for deletion (202 like kube-apiserver).
            return self.object(StatusCode::ACCEPTED, &obj);
        }
        if self.rt.delete_returns_object {
            return self.object(StatusCode::OK, &obj);
        }
        let mut details = serde_json::Map::new();
        details.insert("name".into(), json!(name));
        details.insert("group".into(), json!(self.rt.group));
        details.insert("kind".into(), json!(self.rt.plural));
        details.insert(
            "uid".into(),
            obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        );
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        });
        Ok(json_response(StatusCode::OK, &status, self.rt.plural))
    }

    pub(super) fn delete_collection(
        &self,
        namespace: Option<&str>,
        p: &Params,
    ) -> Result<Response, ApiError> {
        self.count("deletecollection");
        let (labels, fields) = selectors(self.rt, p)?;
        let (_, items) = self.shared.store.list(self.rt, namespace, |o| {
            labels.matches_object(o) && fields.matches(|f| self.rt.field_value(o, f))
        });
        let mut deleted = Vec::new();
        for item in items {
            let ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            match self
                .shared
                .store
                .delete(self.rt, ns, name, None, None, false)
            {
                Ok((obj, _)) => deleted.push(obj),
                // Deleted concurrently: nothing left to do for this one.
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        self.shared
            .stats
            .objects(self.client, self.rt.plural, deleted.len() as u64);
        let doc = json!({
            "kind": self.rt.list_kind(),
            "apiVersion": self.rt.api_version(),
            "metadata": {"resourceVersion": self.shared.store.current_rv().to_string()},
            "items": deleted,
        });
        Ok(json_response(StatusCode::OK, &doc, self.rt.plural))
    }
}
