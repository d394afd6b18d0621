//! Conntrack flow deletion for IMDS (REFERENCE A.1, `--enable-conntrack-deletion`) and a flow listing
//! for tests.
//!
//! Why: a pod that connected to IMDS before our DNAT rule existed keeps its conntrack entry, and NAT is
//! decided only for a flow's first packet, so its keep-alive connection would bypass the proxy forever.
//! Deleting the entry makes the kernel reset that connection; the reconnect is intercepted.
//!
//! This module owns only that deletion, restricted to TCP flows whose *original-direction* destination is
//! the IMDS address and port (NMI's netlink filter, same fields). It never deletes anything else and never
//! flushes the table.
//!
//! We drive the `conntrack` tool (conntrack-tools, the netfilter project's own ctnetlink client) rather
//! than netlink from Rust: the filter we need is exactly its `-D -p tcp --orig-dst --orig-port-dst`, its
//! output is stable across 1.4.x, it ships next to `iptables` in every node image that has NET_ADMIN
//! tooling, and the Rust ctnetlink crates do not offer a maintained, filtered delete. The price is one
//! process per deletion, which runs once at startup.

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

use super::NetfilterError;
use super::exec::{DEFAULT_TIMEOUT, run_tool};

/// `conntrack -D` arguments for TCP flows whose original destination is `ip:port`. The address family is
/// chosen from the address (conntrack defaults to IPv4 otherwise).
pub fn delete_args(ip: IpAddr, port: u16) -> Vec<String> {
    if crate::mutant!(ConntrackFlushAll) {
        return ["-D", "-f", family(ip), "-p", "tcp"]
            .map(str::to_owned)
            .into();
    }
    [
        "-D",
        "-f",
        family(ip),
        "-p",
        "tcp",
        "--orig-dst",
        &ip.to_string(),
        "--orig-port-dst",
        &port.to_string(),
    ]
    .map(str::to_owned)
    .into()
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    }
}

/// Deletes the conntrack entries of TCP flows to `ip:port` in `netns` (or our own namespace) and returns
/// how many were deleted.
///
/// `conntrack -D` exits 1 when nothing matched ("0 flow entries have been deleted."), which is success for
/// us; the count is read from that summary line. A non-zero exit without the summary (no permission,
/// ctnetlink unavailable) is an error with the tool's stderr.
pub fn delete_imds_flows(
    ip: IpAddr,
    port: u16,
    netns: Option<&str>,
) -> Result<usize, NetfilterError> {
    let out = run_tool(netns, "conntrack", &delete_args(ip, port), DEFAULT_TIMEOUT)?;
    match parse_summary(&out.stderr, "deleted") {
        Some(0) => Ok(0),
        Some(n) if out.status.success() => {
            tracing::info!(%ip, port, deleted = n, netns = ?netns, "deleted conntrack entries of IMDS flows");
            Ok(n)
        }
        // A count with a failing exit, or a failing exit without a count: not something we understand.
        Some(_) => Err(out.into_failure()),
        None if out.status.success() => Err(NetfilterError::UnexpectedOutput {
            command: out.command,
            reason: "no \"N flow entries have been deleted\" summary".to_owned(),
            output: out.stderr.trim().to_owned(),
        }),
        None => Err(out.into_failure()),
    }
}

/// Reads conntrack's summary line, e.g. `conntrack v1.4.7 (conntrack-tools): 3 flow entries have been
/// deleted.` (`verb` = `deleted` or `shown`).
pub fn parse_summary(stderr: &str, verb: &str) -> Option<usize> {
    static SUMMARY: LazyLock<Regex> = LazyLock::new(|| {
        // The pattern is a literal; a failure here is a programming error caught by the unit tests.
        Regex::new(r"(\d+) flow entr(?:y|ies) (?:has|have) been (\w+)").expect("valid regex")
    });
    SUMMARY
        .captures_iter(stderr)
        .filter(|c| &c[2] == verb)
        .find_map(|c| c[1].parse().ok())
}

/// One tracked TCP or UDP flow, original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub protocol: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// `conntrack -L -f <family>` in `netns`: every flow of that family, original direction.
pub fn list_flows(ipv6: bool, netns: Option<&str>) -> Result<Vec<Flow>, NetfilterError> {
    let family = if ipv6 { "ipv6" } else { "ipv4" };
    let args = ["-L", "-f", family].map(str::to_owned);
    let out = run_tool(netns, "conntrack", &args, DEFAULT_TIMEOUT)?;
    let stdout = out.success()?;
    Ok(stdout.lines().filter_map(parse_flow_line).collect())
}

/// Parses one `conntrack -L` line: the protocol is the first word, and the first `src=`, `dst=`, `sport=`,
/// `dport=` fields are the original direction (the reply direction repeats them later on the line). Lines
/// without ports (ICMP) yield `None`.
pub fn parse_flow_line(line: &str) -> Option<Flow> {
    let mut words = line.split_whitespace();
    let protocol = words.next()?.to_owned();
    let (mut src, mut dst, mut sport, mut dport) = (None, None, None, None);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "src" if src.is_none() => src = value.parse().ok(),
            "dst" if dst.is_none() => dst = value.parse().ok(),
            "sport" if sport.is_none() => sport = value.parse().ok(),
            "dport" if dport.is_none() => dport = value.parse().ok(),
            _ => {}
        }
    }
    Some(Flow {
        protocol,
        src: src?,
        dst: dst?,
        sport: sport?,
        dport: dport?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delete_args_filter_tcp_original_destination() {
        assert_eq!(
            delete_args("169.254.169.254".parse().expect("literal"), 80),
            [
                "-D",
                "-f",
                "ipv4",
                "-p",
                "tcp",
                "--orig-dst",
                "169.254.169.254",
                "--orig-port-dst",
                "80"
            ]
        );
        let v6 = delete_args("fd00:ec2::254".parse().expect("literal"), 80);
        assert_eq!(&v6[1..3], ["-f", "ipv6"]);
        assert_eq!(v6[6], "fd00:ec2::254");
    }

    #[test]
    fn summary_lines_of_conntrack_1_4() {
        let zero = "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n";
        assert_eq!(parse_summary(zero, "deleted"), Some(0));
        assert_eq!(parse_summary(zero, "shown"), None);
        let three = "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n";
        assert_eq!(parse_summary(three, "shown"), Some(3));
        assert_eq!(
            parse_summary("conntrack v1.4.7: Operation not permitted", "deleted"),
            None
        );
    }

    #[test]
    fn flow_line_takes_the_original_direction() {
        let line = "tcp      6 431999 ESTABLISHED src=10.0.0.5 dst=169.254.169.254 sport=52240 dport=80 \
                    src=127.0.0.1 dst=10.0.0.5 sport=2579 dport=52240 [ASSURED] mark=0 use=1";
        assert_eq!(
            parse_flow_line(line),
            Some(Flow {
                protocol: "tcp".to_owned(),
                src: "10.0.0.5".parse().expect("literal"),
                dst: "169.254.169.254".parse().expect("literal"),
                sport: 52240,
                dport: 80,
            })
        );
        let icmp = "icmp 1 29 src=10.0.0.5 dst=10.0.0.1 type=8 code=0 id=1 src=10.0.0.1 dst=10.0.0.5 type=0 code=0 id=1 mark=0 use=1";
        assert_eq!(parse_flow_line(icmp), None);
        assert_eq!(parse_flow_line(""), None);
    }

    proptest! {
        #[test]
        fn summary_count_roundtrips(n in 0usize..1_000_000, version in "[0-9]\\.[0-9]\\.[0-9]{1,2}") {
            let plural = if n == 1 { "entry has" } else { "entries have" };
            let line = format!("conntrack v{version} (conntrack-tools): {n} flow {plural} been deleted.\n");
            prop_assert_eq!(parse_summary(&line, "deleted"), Some(n));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_summary(&s, "deleted");
            let _ = parse_flow_line(&s);
        }

        #[test]
        fn flow_lines_roundtrip(
            src in any::<std::net::Ipv4Addr>(), dst in any::<std::net::Ipv4Addr>(),
            sport in any::<u16>(), dport in any::<u16>(),
        ) {
            let line = format!(
                "tcp 6 117 SYN_SENT src={src} dst={dst} sport={sport} dport={dport} [UNREPLIED] \
                 src={dst} dst={src} sport={dport} dport={sport} mark=0 use=1"
            );
            let flow = parse_flow_line(&line);
            prop_assert_eq!(flow, Some(Flow { protocol: "tcp".to_owned(), src: src.into(), dst: dst.into(), sport, dport }));
        }
    }
}
