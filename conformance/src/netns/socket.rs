//! Sockets that live in a named network namespace while the harness process stays in the root one.
//!
//! A socket belongs to the namespace its creating thread was in at `socket(2)` time, for its whole life.
//! So a short-lived `std::thread` enters `/run/netns/NAME` with `setns(CLONE_NEWNET)`, creates (and for
//! listeners binds) the socket, hands it back and exits; the harness's own threads never change namespace.
//! Tokio's blocking pool is deliberately not used: its threads are reused and would stay in the namespace.
//! This module owns nothing else and never touches routes, rules or sysctls.

use std::{fs::File, io, net::SocketAddr, path::PathBuf, time::Duration};

use nix::sched::CloneFlags;

use super::{cmd::NETNS_RUN_DIR, error::NetnsError};

/// Path of a named namespace's bind mount.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_RUN_DIR).join(ns)
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`, and returns its result. Anything
/// `f` creates that is namespace-bound (sockets, opened `/proc/sys/net` files) belongs to `ns`.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> Result<T, NetnsError> + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("netns-enter".into())
            .spawn_scoped(scope, || {
                let enter_err = |source: io::Error| NetnsError::EnterNamespace {
                    ns: ns.to_string(),
                    source,
                };
                let file = File::open(netns_path(ns)).map_err(enter_err)?;
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| enter_err(io::Error::from(errno)))?;
                f()
            })
            .map_err(|source| NetnsError::Io {
                what: format!("spawning a thread to enter network namespace {ns}"),
                source,
            })?;
        worker
            .join()
            .map_err(|_| NetnsError::ThreadPanicked(ns.to_string()))?
    })
}

/// A TCP listener bound to `addr` inside namespace `ns` (port 0 picks a free port; read it back with
/// `local_addr()`). Returned in non-blocking mode, ready for `tokio::net::TcpListener::from_std`, axum, or
/// `MockImds::builder().listener(..)`.
pub fn bind_in(ns: &str, addr: SocketAddr) -> Result<std::net::TcpListener, NetnsError> {
    let sock_err = |op, source| NetnsError::Socket {
        ns: ns.to_string(),
        op,
        addr,
        source,
    };
    in_netns(ns, || {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| sock_err("bind", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| sock_err("set_nonblocking", e))?;
        Ok(listener)
    })
}

/// An unconnected TCP socket created inside namespace `ns`, of the address family of `addr`; set options
/// or bind a source address on it, then `connect`.
pub fn socket_in(ns: &str, addr: SocketAddr) -> Result<tokio::net::TcpSocket, NetnsError> {
    in_netns(ns, || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        socket.map_err(|source| NetnsError::Socket {
            ns: ns.to_string(),
            op: "create for",
            addr,
            source,
        })
    })
}

/// Connects to `addr` from inside namespace `ns` — a pod's (or node's) client connection without curl.
/// No answer within `timeout` is [`NetnsError::ConnectTimeout`] (what a DROP rule produces); a refusal or
/// reset is [`NetnsError::Socket`] with the OS error (see [`NetnsError::socket_error_kind`]).
pub async fn connect_in(
    ns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, NetnsError> {
    let socket = socket_in(ns, addr)?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => Err(NetnsError::ConnectTimeout {
            ns: ns.to_string(),
            addr,
            timeout,
        }),
        Ok(Err(source)) => Err(NetnsError::Socket {
            ns: ns.to_string(),
            op: "connect to",
            addr,
            source,
        }),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// Writes a sysctl under `/proc/sys/net/…` inside namespace `ns` (e.g. `("net/ipv4/ip_forward", "1")`).
/// `/proc/sys/net` resolves against the opening thread's namespace, so no `sysctl` binary is needed.
pub fn write_sysctl_in(ns: &str, settings: &[(&str, &str)]) -> Result<(), NetnsError> {
    in_netns(ns, || {
        for (key, value) in settings {
            let path = PathBuf::from("/proc/sys").join(key);
            std::fs::write(&path, value).map_err(|source| NetnsError::Io {
                what: format!(
                    "writing {value} to {} in network namespace {ns}",
                    path.display()
                ),
                source,
            })?;
        }
        Ok(())
    })
}

/// Reads a sysctl under `/proc/sys/…` inside namespace `ns`, trimmed.
pub fn read_sysctl_in(ns: &str, key: &str) -> Result<String, NetnsError> {
    in_netns(ns, || {
        let path = PathBuf::from("/proc/sys").join(key);
        std::fs::read_to_string(&path)
            .map(|value| value.trim().to_string())
            .map_err(|source| NetnsError::Io {
                what: format!("reading {} in network namespace {ns}", path.display()),
                source,
            })
    })
}
