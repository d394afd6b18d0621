//! The AKS IMDS restriction rule (REFERENCE C), reproduced for the conformance harness's node namespaces.
//!
//! AKS (AgentBaker `ensureIMDSRestriction`) inserts one DROP rule at position 1 of `FORWARD` — in `mangle`
//! when `INSERT_IMDS_RESTRICTION_RULE_TO_MANGLE_TABLE=true`, else in `filter` — so forwarded (pod) traffic
//! to IMDS times out while node and host-network traffic (OUTPUT) passes. This module owns exactly that
//! rule: rendering it, inserting it idempotently (AgentBaker greps `iptables -t <table> -S` for the rule
//! text) and deleting it. The proxy itself never calls it; it is here so the harness reuses the same
//! typed iptables wrapper instead of a second one. Callers pass the netns of a node they created: this
//! must never run against a real host's root namespace from a test.

use std::net::Ipv4Addr;

use super::NetfilterError;
use super::iptables::{Iptables, Table};

/// AgentBaker's comment, verbatim; also the marker its idempotency grep looks for.
pub const AKS_COMMENT: &str =
    "AKS managed: added by AgentBaker ensureIMDSRestriction for IMDS restriction feature";
/// The chain AKS uses: only forwarded (pod) traffic passes it.
pub const AKS_CHAIN: &str = "FORWARD";
/// IMDS as AKS hard-codes it.
pub const AKS_IMDS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const AKS_IMDS_PORT: u16 = 80;

/// Which table holds the rule (`INSERT_IMDS_RESTRICTION_RULE_TO_MANGLE_TABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AksTable {
    Filter,
    Mangle,
}

impl AksTable {
    pub fn table(self) -> Table {
        match self {
            AksTable::Filter => Table::Filter,
            AksTable::Mangle => Table::Mangle,
        }
    }
}

/// One node's restriction rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AksRestriction {
    /// `PRIMARY_NIC_IP`: the node's own address, the only source allowed through.
    pub primary_nic_ip: Ipv4Addr,
    pub table: AksTable,
}

impl AksRestriction {
    /// The rule as iptables arguments after `-I FORWARD 1` (the comment is one argument).
    pub fn rule_spec(&self) -> Vec<String> {
        let mut spec: Vec<String> = [
            "!",
            "-s",
            &self.primary_nic_ip.to_string(),
            "-d",
            &format!("{AKS_IMDS_IP}/32"),
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &AKS_IMDS_PORT.to_string(),
            "-m",
            "comment",
            "--comment",
        ]
        .map(str::to_owned)
        .into();
        spec.push(AKS_COMMENT.to_owned());
        spec.extend(["-j", "DROP"].map(str::to_owned));
        spec
    }

    /// The line `iptables -t <table> -S` prints for the rule (source gets `/32`, the comment is quoted).
    pub fn listing_line(&self) -> String {
        format!(
            "-A {AKS_CHAIN} ! -s {}/32 -d {AKS_IMDS_IP}/32 -p tcp -m tcp --dport {AKS_IMDS_PORT} -m comment \
             --comment \"{AKS_COMMENT}\" -j DROP",
            self.primary_nic_ip
        )
    }

    /// How many copies of the rule the table holds.
    pub fn count(&self, ipt: &Iptables) -> Result<usize, NetfilterError> {
        let line = self.listing_line();
        Ok(ipt
            .list_table(self.table.table())?
            .iter()
            .filter(|l| **l == line)
            .count())
    }

    /// Inserts the rule at `FORWARD` position 1 unless the table already lists it (AgentBaker's grep
    /// check). Returns whether it inserted.
    pub fn insert(&self, ipt: &Iptables) -> Result<bool, NetfilterError> {
        if self.count(ipt)? > 0 {
            return Ok(false);
        }
        ipt.insert(self.table.table(), AKS_CHAIN, 1, &self.rule_spec())?;
        Ok(true)
    }

    /// Deletes every copy of the rule from its table; returns how many were deleted (0 is fine).
    pub fn delete(&self, ipt: &Iptables) -> Result<usize, NetfilterError> {
        let n = self.count(ipt)?;
        for _ in 0..n {
            ipt.delete(self.table.table(), AKS_CHAIN, &self.rule_spec())?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_line_is_what_iptables_prints() {
        // Captured from `iptables -t mangle -S FORWARD` (iptables 1.8.9, nft) after inserting rule_spec().
        let r = AksRestriction {
            primary_nic_ip: Ipv4Addr::new(10, 224, 0, 4),
            table: AksTable::Mangle,
        };
        assert_eq!(
            r.listing_line(),
            "-A FORWARD ! -s 10.224.0.4/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment \
             --comment \"AKS managed: added by AgentBaker ensureIMDSRestriction for IMDS restriction feature\" -j DROP"
        );
    }

    #[test]
    fn comment_is_one_argument() {
        let r = AksRestriction {
            primary_nic_ip: Ipv4Addr::new(10, 0, 0, 1),
            table: AksTable::Filter,
        };
        let spec = r.rule_spec();
        let at = spec
            .iter()
            .position(|a| a == "--comment")
            .expect("has --comment");
        assert_eq!(spec[at + 1], AKS_COMMENT);
        assert_eq!(&spec[spec.len() - 2..], ["-j", "DROP"]);
        assert_eq!(r.table.table(), Table::Filter);
    }
}
