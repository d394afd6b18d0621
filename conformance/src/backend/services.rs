//! In-process services every backend runs: one mock-imds per VM and the shared test API server.
//!
//! Owns how a scenario becomes mock-imds state (the scenario's identities are assigned to every VM's mock)
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
/// with the scenario's on-VM identities assigned.
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
    let mock = MockImds::builder()
        .seed(MOCK_SEED)
        .rate_limits(false)
        .listener(listener)
        .control_listener(control)
        .start()
        .await
        .map_err(|e| BackendError::env(format!("starting mock-imds for {vm_name}"), e))?;
    for id in scenario.identities.iter().filter(|i| i.on_vm) {
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
