//! RST — AKS IMDS restriction (REFERENCE C): netns only, usually with `--interceptor aks-rule`.
//!
//! Owns the restriction cases: a non-host pod's connect to 169.254.169.254:80 times out (DROP, no RST);
//! host-network pods and node processes still get 200; the rule comes back when the node re-applies it
//! after tampering; disabling restores access; the rule is AgentBaker's (FORWARD, position 1).

use std::time::Duration;

use crate::backend::Target;
use crate::backend::interceptor::{AKS_RULE_COMMENT, aks_rule_argv};
use crate::case::{Feature, KERNEL_BACKENDS, Level, Outcome, Profile};
use crate::catalog::{any_pod, expect_status, fail_if, start_interceptor, stop_interceptor};
use crate::ctx::{Ctx, INSTANCE};
use crate::declare_case;
use crate::http::{Request, SendError};

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::AksRestriction];

fn pod(ctx: &Ctx) -> Result<crate::backend::PodView, Outcome> {
    any_pod(ctx, false)
}

/// Sends the instance request as `pod` with a 3 s connect timeout.
async fn try_pod(ctx: &mut Ctx, pod: &str) -> crate::ctx::Sent {
    ctx.send_timeout(
        pod,
        Target::Imds,
        Request::get(INSTANCE).metadata(),
        Duration::from_secs(3),
        Duration::from_secs(10),
    )
    .await
}

fn expect_timeout(sent: &crate::ctx::Sent, what: &str) -> Result<(), Outcome> {
    match &sent.result {
        Err(SendError::ConnectTimeout) => Ok(()),
        _ => Err(Outcome::fail(
            format!("{what}: the connect times out (DROP, no RST)"),
            sent.summary(),
        )),
    }
}

declare_case!(
    RST_001 = Case {
        id: "RST-001",
        title: "non-host pod connect to 169.254.169.254:80 times out (no RST)",
        level: Level::Must,
        features: &[Feature::ImdsRestriction],
        backends: KERNEL_BACKENDS,
        spec: "SPEC §3 AKS restriction; REFERENCE C",
        explain: "AKS drops forwarded pod traffic to IMDS in FORWARD; the client sees a connect timeout, not a refusal (curl exit 28).",
    },
    |ctx| {
        let p = pod(ctx)?;
        let sent = try_pod(ctx, &p.name).await;
        expect_timeout(&sent, "non-host pod → 169.254.169.254:80")
    }
);

declare_case!(
    RST_002 = Case {
        id: "RST-002",
        title: "host-network pods and node processes still get 200",
        level: Level::Must,
        features: &[Feature::ImdsRestriction],
        backends: KERNEL_BACKENDS,
        spec: "SPEC §3 AKS restriction; REFERENCE C (OUTPUT is not FORWARD)",
        explain: "Node-originated traffic traverses OUTPUT, so a host-network pod and a node process get the instance document.",
    },
    |ctx| {
        let p = pod(ctx)?;
        let host = ctx.host_pod(&p.node);
        let sent = try_pod(ctx, &host).await;
        expect_status(&sent, 200, "host-network pod → instance metadata")?;
        let node = p.node.clone();
        let sent = try_pod(ctx, &node).await;
        expect_status(&sent, 200, "node process → instance metadata")?;
        Ok(())
    }
);

declare_case!(
    RST_003 = Case {
        id: "RST-003",
        title: "the rule is restored after tampering (re-applied by the node)",
        level: Level::Must,
        features: &[Feature::ImdsRestriction],
        backends: KERNEL_BACKENDS,
        spec: "SPEC §3 AKS restriction; REFERENCE C (re-applied on every kubelet start)",
        explain: "The rule is deleted (pods reach IMDS), the node re-applies it (kubelet restart), and pods time out again.",
    },
    |ctx| {
        let p = pod(ctx)?;
        let node = p.node.clone();
        let node_ip = ctx
            .world()
            .node(&node)
            .map(|n| n.ip.to_string())
            .unwrap_or_default();
        ctx.touched_interceptor();
        let out = ctx
            .backend
            .exec(&node, aks_rule_argv(&node_ip, false))
            .await
            .map_err(|e| Outcome::skip(e.to_string()))?;
        fail_if(
            out.code != 0,
            "AgentBaker's rule present to tamper with",
            || format!("iptables -D failed: {}", out.stderr.trim()),
        )?;
        let sent = try_pod(ctx, &p.name).await;
        expect_status(&sent, 200, "after removing the rule the pod reaches IMDS")?;
        // The node re-applies the rule (AgentBaker: on every kubelet start).
        stop_interceptor(ctx, &node, true).await?;
        start_interceptor(ctx, &node, "the rule to be re-applied").await?;
        let sent = try_pod(ctx, &p.name).await;
        expect_timeout(&sent, "after the node re-applied the rule")
    }
);

declare_case!(
    RST_004 = Case {
        id: "RST-004",
        title: "disabling the restriction restores access",
        level: Level::Must,
        features: &[Feature::ImdsRestriction],
        backends: KERNEL_BACKENDS,
        spec: "SPEC §3 AKS restriction; REFERENCE C (--disable-imds-restriction)",
        explain: "With the restriction disabled (rule deleted from both tables), a non-host pod gets 200 again.",
    },
    |ctx| {
        let p = pod(ctx)?;
        stop_interceptor(ctx, &p.node, true).await?;
        let sent = try_pod(ctx, &p.name).await;
        expect_status(
            &sent,
            200,
            "after disabling the restriction the pod reaches IMDS",
        )?;
        Ok(())
    }
);

declare_case!(
    RST_005 = Case {
        id: "RST-005",
        title: "the rule is AgentBaker's: first in FORWARD, DROP, with its comment",
        level: Level::Should,
        features: &[Feature::ImdsRestriction],
        backends: KERNEL_BACKENDS,
        spec: "REFERENCE C",
        explain: "`iptables -S FORWARD` (filter or mangle) lists the DROP for 169.254.169.254/32 tcp dport 80 first, with AgentBaker's comment.",
    },
    |ctx| {
        let p = pod(ctx)?;
        let mut found = None;
        for table in ["filter", "mangle"] {
            let out = ctx
                .backend
                .exec(
                    &p.node,
                    vec![
                        "iptables".into(),
                        "-w".into(),
                        "-t".into(),
                        table.into(),
                        "-S".into(),
                        "FORWARD".into(),
                    ],
                )
                .await
                .map_err(|e| Outcome::skip(e.to_string()))?;
            let rules: Vec<&str> = out
                .stdout
                .lines()
                .filter(|l| l.starts_with("-A FORWARD"))
                .collect();
            if let Some(first) = rules.first()
                && first.contains("169.254.169.254/32")
                && first.contains("-j DROP")
            {
                found = Some((table, first.to_string()));
            }
        }
        match found {
            Some((_, rule)) if rule.contains(AKS_RULE_COMMENT) => Ok(()),
            Some((t, rule)) => Err(Outcome::info(format!(
                "first FORWARD rule ({t}) drops IMDS without AgentBaker's comment: {rule}"
            ))),
            None => Err(Outcome::fail(
                "the first FORWARD rule (filter or mangle) drops TCP to 169.254.169.254:80",
                "no such rule at position 1",
            )),
        }
    }
);
