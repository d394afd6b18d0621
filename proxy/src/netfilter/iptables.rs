//! A typed wrapper around the `iptables` command (IPv4; the kernel's nft or legacy backend alike).
//!
//! It owns the argument conventions every call shares — `-w` so we queue behind kube-proxy and CNI plugins
//! on the xtables lock instead of failing, `-t <table>`, the optional `ip netns exec NS` prefix — and the
//! parsing of `iptables -S` listings. It holds no policy: which chain and which rules are wanted is decided
//! in `mod.rs` (the `aad-metadata` chain). It must not touch `ip6tables` or any rule it was not asked to
//! change.

use std::fmt;
use std::time::Duration;

use super::NetfilterError;
use super::exec::{DEFAULT_TIMEOUT, run_tool};

/// Seconds `iptables -w` waits for the xtables lock before giving up (well below [`DEFAULT_TIMEOUT`]).
pub const LOCK_WAIT_SECS: u32 = 5;

/// The iptables tables we address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Filter,
    Nat,
    Mangle,
    Raw,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `iptables` bound to a network namespace (or the caller's own) and a per-call timeout.
#[derive(Debug, Clone)]
pub struct Iptables {
    netns: Option<String>,
    timeout: Duration,
}

impl Iptables {
    /// `netns: Some(name)` runs every call as `ip netns exec name iptables ...`.
    pub fn new(netns: Option<String>) -> Self {
        Self {
            netns,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Overrides the per-call timeout (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Runs `iptables -w N -t <table> <args>` and returns stdout; a non-zero exit is an error carrying the
    /// command line, the status and stderr.
    pub fn run(&self, table: Table, args: &[String]) -> Result<String, NetfilterError> {
        self.run_raw(table, args)?.success()
    }

    fn run_raw(
        &self,
        table: Table,
        args: &[String],
    ) -> Result<super::exec::ToolOutput, NetfilterError> {
        let mut full = vec![
            "-w".to_owned(),
            LOCK_WAIT_SECS.to_string(),
            "-t".to_owned(),
            table.as_str().to_owned(),
        ];
        full.extend(args.iter().cloned());
        run_tool(self.netns(), "iptables", &full, self.timeout)
    }

    /// `iptables -t <table> -S`: every policy, chain and rule of the table, one per line, as iptables prints
    /// them.
    pub fn list_table(&self, table: Table) -> Result<Vec<String>, NetfilterError> {
        Ok(parse_listing(&self.run(table, &["-S".to_owned()])?))
    }

    /// `iptables -t <table> -S <chain>`. Fails if the chain does not exist (check [`Self::chain_exists`]
    /// first: the nft backend reports a missing chain with a misleading "incompatible" message).
    pub fn list_chain(&self, table: Table, chain: &str) -> Result<Vec<String>, NetfilterError> {
        Ok(parse_listing(
            &self.run(table, &["-S".to_owned(), chain.to_owned()])?,
        ))
    }

    /// Names of all chains of the table, built-in (`-P`) and user-defined (`-N`).
    pub fn chains(&self, table: Table) -> Result<Vec<String>, NetfilterError> {
        Ok(chain_names(&self.list_table(table)?))
    }

    pub fn chain_exists(&self, table: Table, chain: &str) -> Result<bool, NetfilterError> {
        Ok(self.chains(table)?.iter().any(|c| c == chain))
    }

    pub fn new_chain(&self, table: Table, chain: &str) -> Result<(), NetfilterError> {
        self.run(table, &["-N".to_owned(), chain.to_owned()])
            .map(drop)
    }

    pub fn flush_chain(&self, table: Table, chain: &str) -> Result<(), NetfilterError> {
        self.run(table, &["-F".to_owned(), chain.to_owned()])
            .map(drop)
    }

    pub fn delete_chain(&self, table: Table, chain: &str) -> Result<(), NetfilterError> {
        self.run(table, &["-X".to_owned(), chain.to_owned()])
            .map(drop)
    }

    /// `-A chain <rule...>`.
    pub fn append(&self, table: Table, chain: &str, rule: &[String]) -> Result<(), NetfilterError> {
        self.run(table, &with_op("-A", chain, None, rule)).map(drop)
    }

    /// `-I chain <position> <rule...>` (positions are 1-based, as in iptables).
    pub fn insert(
        &self,
        table: Table,
        chain: &str,
        position: u32,
        rule: &[String],
    ) -> Result<(), NetfilterError> {
        self.run(table, &with_op("-I", chain, Some(position), rule))
            .map(drop)
    }

    /// `-D chain <rule...>` (deletes the first matching rule).
    pub fn delete(&self, table: Table, chain: &str, rule: &[String]) -> Result<(), NetfilterError> {
        self.run(table, &with_op("-D", chain, None, rule)).map(drop)
    }

    /// `--check chain <rule...>`: `Ok(false)` when iptables says the rule does not exist (exit 1), an error
    /// for anything else (for example exit 2 when the chain itself is missing).
    pub fn check(
        &self,
        table: Table,
        chain: &str,
        rule: &[String],
    ) -> Result<bool, NetfilterError> {
        let out = self.run_raw(table, &with_op("--check", chain, None, rule))?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(out.into_failure()),
        }
    }
}

fn with_op(op: &str, chain: &str, position: Option<u32>, rule: &[String]) -> Vec<String> {
    let mut args = vec![op.to_owned(), chain.to_owned()];
    if let Some(p) = position {
        args.push(p.to_string());
    }
    args.extend(rule.iter().cloned());
    args
}

/// Splits `iptables -S` output into lines, trimming whitespace and dropping empty lines. Nothing else is
/// normalised: the reconcile comparison must see any difference iptables prints.
pub fn parse_listing(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Chain names declared in a `-S` listing: `-P NAME POLICY` (built-in) and `-N NAME` (user-defined).
pub fn chain_names(listing: &[String]) -> Vec<String> {
    listing
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("-P" | "-N"), Some(name)) => Some(name.to_owned()),
                _ => None,
            }
        })
        .collect()
}

/// The `-A CHAIN ...` lines of a listing that belong to `chain`, in order (rule `n` is element `n-1`).
pub fn rules_of<'a>(listing: &'a [String], chain: &str) -> Vec<&'a str> {
    listing
        .iter()
        .filter(|line| {
            let mut words = line.split_whitespace();
            words.next() == Some("-A") && words.next() == Some(chain)
        })
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAT: &str = "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n\
        -N aad-metadata\n-N KUBE-SERVICES\n-A PREROUTING -j aad-metadata\n\
        -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A aad-metadata -j RETURN\n";

    #[test]
    fn chain_names_cover_builtin_and_user_chains() {
        let listing = parse_listing(NAT);
        assert_eq!(
            chain_names(&listing),
            [
                "PREROUTING",
                "INPUT",
                "OUTPUT",
                "POSTROUTING",
                "aad-metadata",
                "KUBE-SERVICES"
            ]
        );
    }

    #[test]
    fn rules_of_keeps_order_and_ignores_prefix_lookalikes() {
        let mut listing = parse_listing(NAT);
        listing.push("-A aad-metadata-x -j RETURN".to_owned());
        assert_eq!(
            rules_of(&listing, "PREROUTING"),
            [
                "-A PREROUTING -j aad-metadata",
                "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            ]
        );
        assert_eq!(
            rules_of(&listing, "aad-metadata"),
            ["-A aad-metadata -j RETURN"]
        );
    }

    #[test]
    fn listing_parse_trims_and_drops_blank_lines() {
        assert_eq!(
            parse_listing("\n -N a \r\n\n-A a -j RETURN\n"),
            ["-N a", "-A a -j RETURN"]
        );
    }

    #[test]
    fn op_args_place_the_position_after_the_chain() {
        let rule = vec!["-j".to_owned(), "aad-metadata".to_owned()];
        assert_eq!(
            with_op("-I", "PREROUTING", Some(1), &rule),
            ["-I", "PREROUTING", "1", "-j", "aad-metadata"]
        );
        assert_eq!(
            with_op("-D", "PREROUTING", None, &rule),
            ["-D", "PREROUTING", "-j", "aad-metadata"]
        );
    }
}
