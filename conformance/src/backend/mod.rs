//! The one interface cases use to touch the world: [`Backend`].
//!
//! Owns the trait, the harness's view of the topology ([`World`]: nodes and pods with their addresses), and
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

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::case::{BackendKind, BoxFut};
use crate::http::SendError;
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

/// A node as the harness sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// The node's address (`status.hostIP`, source of host-network traffic, the AKS rule's primary NIC IP).
    pub ip: Ipv4Addr,
}

/// A pod as the harness sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Node it runs on.
    pub node: String,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `status.podIP` (the node IP for host-network pods).
    pub ip: Ipv4Addr,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Nodes and pods with backend-specific addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// Nodes in scenario order.
    pub nodes: Vec<NodeView>,
    /// Pods in scenario order.
    pub pods: Vec<PodView>,
}

impl World {
    /// Looks a pod up by name.
    pub fn pod(&self, name: &str) -> Option<&PodView> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Looks a node up by name.
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The IP of node `name` (`0.0.0.0` for an unknown node).
    pub fn node_ip(&self, name: &str) -> std::net::Ipv4Addr {
        self.node(name)
            .map(|n| n.ip)
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
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

/// One request seen by a mock IMDS (the mock's `/_mock/journal` entry, mirrored here so the harness can
/// also read journals it fetched over HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Monotonic sequence number.
    pub seq: u64,
    /// RFC 3339 arrival time.
    pub time: String,
    /// HTTP method.
    pub method: String,
    /// Path as received.
    pub path: String,
    /// Raw query string (may be empty).
    #[serde(default)]
    pub query: String,
    /// Headers in arrival order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// `ip:port` of the peer.
    pub source: String,
    /// Status the mock answered.
    pub status: u16,
}

impl JournalEntry {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
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
            let (av, kind, ns, name) = crate::cluster::object_key(obj);
            ApiServer::delete(self, &av, &kind, &ns, &name)
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
