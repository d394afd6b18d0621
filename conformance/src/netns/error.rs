//! The single error type of the netns module. Every variant names what was being done (the command line,
//! the namespace, the address) and carries the captured stderr or the OS error, so a failing case in a
//! report says why the environment misbehaved. It owns no behaviour.

use std::{io, net::SocketAddr, time::Duration};

/// Everything that can go wrong while building, using or removing a netns topology.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command ran and exited unsuccessfully.
    #[error("`{command}` exited with {status}: {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    CommandTimeout { command: String, timeout: Duration },
    /// A command could not be started (missing binary, no permission).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// `setns` into `/run/netns/NAME` failed (namespace missing, not root).
    #[error("cannot enter network namespace {ns}: {source}")]
    EnterNamespace {
        ns: String,
        #[source]
        source: io::Error,
    },
    /// Creating, binding or connecting a socket inside a namespace failed.
    #[error("socket {op} {addr} in network namespace {ns}: {source}")]
    Socket {
        ns: String,
        op: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A connect from inside a namespace got no answer in time (what a DROP rule produces).
    #[error("connect from network namespace {ns} to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        ns: String,
        addr: SocketAddr,
        timeout: Duration,
    },
    /// The requested topology cannot be built (bad names, too many nodes, name collisions).
    #[error("invalid topology: {0}")]
    InvalidSpec(String),
    /// `Topology::node` was asked for a node that does not exist.
    #[error("no node named {0:?} in this topology")]
    UnknownNode(String),
    /// `Topology::pod` was asked for a pod that does not exist.
    #[error("no pod named {0:?} in this topology")]
    UnknownPod(String),
    /// A shutdown signal arrived while the topology was being built; what existed was removed.
    #[error("interrupted by a shutdown signal while building the topology")]
    Interrupted,
    /// Teardown could not remove everything carrying the prefix.
    #[error("teardown of {prefix} left behind: {leftovers:?}")]
    Leftovers {
        prefix: String,
        leftovers: Vec<String>,
    },
    /// A tool's output did not have the expected shape.
    #[error("cannot parse {what}: {line:?}")]
    Parse { what: &'static str, line: String },
    /// The short-lived thread that entered a namespace panicked.
    #[error("helper thread for network namespace {0} panicked")]
    ThreadPanicked(String),
    /// Reading `/run/netns` or `/proc` failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    /// True for a connect that timed out (no SYN-ACK, no RST): how an AKS DROP rule shows up.
    pub fn is_connect_timeout(&self) -> bool {
        matches!(self, NetnsError::ConnectTimeout { .. })
    }

    /// The OS error kind of a failed socket operation (e.g. `ConnectionRefused`), if that is what this is.
    pub fn socket_error_kind(&self) -> Option<io::ErrorKind> {
        match self {
            NetnsError::Socket { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}
