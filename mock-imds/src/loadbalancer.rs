//! `/metadata/loadbalancer` (REFERENCE B.8): the standard load balancer's public IPs and rules, or the
//! documented 404 when the VM has none (or only a basic one). Ports are JSON numbers, as in the documentation.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value};

use crate::error::{ErrorKind, ImdsError};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/metadata/loadbalancer", get(loadbalancer))
}

async fn loadbalancer(State(state): State<AppState>) -> Result<Response, ImdsError> {
    let lb = &state.config.load_balancer;
    if lb.is_empty() {
        return Err(ImdsError::metadata(ErrorKind::LoadBalancerNotFound));
    }
    let mut m = Map::new();
    m.insert(
        "loadbalancer".into(),
        serde_json::to_value(lb).unwrap_or(Value::Null),
    );
    Ok(Json(Value::Object(m)).into_response())
}
