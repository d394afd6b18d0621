//! Kernel-side interception: the NMI-compatible `aad-metadata` nat chain, conntrack flow deletion and the
//! `route_localnet` precondition.
//!
//! This module owns every `iptables`/`conntrack` invocation the proxy makes. It reproduces NMI's rules
//! byte for byte (REFERENCE A.1): a `PREROUTING` jump at position 1 into a chain whose `iptables -t nat -S`
//! listing is exactly three lines (`-N`, the DNAT rule, `-j RETURN`), reconciled by comparing that listing
//! and rewriting the chain on any difference. It must not touch other chains or tables (kube-proxy and the
//! CNI own those), must not set sysctls (the operator does; we only diagnose), and holds no async state:
//! every call blocks for at most its timeout, so async callers wrap it in `spawn_blocking`.
//!
//! ```no_run
//! use imds_proxy::netfilter::{Netfilter, NetfilterConfig, Reconciled};
//! # fn main() -> Result<(), imds_proxy::netfilter::NetfilterError> {
//! let nf = Netfilter::new(NetfilterConfig::default()); // NMI defaults: 169.254.169.254:80 -> 127.0.0.1:2579
//! if let Some(warning) = nf.route_localnet_problem()? {
//!     eprintln!("{warning}");
//! }
//! if nf.reconcile()? == Reconciled::Repaired {
//!     eprintln!("aad-metadata chain (re)written");
//! }
//! nf.remove()?; // on SIGTERM
//! # Ok(()) }
//! ```

pub mod conntrack;
pub mod exec;
pub mod iptables;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitStatus;
use std::time::Duration;

pub use iptables::{Iptables, Table};

/// NMI's chain name.
pub const DEFAULT_CHAIN: &str = "aad-metadata";
/// The built-in chain the jump lives in: only traffic arriving on an interface (pods) passes it, so
/// host-network traffic (OUTPUT) is never redirected.
pub const JUMP_CHAIN: &str = "PREROUTING";

/// Everything that failed while driving the netfilter tools. Each variant names the command line so an
/// operator can rerun it by hand.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{command}` printed output we cannot interpret ({reason}): {output}")]
    UnexpectedOutput {
        command: String,
        reason: String,
        output: String,
    },
    #[error(
        "nat chain {chain} still differs from the expected rules after rewriting it \
         (expected {expected:?}, iptables lists {actual:?})"
    )]
    Unreconcilable {
        chain: String,
        expected: Vec<String>,
        actual: Vec<String>,
    },
    #[error("could not read {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the proxy intercepts and where it sends it (REFERENCE A.1, flags of A.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetfilterConfig {
    /// nat chain name (`aad-metadata`).
    pub chain: String,
    /// `--metadata-ip` (169.254.169.254).
    pub metadata_ip: Ipv4Addr,
    /// `--metadata-port` (80).
    pub metadata_port: u16,
    /// `--nmi-listen-address`; `0.0.0.0` is rendered as 127.0.0.1 in the DNAT target, as NMI does.
    pub target_ip: Ipv4Addr,
    /// `--nmi-port` (2579): the port actually bound (never 0).
    pub target_port: u16,
    /// Run every tool inside this named network namespace (`ip netns exec NS ...`); `None` = our own.
    pub netns: Option<String>,
}

impl Default for NetfilterConfig {
    fn default() -> Self {
        Self {
            chain: DEFAULT_CHAIN.to_owned(),
            metadata_ip: Ipv4Addr::new(169, 254, 169, 254),
            metadata_port: 80,
            target_ip: Ipv4Addr::LOCALHOST,
            target_port: 2579,
            netns: None,
        }
    }
}

impl NetfilterConfig {
    /// The DNAT destination: the listen address, with `0.0.0.0` replaced by `127.0.0.1` (NMI).
    pub fn dnat_target(&self) -> SocketAddrV4 {
        let ip = if self.target_ip.is_unspecified() {
            Ipv4Addr::LOCALHOST
        } else {
            self.target_ip
        };
        let port = if crate::mutant!(DnatWrongPort) {
            self.target_port.wrapping_add(1)
        } else {
            self.target_port
        };
        SocketAddrV4::new(ip, port)
    }

    /// The DNAT rule as iptables arguments (after `-A <chain>`). The same tokens, joined by spaces, are what
    /// `iptables -S` prints, so the rule we append and the line we expect cannot drift apart.
    pub fn dnat_rule_spec(&self) -> Vec<String> {
        let target = self.dnat_target();
        [
            "!".to_owned(),
            "-s".to_owned(),
            "127.0.0.1/32".to_owned(),
            "-d".to_owned(),
            format!("{}/32", self.metadata_ip),
            "-p".to_owned(),
            "tcp".to_owned(),
            "-m".to_owned(),
            "tcp".to_owned(),
            "--dport".to_owned(),
            self.metadata_port.to_string(),
            "-j".to_owned(),
            "DNAT".to_owned(),
            "--to-destination".to_owned(),
            target.to_string(),
        ]
        .into()
    }

    /// The chain's last rule.
    pub fn return_rule_spec(&self) -> Vec<String> {
        vec!["-j".to_owned(), "RETURN".to_owned()]
    }

    /// The jump in `PREROUTING`.
    pub fn jump_rule_spec(&self) -> Vec<String> {
        vec!["-j".to_owned(), self.chain.clone()]
    }
}

/// The exact `iptables -t nat -S <chain>` listing NMI requires (REFERENCE A.1): three entries.
pub fn expected_chain_listing(cfg: &NetfilterConfig) -> Vec<String> {
    let chain = &cfg.chain;
    vec![
        format!("-N {chain}"),
        format!("-A {chain} {}", cfg.dnat_rule_spec().join(" ")),
        format!("-A {chain} {}", cfg.return_rule_spec().join(" ")),
    ]
}

/// The `-S PREROUTING` line of the jump.
pub fn expected_jump_line(cfg: &NetfilterConfig) -> String {
    format!("-A {JUMP_CHAIN} {}", cfg.jump_rule_spec().join(" "))
}

/// NMI's reconcile test: any difference at all — a missing, extra, reordered or altered line — means the
/// chain is rewritten. Lines are compared after trimming surrounding whitespace only.
pub fn listing_matches(expected: &[String], actual: &[String]) -> bool {
    expected.len() == actual.len()
        && expected
            .iter()
            .zip(actual)
            .all(|(e, a)| e.trim() == a.trim())
}

/// Outcome of [`Netfilter::reconcile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// Chain, rules and jump were already exactly as expected; nothing was run that changes state.
    Unchanged,
    /// Something was created or rewritten (first start, a flushed chain, a foreign rule, a missing jump).
    Repaired,
}

/// The `aad-metadata` chain of one proxy instance. Cheap to clone (into `spawn_blocking`).
///
/// `reconcile` and `remove` must not run concurrently for the same chain (iptables itself serialises each
/// command, not the sequence): callers stop the periodic reconcile before removing.
#[derive(Debug, Clone)]
pub struct Netfilter {
    cfg: NetfilterConfig,
    ipt: Iptables,
}

impl Netfilter {
    pub fn new(cfg: NetfilterConfig) -> Self {
        let ipt = Iptables::new(cfg.netns.clone());
        Self { cfg, ipt }
    }

    /// Overrides the timeout of each iptables call (default [`exec::DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.ipt = self.ipt.with_timeout(timeout);
        self
    }

    pub fn config(&self) -> &NetfilterConfig {
        &self.cfg
    }

    /// The wrapped iptables handle (same namespace and timeout).
    pub fn iptables(&self) -> &Iptables {
        &self.ipt
    }

    /// What [`Self::list_rules`] must return after a successful reconcile.
    pub fn expected_rules(&self) -> Vec<String> {
        expected_chain_listing(&self.cfg)
    }

    /// `iptables -t nat -S <chain>`; empty when the chain does not exist.
    pub fn list_rules(&self) -> Result<Vec<String>, NetfilterError> {
        if !self.ipt.chain_exists(Table::Nat, &self.cfg.chain)? {
            return Ok(Vec::new());
        }
        self.ipt.list_chain(Table::Nat, &self.cfg.chain)
    }

    /// 1-based positions of our exact jump rule in nat `PREROUTING` (empty when absent).
    pub fn jump_positions(&self) -> Result<Vec<usize>, NetfilterError> {
        let listing = self.ipt.list_chain(Table::Nat, JUMP_CHAIN)?;
        let jump = expected_jump_line(&self.cfg);
        Ok(iptables::rules_of(&listing, JUMP_CHAIN)
            .iter()
            .enumerate()
            .filter(|(_, line)| **line == jump)
            .map(|(i, _)| i + 1)
            .collect())
    }

    /// Makes the kernel state match REFERENCE A.1 and says whether anything had to change:
    ///
    /// 1. create the chain if missing;
    /// 2. insert the jump at `PREROUTING` position 1 if no identical jump exists (NMI checks existence,
    ///    not position);
    /// 3. compare the chain listing with [`expected_chain_listing`] and, on any difference, flush and
    ///    append the DNAT and RETURN rules.
    ///
    /// After a rewrite the listing is read back: if it still differs (an iptables that prints rules
    /// differently) this is an error rather than a rewrite every interval.
    pub fn reconcile(&self) -> Result<Reconciled, NetfilterError> {
        let chain = &self.cfg.chain;
        let mut outcome = Reconciled::Unchanged;

        let created = !self.ipt.chain_exists(Table::Nat, chain)?;
        if created {
            tracing::info!(chain = %chain, netns = ?self.cfg.netns, "creating nat chain");
            self.ipt.new_chain(Table::Nat, chain)?;
            outcome = Reconciled::Repaired;
        }

        if self.jump_positions()?.is_empty() && (created || !crate::mutant!(NoJumpRepair)) {
            tracing::info!(chain = %chain, "inserting jump at {JUMP_CHAIN} position 1");
            self.ipt
                .insert(Table::Nat, JUMP_CHAIN, 1, &self.cfg.jump_rule_spec())?;
            outcome = Reconciled::Repaired;
        }
        if created && crate::mutant!(HostOutputIntercepted) {
            self.ipt
                .insert(Table::Nat, "OUTPUT", 1, &self.cfg.jump_rule_spec())?;
        }

        let expected = self.expected_rules();
        let actual = self.ipt.list_chain(Table::Nat, chain)?;
        if !listing_matches(&expected, &actual) {
            if created {
                tracing::info!(chain = %chain, "writing the DNAT and RETURN rules");
            } else {
                // An existing chain was changed behind our back: worth an operator's attention.
                tracing::warn!(chain = %chain, ?expected, ?actual, "nat chain differs; flushing and rewriting");
            }
            self.ipt.flush_chain(Table::Nat, chain)?;
            self.ipt
                .append(Table::Nat, chain, &self.cfg.dnat_rule_spec())?;
            self.ipt
                .append(Table::Nat, chain, &self.cfg.return_rule_spec())?;
            let after = self.ipt.list_chain(Table::Nat, chain)?;
            if !listing_matches(&expected, &after) {
                return Err(NetfilterError::Unreconcilable {
                    chain: chain.clone(),
                    expected,
                    actual: after,
                });
            }
            outcome = Reconciled::Repaired;
        }
        Ok(outcome)
    }

    /// NMI's shutdown cleanup: delete the `PREROUTING` jump (every identical copy), flush and delete the
    /// chain. Idempotent: absent pieces are skipped, so a second call (or a call before any reconcile) is Ok.
    pub fn remove(&self) -> Result<(), NetfilterError> {
        let chain = &self.cfg.chain;
        // Deleting by rule text (not by number) cannot hit a rule someone inserted meanwhile.
        for _ in self.jump_positions()? {
            self.ipt
                .delete(Table::Nat, JUMP_CHAIN, &self.cfg.jump_rule_spec())?;
        }
        if self.ipt.chain_exists(Table::Nat, chain)? {
            self.ipt.flush_chain(Table::Nat, chain)?;
            self.ipt.delete_chain(Table::Nat, chain)?;
            tracing::info!(chain = %chain, netns = ?self.cfg.netns, "removed nat chain and jump");
        }
        Ok(())
    }

    /// Deletes conntrack entries of TCP flows to the metadata address and port (see [`conntrack`]).
    pub fn delete_imds_flows(&self) -> Result<usize, NetfilterError> {
        conntrack::delete_imds_flows(
            self.cfg.metadata_ip.into(),
            self.cfg.metadata_port,
            self.cfg.netns.as_deref(),
        )
    }

    /// `Some(message)` when the DNAT target is a loopback address and `route_localnet` is off in the
    /// namespace, i.e. redirected pod traffic would be dropped by the kernel; the message says what to set.
    pub fn route_localnet_problem(&self) -> Result<Option<String>, NetfilterError> {
        let target = self.cfg.dnat_target();
        if !target.ip().is_loopback() {
            return Ok(None);
        }
        if route_localnet_enabled(self.cfg.netns.as_deref())? {
            Ok(None)
        } else {
            Ok(Some(route_localnet_message(
                SocketAddrV4::new(self.cfg.metadata_ip, self.cfg.metadata_port),
                target,
            )))
        }
    }
}

/// The proc file holding the all-interfaces switch.
pub const ROUTE_LOCALNET_PATH: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// Reads `net.ipv4.conf.all.route_localnet` in `netns` (or our own namespace): `/proc/sys/net` shows the
/// reading process's namespace, so inside a named one we read it through `ip netns exec NS cat`.
pub fn route_localnet_enabled(netns: Option<&str>) -> Result<bool, NetfilterError> {
    let text = match netns {
        None => std::fs::read_to_string(ROUTE_LOCALNET_PATH).map_err(|source| {
            NetfilterError::Sysctl {
                path: ROUTE_LOCALNET_PATH.to_owned(),
                source,
            }
        })?,
        Some(_) => exec::run_tool(
            netns,
            "cat",
            &[ROUTE_LOCALNET_PATH.to_owned()],
            exec::DEFAULT_TIMEOUT,
        )?
        .success()?,
    };
    parse_sysctl_flag(&text).ok_or_else(|| NetfilterError::UnexpectedOutput {
        command: format!("cat {ROUTE_LOCALNET_PATH}"),
        reason: "expected an integer".to_owned(),
        output: text.trim().to_owned(),
    })
}

/// A boolean sysctl value: any non-zero integer is on.
pub fn parse_sysctl_flag(text: &str) -> Option<bool> {
    text.trim().parse::<i64>().ok().map(|v| v != 0)
}

/// What the proxy logs when it redirects to a loopback address and `route_localnet` is off.
pub fn route_localnet_message(metadata: SocketAddrV4, target: SocketAddrV4) -> String {
    format!(
        "net.ipv4.conf.all.route_localnet is 0: pod traffic to {metadata} is DNATed to {target} in nat \
         PREROUTING, and the kernel drops packets that arrive on a network interface with a 127.0.0.0/8 \
         destination unless route_localnet is enabled, so pods will time out instead of reaching imds-proxy. \
         Fix: run `sysctl -w net.ipv4.conf.all.route_localnet=1` on the node (kube-proxy normally sets it; \
         persist it in /etc/sysctl.d), or listen on a non-loopback node address with --nmi-listen-address. \
         (A per-interface net.ipv4.conf.<if>.route_localnet=1 on every pod-facing interface also works; only \
         the `all` switch is checked here.)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(ip: [u8; 4], port: u16, target: [u8; 4], target_port: u16) -> NetfilterConfig {
        NetfilterConfig {
            metadata_ip: ip.into(),
            metadata_port: port,
            target_ip: target.into(),
            target_port,
            ..NetfilterConfig::default()
        }
    }

    #[test]
    fn default_listing_is_reference_a1_verbatim() {
        assert_eq!(
            expected_chain_listing(&NetfilterConfig::default()),
            [
                "-N aad-metadata",
                "-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579",
                "-A aad-metadata -j RETURN",
            ]
        );
        assert_eq!(
            expected_jump_line(&NetfilterConfig::default()),
            "-A PREROUTING -j aad-metadata"
        );
    }

    #[test]
    fn unspecified_listen_address_becomes_localhost() {
        let c = cfg([169, 254, 169, 254], 80, [0, 0, 0, 0], 2579);
        assert_eq!(c.dnat_target().to_string(), "127.0.0.1:2579");
        let c = cfg([169, 254, 169, 254], 80, [10, 0, 0, 4], 2579);
        assert_eq!(c.dnat_target().to_string(), "10.0.0.4:2579");
    }

    #[test]
    fn message_says_what_to_set_and_why() {
        let msg = route_localnet_message(
            "169.254.169.254:80".parse().expect("literal"),
            "127.0.0.1:2579".parse().expect("literal"),
        );
        assert!(
            msg.contains("sysctl -w net.ipv4.conf.all.route_localnet=1"),
            "{msg}"
        );
        assert!(msg.contains("127.0.0.1:2579"), "{msg}");
        assert!(msg.contains("169.254.169.254:80"), "{msg}");
        assert!(msg.contains("drops"), "{msg}");
    }

    #[test]
    fn sysctl_flag_parsing() {
        assert_eq!(parse_sysctl_flag("1\n"), Some(true));
        assert_eq!(parse_sysctl_flag("0\n"), Some(false));
        assert_eq!(parse_sysctl_flag(""), None);
        assert_eq!(parse_sysctl_flag("yes"), None);
    }

    #[test]
    fn our_own_namespace_route_localnet_is_readable() {
        // Read-only; /proc/sys exists on every Linux this crate targets.
        assert!(route_localnet_enabled(None).is_ok());
    }

    fn any_cfg() -> impl Strategy<Value = NetfilterConfig> {
        (any::<[u8; 4]>(), 1u16.., any::<[u8; 4]>(), 1u16..)
            .prop_map(|(ip, port, target, tport)| cfg(ip, port, target, tport))
    }

    proptest! {
        #[test]
        fn listing_shape_holds_for_any_addresses(c in any_cfg()) {
            let listing = expected_chain_listing(&c);
            prop_assert_eq!(listing.len(), 3);
            prop_assert_eq!(&listing[0], "-N aad-metadata");
            prop_assert_eq!(&listing[2], "-A aad-metadata -j RETURN");
            let dnat = &listing[1];
            let dest = format!(" -d {}/32 ", c.metadata_ip);
            let dport = format!(" --dport {} ", c.metadata_port);
            prop_assert!(dnat.contains(&dest), "{}", dnat);
            prop_assert!(dnat.contains(&dport), "{}", dnat);
            let target = if c.target_ip.is_unspecified() { Ipv4Addr::LOCALHOST } else { c.target_ip };
            let suffix = format!(" -j DNAT --to-destination {}:{}", target, c.target_port);
            prop_assert!(dnat.ends_with(&suffix), "{}", dnat);
            prop_assert!(dnat.starts_with("-A aad-metadata ! -s 127.0.0.1/32 -d "), "{}", dnat);
            // The rule we append is exactly the listed line's tokens: appended == expected listing.
            let tokens: Vec<String> = dnat.split_whitespace().skip(2).map(str::to_owned).collect();
            prop_assert_eq!(tokens, c.dnat_rule_spec());
        }

        #[test]
        fn identical_listing_matches_and_ignores_surrounding_whitespace(c in any_cfg()) {
            let expected = expected_chain_listing(&c);
            let padded: Vec<String> = expected.iter().map(|l| format!("  {l}\t")).collect();
            prop_assert!(listing_matches(&expected, &expected));
            prop_assert!(listing_matches(&expected, &padded));
        }

        #[test]
        fn any_difference_is_detected(
            c in any_cfg(),
            other in any_cfg(),
            edit in 0usize..5,
            idx in 0usize..3,
        ) {
            let expected = expected_chain_listing(&c);
            let mut actual = expected.clone();
            match edit {
                0 => { actual.remove(idx); }                                   // deleted rule / flushed
                1 => actual.insert(idx + 1, "-A aad-metadata -j ACCEPT".to_owned()), // foreign rule
                2 => actual.swap(1, 2),                                        // reordered
                3 => actual = expected_chain_listing(&other),                  // other ip/port/target
                _ => actual[idx].push('x'),                                    // altered text
            }
            if edit != 3 {
                prop_assert!(!listing_matches(&expected, &actual), "{:?}", actual);
            }
            prop_assert_eq!(listing_matches(&expected, &actual), actual == expected);
        }
    }
}
