//! In-process services every backend runs: one mock-imds per VM and the shared test API server.
//!
//! Owns how a scenario becomes mock-imds state (each VM's identity layout, [`Scenario::vm_layout`]: its
//! system-assigned identity and the scenario identities assigned to it)
//! and how the API server is seeded with the scenario's objects and hands each node its kubeconfig. Sockets
//! come from the caller (bound on loopback, or inside a namespace by the netns backend), so this module
//! never decides where anything listens and never touches the kernel.
//!
//! Every mock serves its `/_mock/` control API on a listener of its own, never on the IMDS listener: pods
//! and the interceptor under test reach IMDS, and through it must not be able to erase the journal the
//! verdicts rest on, read the VM's configuration, add identities or set faults. The harness itself reads
//! journals in-process ([`journal_of`]); the control listener is there for people (`env up`) and tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use mock_imds::MockImds;

use super::{BackendError, JournalEntry};
use crate::scenario::Scenario;
use kube_test_apiserver::ApiServer;

/// Seed of every mock (deterministic ids and keys; the same across nodes like one subscription's VMs).
pub const MOCK_SEED: u64 = 42;

/// Starts one mock IMDS on `listener`, its control API on `control` (bound where only the harness reaches),
/// with the VM's identity layout from the scenario.
pub async fn start_mock(
    listener: TcpListener,
    control: TcpListener,
    scenario: &Scenario,
    vm_name: &str,
) -> Result<MockImds, BackendError> {
    for l in [&listener, &control] {
        l.set_nonblocking(true)
            .map_err(|e| BackendError::env("mock-imds listener", e))?;
    }
    let layout = scenario.vm_layout(vm_name);
    let mut config = mock_imds::config::Config::generate(Some(MOCK_SEED));
    config.identities.system_assigned = layout.system_assigned;
    if !layout.seeded_user_assigned {
        config.identities.user_assigned.clear();
    }
    let mock = MockImds::builder()
        .config(config)
        .seed(MOCK_SEED)
        .rate_limits(false)
        .listener(listener)
        .control_listener(control)
        .start()
        .await
        .map_err(|e| BackendError::env(format!("starting mock-imds for {vm_name}"), e))?;
    for id in layout.user_assigned {
        mock.assign_identity(mock_imds::config::UserAssignedIdentity {
            client_id: id.client_id(),
            object_id: id.object_id(),
            resource_id: id.resource_id(),
            name: id.name.clone(),
        });
    }
    Ok(mock)
}

/// The mock's journal, read in-process (the same entries `GET /_mock/journal` serves).
pub fn journal_of(mock: &MockImds) -> Result<Vec<JournalEntry>, BackendError> {
    Ok(mock.journal())
}

/// Starts the API server on `listener` and applies `objects`.
pub async fn start_api(
    listener: TcpListener,
    objects: &[serde_json::Value],
) -> Result<ApiServer, BackendError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| BackendError::env("API server listener", e))?;
    let api = ApiServer::start_on(listener)
        .await
        .map_err(|e| BackendError::env("starting the test API server", e))?;
    for obj in objects {
        api.apply(obj.clone())
            .map_err(|e| BackendError::env("seeding the test API server", e))?;
    }
    Ok(api)
}

/// Writes the kubeconfig of `node` (its user token is the node name: per-node accounting) under `dir`.
pub fn write_kubeconfig(api: &ApiServer, dir: &Path, node: &str) -> Result<PathBuf, BackendError> {
    let path = dir.join(format!("{node}.kubeconfig"));
    api.write_kubeconfig(&path, node)
        .map_err(|e| BackendError::env(format!("writing {}", path.display()), e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Conn, Request};

    /// A token request without a selector from the VM `node` of `scenario`: (status, body).
    async fn token_without_selector(scenario: &Scenario, node: &str) -> (u16, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let control = TcpListener::bind("127.0.0.1:0").unwrap();
        let mock = start_mock(l, control, scenario, node).await.unwrap();
        let stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
        let r = Conn::new(stream, mock.addr().to_string())
            .send(
                &Request::get(
                    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
                )
                .metadata(),
                false,
                std::time::Duration::from_secs(20),
            )
            .await
            .unwrap();
        (r.status, r.text())
    }

    /// Every identity answer IMDS gives a request without a selector is reachable from a scenario's
    /// `nodes[].vm` layout (REFERENCE B.4), byte for byte.
    #[tokio::test]
    async fn vm_layouts_reach_every_imds_identity_answer() {
        let s = Scenario::parse(
            "name: layouts\nnodes:\n\
             - { name: multi, vm: { systemAssigned: false, userAssigned: [a, b] } }\n\
             - { name: bare, vm: { systemAssigned: false, userAssigned: [] } }\n\
             - { name: one, vm: { systemAssigned: false, userAssigned: [b] } }\n\
             - { name: system, vm: { userAssigned: [a, b] } }\n\
             - { name: default }\n\
             identities: [ { name: a }, { name: b } ]\n",
            "test",
        )
        .unwrap();
        let (status, body) = token_without_selector(&s, "multi").await;
        assert_eq!(
            (status, body.as_str()),
            (
                400,
                r#"{"error":"invalid_request","error_description":"Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"}"#
            )
        );
        assert_eq!(body.len(), 168);
        let (status, body) = token_without_selector(&s, "bare").await;
        assert_eq!(
            (status, body.as_str()),
            (
                400,
                r#"{"error":"invalid_request","error_description":"Identity not found"}"#
            )
        );
        let appid = |body: &str| {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["client_id"].as_str().unwrap().to_string()
        };
        let (status, body) = token_without_selector(&s, "one").await;
        assert_eq!((status, appid(&body)), (200, s.identities[1].client_id()));
        // With a system identity, no selector means the system identity (not a user-assigned one).
        for node in ["system", "default"] {
            let (status, body) = token_without_selector(&s, node).await;
            assert_eq!(status, 200, "{node}: {body}");
            let id = appid(&body);
            assert!(
                s.identities.iter().all(|i| i.client_id() != id),
                "{node}: the system identity answers, got {id}"
            );
        }
    }

    #[test]
    fn vm_layout_validation() {
        for (bad, why) in [
            ("vm: { userAssigned: [nope] }", "not in identities"),
            ("vm: { userAssigned: [a, a] }", "twice"),
            ("vm: { userAssigned: [off] }", "onVm is false"),
        ] {
            let text = format!(
                "name: x\nnodes: [ {{ name: n1, {bad} }} ]\nidentities: [ {{ name: a }}, {{ name: off, onVm: false }} ]\n"
            );
            let e = Scenario::parse(&text, "t").unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
