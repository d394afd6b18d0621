//! imds-probe, the conformance probe: the small program that runs inside test pods (and host-network
//! node agents) on the kind backend, and the wire protocol the harness speaks with it.
//!
//! Owns `imds-probe relay`, a byte relay between its stdin/stdout and one TCP connection it opens from the
//! pod's own network namespace, and `imds-probe sleep`, the pod's main process. The harness runs
//! `kubectl exec -i <pod> -- /imds-probe relay --connect 169.254.169.254:80 --timeout-ms 5000`, so the
//! connection really originates in the pod (its source IP, its node's PREROUTING/FORWARD, the interceptor's
//! DNAT), and it hands cases an ordinary local `TcpStream` (see `backend::relay`).
//!
//! Protocol (stdout): first one status line, then the connection's bytes.
//! - `IMDS-PROBE OK <local-addr>` — connected; from here stdout carries what the peer sends and stdin what
//!   the harness sends. Stdin EOF half-closes the connection (FIN); the peer's FIN ends the relay, exit 0.
//! - `IMDS-PROBE ERR <timeout|refused|reset|unreachable|other> <message>` — no connection; exit 2.
//! - A reset (RST) while relaying: `IMDS-PROBE reset` on stderr and exit 3, so the harness can reset its
//!   side too (cases tell a reset from a clean close).
//!
//! Only `std` is used: the binary is linked statically into a `FROM scratch` image and must stay small.
//! This module never decides where the probe runs or what it connects to.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// Prefix of every status line.
pub const STATUS_PREFIX: &str = "IMDS-PROBE";
/// Exit code after a connect failure.
pub const EXIT_CONNECT_FAILED: i32 = 2;
/// Exit code after the peer reset the connection mid-relay.
pub const EXIT_RESET: i32 = 3;
/// Exit code for a usage error.
pub const EXIT_USAGE: i32 = 64;
/// The stderr line that announces a reset.
pub const RESET_LINE: &str = "IMDS-PROBE reset";

/// Why a connect failed, as carried on the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No answer within the timeout (a DROP rule).
    Timeout,
    /// RST in answer to the SYN (nothing listens, or a REJECT rule).
    Refused,
    /// Reset during the handshake.
    Reset,
    /// No route / network unreachable.
    Unreachable,
    /// Anything else.
    Other,
}

impl ConnectFailure {
    /// The protocol word.
    pub fn word(self) -> &'static str {
        match self {
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Refused => "refused",
            ConnectFailure::Reset => "reset",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Other => "other",
        }
    }

    /// Classifies an I/O error from `connect`.
    pub fn of(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ConnectFailure::Timeout,
            io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                ConnectFailure::Reset
            }
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                ConnectFailure::Unreachable
            }
            _ => ConnectFailure::Other,
        }
    }

    fn from_word(w: &str) -> Self {
        match w {
            "timeout" => ConnectFailure::Timeout,
            "refused" => ConnectFailure::Refused,
            "reset" => ConnectFailure::Reset,
            "unreachable" => ConnectFailure::Unreachable,
            _ => ConnectFailure::Other,
        }
    }
}

/// A parsed status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Connected from this local address.
    Connected(String),
    /// Not connected.
    Failed(ConnectFailure, String),
}

/// Renders a status line (with its newline).
pub fn status_line(s: &Status) -> String {
    match s {
        Status::Connected(local) => format!("{STATUS_PREFIX} OK {local}\n"),
        Status::Failed(f, msg) => {
            // One line: the message must not break the framing.
            let msg = msg.replace(['\n', '\r'], " ");
            format!("{STATUS_PREFIX} ERR {} {msg}\n", f.word())
        }
    }
}

/// Parses a status line (without or with its newline); `None` when it is not one.
pub fn parse_status(line: &str) -> Option<Status> {
    let rest = line
        .trim_end_matches(['\n', '\r'])
        .strip_prefix(STATUS_PREFIX)?;
    let rest = rest.strip_prefix(' ')?;
    if let Some(local) = rest.strip_prefix("OK") {
        return Some(Status::Connected(local.trim().to_string()));
    }
    let err = rest.strip_prefix("ERR ")?;
    let (word, msg) = err.split_once(' ').unwrap_or((err, ""));
    Some(Status::Failed(
        ConnectFailure::from_word(word),
        msg.to_string(),
    ))
}

/// Arguments of `imds-probe relay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayArgs {
    /// Where to connect.
    pub connect: SocketAddr,
    /// Connect timeout.
    pub timeout: Duration,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Relay one connection.
    Relay(RelayArgs),
    /// Sleep until killed (the pod's main process).
    Sleep,
    /// Print the version.
    Version,
    /// Print the usage.
    Help,
}

/// The usage text.
pub const USAGE: &str = "\
imds-probe — the conformance probe that runs inside kind test pods (imds-conformance).

usage:
  imds-probe relay --connect IP:PORT [--timeout-ms N]
      Connect from this network namespace and relay stdin/stdout over the connection. The first stdout
      line is `IMDS-PROBE OK <local-addr>` or `IMDS-PROBE ERR <kind> <message>` (exit 2); a reset while
      relaying prints `IMDS-PROBE reset` on stderr (exit 3). Default timeout 5000 ms.
  imds-probe sleep        Sleep until terminated (a test pod's main process).
  imds-probe --version
";

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        None | Some("-h") | Some("--help") | Some("help") => Ok(Command::Help),
        Some("-V") | Some("--version") => Ok(Command::Version),
        Some("sleep") => match it.next() {
            None => Ok(Command::Sleep),
            Some(a) => Err(format!("sleep takes no arguments (got {a:?})")),
        },
        Some("relay") => {
            let mut connect = None;
            let mut timeout = Duration::from_millis(5000);
            while let Some(a) = it.next() {
                let (key, inline) = match a.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (a.as_str(), None),
                };
                let mut value = |name: &str| {
                    inline
                        .clone()
                        .or_else(|| it.next().cloned())
                        .ok_or_else(|| format!("{name} needs a value"))
                };
                match key {
                    "--connect" => {
                        let v = value("--connect")?;
                        connect = Some(v.parse::<SocketAddr>().map_err(|e| {
                            format!("--connect {v:?}: {e} (want IP:PORT, e.g. 169.254.169.254:80)")
                        })?);
                    }
                    "--timeout-ms" => {
                        let v = value("--timeout-ms")?;
                        let ms: u64 = v.parse().map_err(|e| format!("--timeout-ms {v:?}: {e}"))?;
                        if ms == 0 {
                            return Err("--timeout-ms must be at least 1".into());
                        }
                        timeout = Duration::from_millis(ms);
                    }
                    other => return Err(format!("relay: unknown argument {other:?}")),
                }
            }
            let connect = connect.ok_or("relay needs --connect IP:PORT")?;
            Ok(Command::Relay(RelayArgs { connect, timeout }))
        }
        Some(other) => Err(format!("unknown command {other:?}")),
    }
}

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// The connect failed (status line already written).
    ConnectFailed,
    /// The peer closed cleanly.
    Closed,
    /// The peer reset the connection.
    Reset,
    /// Writing to stdout failed (the harness went away).
    OutputGone,
}

impl RelayEnd {
    /// The process exit code for this end.
    pub fn exit_code(&self) -> i32 {
        match self {
            RelayEnd::ConnectFailed => EXIT_CONNECT_FAILED,
            RelayEnd::Reset => EXIT_RESET,
            RelayEnd::Closed | RelayEnd::OutputGone => 0,
        }
    }
}

/// Runs `relay`: connect, write the status line to `out`, then copy `input` → socket (in a thread) and
/// socket → `out` until the peer closes.
pub fn relay<R, W>(args: &RelayArgs, input: R, mut out: W) -> io::Result<RelayEnd>
where
    R: Read + Send + 'static,
    W: Write,
{
    let stream = match TcpStream::connect_timeout(&args.connect, args.timeout) {
        Ok(s) => s,
        Err(e) => {
            let status = Status::Failed(
                ConnectFailure::of(&e),
                format!("connect {} failed: {e}", args.connect),
            );
            out.write_all(status_line(&status).as_bytes())?;
            out.flush()?;
            return Ok(RelayEnd::ConnectFailed);
        }
    };
    // Small requests should leave at once.
    stream.set_nodelay(true)?;
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    out.write_all(status_line(&Status::Connected(local)).as_bytes())?;
    out.flush()?;
    let mut upstream = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut input = input;
        // Errors here surface on the reading side (reset) or do not matter (peer gone).
        let _ = io::copy(&mut input, &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut stream = stream;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(RelayEnd::Closed),
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    return Ok(RelayEnd::OutputGone);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(RelayEnd::Reset);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The whole program: parses `args` (without the program name), runs, and returns the exit code.
pub fn main_with(args: &[String]) -> i32 {
    match parse_args(args) {
        Err(e) => {
            eprintln!("imds-probe: {e}\n\n{USAGE}");
            EXIT_USAGE
        }
        Ok(Command::Help) => {
            print!("{USAGE}");
            0
        }
        Ok(Command::Version) => {
            println!("imds-probe {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Command::Sleep) => loop {
            // A pod's PID 1 ignores SIGTERM without a handler; the pods set a 1 s grace period instead.
            std::thread::sleep(Duration::from_secs(3600));
        },
        Ok(Command::Relay(a)) => match relay(&a, io::stdin(), io::stdout().lock()) {
            Ok(end) => {
                if end == RelayEnd::Reset {
                    eprintln!("{RESET_LINE}");
                }
                end.exit_code()
            }
            Err(e) => {
                eprintln!("imds-probe: relay to {} failed: {e}", a.connect);
                1
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn status_lines_round_trip() {
        for s in [
            Status::Connected("10.244.1.5:40000".into()),
            Status::Failed(
                ConnectFailure::Timeout,
                "connect 169.254.169.254:80 failed".into(),
            ),
            Status::Failed(ConnectFailure::Refused, String::new()),
        ] {
            assert_eq!(parse_status(&status_line(&s)), Some(s));
        }
        // Newlines in a message cannot break the framing.
        let line = status_line(&Status::Failed(ConnectFailure::Other, "a\nb".into()));
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(parse_status("HTTP/1.1 200 OK"), None);
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_args(&args("relay --connect 169.254.169.254:80 --timeout-ms 250")),
            Ok(Command::Relay(RelayArgs {
                connect: "169.254.169.254:80".parse().unwrap(),
                timeout: Duration::from_millis(250),
            }))
        );
        assert_eq!(
            parse_args(&args("relay --connect=127.0.0.1:2579")),
            Ok(Command::Relay(RelayArgs {
                connect: "127.0.0.1:2579".parse().unwrap(),
                timeout: Duration::from_millis(5000),
            }))
        );
        assert_eq!(parse_args(&args("sleep")), Ok(Command::Sleep));
        assert!(
            parse_args(&args("relay"))
                .unwrap_err()
                .contains("--connect")
        );
        assert!(parse_args(&args("relay --connect nope")).is_err());
        assert!(parse_args(&args("relay --connect 1.2.3.4:5 --timeout-ms 0")).is_err());
        assert!(parse_args(&args("dance")).is_err());
    }

    #[test]
    fn refused_connect_reports_refused() {
        // A port that was just free on loopback: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = RelayArgs {
            connect: SocketAddr::from(([127, 0, 0, 1], port)),
            timeout: Duration::from_secs(2),
        };
        let mut out = Vec::new();
        let end = relay(&a, io::empty(), &mut out).unwrap();
        assert_eq!(end, RelayEnd::ConnectFailed);
        let line = String::from_utf8(out).unwrap();
        assert!(
            matches!(
                parse_status(&line),
                Some(Status::Failed(ConnectFailure::Refused, _))
            ),
            "{line}"
        );
    }

    #[test]
    fn relays_both_ways() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(b"echo:").unwrap();
            s.write_all(&got).unwrap();
        });
        let a = RelayArgs {
            connect: addr,
            timeout: Duration::from_secs(2),
        };
        let mut out = Vec::new();
        let end = relay(&a, io::Cursor::new(b"hello".to_vec()), &mut out).unwrap();
        server.join().unwrap();
        assert_eq!(end, RelayEnd::Closed);
        let text = String::from_utf8(out).unwrap();
        let (status, rest) = text.split_once('\n').unwrap();
        assert!(matches!(parse_status(status), Some(Status::Connected(_))));
        assert_eq!(rest, "echo:hello");
    }
}
