//! SEC — the security floor (SPEC §2, §3.1): what every interceptor that sits between pods and IMDS must
//! never do, whatever features it claims.
//!
//! Owns the two floor cases. They claim no feature, so no claim set can make them UNCLAIMED, and
//! [`crate::report::Verdict`] refuses `CONFORMANT` to a run in which they did not run. A forwarder that
//! hands every pod the VM's token, or an interceptor that serves one pod another's identity, fails here on
//! every profile — even when it claims only `passthrough`. A request that gets no answer (a restriction
//! rule dropping the pod's traffic) received nothing, which is what the floor asks; every request is still
//! sent, so a selective interceptor cannot hide behind one dropped request.

use crate::backend::PodView;
use crate::case::{Level, Outcome, Profile};
use crate::catalog::{has_token, plain_pod};
use crate::ctx::{Ctx, token_client_id};
use crate::declare_case;
use crate::http::Response;
use crate::scenario::IdentityDef;

const P: &[Profile] = &[Profile::Nmi, Profile::Hardened, Profile::AksRestriction];

/// The scenario's identities the (first node's) VM holds (IMDS would issue a token for each).
fn vm_identities(ctx: &Ctx) -> Vec<IdentityDef> {
    crate::catalog::first_vm_identities(ctx)
}

/// A short description of a token answer: who it is for.
fn token_of(r: &Response) -> String {
    match token_client_id(r) {
        Some(appid) => format!("a token for appid {appid}"),
        None => "a token".into(),
    }
}

declare_case!(
    SEC_001 = Case {
        id: "SEC-001",
        title: "a pod without identity never receives a token (no selector, or naming any of the VM's identities)",
        level: Level::Must,
        features: &[],
        profiles: P,
        spec: "SPEC §2 (a pod receives only its own identity), §3.1 (security floor)",
        explain: "Security floor, checked whatever the interceptor claims. A non-host pod that has no identity asks for a managed-identity token without a selector (IMDS would answer with the VM's system-assigned identity) and then naming each identity the VM holds by client_id. None of these requests may be answered with a token: an interceptor that forwards token requests to IMDS unmediated hands every pod the VM's identities. No answer at all (traffic dropped) is not a token and passes.",
    },
    |ctx| {
        let pod: PodView = plain_pod(ctx)?;
        let mut asks = vec![String::new()];
        asks.extend(
            vm_identities(ctx)
                .iter()
                .map(|i| format!("&client_id={}", i.client_id())),
        );
        for extra in asks {
            let sent = ctx.send_token(&pod.name, &extra).await;
            if let Some(r) = sent.response()
                && has_token(r)
            {
                let what = if extra.is_empty() {
                    "no selector".to_string()
                } else {
                    extra.trim_start_matches('&').to_string()
                };
                return Err(Outcome::fail(
                    format!(
                        "pod {} (no identity), token request with {what}: no token",
                        pod.name
                    ),
                    format!("{}: {}", token_of(r), r.summary()),
                ));
            }
        }
        Ok(())
    }
);

declare_case!(
    SEC_002 = Case {
        id: "SEC-002",
        title: "a pod never receives an identity the VM holds that is not its own",
        level: Level::Must,
        features: &[],
        profiles: P,
        spec: "SPEC §2 (never answers with another pod's identity), §3.1 (security floor)",
        explain: "Security floor, checked whatever the interceptor claims. Every non-host pod on the first node, with identities or without, asks without a selector (IMDS would pick the VM's default identity) and by client_id for each identity the VM holds that is not its own. It may be refused or receive nothing, but any token it receives must be for one of its own identities: never another pod's, never the VM's.",
    },
    |ctx| {
        let Some(first_node) = ctx.world().nodes.first().map(|n| n.name.clone()) else {
            return Err(Outcome::skip("scenario has no node"));
        };
        let pods: Vec<PodView> = ctx
            .world()
            .pods
            .iter()
            .filter(|p| !p.host_network && p.node == first_node)
            .cloned()
            .collect();
        if pods.is_empty() {
            return Err(Outcome::skip(
                "scenario has no non-host pod on the first node",
            ));
        }
        let vm = vm_identities(ctx);
        for pod in pods {
            let own: Vec<String> = ctx
                .identities_of(&pod.name)
                .iter()
                .map(|i| i.client_id())
                .collect();
            // Without a selector IMDS would pick the VM's default (system-assigned) identity: what the pod
            // gets must still be its own, so the case observes something on every scenario.
            let mut asks: Vec<(String, String)> =
                vec![(String::new(), "the VM's default identity".into())];
            asks.extend(
                vm.iter()
                    .filter(|i| !own.iter().any(|o| o.eq_ignore_ascii_case(&i.client_id())))
                    .map(|i| {
                        (
                            format!("&client_id={}", i.client_id()),
                            format!("{} ({})", i.name, i.client_id()),
                        )
                    }),
            );
            for (extra, which) in asks {
                let sent = ctx.send_token(&pod.name, &extra).await;
                let Some(r) = sent.response() else {
                    continue;
                };
                if !has_token(r) {
                    continue;
                }
                let got = token_client_id(r);
                let is_own = got
                    .as_deref()
                    .is_some_and(|g| own.iter().any(|o| o.eq_ignore_ascii_case(g)));
                if !is_own {
                    return Err(Outcome::fail(
                        format!(
                            "pod {} asking {} (for {which}): no token but of its own identities",
                            pod.name,
                            if extra.is_empty() {
                                "without selector"
                            } else {
                                extra.trim_start_matches('&')
                            }
                        ),
                        format!("{}: {}", token_of(r), r.summary()),
                    ));
                }
            }
        }
        Ok(())
    }
);

/// Spellings of the token route a server may read as `/metadata/identity/oauth2/token` (IMDS matches paths
/// case-insensitively; proxies and servers clean dot segments, doubled slashes and `;` parameters, and some
/// decode `%2F` or read `\` as `/`).
const TOKEN_ROUTE_SPELLINGS: &[&str] = &[
    "/metadata/Identity/oauth2/token",
    "/METADATA/IDENTITY/OAUTH2/TOKEN",
    "/metadata/identity/OAuth2/Token",
    "//metadata/identity/oauth2/token",
    "/metadata/./identity/oauth2/token",
    "/metadata/x/../identity/oauth2/token",
    "/metadata/%69dentity/oauth2/token",
    "/metadata/identity/oauth2/token;x",
    "/metadata/identity/oauth2/token/",
    "/metadata%2Fidentity%2Foauth2%2Ftoken",
    "/metadata\\identity\\oauth2\\token",
];

/// `path`, percent-decoded (twice, for double encoding), `\` read as `/`, lower-cased.
fn loosely(path: &str) -> String {
    let once = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let twice = percent_encoding::percent_decode_str(&once).decode_utf8_lossy();
    twice.replace('\\', "/").to_ascii_lowercase()
}

declare_case!(
    SEC_003 = Case {
        id: "SEC-003",
        title: "no spelling of the token route reaches IMDS from a pod (case, dot segments, //, ;, %-encoding, backslash)",
        level: Level::Must,
        features: &[],
        profiles: P,
        spec: "SPEC §2 (a pod receives only its own identity), §3.1 (security floor); REFERENCE A.2 (NMI's case-sensitive route is a defect)",
        explain: "Security floor. A non-host pod without identity asks for a token through other spellings of /metadata/identity/oauth2/token: other letter cases, dot segments, doubled slashes, a ;parameter, a trailing slash, percent-encoded letters and slashes, backslashes. Whatever the interceptor answers, none of these requests may reach IMDS: the VM's IMDS journal must show no request whose path, decoded and lower-cased, names oauth2 during the case (real IMDS reads paths case-insensitively and would hand out the VM's token; the emulator answering 404 does not make the forward harmless). No token may come back either.",
    },
    |ctx| {
        let pod: PodView = plain_pod(ctx)?;
        let mark = ctx.journal_mark(&pod.node).await;
        let query = crate::ctx::token_target("");
        let query = query.split_once('?').map_or("", |(_, q)| q).to_owned();
        for spelling in TOKEN_ROUTE_SPELLINGS {
            // A dropped request (a restriction rule) is given 1 s to connect: nothing reached IMDS then.
            let sent = ctx
                .send_timeout(
                    &pod.name,
                    crate::backend::Target::Imds,
                    crate::http::Request::get(format!("{spelling}?{query}")).metadata(),
                    std::time::Duration::from_secs(1),
                    crate::ctx::REQUEST_TIMEOUT,
                )
                .await;
            if let Some(r) = sent.response()
                && has_token(r)
            {
                return Err(Outcome::fail(
                    format!(
                        "pod {} (no identity) asking through {spelling}: no token",
                        pod.name
                    ),
                    format!("{}: {}", token_of(r), r.summary()),
                ));
            }
        }
        let reached: Vec<String> = ctx
            .journal_since(&pod.node, mark)
            .await
            .into_iter()
            .filter(|e| loosely(&e.path).contains("oauth2"))
            .map(|e| {
                format!(
                    "{} {} (from {}, IMDS answered {})",
                    e.method, e.path, e.source, e.status
                )
            })
            .collect();
        if let Some(err) = ctx.journal_error(&pod.node).await {
            return Err(Outcome::skip(format!(
                "the VM's IMDS journal cannot be read: {err}"
            )));
        }
        fail_if_reached(&pod, reached)
    }
);

fn fail_if_reached(pod: &PodView, reached: Vec<String>) -> Result<(), Outcome> {
    if reached.is_empty() {
        return Ok(());
    }
    Err(Outcome::fail(
        format!(
            "no token-route request from pod {} (no identity) in the VM's IMDS journal",
            pod.name
        ),
        format!(
            "{} reached IMDS: {}",
            reached.len(),
            reached.join("; ").chars().take(600).collect::<String>()
        ),
    ))
}
