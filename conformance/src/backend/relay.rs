//! Connections that originate somewhere the harness cannot open sockets itself (a kind pod, a kind node),
//! made by a relay process: `kubectl exec -i <pod> -- /imds-probe relay --connect IP:PORT` (or any command
//! that speaks the probe protocol of [`crate::probe`]).
//!
//! Owns the harness side of that protocol: it reads the probe's status line (so a DROP still shows up as
//! [`SendError::ConnectTimeout`] and a closed port as [`SendError::Refused`]), then hands the case an
//! ordinary local [`TcpStream`] whose other end is pumped to the process's stdin/stdout. A reset the probe
//! saw mid-relay is reproduced on the local socket (SO_LINGER 0), so cases tell RST from FIN exactly as on
//! the other backends. It does not decide which command to run (the kind backend does).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use crate::http::SendError;
use crate::probe::{self, ConnectFailure, Status};

/// Extra time a relay command gets on top of the connect timeout before its status line is due (kubectl
/// exec has to reach the API server and the kubelet first).
pub const STATUS_SLACK: Duration = Duration::from_secs(30);

fn failure(f: ConnectFailure, msg: String) -> SendError {
    match f {
        ConnectFailure::Timeout => SendError::ConnectTimeout,
        ConnectFailure::Refused => SendError::Refused,
        ConnectFailure::Reset => SendError::Reset(msg),
        ConnectFailure::Unreachable | ConnectFailure::Other => SendError::Other(msg),
    }
}

/// Runs `cmd` (a relay command) and returns the local end of the connection it opened.
pub async fn connect(mut cmd: Command, connect_timeout: Duration) -> Result<TcpStream, SendError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{:?}", cmd.as_std());
    let mut child = cmd
        .spawn()
        .map_err(|e| SendError::Other(format!("starting relay {shown}: {e}")))?;
    let (Some(stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(SendError::Other(format!("relay {shown}: no pipes")));
    };
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    let read =
        tokio::time::timeout(connect_timeout + STATUS_SLACK, stdout.read_line(&mut line)).await;
    let status = match read {
        Ok(Ok(n)) if n > 0 => probe::parse_status(&line),
        Ok(_) | Err(_) => None,
    };
    let Some(status) = status else {
        let _ = child.start_kill();
        let mut err = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut err)).await;
        let first = line.trim();
        return Err(SendError::Other(format!(
            "relay {shown} gave no status line (got {first:?}); stderr: {}",
            err.trim()
        )));
    };
    if let Status::Failed(f, msg) = status {
        let _ = child.wait().await;
        return Err(failure(f, msg));
    }
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| SendError::Other(format!("relay: binding a local socket: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SendError::Other(format!("relay: local address: {e}")))?;
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.map_err(|e| SendError::Other(format!("relay: local connect: {e}")))?;
    let (local, _) = accepted.map_err(|e| SendError::Other(format!("relay: local accept: {e}")))?;
    let _ = client.set_nodelay(true);
    tokio::spawn(pump(child, stdin, stdout, stderr, local));
    Ok(client)
}

/// Moves bytes between the local socket and the relay process until the remote side is done.
async fn pump(
    mut child: tokio::process::Child,
    mut stdin: tokio::process::ChildStdin,
    mut stdout: BufReader<tokio::process::ChildStdout>,
    mut stderr: tokio::process::ChildStderr,
    mut local: TcpStream,
) {
    {
        let (mut rd, mut wr) = local.split();
        let upstream = async {
            // Case → remote; EOF from the case half-closes the remote connection through stdin.
            let _ = tokio::io::copy(&mut rd, &mut stdin).await;
            let _ = stdin.shutdown().await;
            std::future::pending::<()>().await
        };
        // The remote side ends the conversation: once its bytes are through, the case's writes no longer
        // matter (dropping `upstream` closes the process's stdin).
        tokio::select! {
            _ = tokio::io::copy(&mut stdout, &mut wr) => {}
            _ = upstream => {}
        }
    }
    drop(stdin);
    let mut err = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stderr.read_to_string(&mut err)).await;
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let reset = matches!(&status, Ok(Ok(s)) if s.code() == Some(probe::EXIT_RESET))
        || err.contains(probe::RESET_LINE);
    if reset {
        // Reproduce the RST: close with a zero linger.
        let _ = socket2::SockRef::from(&local).set_linger(Some(Duration::ZERO));
        drop(local);
    } else {
        let _ = local.shutdown().await;
    }
    let _ = child.start_kill();
}
