//! Typed wrappers around the tools the netns backend drives: `ip` (iproute2), `iptables-save`/
//! `iptables-restore` and `conntrack`, always *inside* a named namespace (`ip -n NS …` or
//! `ip netns exec NS …`). Every run goes through the harness's process runner ([`crate::process`]): it has a
//! timeout, and a failure carries the command line and its stderr.
//!
//! What it must not touch: the root network namespace. The only operations here that do not name a
//! namespace are the registry operations of `ip netns` (add, delete, list) and read-only listings used to
//! prove that nothing was left behind ([`root_link_names`], [`root_iptables_save`]).

use std::{net::IpAddr, time::Duration};

use super::error::NetnsError;
use crate::process::{self, Runner as _, SystemRunner, ToolCmd, ToolError, ToolOutput};

/// Timeout for every command unless a caller chooses another one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where iproute2 keeps the bind mounts that name network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The command line as netns errors name it (unquoted, as typed).
fn command_line(program: &str, args: &[String]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

fn tool_cmd(program: &str, args: &[String], stdin: Option<&[u8]>, timeout: Duration) -> ToolCmd {
    let cmd = ToolCmd::new(program)
        .args(args.iter().cloned())
        .timeout(timeout);
    match stdin {
        Some(bytes) => cmd.stdin(bytes),
        None => cmd,
    }
}

/// The process runner's error in the netns vocabulary (the command line as typed).
fn netns_error(command: String, err: ToolError) -> NetnsError {
    match err {
        ToolError::Timeout { after, .. } => NetnsError::CommandTimeout {
            command,
            timeout: after,
        },
        ToolError::NotFound { source, .. } | ToolError::Spawn { source, .. } => {
            NetnsError::Spawn { command, source }
        }
        ToolError::Failed { code, stderr, .. } => NetnsError::CommandFailed {
            command,
            status: code,
            stderr,
        },
        ToolError::Output { message, .. } => NetnsError::CommandFailed {
            command,
            status: "unexpected output".into(),
            stderr: message,
        },
    }
}

fn check(command: String, output: ToolOutput) -> Result<ToolOutput, NetnsError> {
    if output.success() {
        Ok(output)
    } else {
        Err(NetnsError::CommandFailed {
            command,
            status: match output.code {
                Some(code) => format!("exit code {code}"),
                None => "killed by a signal".into(),
            },
            stderr: output.stderr_text(),
        })
    }
}

/// Runs a program to completion (async, [`process::run_async`]), feeding `stdin` if given; the process is
/// killed on timeout. Returns the output whatever the exit status; see [`run_checked`] for the usual case.
pub async fn run(
    program: &str,
    args: &[String],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<ToolOutput, NetnsError> {
    process::run_async(&tool_cmd(program, args, stdin, timeout))
        .await
        .map_err(|e| netns_error(command_line(program, args), e))
}

/// [`run`], failing unless the exit status is success.
pub async fn run_checked(
    program: &str,
    args: &[String],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<ToolOutput, NetnsError> {
    let output = run(program, args, stdin, timeout).await?;
    check(command_line(program, args), output)
}

/// Blocking twin of [`run_checked`] ([`SystemRunner`]) for paths without a runtime: `Drop`, the signal
/// handler, start-up checks.
pub fn run_blocking(
    program: &str,
    args: &[String],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<ToolOutput, NetnsError> {
    let command = command_line(program, args);
    let output = SystemRunner
        .run(&tool_cmd(program, args, stdin, timeout))
        .map_err(|e| netns_error(command.clone(), e))?;
    check(command, output)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `ip` acting inside one network namespace: every invocation is `ip -n NS …`, so nothing it does can
/// reach the root namespace.
#[derive(Debug, Clone)]
pub struct Ip {
    ns: String,
    timeout: Duration,
}

impl Ip {
    /// `ip -n NS`.
    pub fn new(ns: impl Into<String>) -> Self {
        Ip {
            ns: ns.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Same namespace, another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The namespace this wrapper acts in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    fn args(&self, rest: &[&str]) -> Vec<String> {
        let mut args = vec!["-n".to_string(), self.ns.clone()];
        args.extend(rest.iter().map(|a| a.to_string()));
        args
    }

    /// `ip -n NS ARGS…`; returns stdout.
    pub async fn run(&self, args: &[&str]) -> Result<String, NetnsError> {
        let output = run_checked("ip", &self.args(args), None, self.timeout).await?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `ip -n NS -batch -` with one command per line (without the leading `ip`): one process for a whole
    /// namespace's configuration. iproute2 stops at the first failing line and names it in stderr.
    pub async fn batch(&self, commands: &[String]) -> Result<(), NetnsError> {
        if commands.is_empty() {
            return Ok(());
        }
        let mut script = commands.join("\n");
        script.push('\n');
        let args = self.args(&["-batch", "-"]);
        run_checked("ip", &args, Some(script.as_bytes()), self.timeout)
            .await
            .map_err(|err| match err {
                // The command line alone ("ip -n X -batch -") would not say what was attempted.
                NetnsError::CommandFailed {
                    command,
                    status,
                    stderr,
                } => NetnsError::CommandFailed {
                    command: format!("{command} <<< {script:?}"),
                    status,
                    stderr,
                },
                other => other,
            })?;
        Ok(())
    }

    /// Names of the links in this namespace (`ip -o link show`).
    pub async fn link_names(&self) -> Result<Vec<String>, NetnsError> {
        Ok(parse_link_names(&self.run(&["-o", "link", "show"]).await?))
    }

    /// The routing table (`ip route show`), one route per line.
    pub async fn routes(&self) -> Result<Vec<String>, NetnsError> {
        Ok(self
            .run(&["route", "show"])
            .await?
            .lines()
            .map(str::to_string)
            .collect())
    }
}

/// Link names from `ip -o link show` output ("3: eth0@if4: <…>" → "eth0").
pub fn parse_link_names(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).trim().to_string())
        .collect()
}

/// `ip netns add NAME` (the registry operation; the namespace starts empty with `lo` down).
pub async fn netns_add(name: &str) -> Result<(), NetnsError> {
    run_checked(
        "ip",
        &strings(&["netns", "add", name]),
        None,
        DEFAULT_TIMEOUT,
    )
    .await?;
    Ok(())
}

/// `ip netns delete NAME`; removing a namespace removes the veth ends inside it (and their peers).
pub fn netns_delete_blocking(name: &str) -> Result<(), NetnsError> {
    run_blocking(
        "ip",
        &strings(&["netns", "delete", name]),
        None,
        DEFAULT_TIMEOUT,
    )?;
    Ok(())
}

/// `ip netns list`, names only.
pub async fn netns_list() -> Result<Vec<String>, NetnsError> {
    let output = run_checked("ip", &strings(&["netns", "list"]), None, DEFAULT_TIMEOUT).await?;
    Ok(parse_netns_list(&String::from_utf8_lossy(&output.stdout)))
}

/// Names from `ip netns list` output ("name (id: 3)" → "name").
pub fn parse_netns_list(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Names of the links in the root namespace — read-only, used to prove teardown left nothing behind.
pub async fn root_link_names() -> Result<Vec<String>, NetnsError> {
    let output = run_checked(
        "ip",
        &strings(&["-o", "link", "show"]),
        None,
        DEFAULT_TIMEOUT,
    )
    .await?;
    Ok(parse_link_names(&String::from_utf8_lossy(&output.stdout)))
}

/// `iptables-save` of the root namespace — read-only, used to prove teardown left nothing behind.
pub async fn root_iptables_save() -> Result<String, NetnsError> {
    let output = run_checked("iptables-save", &[], None, DEFAULT_TIMEOUT).await?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn exec_args(ns: &str, args: &[&str]) -> Vec<String> {
    let mut all = strings(&["netns", "exec", ns]);
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

/// `ip netns exec NS ARGS…` with [`DEFAULT_TIMEOUT`]; fails unless the exit status is success, with stderr
/// in the error.
pub async fn exec_in(ns: &str, args: &[&str]) -> Result<ToolOutput, NetnsError> {
    exec_in_with(ns, args, None, DEFAULT_TIMEOUT).await
}

/// [`exec_in`] with stdin and a timeout of the caller's choice.
pub async fn exec_in_with(
    ns: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<ToolOutput, NetnsError> {
    run_checked("ip", &exec_args(ns, args), stdin, timeout).await
}

/// `ip netns exec NS ARGS…` returning the output whatever the exit status (e.g. `iptables -C`, `curl` exit
/// 28); fails only on timeout or when the command cannot start.
pub async fn exec_in_unchecked(
    ns: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<ToolOutput, NetnsError> {
    run("ip", &exec_args(ns, args), None, timeout).await
}

/// A `tokio::process::Command` for `ip netns exec NS PROGRAM`; add arguments, then spawn. `ip netns exec`
/// execs the program, so the child's PID is the program's. The child is killed when its handle is
/// dropped and gets its own process group, so a terminal Ctrl-C reaches only the harness, which tears down
/// in order (teardown kills every process left inside the topology's namespaces, by PID).
pub fn command_in(ns: &str, program: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, program])
        .kill_on_drop(true)
        .process_group(0);
    cmd
}

/// `iptables-save [-t TABLE]` inside a namespace: the kernel's view of the rules, for observations.
pub async fn iptables_save(ns: &str, table: Option<&str>) -> Result<String, NetnsError> {
    let mut args = vec!["iptables-save"];
    if let Some(table) = table {
        args.extend(["-t", table]);
    }
    let output = exec_in(ns, &args).await?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `conntrack -L` inside a namespace, parsed. The conntrack summary line goes to stderr and is ignored.
pub async fn conntrack_list(ns: &str) -> Result<Vec<ConntrackFlow>, NetnsError> {
    let output = exec_in(ns, &["conntrack", "-L"]).await?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            ConntrackFlow::parse(line).ok_or_else(|| NetnsError::Parse {
                what: "conntrack -L line",
                line: line.to_string(),
            })
        })
        .collect()
}

/// One direction of a conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// src, dst, sport, dport as they are found while scanning a line.
type PartialTuple = (Option<IpAddr>, Option<IpAddr>, Option<u16>, Option<u16>);

/// One line of `conntrack -L`: protocol, TCP state, original and reply tuples, flags like `ASSURED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackFlow {
    pub protocol: String,
    pub state: Option<String>,
    pub original: FlowTuple,
    pub reply: Option<FlowTuple>,
    pub flags: Vec<String>,
    pub raw: String,
}

impl ConntrackFlow {
    /// Parses the default `conntrack -L` format, e.g.
    /// `tcp 6 119 TIME_WAIT src=10.244.1.10 dst=169.254.169.254 sport=47864 dport=80 src=169.254.169.254
    /// dst=10.224.0.11 sport=80 dport=47864 [ASSURED] mark=0 use=1`. The first `src/dst/sport/dport` group is
    /// the original direction, the second the reply. `None` when the line lacks the original addresses.
    pub fn parse(line: &str) -> Option<ConntrackFlow> {
        let mut tokens = line.split_whitespace();
        let protocol = tokens.next()?.to_string();
        let mut state = None;
        let mut flags = Vec::new();
        // Up to two tuples, filled in order of appearance.
        let mut tuples: [PartialTuple; 2] = [(None, None, None, None); 2];
        let mut current = 0usize;
        for token in tokens {
            if let Some(flag) = token.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                flags.push(flag.to_string());
            } else if let Some((key, value)) = token.split_once('=') {
                // A second `src=` starts the reply tuple.
                if key == "src" && tuples[current].0.is_some() {
                    if current == 1 {
                        continue;
                    }
                    current = 1;
                }
                let tuple = &mut tuples[current];
                match key {
                    "src" => tuple.0 = value.parse().ok(),
                    "dst" => tuple.1 = value.parse().ok(),
                    "sport" => tuple.2 = value.parse().ok(),
                    "dport" => tuple.3 = value.parse().ok(),
                    _ => {}
                }
            } else if state.is_none()
                // TCP states: ESTABLISHED, TIME_WAIT, SYN_SENT2, …; never the numeric fields.
                && token.starts_with(|c: char| c.is_ascii_uppercase())
                && token
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                state = Some(token.to_string());
            }
        }
        let to_tuple = |t: PartialTuple| {
            Some(FlowTuple {
                src: t.0?,
                dst: t.1?,
                sport: t.2,
                dport: t.3,
            })
        };
        Some(ConntrackFlow {
            protocol,
            state,
            original: to_tuple(tuples[0])?,
            reply: to_tuple(tuples[1]),
            flags,
            raw: line.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_masqueraded_tcp_flow() {
        let line = "tcp      6 119 TIME_WAIT src=10.244.1.10 dst=169.254.169.254 sport=47864 dport=80 \
                    src=169.254.169.254 dst=10.224.0.11 sport=80 dport=47864 [ASSURED] mark=0 use=1";
        let flow = ConntrackFlow::parse(line).expect("parses");
        assert_eq!(flow.protocol, "tcp");
        assert_eq!(flow.state.as_deref(), Some("TIME_WAIT"));
        assert_eq!(flow.original.src.to_string(), "10.244.1.10");
        assert_eq!(flow.original.dst.to_string(), "169.254.169.254");
        assert_eq!(flow.original.dport, Some(80));
        let reply = flow.reply.expect("reply tuple");
        assert_eq!(reply.dst.to_string(), "10.224.0.11");
        assert_eq!(reply.sport, Some(80));
        assert_eq!(flow.flags, vec!["ASSURED".to_string()]);
    }

    #[test]
    fn parses_a_portless_flow_without_state() {
        let line = "unknown  2 596 src=10.244.1.1 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 \
                    dst=10.244.1.1 mark=0 use=1";
        let flow = ConntrackFlow::parse(line).expect("parses");
        assert_eq!(flow.state, None);
        assert_eq!(flow.original.sport, None);
        assert_eq!(flow.flags, vec!["UNREPLIED".to_string()]);
        assert!(ConntrackFlow::parse("garbage").is_none());
    }

    #[test]
    fn parses_link_and_netns_listings() {
        let links = "1: lo: <LOOPBACK,UP> mtu 65536\n3: eth0@if4: <BROADCAST> mtu 1500\n";
        assert_eq!(parse_link_names(links), vec!["lo", "eth0"]);
        let list = "imdsc-1-ab12-n1 (id: 2)\nimdsc-1-ab12-cl\n";
        assert_eq!(
            parse_netns_list(list),
            vec!["imdsc-1-ab12-n1", "imdsc-1-ab12-cl"]
        );
    }

    mod prop {
        use std::net::Ipv4Addr;

        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Any well-formed conntrack line gives back exactly the tuples it was made of.
            #[test]
            fn tcp_lines_round_trip(
                src in any::<u32>(), dst in any::<u32>(), rsrc in any::<u32>(), rdst in any::<u32>(),
                sport in any::<u16>(), dport in any::<u16>(), timeout in 0u32..500_000,
                state in prop::sample::select(vec!["SYN_SENT", "SYN_SENT2", "ESTABLISHED", "TIME_WAIT", "CLOSE"]),
                assured in any::<bool>(),
            ) {
                let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
                let (rsrc, rdst) = (Ipv4Addr::from(rsrc), Ipv4Addr::from(rdst));
                let flag = if assured { "[ASSURED] " } else { "" };
                let line = format!(
                    "tcp      6 {timeout} {state} src={src} dst={dst} sport={sport} dport={dport} \
                     src={rsrc} dst={rdst} sport={dport} dport={sport} {flag}mark=0 use=1"
                );
                let flow = ConntrackFlow::parse(&line).expect("well-formed line parses");
                prop_assert_eq!(flow.state.as_deref(), Some(state));
                prop_assert_eq!(flow.original, FlowTuple {
                    src: src.into(), dst: dst.into(), sport: Some(sport), dport: Some(dport),
                });
                prop_assert_eq!(flow.reply, Some(FlowTuple {
                    src: rsrc.into(), dst: rdst.into(), sport: Some(dport), dport: Some(sport),
                }));
                prop_assert_eq!(flow.flags.len(), usize::from(assured));
            }

            /// Arbitrary text never panics the parser.
            #[test]
            fn arbitrary_text_never_panics(line in ".{0,200}") {
                let _ = ConntrackFlow::parse(&line);
                let _ = parse_link_names(&line);
                let _ = parse_netns_list(&line);
            }
        }
    }
}
