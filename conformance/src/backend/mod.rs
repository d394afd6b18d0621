//! The one interface cases use to touch the world: [`Backend`].
//!
//! Owns the trait (and re-exports the harness's view of the topology, [`World`]: nodes and pods with their
//! addresses, from [`crate::world`]), and
//! the shared pieces every backend needs (the interceptor process supervisor in [`interceptor`], the
//! in-process mock-imds / API server wiring in [`services`]). Cases never see namespaces, PIDs or ports:
//! they say "connect as pod P to IMDS", "read the journal of node N", "restart the interceptor on node N",
//! "run iptables in node N". Implementations:
//! - [`loopback::Loopback`] — unprivileged; pods are distinct 127.0.0.0/8 source addresses; the interceptor
//!   is reached directly (no kernel redirect); kernel operations return [`BackendError::Unsupported`].
//! - [`netns::Netns`] — root; the netns helper's `Topology` (SPEC §4): nodes, per-VM host-side namespaces
//!   owning 169.254.169.254, pods behind veths, real iptables and conntrack.
//! - [`crate::kind::KindBackend`] — a kind cluster (all of it in `kind/`): real pods running the probe
//!   (connections through [`relay`]), a mock-imds pod per node that owns 169.254.169.254 and is routed to by the node, the
//!   interceptor as a DaemonSet, the real API server behind [`ClusterApi`].
//!
//! This module must not judge anything (that is the catalogue's job) and must not depend on imds-proxy:
//! the interceptor is a black-box process.

pub mod interceptor;
pub mod loopback;
pub mod netns;
pub mod relay;
pub mod services;
pub mod startup;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpStream;

use crate::case::{BackendKind, BoxFut};
use crate::http::SendError;
pub use crate::world::{NodeView, PodView, World};
use kube_test_apiserver::{ApiServer, Stats};

/// The IMDS address every pod talks to.
pub const IMDS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The IMDS port.
pub const IMDS_PORT: u16 = 80;

/// Errors from backend operations.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot do this at all (e.g. iptables on loopback).
    #[error("not supported on the {backend} backend: {what}")]
    Unsupported {
        /// Which backend.
        backend: BackendKind,
        /// What was asked.
        what: String,
    },
    /// A name that is not in the scenario.
    #[error("unknown {kind} {name:?}")]
    Unknown {
        /// `pod` / `node`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Setting up or driving the environment failed.
    #[error("{context}: {message}")]
    Env {
        /// What was being done.
        context: String,
        /// Why it failed.
        message: String,
    },
}

impl BackendError {
    /// Builds an [`BackendError::Env`].
    pub fn env(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        BackendError::Env {
            context: context.into(),
            message: message.to_string(),
        }
    }
}

/// Where a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `169.254.169.254:80` as the caller sees it: non-host pods are intercepted (when an interceptor
    /// redirects), host-network callers reach their VM's IMDS.
    Imds,
    /// The interceptor's node-local listener (`127.0.0.1:<listen port>`), as a host-network caller
    /// (e.g. `/host/token`). Only meaningful from host-network pods / node names.
    InterceptorLocal,
    /// The node's IMDS itself, bypassing every rule and the interceptor: the reference for pass-through
    /// comparisons. The caller name selects the node (a pod selects its node).
    DirectImds,
    /// The test API server (a flow unrelated to IMDS, for "unrelated flows survive").
    ApiServer,
    /// `127.0.0.1:<port>` in the caller's own network namespace (e.g. the interceptor's health probe,
    /// seen from its node).
    NodeLocal(u16),
}

/// Output of a command run inside a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

/// A program to run inside a pod's network namespace, as an application of the pod would (the SDK area's
/// real clients). The environment is exactly `env` (nothing is inherited).
#[derive(Debug, Clone)]
pub struct PodCommand {
    /// The program (an absolute path, or a name looked up in `env`'s `PATH`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Killed after this long.
    pub timeout: Duration,
}

/// What became of a [`PodCommand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRun {
    /// It exited (or was killed by a signal: code -1).
    Finished(ExecOutput),
    /// It was still running at its timeout and was killed.
    TimedOut,
}

/// One request seen by a mock IMDS: mock-imds's own type, read in-process or decoded from its
/// `GET /_mock/journal` (the kind backend).
pub use mock_imds::journal::JournalEntry;

/// What cases ask of a [`JournalEntry`] beyond its fields.
pub trait JournalEntryExt {
    /// First header with this name (case-insensitive).
    fn header(&self, name: &str) -> Option<&str>;
}

impl JournalEntryExt for JournalEntry {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What an API server can tell about the load its clients put on it.
#[derive(Debug, Clone)]
pub enum ApiLoad {
    /// Per-client accounting (the test API server: each node's interceptor is one client).
    PerClient(Stats),
    /// Only totals per resource, as a real API server's `/metrics` gives them (`apiserver_watch_events_total`
    /// summed over kinds of the same resource), for all watchers together.
    Aggregate {
        /// Watch events sent, per resource (plural, e.g. `azureassignedidentities`).
        watch_events: BTreeMap<String, u64>,
        /// Where the figures come from.
        source: String,
    },
}

/// Which Kubernetes object a JSON object is: what deletes and the undo lists need.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `apiVersion`, e.g. `aadpodidentity.k8s.io/v1`.
    pub api_version: String,
    /// `kind`, e.g. `AzureAssignedIdentity`.
    pub kind: String,
    /// `metadata.namespace` (empty for cluster-scoped objects).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectRef {
    /// The reference of `obj` (empty strings for missing fields).
    pub fn of(obj: &Value) -> Self {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        ObjectRef {
            api_version: s(&obj["apiVersion"]),
            kind: s(&obj["kind"]),
            namespace: s(&obj["metadata"]["namespace"]),
            name: s(&obj["metadata"]["name"]),
        }
    }

    /// Whether this is a core `v1` Pod.
    pub fn is_pod(&self) -> bool {
        self.api_version == "v1" && self.kind == "Pod"
    }
}

/// The cluster's API as cases use it: the test API server on loopback / netns, the real one on kind.
pub trait ClusterApi: Send + Sync {
    /// Creates or replaces an object.
    fn apply<'a>(&'a self, obj: Value) -> BoxFut<'a, Result<(), BackendError>>;

    /// Deletes the object `obj` names (`apiVersion`, `kind`, namespace, name); absent is fine.
    fn delete<'a>(&'a self, obj: &'a Value) -> BoxFut<'a, Result<(), BackendError>>;

    /// Lists objects of a kind in every namespace.
    fn list<'a>(
        &'a self,
        api_version: &'a str,
        kind: &'a str,
    ) -> BoxFut<'a, Result<Vec<Value>, BackendError>>;

    /// Takes the API server down (connections reset) or back up.
    fn set_available<'a>(&'a self, available: bool) -> BoxFut<'a, Result<(), BackendError>>;

    /// Hangs the API server (connections accepted, nothing answered, open watches silent — a stopped
    /// process) or resumes it.
    fn set_hung<'a>(&'a self, hung: bool) -> BoxFut<'a, Result<(), BackendError>>;

    /// The load figures available.
    fn load<'a>(&'a self) -> BoxFut<'a, Result<ApiLoad, BackendError>>;
}

impl ClusterApi for ApiServer {
    fn apply<'a>(&'a self, obj: Value) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            ApiServer::apply(self, obj)
                .map(|_| ())
                .map_err(|e| BackendError::env("applying to the test API server", e))
        })
    }

    fn delete<'a>(&'a self, obj: &'a Value) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let o = ObjectRef::of(obj);
            ApiServer::delete(self, &o.api_version, &o.kind, &o.namespace, &o.name)
                .map(|_| ())
                .map_err(|e| BackendError::env("deleting from the test API server", e))
        })
    }

    fn list<'a>(
        &'a self,
        api_version: &'a str,
        kind: &'a str,
    ) -> BoxFut<'a, Result<Vec<Value>, BackendError>> {
        Box::pin(async move { Ok(ApiServer::list(self, api_version, kind, None)) })
    }

    fn set_available<'a>(&'a self, available: bool) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            ApiServer::set_available(self, available);
            Ok(())
        })
    }

    fn set_hung<'a>(&'a self, hung: bool) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            ApiServer::set_hung(self, hung);
            Ok(())
        })
    }

    fn load<'a>(&'a self) -> BoxFut<'a, Result<ApiLoad, BackendError>> {
        Box::pin(async move { Ok(ApiLoad::PerClient(self.stats())) })
    }
}

/// What a case may ask of an environment. All methods take `&self`: backends keep their mutable state
/// (interceptor processes) behind locks so a case can hold several borrows at once.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Nodes and pods with their addresses.
    fn world(&self) -> &World;

    /// The cluster's API server (apply / delete objects, availability, load).
    fn api(&self) -> &dyn ClusterApi;

    /// Cuts every node off from the API server (packets dropped both ways, as a network partition) or
    /// heals the cut. Only backends with a real network path between nodes and the API server can.
    fn set_api_partitioned<'a>(
        &'a self,
        partitioned: bool,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if !partitioned {
                return Ok(());
            }
            Err(BackendError::Unsupported {
                backend: self.kind(),
                what: "cutting the nodes off from the API server (no network path to cut)".into(),
            })
        })
    }

    /// Opens a TCP connection from `from` (a pod name, or a node name = a node process) to `to`.
    /// A DROP rule shows up as [`SendError::ConnectTimeout`] after `timeout`.
    fn connect<'a>(
        &'a self,
        from: &'a str,
        to: Target,
        timeout: Duration,
    ) -> BoxFut<'a, Result<TcpStream, SendError>>;

    /// The Host header a client would send for `to`.
    fn host_header(&self, to: Target) -> String {
        match to {
            Target::Imds | Target::DirectImds => IMDS_IP.to_string(),
            Target::InterceptorLocal | Target::NodeLocal(_) => "127.0.0.1".into(),
            Target::ApiServer => "kubernetes".into(),
        }
    }

    /// Every request the mock IMDS of `node` has seen (bounded by the mock's journal size).
    fn journal<'a>(&'a self, node: &'a str) -> BoxFut<'a, Result<Vec<JournalEntry>, BackendError>>;

    /// Stops the interceptor of `node`: SIGTERM and wait (`graceful`), or SIGKILL.
    fn stop_interceptor<'a>(
        &'a self,
        node: &'a str,
        graceful: bool,
    ) -> BoxFut<'a, Result<(), BackendError>>;

    /// Starts the interceptor of `node` (again) and waits until it is ready.
    fn start_interceptor<'a>(&'a self, node: &'a str) -> BoxFut<'a, Result<(), BackendError>>;

    /// Whether the interceptor of `node` is currently running (started and not exited).
    fn interceptor_running<'a>(&'a self, node: &'a str) -> BoxFut<'a, bool>;

    /// Runs a command inside `node`'s network namespace (iptables, conntrack...).
    fn exec<'a>(
        &'a self,
        node: &'a str,
        argv: Vec<String>,
    ) -> BoxFut<'a, Result<ExecOutput, BackendError>>;

    /// Runs a program inside pod `pod`'s network namespace (its traffic to 169.254.169.254 is the pod's).
    /// Only backends whose pods are network namespaces of this machine can.
    fn run_in_pod<'a>(
        &'a self,
        pod: &'a str,
        cmd: PodCommand,
    ) -> BoxFut<'a, Result<PodRun, BackendError>> {
        let _ = (pod, cmd);
        Box::pin(async move {
            Err(BackendError::Unsupported {
                backend: self.kind(),
                what: "running a program inside a pod".into(),
            })
        })
    }

    /// The last lines of the interceptor's log on `node` (for FAIL messages and `env up`).
    fn interceptor_log<'a>(&'a self, node: &'a str) -> BoxFut<'a, String>;

    /// Removes everything the backend created. Idempotent; also attempted on drop.
    fn teardown<'a>(&'a self) -> BoxFut<'a, ()>;

    /// Address of the interceptor's health probe (`/healthz`) inside the node, when the interceptor has one.
    fn probe_port(&self) -> Option<u16> {
        None
    }
}

/// Picks a free TCP port on 127.0.0.1 (for loopback interceptors that must be told a port up front).
pub fn free_port() -> Result<u16, BackendError> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| BackendError::env("picking a free port", e))?;
    l.local_addr()
        .map(|a: SocketAddr| a.port())
        .map_err(|e| BackendError::env("picking a free port", e))
}
