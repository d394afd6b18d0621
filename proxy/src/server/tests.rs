//! Unit tests of `server`: query parsing, and NMI's answers pinned byte for byte as snapshots.

use super::*;

#[test]
fn query_get_is_go_like() {
    assert_eq!(
        query_get(
            "resource=https%3A%2F%2Fvault.azure.net&client_id=a",
            "resource"
        ),
        "https://vault.azure.net"
    );
    assert_eq!(query_get("client_id=a&client_id=b", "client_id"), "a");
    assert_eq!(query_get("resource=a+b", "resource"), "a b");
    assert_eq!(query_get("resource", "resource"), "");
    assert_eq!(query_get("", "resource"), "");
}

/// A response as text (status, sorted headers, body) for snapshots; shared with `sdk_friendly`'s tests.
pub(crate) async fn render(resp: Response) -> String {
    let status = resp.status().as_u16();
    let mut headers: Vec<String> = resp
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
        .collect();
    headers.sort();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    format!(
        "{status}\n{}\n\n{}",
        headers.join("\n"),
        String::from_utf8_lossy(&body)
    )
}

fn token() -> MsiToken {
    MsiToken {
        access_token: "eyJ0eXAiOiJKV1QifQ.e30.sig".into(),
        refresh_token: String::new(),
        expires_in: "86399".into(),
        expires_on: "1700086399".into(),
        not_before: "1700000000".into(),
        resource: "https://management.azure.com/".into(),
        token_type: "Bearer".into(),
    }
}

/// Byte-exact NMI answers (REFERENCE A.3/A.4), pinned as snapshots.
#[tokio::test]
async fn nmi_response_bodies() {
    insta::assert_snapshot!("metadata_required", render(metadata_required()).await);
    insta::assert_snapshot!(
        "instance_blocked",
        render(go_error(403, policy::BLOCKED_MESSAGE)).await
    );
    insta::assert_snapshot!(
        "invalid_request",
        render(go_error(400, policy::INVALID_REQUEST_MESSAGE)).await
    );
    insta::assert_snapshot!("token", render(json_ok(&token())).await);
    insta::assert_snapshot!(
        "host_token",
        render(json_ok(&HostTokenResponse {
            token: token(),
            clientid: "11111111-2222-3333-4444-555555555555".into()
        }))
        .await
    );
}

#[test]
fn mi_res_id_is_a_fallback() {
    assert_eq!(identity_request("mi_res_id=x").resource_id, "x");
    assert_eq!(
        identity_request("msi_res_id=y&mi_res_id=x").resource_id,
        "y"
    );
}
