//! CT — conntrack deletion (`enableConntrackDeletion`, REFERENCE A.1, A.12): netns only.
//!
//! Owns the conntrack cases: a keep-alive connection a pod opened to IMDS before the interceptor started
//! must not keep reaching IMDS once the interceptor is ready (with deletion); without deletion the bypass is
//! recorded as INFO; flows unrelated to IMDS survive the deletion.

use std::time::Duration;

use crate::backend::Target;
use crate::case::{Feature, KERNEL_BACKENDS, Level, Outcome, Profile};
use crate::catalog::interception::connect_without_interceptor;
use crate::catalog::{fail_if, has_token, plain_pod, start_interceptor, stop_interceptor};
use crate::ctx::{Ctx, Sent, token_target};
use crate::declare_case;
use crate::http::Request;

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::Nmi, Profile::Hardened];

/// What the old connection did after the interceptor became ready.
enum After {
    /// The request on the old connection got a token and IMDS journalled it: direct bypass.
    Bypass(String),
    /// Reset / no answer / answered without token: no bypass.
    Cut(String),
}

/// Stops the interceptor (and its rules), opens a pod connection straight to IMDS, restarts the
/// interceptor, sends again on the old connection.
async fn old_connection(ctx: &mut Ctx) -> Result<After, Outcome> {
    let pod = plain_pod(ctx)?;
    let node = pod.node.clone();
    let mut conn = connect_without_interceptor(ctx, &pod).await?;
    let selector = crate::catalog::direct_selector(ctx);
    let first = ctx
        .send_on(&mut conn, Request::get(token_target(&selector)).metadata())
        .await;
    if !first.response().is_some_and(has_token) {
        return Err(Outcome::skip(format!(
            "precondition: without interceptor the pod reaches IMDS directly (got {})",
            first.summary()
        )));
    }
    start_interceptor(ctx, &node, "the interceptor to start").await?;
    let second: Sent = ctx
        .send_on(&mut conn, Request::get(token_target(&selector)).metadata())
        .await;
    let in_journal = !ctx.tagged(&node, &second.tag).await.is_empty();
    Ok(match second.response() {
        Some(r) if has_token(r) && in_journal => After::Bypass(format!(
            "the old connection still reached IMDS directly after the interceptor was ready: {}",
            r.summary()
        )),
        _ => After::Cut(second.summary()),
    })
}

declare_case!(
    CT_001 = Case {
        id: "CT-001",
        title: "a connection opened before the interceptor started no longer reaches IMDS once it is ready",
        level: Level::Must,
        features: &[Feature::EnableConntrackDeletion, Feature::Iptables],
        backends: KERNEL_BACKENDS,
        spec: "SPEC §3 Conntrack; REFERENCE A.1 (conntrack deletion after the first reconcile), A.12",
        explain: "With no interceptor, a pod opens a keep-alive connection to 169.254.169.254 and gets the VM's token directly. The interceptor starts; after it is ready, a request on the old connection must not reach IMDS (reset or intercepted), and a new connection is intercepted.",
    },
    |ctx| {
        match old_connection(ctx).await? {
            After::Bypass(s) => Err(Outcome::fail(
                "pre-existing IMDS flows deleted at start: nothing from the old connection reaches IMDS",
                s,
            )),
            After::Cut(_) => {
                // And a new connection is intercepted.
                let pod = ctx.plain_pod().map(|p| p.name).unwrap_or_default();
                let selector = crate::catalog::direct_selector(ctx);
                let sent = ctx.send_token(&pod, &selector).await;
                match sent.response() {
                    Some(r) if has_token(r) => Err(Outcome::fail(
                        "a new connection after the restart is intercepted",
                        r.summary(),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
);

declare_case!(
    CT_002 = Case {
        id: "CT-002",
        title: "without conntrack deletion the pre-existing connection's bypass is recorded",
        level: Level::Info,
        features: &[Feature::Iptables],
        unless: &[Feature::EnableConntrackDeletion],
        backends: KERNEL_BACKENDS,
        spec: "SPEC §3 Conntrack (feature off)",
        explain: "Same procedure as CT-001 with the feature off: reports whether the old connection keeps reaching IMDS directly (the known NMI issue).",
    },
    |ctx| {
        match old_connection(ctx).await? {
            After::Bypass(s) => Err(Outcome::info(format!(
                "bypass without conntrack deletion: {s}"
            ))),
            After::Cut(s) => Err(Outcome::info(format!(
                "the old connection did not reach IMDS after the restart: {s}"
            ))),
        }
    }
);

declare_case!(
    CT_003 = Case {
        id: "CT-003",
        title: "flows unrelated to IMDS survive the deletion",
        level: Level::Must,
        features: &[Feature::EnableConntrackDeletion],
        backends: KERNEL_BACKENDS,
        spec: "SPEC §2 (deletion limited to TCP flows to the IMDS address and port), §3 Conntrack",
        explain: "A pod's keep-alive connection to the API server, opened before the interceptor restarts, still works afterwards, and its conntrack entry is never destroyed: conntrack DESTROY events in the node are watched from before the connection is opened until after the interceptor is ready again, and any destroyed flow from the pod that is not to 169.254.169.254:80 fails the case (an established flow's entry is rebuilt by the kernel when packets flow again, so only the events show a deletion that was too broad).",
    },
    |ctx| {
        let pod = plain_pod(ctx)?;
        let node = pod.node.clone();
        // Watch DESTROY events from before the witness connection exists: with the kernel's default
        // `nf_conntrack_events = 2` only flows created while a listener runs carry events. `stdbuf -oL`:
        // every event line leaves conntrack before `timeout` ends it (8 s: open, stop, start fit well).
        let backend = ctx.backend.clone();
        let watch_node = node.clone();
        let watcher = tokio::spawn(async move {
            backend
                .exec(
                    &watch_node,
                    [
                        "timeout",
                        "8",
                        "stdbuf",
                        "-oL",
                        "conntrack",
                        "-E",
                        "-e",
                        "DESTROY",
                        "-p",
                        "tcp",
                    ]
                    .map(String::from)
                    .to_vec(),
                )
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut conn = ctx
            .open(&pod.name, Target::ApiServer)
            .await
            .map_err(|e| Outcome::skip(format!("pod cannot reach the API server: {e}")))?;
        let before = ctx.send_on(&mut conn, Request::get("/version")).await;
        if before.status() != Some(200) {
            return Err(Outcome::skip(format!(
                "precondition: GET /version on the API server from the pod (got {})",
                before.summary()
            )));
        }
        stop_interceptor(ctx, &node, false).await?;
        start_interceptor(ctx, &node, "the interceptor to start").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let events = match watcher.await {
            Ok(Ok(out)) => out.stdout,
            Ok(Err(e)) => return Err(Outcome::skip(format!("watching conntrack events: {e}"))),
            Err(e) => return Err(Outcome::skip(format!("watching conntrack events: {e}"))),
        };
        let too_broad: Vec<&str> = events
            .lines()
            .filter(|l| unrelated_flow_of(l, &pod.ip.to_string()))
            .collect();
        fail_if(
            !too_broad.is_empty(),
            "conntrack deletion destroys only TCP flows to 169.254.169.254:80",
            || {
                format!(
                    "destroyed flows of pod {}: {}",
                    pod.name,
                    too_broad.join(" | ")
                )
            },
        )?;
        let after = ctx.send_on(&mut conn, Request::get("/version")).await;
        fail_if(
            after.status() != Some(200),
            "a keep-alive connection unrelated to IMDS survives the conntrack deletion",
            || after.summary(),
        )?;
        Ok(())
    }
);

/// Whether a `conntrack -E` line is the destruction of a flow from `pod_ip` to anything but
/// 169.254.169.254:80 (the original direction's tuple: the first `src=`, `dst=`, `dport=`).
fn unrelated_flow_of(line: &str, pod_ip: &str) -> bool {
    let first = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    let (Some(src), Some(dst), Some(dport)) = (first("src="), first("dst="), first("dport="))
    else {
        return false;
    };
    src == pod_ip && !(dst == "169.254.169.254" && dport == "80")
}

#[cfg(test)]
mod event_tests {
    use super::unrelated_flow_of;

    #[test]
    fn only_unrelated_flows_of_the_pod_count() {
        let api = " [DESTROY] tcp      6 src=10.244.1.11 dst=10.224.0.1 sport=40000 dport=6443 src=10.224.0.1 dst=10.244.1.11 sport=6443 dport=40000 [ASSURED]";
        let imds = " [DESTROY] tcp      6 src=10.244.1.11 dst=169.254.169.254 sport=40002 dport=80 src=10.224.0.10 dst=10.244.1.11 sport=2579 dport=40002 [ASSURED]";
        let other_pod = " [DESTROY] tcp      6 src=10.244.1.12 dst=10.224.0.1 sport=40000 dport=6443 src=10.224.0.1 dst=10.244.1.12 sport=6443 dport=40000";
        assert!(unrelated_flow_of(api, "10.244.1.11"));
        assert!(!unrelated_flow_of(imds, "10.244.1.11"));
        assert!(!unrelated_flow_of(other_pod, "10.244.1.11"));
        assert!(!unrelated_flow_of(
            "conntrack v1.4.7: 3 flow events have been shown.",
            "10.244.1.11"
        ));
    }
}
