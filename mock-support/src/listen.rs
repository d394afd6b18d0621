//! Where a mock listens: a pre-bound standard listener (for example one created inside a network namespace)
//! wins over an address; without either, `127.0.0.1:0` (a random loopback port). The error says which of the
//! two failed.

use std::net::SocketAddr;

/// The default address of a mock: loopback, a random port.
pub const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A listener that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding the address failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The pre-bound listener could not be used (or its address read).
    #[error("cannot use the given listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })
}

/// A pre-bound standard listener, made non-blocking and handed to tokio.
pub fn from_std(l: std::net::TcpListener) -> Result<tokio::net::TcpListener, ListenError> {
    l.set_nonblocking(true).map_err(ListenError::Listener)?;
    tokio::net::TcpListener::from_std(l).map_err(ListenError::Listener)
}

/// `listener` if given, else `addr`, else [`LOOPBACK_ANY_PORT`]; with the address it actually has (a port 0
/// resolved).
pub async fn listener_or_bind(
    listener: Option<std::net::TcpListener>,
    addr: Option<SocketAddr>,
) -> Result<(tokio::net::TcpListener, SocketAddr), ListenError> {
    let l = match listener {
        Some(l) => from_std(l)?,
        None => bind(addr.unwrap_or(LOOPBACK_ANY_PORT)).await?,
    };
    let local = l.local_addr().map_err(ListenError::Listener)?;
    Ok((l, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prebound_listener_wins_over_the_address() -> Result<(), Box<dyn std::error::Error>> {
        let std_l = std::net::TcpListener::bind(LOOPBACK_ANY_PORT)?;
        let want = std_l.local_addr()?;
        let (_l, got) =
            listener_or_bind(Some(std_l), Some(SocketAddr::from(([127, 0, 0, 1], 1)))).await?;
        assert_eq!(got, want);
        let (_l, got) = listener_or_bind(None, None).await?;
        assert!(got.ip().is_loopback() && got.port() != 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_busy_address_names_itself() -> Result<(), Box<dyn std::error::Error>> {
        let (_held, addr) = listener_or_bind(None, None).await?;
        let err = bind(addr)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with(&format!("cannot bind {addr}: ")), "{err}");
        Ok(())
    }
}
