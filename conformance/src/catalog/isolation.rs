//! ISO — isolation between pods (SPEC §2 "never answers with another pod's identity", §3 Isolation).
//!
//! Owns the isolation cases: pod B never gets pod A's identity (by client_id or resource id); spoofed
//! `X-Forwarded-For` / `podname` / `podns` headers change nothing and `X-Forwarded-For` is never forwarded;
//! a reused pod IP gets no stale identity; denied answers leak no upstream bytes; with the API server down
//! the interceptor fails closed; with the API server hung or cut off (no error, just silence) it stops
//! handing out tokens within the staleness bound and never serves a reused IP the old pod's identity; no pod
//! reaches the mock's control API (the evidence the verdicts rest on).

use std::time::{Duration, Instant};

use crate::backend::JournalEntryExt as _;
use crate::backend::{PodView, Target};
use crate::case::{BackendKind, Feature, Level, Outcome, Profile};
use crate::catalog::{fail_if, has_token, identity_pod, plain_pod, response};
use crate::cluster;
use crate::ctx::{Ctx, token_client_id, token_target};
use crate::declare_case;
use crate::http::Request;

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::Nmi, Profile::Hardened];

fn pair(ctx: &Ctx) -> Result<(PodView, PodView), Outcome> {
    Ok((identity_pod(ctx)?, plain_pod(ctx)?))
}

/// FAIL if `r` is a token of one of `forbidden` client ids (or any token when `any`).
fn no_foreign_token(
    r: &crate::http::Response,
    forbidden: &[String],
    what: &str,
) -> Result<(), Outcome> {
    if !has_token(r) {
        return Ok(());
    }
    let got = token_client_id(r);
    if got
        .as_ref()
        .is_some_and(|g| forbidden.iter().any(|f| f.eq_ignore_ascii_case(g)))
        || got.is_none()
    {
        return Err(Outcome::fail(
            format!("{what}: no token of another pod's identity"),
            format!("{} (appid {got:?})", r.summary()),
        ));
    }
    Ok(())
}

fn a_ids(ctx: &Ctx, a: &PodView) -> Vec<String> {
    ctx.identities_of(&a.name)
        .iter()
        .map(|i| i.client_id())
        .collect()
}

declare_case!(
    ISO_001 = Case {
        id: "ISO-001",
        title: "pod B never gets pod A's identity (none / client_id any case / msi_res_id / mi_res_id)",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §2, §3 Isolation",
        explain: "A pod without identity asks for the token of another pod's identity in every way a client can name it; it is always refused and never receives a token.",
    },
    |ctx| {
        let (a, b) = pair(ctx)?;
        let forbidden = a_ids(ctx, &a);
        let ids: Vec<_> = ctx.identities_of(&a.name).into_iter().cloned().collect();
        // Every spelling for the first identity; the others by client_id only (each refusal waits out the
        // interceptor's retry budget, so this keeps the run short without losing coverage of the selectors).
        for (n, id) in ids.iter().enumerate() {
            let res = percent_encoding::utf8_percent_encode(
                &id.resource_id(),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string();
            for extra in [
                String::new(),
                format!("&client_id={}", id.client_id()),
                format!("&client_id={}", id.client_id().to_ascii_uppercase()),
                format!("&msi_res_id={res}"),
                format!("&mi_res_id={res}"),
            ]
            .into_iter()
            .enumerate()
            .filter(|(i, _)| n == 0 || *i == 1)
            .map(|(_, e)| e)
            {
                let sent = ctx.send_token(&b.name, &extra).await;
                let r = response(&sent, "a refusal")?;
                if r.status == 200 {
                    return Err(Outcome::fail(
                        format!(
                            "pod {} asking for pod {}'s identity ({extra}): refused",
                            b.name, a.name
                        ),
                        r.summary(),
                    ));
                }
                no_foreign_token(r, &forbidden, "identity of another pod")?;
            }
        }
        Ok(())
    }
);

declare_case!(
    ISO_002 = Case {
        id: "ISO-002",
        title: "spoofed X-Forwarded-For / podname / podns change nothing; X-Forwarded-For is not forwarded",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §2 (never forwards a client X-Forwarded-For), §3 Isolation",
        explain: "The caller is identified by its source address only: headers naming another pod or its IP do not change which identity is served, and an X-Forwarded-For header never reaches IMDS.",
    },
    |ctx| {
        let (a, b) = pair(ctx)?;
        let forbidden = a_ids(ctx, &a);
        let a_ip = a.ip.to_string();
        let req = Request::get(token_target(""))
            .metadata()
            .header("X-Forwarded-For", &a_ip)
            .header("X-Real-IP", &a_ip)
            .header("podname", &a.name)
            .header("podns", &a.namespace);
        let sent = ctx.send(&b.name, Target::Imds, req).await;
        let r = response(&sent, "a refusal")?;
        no_foreign_token(r, &forbidden, "spoofed X-Forwarded-For/podname/podns")?;
        // X-Forwarded-For is never forwarded upstream (IMDS rejects it; it must not reach IMDS at all).
        let sent = ctx
            .send(
                &b.name,
                Target::Imds,
                Request::get("/metadata/versions")
                    .metadata()
                    .header("X-Forwarded-For", &a_ip),
            )
            .await;
        let seen = ctx.tagged(&b.node, &sent.tag).await;
        if let Some(e) = seen.iter().find(|e| e.header("x-forwarded-for").is_some()) {
            return Err(Outcome::fail(
                "no X-Forwarded-For header on requests forwarded to IMDS",
                format!(
                    "IMDS saw X-Forwarded-For: {:?}",
                    e.header("x-forwarded-for")
                ),
            ));
        }
        Ok(())
    }
);

declare_case!(
    ISO_003 = Case {
        id: "ISO-003",
        title: "a reused pod IP gets no stale identity",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §3 Isolation",
        explain: "Pod A (with identity) is deleted and a new pod without identity receives its IP while A's AzureAssignedIdentity lingers; within 10 s the address must no longer receive A's identity.",
    },
    |ctx| {
        let (a, _) = pair(ctx)?;
        let forbidden = a_ids(ctx, &a);
        let node_ip = ctx.world().node_ip(&a.node);
        // Pod A goes away; a new pod without identity gets its IP. A's AAI lingers (MIC is slow to clean up).
        let old = cluster::pod_object(&a, node_ip);
        ctx.delete(&old)
            .await
            .map_err(|e| Outcome::skip(format!("deleting the pod failed: {e}")))?;
        let mut reused = a.clone();
        reused.name = format!("{}-new", a.name);
        reused.labels.clear();
        ctx.apply(cluster::pod_object(&reused, node_ip))
            .await
            .map_err(|e| Outcome::skip(format!("creating the pod failed: {e}")))?;
        let req = Request::get(token_target("")).metadata();
        // Watch propagation: within 10 s the new pod must no longer get A's identity.
        let sent = ctx
            .poll(&a.name, &req, Duration::from_secs(10), |s| {
                s.response().is_some_and(|r| !has_token(r))
            })
            .await;
        let r = response(&sent, "a refusal for the new pod")?;
        no_foreign_token(
            r,
            &forbidden,
            "reused pod IP (within 10 s of the pod change)",
        )
    }
);

declare_case!(
    ISO_004 = Case {
        id: "ISO-004",
        title: "denied responses leak no token bytes",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §3 Isolation",
        explain: "A pod without identity is refused and the refusal body contains no access token (no `access_token`, no JWT).",
    },
    |ctx| {
        let (_, b) = pair(ctx)?;
        let sent = ctx.send_token(&b.name, "").await;
        let r = response(&sent, "a refusal")?;
        let text = r.text();
        fail_if(
            r.status == 200 || text.contains("access_token") || text.contains("eyJ"),
            "a pod without identity gets a refusal with no token bytes",
            || r.summary(),
        )?;
        Ok(())
    }
);

declare_case!(
    ISO_005 = Case {
        id: "ISO-005",
        title: "API server down → fail closed (no token for an unknown pod, never a wrong identity)",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §2 (fails closed when the cluster view is unavailable), §3 Isolation",
        explain: "With the API server refusing requests and dropping watches, a pod without identity still gets no token and never another pod's identity.",
    },
    |ctx| {
        let (a, b) = pair(ctx)?;
        let forbidden = a_ids(ctx, &a);
        // A pod the interceptor has never seen appears while the API server is down.
        let node_ip = ctx.world().node_ip(&b.node);
        ctx.set_api_available(false)
            .await
            .map_err(|e| Outcome::skip(format!("taking the API server down: {e}")))?;
        // The runner restores availability and the pod after the case.
        ctx.delete(&cluster::pod_object(&b, node_ip)).await.ok();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for extra in [
            String::new(),
            format!(
                "&client_id={}",
                forbidden.first().cloned().unwrap_or_default()
            ),
        ] {
            let sent = ctx.send_token(&b.name, &extra).await;
            if let Some(r) = sent.response() {
                fail_if(
                    r.status == 200,
                    "API server down: a pod without identity still gets no token (fail closed)",
                    || r.summary(),
                )?;
                no_foreign_token(r, &forbidden, "API server down")?;
            }
        }
        Ok(())
    }
);

/// SPEC §2: an interceptor whose cluster view cannot be shown current for this long hands out no token.
const STALENESS_BOUND: Duration = Duration::from_secs(10);
/// Slack after the bound before the verdict (request latency, a watch event just before the outage).
const STALENESS_MARGIN: Duration = Duration::from_secs(3);

/// An API server outage that raises no error at the client: only silence.
#[derive(Debug, Clone, Copy)]
enum Silence {
    /// The API server hangs (a stopped process): connections accepted, nothing answered, watches silent.
    Hang,
    /// The nodes are cut off from the API server (packets dropped both ways).
    Partition,
}

impl Silence {
    async fn begin(self, ctx: &mut Ctx) -> Result<(), Outcome> {
        let result = match self {
            Silence::Hang => ctx.set_api_hung(true).await,
            Silence::Partition => ctx.set_api_partitioned(true).await,
        };
        result.map_err(|e| Outcome::skip(format!("{}: {e}", self.what())))
    }

    fn what(self) -> &'static str {
        match self {
            Silence::Hang => "API server hung",
            Silence::Partition => "API server cut off",
        }
    }
}

/// The identity pod is served while the API server is up (else there is nothing to take away: SKIP).
async fn served_before(ctx: &mut Ctx, a: &PodView) -> Result<(), Outcome> {
    let sent = ctx.poll_token(&a.name, "", Duration::from_secs(10)).await;
    if sent.response().is_some_and(has_token) {
        return Ok(());
    }
    Err(Outcome::skip(format!(
        "the identity pod gets no token even with the API server up: {}",
        sent.summary()
    )))
}

/// After the staleness bound of a silent outage, the identity pod gets no token (a stale cache would
/// still serve it).
async fn no_token_after_bound(ctx: &mut Ctx, silence: Silence) -> Result<(), Outcome> {
    let a = identity_pod(ctx)?;
    served_before(ctx, &a).await?;
    silence.begin(ctx).await?;
    // The runner ends the outage after the case.
    tokio::time::sleep(STALENESS_BOUND + STALENESS_MARGIN).await;
    let mut extras = vec![String::new()];
    extras.extend(a_ids(ctx, &a).first().map(|id| format!("&client_id={id}")));
    for extra in extras {
        let sent = ctx.send_token(&a.name, &extra).await;
        if let Some(r) = sent.response().filter(|r| has_token(r)) {
            return Err(Outcome::fail(
                format!(
                    "{}: no token once the cluster view cannot be shown current for {} s",
                    silence.what(),
                    STALENESS_BOUND.as_secs()
                ),
                format!(
                    "token request{extra} after {} s: {}",
                    (STALENESS_BOUND + STALENESS_MARGIN).as_secs(),
                    r.summary()
                ),
            ));
        }
    }
    Ok(())
}

/// During a silent outage pod A is deleted and a new pod without identity gets its IP: from the first
/// moment to past the staleness bound, that address never receives A's identity (or any token).
async fn reused_ip_during_silence(ctx: &mut Ctx, silence: Silence) -> Result<(), Outcome> {
    let a = identity_pod(ctx)?;
    let forbidden = a_ids(ctx, &a);
    let node_ip = ctx.world().node_ip(&a.node);
    served_before(ctx, &a).await?;
    silence.begin(ctx).await?;
    ctx.delete(&cluster::pod_object(&a, node_ip))
        .await
        .map_err(|e| Outcome::skip(format!("deleting the pod failed: {e}")))?;
    let mut reused = a.clone();
    reused.name = format!("{}-new", a.name);
    reused.labels.clear();
    ctx.apply(cluster::pod_object(&reused, node_ip))
        .await
        .map_err(|e| Outcome::skip(format!("creating the pod failed: {e}")))?;
    let began = Instant::now();
    let what = format!("{}: reused pod IP", silence.what());
    loop {
        let sent = ctx.send_token(&a.name, "").await;
        if let Some(r) = sent.response() {
            no_foreign_token(r, &forbidden, &what)?;
            fail_if(
                has_token(r),
                format!("{what}: a pod without identity gets no token"),
                || r.summary(),
            )?;
        }
        if began.elapsed() >= STALENESS_BOUND + STALENESS_MARGIN {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

declare_case!(
    ISO_006 = Case {
        id: "ISO-006",
        title: "API server hung → no token after the staleness bound (10 s)",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §2 (fails closed when the cluster view is unavailable), §3 Isolation",
        explain: "The API server hangs as a stopped process does: connections are accepted, nothing is answered, open watches go silent without an error. 13 s later the pod with an identity must get no token: an interceptor that keeps serving from its cache cannot know whether the pod still exists or still holds its address.",
    },
    |ctx| { no_token_after_bound(ctx, Silence::Hang).await }
);
declare_case!(
    ISO_007 = Case {
        id: "ISO-007",
        title: "API server hung → a reused pod IP never gets the deleted pod's identity",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §2 (never answers with another pod's identity), §3 Isolation",
        explain: "With the API server hung, pod A (with identity) is deleted and a new pod without identity receives its IP. From the first moment of the hang to past the staleness bound, that address never receives A's identity or any token, although the interceptor's cache still names A.",
    },
    |ctx| { reused_ip_during_silence(ctx, Silence::Hang).await }
);
declare_case!(
    ISO_008 = Case {
        id: "ISO-008",
        title: "API server cut off (packets dropped) → no token after the staleness bound (10 s)",
        level: Level::Must,
        features: &[Feature::Tokens],
        backends: &[BackendKind::Netns],
        spec: "SPEC §2 (fails closed when the cluster view is unavailable), §3 Isolation",
        explain: "Every packet between the nodes and the API server is dropped (iptables DROP both ways in each node's namespace): no reset, no error, only silence. 13 s later the pod with an identity must get no token.",
    },
    |ctx| { no_token_after_bound(ctx, Silence::Partition).await }
);
declare_case!(
    ISO_009 = Case {
        id: "ISO-009",
        title: "API server cut off (packets dropped) → a reused pod IP never gets the deleted pod's identity",
        level: Level::Must,
        features: &[Feature::Tokens],
        backends: &[BackendKind::Netns],
        spec: "SPEC §2 (never answers with another pod's identity), §3 Isolation",
        explain: "With the nodes cut off from the API server, pod A (with identity) is deleted and a new pod without identity receives its IP. From the first moment of the cut to past the staleness bound, that address never receives A's identity or any token.",
    },
    |ctx| { reused_ip_during_silence(ctx, Silence::Partition).await }
);

fn control_api_answer(method: &str, path: &str, r: &crate::http::Response) -> bool {
    let json = r.json();
    match (method, path) {
        ("DELETE", _) => r.status == 204,
        (_, "/_mock/journal") => json.as_ref().is_some_and(|j| j.is_array()),
        _ => json
            .as_ref()
            .is_some_and(|j| j.get("server").is_some() || j.get("compute").is_some()),
    }
}

declare_case!(
    ISO_010 = Case {
        id: "ISO-010",
        title: "pods cannot reach the mock's control API (/_mock/) through 169.254.169.254",
        level: Level::Must,
        profiles: &[Profile::Nmi, Profile::Hardened, Profile::AksRestriction],
        spec: "SPEC §1 (control API never on an IMDS path), §3.1 (every verdict is observed)",
        explain: "The verdicts rest on each VM's IMDS journal, so no pod (or interceptor) may read or erase it: a non-host and a host-network pod send GET /_mock/journal, GET /_mock/config and DELETE /_mock/journal to 169.254.169.254:80; none gets the control API's answer, and a witness request journaled before is still in the journal afterwards (read through the harness's own path).",
    },
    |ctx| {
        let pod = crate::catalog::any_pod(ctx, false)?;
        let node = pod.node.clone();
        let host = ctx.host_pod(&node);
        // A witness entry straight from the node's host side: a pod that could clear the journal erases it.
        let witness = ctx
            .send(
                &node,
                Target::DirectImds,
                Request::get("/metadata/versions").metadata(),
            )
            .await;
        response(&witness, "IMDS's direct answer to the witness request")?;
        if ctx.tagged(&node, &witness.tag).await.is_empty() {
            return Err(Outcome::skip(format!(
                "the witness request is not in {node}'s journal ({})",
                ctx.journal_error(&node)
                    .await
                    .unwrap_or_else(|| "journal read fine".into())
            )));
        }
        for from in [pod.name.as_str(), host.as_str()] {
            for (method, path) in [
                ("GET", "/_mock/journal"),
                ("GET", "/_mock/config"),
                ("DELETE", "/_mock/journal"),
            ] {
                let sent = ctx
                    .send(from, Target::Imds, Request::method(method, path).metadata())
                    .await;
                // No answer at all (refused, dropped by a restriction rule) reaches nothing either; one
                // unanswered request is enough to know this caller reaches no listener (saves the timeouts).
                let Some(r) = sent.response() else {
                    break;
                };
                if control_api_answer(method, path, r) {
                    return Err(Outcome::fail(
                        format!(
                            "{from}: {method} {path} via 169.254.169.254:80 is not the mock's control API"
                        ),
                        format!("the control API answered: {}", r.summary()),
                    ));
                }
            }
        }
        fail_if(
            ctx.tagged(&node, &witness.tag).await.is_empty(),
            format!("{node}'s IMDS journal intact after pods sent DELETE /_mock/journal"),
            || "the witness entry is gone: a pod cleared the journal",
        )?;
        Ok(())
    }
);

declare_case!(
    ISO_011 = Case {
        id: "ISO-011",
        title: "a pod that has finished (Succeeded, Failed) no longer receives its identity",
        level: Level::Must,
        features: &[Feature::Tokens],
        spec: "SPEC §3 Isolation; REFERENCE A.5 (only Pending and Running pods are callers)",
        explain: "Pod A (with identity) is marked Succeeded, then Failed, in the API server while it keeps its address and its AzureAssignedIdentity lingers (MIC is slow to clean up). Within 10 s a request from that address must no longer receive A's identity: a finished pod's address is free for reuse, and whoever holds it next is not A.",
    },
    |ctx| {
        let a = identity_pod(ctx)?;
        let forbidden = a_ids(ctx, &a);
        served_before(ctx, &a).await?;
        let node_ip = ctx.world().node_ip(&a.node);
        let req = Request::get(token_target("")).metadata();
        for phase in ["Succeeded", "Failed"] {
            let mut finished = cluster::pod_object(&a, node_ip);
            finished["status"]["phase"] = phase.into();
            ctx.apply(finished)
                .await
                .map_err(|e| Outcome::skip(format!("marking the pod {phase} failed: {e}")))?;
            let sent = ctx
                .poll(&a.name, &req, Duration::from_secs(10), |s| {
                    s.response().is_some_and(|r| !has_token(r))
                })
                .await;
            let r = response(&sent, "a refusal for the finished pod's address")?;
            no_foreign_token(
                r,
                &forbidden,
                &format!("pod {phase} (within 10 s of the change)"),
            )?;
            fail_if(
                has_token(r),
                format!("the address of a pod in phase {phase} gets no token"),
                || r.summary(),
            )?;
        }
        Ok(())
    }
);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::control_api_answer;
    use crate::http::{Conn, Request, Response};

    async fn ask(addr: std::net::SocketAddr, method: &str, path: &str) -> Response {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Conn::new(stream, addr.to_string())
            .send(
                &Request::method(method, path).metadata(),
                false,
                Duration::from_secs(30),
            )
            .await
            .expect("answer")
    }

    /// ISO-010 can fail: the control API's real answers (a mock serving it on the IMDS listener, as the
    /// harness did before) are recognised, and IMDS's unknown-path answers (control API elsewhere) are not.
    #[tokio::test]
    async fn the_control_api_is_told_apart_from_imds_unknown_paths() {
        let inline = mock_imds::MockImds::builder()
            .seed(1)
            .start()
            .await
            .expect("mock");
        let separate = mock_imds::MockImds::builder()
            .seed(1)
            .control_listen("127.0.0.1:0".parse().expect("addr"))
            .start()
            .await
            .expect("mock");
        for (method, path) in [
            ("GET", "/_mock/journal"),
            ("GET", "/_mock/config"),
            ("DELETE", "/_mock/journal"),
        ] {
            let r = ask(inline.addr(), method, path).await;
            assert!(
                control_api_answer(method, path, &r),
                "{method} {path}: {r:?}"
            );
            let r = ask(separate.addr(), method, path).await;
            assert!(
                !control_api_answer(method, path, &r),
                "{method} {path}: {r:?}"
            );
        }
    }
}
