//! Why a vendor's interceptor did not start, in the words of the contract (docs/VENDORS.md §4–5): it
//! **exited at once**, **listens on the wrong address**, **never became ready**, or (checked by the
//! runner once it is ready) **installs no redirect rules** — each with what the harness observed (exit
//! status, readiness answers, the node's listening sockets, the nat rules) and the tail of its log.
//!
//! Owns the start-up observations ([`StartFailure`]), their classification ([`Diagnosis`]) and the
//! message; the polling itself is [`super::interceptor::NodeInterceptor::start`]'s, the observations
//! that need the node (sockets, nat table) are the backend's.

use std::time::Duration;

use tokio::net::TcpStream;

use super::BackendError;
use crate::http::{Conn, Request, SendError};

/// How many log lines a start-up error shows.
pub const LOG_TAIL_LINES: usize = 15;

/// What the harness saw when a vendor interceptor did not start.
#[derive(Debug)]
pub enum StartFailure {
    /// The process could not be spawned, or the built-in interceptor's own readiness failed.
    Other(BackendError),
    /// The process exited before it accepted a connection on the listen address.
    Exited {
        /// Its exit status, as the OS reports it (`exit status: 3`, `signal: 9 (SIGKILL)`).
        status: String,
        /// How long after the spawn it was seen gone.
        after: Duration,
        /// Its log's tail.
        log_tail: String,
    },
    /// Alive, but nothing accepted a connection on the listen address within the budget.
    NotListening {
        /// How long the harness polled.
        waited: Duration,
        /// The node's listening sockets while it ran (`None`: not observable on this backend).
        listening: Option<Vec<String>>,
        /// Its log's tail.
        log_tail: String,
    },
    /// Listening, but `GET /healthz` on the probe port never answered 200 `Active` within the budget.
    NotReady {
        /// How long the harness polled.
        waited: Duration,
        /// The distinct answers seen, in order, each with how many times.
        answers: Vec<(String, usize)>,
        /// Its log's tail.
        log_tail: String,
    },
}

/// The readiness answers of one start, counted (consecutive repeats collapse).
#[derive(Debug, Default)]
pub struct Answers(Vec<(String, usize)>);

impl Answers {
    /// Records one answer.
    pub fn push(&mut self, a: String) {
        match self.0.last_mut() {
            Some((last, n)) if *last == a => *n += 1,
            _ => self.0.push((a, 1)),
        }
    }

    /// The answers, in order.
    pub fn into_vec(self) -> Vec<(String, usize)> {
        self.0
    }
}

/// One readiness probe: `GET /healthz` on a connected stream. `Ok(())` when it answers 200 with the body
/// `Active` (surrounding whitespace ignored); otherwise what it answered, for the message.
pub async fn healthz(stream: Result<TcpStream, SendError>) -> Result<(), String> {
    let stream = stream.map_err(|e| e.to_string())?;
    let mut conn = Conn::new(stream, "127.0.0.1");
    match conn
        .send(&Request::get("/healthz"), false, Duration::from_secs(2))
        .await
    {
        Ok(r) if r.status == 200 && r.text().trim() == "Active" => Ok(()),
        Ok(r) => {
            let body: String = r.text().trim().chars().take(60).collect();
            Err(format!("{} {body:?}", r.status))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Which contract point a start-up failure broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diagnosis {
    /// The process exited before listening.
    ExitedAtOnce,
    /// Something of it listens, but not on `127.0.0.1:{listen_port}`.
    WrongAddress,
    /// It runs but never listened, or listens but `/healthz` never said `Active`.
    NeverReady,
    /// Ready, but the node's nat table has no redirect for 169.254.169.254.
    NoRedirectRules,
}

impl Diagnosis {
    /// The words every message starts with.
    pub fn words(self) -> &'static str {
        match self {
            Diagnosis::ExitedAtOnce => "exited at once",
            Diagnosis::WrongAddress => "listens on the wrong address",
            Diagnosis::NeverReady => "never became ready",
            Diagnosis::NoRedirectRules => "installs no redirect rules",
        }
    }
}

/// A listening TCP socket seen in the node, as `ss -Htln` prints its local address.
pub fn listening_sockets(ss_output: &str) -> Vec<String> {
    ss_output
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
        .collect()
}

/// Classifies a failure; `listen_port` / `probe_port` are the contract's ports.
pub fn diagnose(f: &StartFailure, listen_port: u16, probe_port: u16) -> Option<Diagnosis> {
    match f {
        StartFailure::Other(_) => None,
        StartFailure::Exited { .. } => Some(Diagnosis::ExitedAtOnce),
        StartFailure::NotReady { .. } => Some(Diagnosis::NeverReady),
        StartFailure::NotListening { listening, .. } => {
            // Any listener but the probe is a listener meant for pods, on the wrong address or port.
            let elsewhere = listening.as_deref().unwrap_or_default().iter().any(|a| {
                let port = a.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                port == Some(listen_port) || port != Some(probe_port)
            });
            Some(if elsewhere {
                Diagnosis::WrongAddress
            } else {
                Diagnosis::NeverReady
            })
        }
    }
}

/// What the harness knows about the node when a start failed.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts<'a> {
    /// Node name.
    pub node: &'a str,
    /// The listen address the contract requires.
    pub listen: String,
    /// The probe address.
    pub probe: String,
}

/// The error for a failed start: which contract point, what was observed, the log's tail.
pub fn start_error(f: StartFailure, facts: &NodeFacts<'_>) -> BackendError {
    let listen_port = port_of(&facts.listen);
    let probe_port = port_of(&facts.probe);
    let d = diagnose(&f, listen_port, probe_port);
    let sockets = |listening: Option<Vec<String>>| match listening {
        Some(l) if l.is_empty() => "listening sockets in the node: none".to_string(),
        Some(l) => format!("listening sockets in the node: {}", l.join(", ")),
        None => "(listening sockets not observable on this backend)".to_string(),
    };
    let (msg, log_tail) = match f {
        StartFailure::Other(e) => return e,
        StartFailure::Exited {
            status,
            after,
            log_tail,
        } => (
            format!(
                "it exited {:.1} s after start ({status}) before accepting a connection on {}",
                after.as_secs_f64(),
                facts.listen
            ),
            log_tail,
        ),
        StartFailure::NotListening {
            waited,
            listening,
            log_tail,
        } => (
            format!(
                "it is running but nothing accepted a connection on {} within {:.0} s (the contract: listen on \
                 127.0.0.1:{{listen_port}}); {}",
                facts.listen,
                waited.as_secs_f64(),
                sockets(listening)
            ),
            log_tail,
        ),
        StartFailure::NotReady {
            waited,
            answers,
            log_tail,
        } => {
            let seen: Vec<String> = answers
                .iter()
                .map(|(a, n)| {
                    if *n > 1 {
                        format!("{a} (×{n})")
                    } else {
                        a.clone()
                    }
                })
                .collect();
            (
                format!(
                    "it listens on {} but GET /healthz on {} did not answer 200 `Active` within {:.0} s; it \
                     answered: {}",
                    facts.listen,
                    facts.probe,
                    waited.as_secs_f64(),
                    if seen.is_empty() {
                        "nothing".to_string()
                    } else {
                        seen.join(", then ")
                    }
                ),
                log_tail,
            )
        }
    };
    let words = d.map(Diagnosis::words).unwrap_or("did not start");
    BackendError::env(
        format!("interceptor on {} {words}", facts.node),
        with_log(&msg, &log_tail),
    )
}

/// The message for a ready interceptor whose node has no IMDS redirect in its nat table.
pub fn no_rules_error(node: &str, nat_imds_lines: &[&str], log_tail: &str) -> BackendError {
    let seen = if nat_imds_lines.is_empty() {
        "no rule mentions 169.254.169.254".to_string()
    } else {
        format!(
            "rules mentioning 169.254.169.254, none a DNAT/REDIRECT: {}",
            nat_imds_lines.join(" | ")
        )
    };
    BackendError::env(
        format!(
            "interceptor on {node} {}",
            Diagnosis::NoRedirectRules.words()
        ),
        with_log(
            &format!(
                "it is ready (GET /healthz answered `Active`) and claims `iptables`, but `iptables-save -t nat` \
                 in the node shows no DNAT/REDIRECT of 169.254.169.254 (docs/VENDORS.md §5: install the redirect \
                 before answering `Active`); {seen}"
            ),
            log_tail,
        ),
    )
}

fn with_log(msg: &str, log_tail: &str) -> String {
    if log_tail.trim().is_empty() {
        format!("{msg}\n--- its log is empty")
    } else {
        format!("{msg}\n--- last lines of its log:\n{log_tail}")
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts<'static> {
        NodeFacts {
            node: "node-1",
            listen: "127.0.0.1:2579".into(),
            probe: "127.0.0.1:8085".into(),
        }
    }

    #[test]
    fn each_failure_names_its_contract_point_and_observation() {
        let exited = StartFailure::Exited {
            status: "exit status: 3".into(),
            after: Duration::from_millis(120),
            log_tail: "vendor: bad config".into(),
        };
        let e = start_error(exited, &facts()).to_string();
        assert!(
            e.starts_with(
                "interceptor on node-1 exited at once: it exited 0.1 s after start (exit status: 3)"
            ),
            "{e}"
        );
        assert!(
            e.ends_with("--- last lines of its log:\nvendor: bad config"),
            "{e}"
        );

        let not_listening = |sockets: &[&str]| StartFailure::NotListening {
            waited: Duration::from_secs(20),
            listening: Some(sockets.iter().map(|s| s.to_string()).collect()),
            log_tail: String::new(),
        };
        let e = start_error(not_listening(&["0.0.0.0:2580", "*:8085"]), &facts()).to_string();
        assert!(
            e.starts_with("interceptor on node-1 listens on the wrong address"),
            "{e}"
        );
        assert!(
            e.contains("listening sockets in the node: 0.0.0.0:2580, *:8085"),
            "{e}"
        );
        assert!(e.ends_with("--- its log is empty"), "{e}");
        let e = start_error(not_listening(&["10.224.0.10:2579"]), &facts()).to_string();
        assert!(e.contains("wrong address"), "{e}");
        // Only the probe (or nothing) listens: it never got as far as listening for pods.
        let e = start_error(not_listening(&["*:8085"]), &facts()).to_string();
        assert!(
            e.starts_with("interceptor on node-1 never became ready"),
            "{e}"
        );
        let e = start_error(not_listening(&[]), &facts()).to_string();
        assert!(e.contains("listening sockets in the node: none"), "{e}");

        let mut answers = Answers::default();
        for a in [
            "connection refused",
            "200 \"Not Active\"",
            "200 \"Not Active\"",
        ] {
            answers.push(a.into());
        }
        let e = start_error(
            StartFailure::NotReady {
                waited: Duration::from_secs(20),
                answers: answers.into_vec(),
                log_tail: "x".into(),
            },
            &facts(),
        )
        .to_string();
        assert!(
            e.starts_with("interceptor on node-1 never became ready"),
            "{e}"
        );
        assert!(
            e.contains("answered: connection refused, then 200 \"Not Active\" (×2)"),
            "{e}"
        );

        let e = no_rules_error(
            "node-1",
            &["-A OUTPUT -d 169.254.169.254/32 -j ACCEPT"],
            "y",
        )
        .to_string();
        assert!(
            e.starts_with("interceptor on node-1 installs no redirect rules"),
            "{e}"
        );
        assert!(e.contains("none a DNAT/REDIRECT: -A OUTPUT"), "{e}");
    }

    #[test]
    fn ss_output_gives_local_addresses() {
        let ss = "LISTEN 0      5          0.0.0.0:8085       0.0.0.0:*\nLISTEN 0 128 [::1]:2579 [::]:*\n";
        assert_eq!(listening_sockets(ss), vec!["0.0.0.0:8085", "[::1]:2579"]);
    }
}
