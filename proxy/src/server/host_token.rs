//! The host token handler (REFERENCE A.3.2): `/host/token` for host-network callers on the node, the pod
//! named by the `podns`/`podname` headers.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue, header};
use serde::Serialize;

use super::*;

#[derive(Serialize)]
pub(super) struct HostTokenResponse {
    pub(super) token: MsiToken,
    pub(super) clientid: String,
}

/// Host token handler, A.3.2.
pub(super) async fn host_token(
    st: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: &str,
) -> Outcome {
    let podns = header_str(headers, "podns").to_string();
    let podname = header_str(headers, "podname").to_string();
    if podns.is_empty() || podname.is_empty() {
        return Outcome::new(
            go_error(400, "missing 'podname' and 'podns' from request header"),
            Decision::HostHeadersMissing,
        );
    }
    if caller_ip(peer) != Some(IpAddr::from([127, 0, 0, 1])) && !crate::mutant!(HostTokenAnyCaller)
    {
        return Outcome::new(
            go_error(500, "request remote address is not from a host"),
            Decision::HostNotLocal,
        )
        .host_pod(&podns, &podname);
    }
    let resource = query_get(query, "resource");
    if resource.is_empty() {
        return Outcome::new(
            go_error(400, "parameter resource cannot be empty"),
            Decision::ResourceMissing,
        )
        .host_pod(&podns, &podname);
    }
    if let Err(e) = st.view.ready() {
        return view_unavailable(&e).host_pod(&podns, &podname);
    }
    let pod = PodInfo {
        namespace: podns.clone(),
        name: podname.clone(),
        ip: None,
        phase: String::new(),
        labels: Default::default(),
        replicaset: None,
        host_network: true,
    };
    let pod = if st.settings.operation_mode == OperationMode::Managed {
        // Managed mode needs the pod's labels (its aadpodidbinding selector).
        match st.view.pod_named(&podns, &podname) {
            Some(p) => p,
            None => {
                return Outcome::new(
                    go_error(404, &format!("pod {podns}/{podname} not found")),
                    Decision::IdentityNotFound,
                );
            }
        }
    } else {
        pod
    };
    let req = identity_request(query);
    let identity = match select_identity(st, &pod, &req).await {
        Ok(i) => i,
        Err(SelectError::View(e)) => {
            return view_unavailable(&e).host_pod(&podns, &podname);
        }
        Err(SelectError::NotFound(e)) if crate::mutant!(RetryAfterOnHostToken) => {
            let mut resp = go_error(503, &e.to_string());
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(policy::RETRY_AFTER_SECS),
            );
            return Outcome::new(resp, Decision::IdentityNotFound).host_pod(&podns, &podname);
        }
        Err(SelectError::NotFound(e)) => {
            return Outcome::new(go_error(404, &e.to_string()), Decision::IdentityNotFound)
                .host_pod(&podns, &podname);
        }
    };
    match fetch_token(st, &identity, &resource).await {
        Ok(token) => Outcome::new(
            json_ok(&HostTokenResponse {
                token,
                clientid: identity.client_id,
            }),
            Decision::HostToken,
        )
        .host_pod(&podns, &podname),
        Err(e) => Outcome::new(go_error(e.status(), &e.to_string()), Decision::TokenError)
            .host_pod(&podns, &podname),
    }
}
