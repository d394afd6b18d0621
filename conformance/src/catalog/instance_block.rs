//! BLK — blocking instance metadata for non-host pods (`blockInstanceMetadata`, REFERENCE A.3.4).
//!
//! Owns the block cases: 403 on `/metadata/instance` and its case/suffix/leaf variants, no canonicalisation
//! bypass (`//`, `/./`, `%69`, `;`, upper case) ever yields instance data, denied answers carry no instance
//! data and reach no IMDS, host-network pods and other paths are unaffected, and with the feature off the
//! instance document passes through byte-identical.

use crate::backend::Target;
use crate::case::{Feature, Level, Outcome, Profile};
use crate::catalog::{any_pod, expect_not_forwarded, expect_status, fail_if, response};
use crate::ctx::{Ctx, INSTANCE};
use crate::declare_case;
use crate::http::Request;

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::Nmi, Profile::Hardened];

fn pod(ctx: &Ctx) -> Result<(String, String), Outcome> {
    let p = any_pod(ctx, true)?;
    Ok((p.name, p.node))
}

/// Fingerprints of the VM's instance document (vmId, subscriptionId), read directly from its IMDS.
async fn fingerprints(ctx: &mut Ctx, node: &str) -> Result<Vec<String>, Outcome> {
    let sent = ctx
        .send(node, Target::DirectImds, Request::get(INSTANCE).metadata())
        .await;
    let r = expect_status(&sent, 200, "direct IMDS instance document (reference)")?;
    let doc = r
        .json()
        .ok_or_else(|| Outcome::skip("direct IMDS instance document is not JSON"))?;
    let mut v = Vec::new();
    for key in ["vmId", "subscriptionId", "resourceId"] {
        if let Some(s) = doc["compute"][key].as_str().filter(|s| !s.is_empty()) {
            v.push(s.to_string());
        }
    }
    if v.is_empty() {
        return Err(Outcome::skip(
            "reference instance document has no vmId/subscriptionId",
        ));
    }
    Ok(v)
}

/// FAIL if `body` contains instance data.
fn leaks(body: &str, prints: &[String], what: &str) -> Result<(), Outcome> {
    if let Some(p) = prints.iter().find(|p| body.contains(p.as_str())) {
        return Err(Outcome::fail(
            format!("{what}: no instance data in the body"),
            format!("body contains {p:?}"),
        ));
    }
    Ok(())
}

async fn blocked(ctx: &mut Ctx, targets: &[&str], exact_403: bool) -> Result<(), Outcome> {
    let (pod, node) = pod(ctx)?;
    let prints = fingerprints(ctx, &node).await?;
    for t in targets {
        let mark = ctx.journal_mark(&node).await;
        let sent = ctx
            .send(&pod, Target::Imds, Request::get(*t).metadata())
            .await;
        let what = format!("GET {t} from a non-host pod");
        let r = response(&sent, &format!("{what}: a response"))?;
        if exact_403 && r.status != 403 {
            return Err(Outcome::fail(format!("{what}: 403"), r.summary()));
        }
        fail_if(
            r.status == 200,
            format!("{what}: never 200 (no instance data)"),
            || r.summary(),
        )?;
        leaks(&r.text(), &prints, &what)?;
        let since = ctx.journal_since(&node, mark).await;
        if let Some(e) = since
            .iter()
            .find(|e| e.path.to_ascii_lowercase().contains("instance") && e.status == 200)
        {
            return Err(Outcome::fail(
                format!("{what}: IMDS never serves the instance document for it"),
                format!("IMDS journal: {} {} → {}", e.method, e.path, e.status),
            ));
        }
    }
    Ok(())
}

declare_case!(
    BLK_001 = Case {
        id: "BLK-001",
        title: "non-host pod → 403 on /metadata/instance",
        level: Level::Must,
        features: &[Feature::BlockInstanceMetadata],
        spec: "SPEC §3 Instance block; REFERENCE A.3.4",
        explain: "With blockInstanceMetadata, a non-host pod's GET /metadata/instance (with Metadata: true) is answered 403 and never reaches IMDS.",
    },
    |ctx| { blocked(ctx, &[INSTANCE], true).await }
);

declare_case!(
    BLK_002 = Case {
        id: "BLK-002",
        title: "403 on case, suffix and leaf variants of /metadata/instance",
        level: Level::Must,
        features: &[Feature::BlockInstanceMetadata],
        spec: "SPEC §3 Instance block; REFERENCE A.2 row 4 (case-insensitive metadata segment, prefix match)",
        explain: "/Metadata/instance, /metadata/instance/, /metadata/instance/compute, leaf queries with format=text, network sub-documents and the bare path without query are all blocked with 403.",
    },
    |ctx| {
        blocked(
            ctx,
            &[
                "/Metadata/instance?api-version=2021-02-01",
                "/metadata/instance/?api-version=2021-02-01",
                "/metadata/instance/compute?api-version=2021-02-01",
                "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
                "/metadata/instance/network/interface/0?api-version=2021-02-01",
                "/metadata/instance",
            ],
            true,
        )
        .await
    }
);

declare_case!(
    BLK_003 = Case {
        id: "BLK-003",
        title: "canonicalisation bypasses (//, /./, %69, ;, upper case) never yield instance data",
        level: Level::Must,
        features: &[Feature::BlockInstanceMetadata],
        spec: "SPEC §2 (canonicalise then route), §3 Instance block",
        explain: "Non-canonical spellings of the instance path must not slip past the block: whatever status the interceptor chooses, it is never 200, the body carries no instance data (vmId, subscriptionId, resourceId of the VM), and IMDS never serves an instance document for the request.",
    },
    |ctx| {
        blocked(
            ctx,
            &[
                "//metadata/instance?api-version=2021-02-01",
                "/metadata//instance?api-version=2021-02-01",
                "/metadata/./instance?api-version=2021-02-01",
                "/./metadata/instance?api-version=2021-02-01",
                "/metadata/x/../instance?api-version=2021-02-01",
                "/metadata/%69nstance?api-version=2021-02-01",
                "/%6detadata/instance?api-version=2021-02-01",
                "/metadata/instance;x?api-version=2021-02-01",
                "/metadata/INSTANCE?api-version=2021-02-01",
                "/METADATA/INSTANCE/compute?api-version=2021-02-01",
                "/metadata/instance%2fcompute?api-version=2021-02-01",
            ],
            false,
        )
        .await
    }
);

declare_case!(
    BLK_004 = Case {
        id: "BLK-004",
        title: "the 403 carries no instance data and nothing reaches IMDS",
        level: Level::Must,
        features: &[Feature::BlockInstanceMetadata],
        spec: "SPEC §3 Instance block",
        explain: "The block is decided before any upstream call: the IMDS journal shows no instance request for the tag, and the 403 body contains none of the VM's identifiers.",
    },
    |ctx| {
        let (pod, node) = pod(ctx)?;
        let prints = fingerprints(ctx, &node).await?;
        let mark = ctx.journal_mark(&node).await;
        let sent = ctx
            .send(&pod, Target::Imds, Request::get(INSTANCE).metadata())
            .await;
        let r = expect_status(&sent, 403, "instance request from a non-host pod")?;
        leaks(&r.text(), &prints, "the 403")?;
        expect_not_forwarded(
            ctx,
            &node,
            mark,
            &sent.tag,
            "/metadata/instance",
            "the blocked request",
        )
        .await
    }
);

declare_case!(
    BLK_005 = Case {
        id: "BLK-005",
        title: "host-network pods still get the instance document; other paths are not blocked",
        level: Level::Must,
        features: &[Feature::BlockInstanceMetadata, Feature::Passthrough],
        spec: "SPEC §3 Instance block; REFERENCE A.3.4",
        explain: "Host-network traffic is not intercepted, so a host-network pod gets 200 on /metadata/instance; /metadata/versions, attested and scheduled events stay reachable for non-host pods.",
    },
    |ctx| {
        let node = ctx.first_node();
        let host = ctx.host_pod(&node);
        let sent = ctx
            .send(&host, Target::Imds, Request::get(INSTANCE).metadata())
            .await;
        expect_status(&sent, 200, "instance request from a host-network pod")?;
        let (pod, _) = pod(ctx)?;
        for t in [
            "/metadata/versions",
            "/metadata/attested/document?api-version=2020-09-01",
            "/metadata/scheduledevents?api-version=2020-07-01",
        ] {
            let sent = ctx
                .send(&pod, Target::Imds, Request::get(t).metadata())
                .await;
            expect_status(
                &sent,
                200,
                &format!("GET {t} from a non-host pod (not blocked)"),
            )?;
        }
        Ok(())
    }
);

declare_case!(
    BLK_006 = Case {
        id: "BLK-006",
        title: "block off: the instance document passes through byte-identical",
        level: Level::Must,
        features: &[Feature::Passthrough],
        unless: &[Feature::BlockInstanceMetadata],
        profiles: &[Profile::Nmi],
        spec: "SPEC §3 Instance block (feature off); REFERENCE A.3.3",
        explain: "Without the block, the interceptor relays IMDS's instance document unchanged: the body a non-host pod receives equals the one IMDS serves directly.",
    },
    |ctx| {
        let (pod, node) = pod(ctx)?;
        let direct = ctx
            .send(&node, Target::DirectImds, Request::get(INSTANCE).metadata())
            .await;
        let d = expect_status(&direct, 200, "direct instance document")?.clone();
        let via = ctx
            .send(&pod, Target::Imds, Request::get(INSTANCE).metadata())
            .await;
        let v = expect_status(
            &via,
            200,
            "instance document through the interceptor (feature off)",
        )?;
        fail_if(
            v.body != d.body,
            "byte-identical instance document through the interceptor",
            || format!("{} bytes vs {} bytes direct", v.body.len(), d.body.len()),
        )?;
        Ok(())
    }
);
