//! An environment's logs: what `env up` writes into its log directory while it stands, and the `env logs`
//! and `env journal` commands that read them.
//!
//! Files (plain text, no colour): `<node>-interceptor.log` (the interceptor's own output, written by the
//! backend), `imds.log` (one line per request each VM's mock IMDS received, from its journal) and
//! `apiserver.log` (the test API server's requests per client, resource and verb, as they happen, to the
//! second). The directory is kept after `env down`. `env journal` asks a VM's mock for its full journal
//! (headers included) through its control API, which only the host side of that VM reaches.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mock_imds::MockImds;
use mock_imds::journal::JournalEntry;

use super::state::{EnvState, Liveness};

/// The IMDS request log's file name.
pub const IMDS_LOG: &str = "imds.log";
/// The API server request log's file name.
pub const APISERVER_LOG: &str = "apiserver.log";

/// A node's interceptor log's file name (the netns backend writes it).
pub fn interceptor_log(node: &str) -> String {
    format!("{node}-interceptor.log")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn append(path: &Path, text: &str) {
    if text.is_empty() {
        return;
    }
    // A log line that cannot be written is not worth stopping the environment for.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// `s` with control characters escaped (`\u{1b}`): what pods sent never drives the reader's terminal.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One journal entry as a log line: `TIME NODE SOURCE METHOD PATH?QUERY -> STATUS`.
pub fn journal_line(node: &str, e: &JournalEntry) -> String {
    let q = if e.query.is_empty() {
        String::new()
    } else {
        format!("?{}", e.query)
    };
    let status = if e.status == 0 {
        "reset".to_string()
    } else {
        e.status.to_string()
    };
    printable(&format!(
        "{} {node} {} {} {}{q} -> {status}",
        e.time, e.source, e.method, e.path
    ))
}

/// Writes `imds.log` and `apiserver.log`: remembers what it wrote so each call appends only what is new.
pub struct Pump<'a> {
    mocks: Vec<(String, &'a MockImds)>,
    api: &'a kube_test_apiserver::ApiServer,
    imds_log: PathBuf,
    api_log: PathBuf,
    seen: BTreeMap<String, u64>,
    counts: BTreeMap<(String, String, String), u64>,
}

impl<'a> Pump<'a> {
    /// A pump for these mocks (node, mock) and this API server, into log directory `dir`.
    pub fn new(
        mocks: Vec<(String, &'a MockImds)>,
        api: &'a kube_test_apiserver::ApiServer,
        dir: &Path,
    ) -> Self {
        Pump {
            mocks,
            api,
            imds_log: dir.join(IMDS_LOG),
            api_log: dir.join(APISERVER_LOG),
            seen: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Appends the journal entries and API server requests that are new since the last call.
    pub fn once(&mut self) {
        let mut out = String::new();
        for (node, mock) in &self.mocks {
            let last = self.seen.get(node).copied();
            for e in mock.journal() {
                if last.is_none_or(|l| e.seq > l) {
                    out.push_str(&journal_line(node, &e));
                    out.push('\n');
                    self.seen.insert(node.clone(), e.seq);
                }
            }
        }
        append(&self.imds_log, &out);
        let mut out = String::new();
        let t = now();
        for (client, c) in self.api.stats().clients {
            for (resource, r) in &c.resources {
                let mut kinds: Vec<(String, u64)> = r.requests.clone().into_iter().collect();
                kinds.push(("watch-event".into(), r.watch_events));
                for (verb, n) in kinds {
                    let key = (client.clone(), resource.clone(), verb.clone());
                    let before = self.counts.insert(key, n).unwrap_or(0);
                    if n > before {
                        out.push_str(&format!(
                            "{t} {client} {verb} {resource} +{} (total {n})\n",
                            n - before
                        ));
                    }
                }
            }
        }
        append(&self.api_log, &out);
    }

    /// [`Pump::once`] every 500 ms, forever (the caller stops polling it at teardown, then calls `once`
    /// a last time).
    pub async fn run(&mut self) {
        loop {
            self.once();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The log files `which` selects (`None`: all), as (label, path).
pub fn select_logs(
    state: &EnvState,
    which: Option<&str>,
) -> Result<Vec<(String, PathBuf)>, String> {
    let dir = &state.log_dir;
    let mut all: Vec<(String, PathBuf)> = state
        .host_sides
        .keys()
        .map(|n| (n.clone(), dir.join(interceptor_log(n))))
        .collect();
    all.push(("imds".into(), dir.join(IMDS_LOG)));
    all.push(("apiserver".into(), dir.join(APISERVER_LOG)));
    match which {
        None => Ok(all),
        Some(w) => match all.iter().find(|(l, _)| l == w) {
            Some(x) => Ok(vec![x.clone()]),
            None => {
                let names: Vec<&str> = all.iter().map(|(l, _)| l.as_str()).collect();
                Err(format!(
                    "no log {w:?} in environment {}: a node's interceptor ({}), imds or apiserver",
                    state.name,
                    names[..names.len().saturating_sub(2)].join(", ")
                ))
            }
        },
    }
}

/// Prints the selected logs; with `follow`, keeps printing what is appended until the environment goes
/// down or `stop` completes.
pub async fn print_logs(
    state: &EnvState,
    files: &[(String, PathBuf)],
    follow: bool,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let several = files.len() > 1;
    let mut pos: Vec<u64> = vec![0; files.len()];
    let mut last_label: Option<usize> = None;
    let mut drain =
        |pos: &mut Vec<u64>, out: &mut std::io::StdoutLock<'_>| -> std::io::Result<()> {
            for (i, (label, path)) in files.iter().enumerate() {
                let Ok(mut f) = std::fs::File::open(path) else {
                    continue;
                };
                let len = f.metadata()?.len();
                if len < pos[i] {
                    pos[i] = 0; // truncated
                }
                if len == pos[i] {
                    continue;
                }
                f.seek(SeekFrom::Start(pos[i]))?;
                let mut buf = Vec::new();
                f.take(len - pos[i]).read_to_end(&mut buf)?;
                // Whole lines only while following (a line being written is printed when complete).
                let upto = if follow {
                    buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1)
                } else {
                    buf.len()
                };
                if upto == 0 {
                    continue;
                }
                if several && last_label != Some(i) {
                    writeln!(out, "==> {label} ({}) <==", path.display())?;
                    last_label = Some(i);
                }
                out.write_all(&buf[..upto])?;
                pos[i] += upto as u64;
            }
            out.flush()
        };
    drain(&mut pos, &mut out)?;
    if !follow {
        return Ok(());
    }
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        drain(&mut pos, &mut out)?;
        if state.liveness() == Liveness::Dead {
            // The last lines written at teardown.
            drain(&mut pos, &mut out)?;
            eprintln!(
                "imds-conformance: environment {} is down; logs stay in {}",
                state.name,
                state.log_dir.display()
            );
            return Ok(());
        }
    }
}

/// Reads VM `node`'s journal from its mock's control API (inside the VM's host side).
pub async fn fetch_journal(state: &EnvState, node: &str) -> Result<Vec<JournalEntry>, String> {
    let Some(ns) = state.host_sides.get(node) else {
        let names: Vec<&String> = state.host_sides.keys().collect();
        return Err(format!(
            "no node {node:?} in environment {}; nodes: {names:?}",
            state.name
        ));
    };
    let addr = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        crate::backend::netns::MOCK_CONTROL_PORT,
    ));
    let stream = crate::netns::connect_in(ns, addr, Duration::from_secs(5))
        .await
        .map_err(|e| format!("connecting to {node}'s mock control API in {ns}: {e}"))?;
    let r = crate::http::Conn::new(stream, addr.to_string())
        .send(
            &crate::http::Request::get("/_mock/journal"),
            false,
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| format!("GET /_mock/journal from {node}'s mock: {e}"))?;
    if r.status != 200 {
        return Err(format!(
            "GET /_mock/journal from {node}'s mock: HTTP {}: {}",
            r.status,
            r.text()
        ));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("{node}'s journal: {e}"))
}

/// A journal for people: one line per request (as in `imds.log`), its headers indented below.
pub fn pretty_journal(node: &str, entries: &[JournalEntry]) -> String {
    let mut s = String::new();
    for e in entries {
        s.push_str(&format!("#{} {}\n", e.seq, journal_line(node, e)));
        for (k, v) in &e.headers {
            s.push_str(&format!("    {}: {}\n", printable(k), printable(v)));
        }
    }
    if entries.is_empty() {
        s.push_str(&format!("{node}: no request yet\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_read_like_an_access_log() {
        let e = JournalEntry {
            seq: 7,
            time: "2026-01-01T00:00:00Z".into(),
            method: "GET".into(),
            path: "/metadata/identity/oauth2/token".into(),
            query: "api-version=2018-02-01&resource=x".into(),
            headers: vec![("metadata".into(), "true".into())],
            source: "10.224.0.10:4321".into(),
            status: 400,
        };
        assert_eq!(
            journal_line("node-1", &e),
            "2026-01-01T00:00:00Z node-1 10.224.0.10:4321 GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=x -> 400"
        );
        let p = pretty_journal("node-1", std::slice::from_ref(&e));
        assert!(p.starts_with("#7 2026-01-01T00:00:00Z node-1 "), "{p}");
        assert!(p.ends_with("\n    metadata: true\n"), "{p}");
        assert_eq!(pretty_journal("n", &[]), "n: no request yet\n");
        let hostile = JournalEntry {
            path: "/x\u{1b}[2J".into(),
            headers: vec![("x".into(), "\u{1b}]0;title\u{7}".into())],
            ..e
        };
        let p = pretty_journal("n", &[hostile]);
        assert!(!p.contains('\u{1b}') && !p.contains('\u{7}'), "{p}");
        assert!(p.contains("/x\\u{1b}[2J"), "{p}");
    }
}
