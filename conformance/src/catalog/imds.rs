//! IMDS — endpoint fidelity of an IMDS itself (REFERENCE B): run against the VM's mock-imds, or against
//! the real service with `--imds-url http://169.254.169.254` from inside an Azure VM.
//!
//! Owns the fidelity cases: documented statuses, bodies and headers of the real service. Requests go
//! through [`Ctx::send_imds`] (never through an interceptor). Identity-dependent cases use the scenario's
//! identities and SKIP against a real IMDS where they cannot be known.

use crate::case::{Level, Outcome, Profile};
use crate::catalog::{expect_status, fail_if, response};
use crate::ctx::{INSTANCE, token_target};
use crate::declare_case;
use crate::http::Request;

/// The profiles of every case in this file (unless a case names its own).
const PROFILES: &[Profile] = &[Profile::Imds];

declare_case!(
    IMDS_001 = Case {
        id: "IMDS-001",
        title: "missing Metadata header → 400 naming it",
        level: Level::Must,
        spec: "REFERENCE B.1",
    },
    |ctx| {
        let sent = ctx.send_imds(Request::get(INSTANCE)).await;
        let r = expect_status(&sent, 400, "/metadata/instance without Metadata header")?;
        fail_if(
            !r.text().contains("Required metadata header not specified"),
            "body naming `Required metadata header not specified`",
            || r.summary(),
        )?;
        Ok(())
    }
);

declare_case!(
    IMDS_002 = Case {
        id: "IMDS-002",
        title: "X-Forwarded-For present → 400",
        level: Level::Must,
        spec: "REFERENCE B.1",
    },
    |ctx| {
        let sent = ctx
            .send_imds(
                Request::get(INSTANCE)
                    .metadata()
                    .header("X-Forwarded-For", "10.0.0.9"),
            )
            .await;
        expect_status(&sent, 400, "a request carrying X-Forwarded-For")?;
        Ok(())
    }
);

declare_case!(
    IMDS_003 = Case {
        id: "IMDS-003",
        title: "missing api-version → 400 with newest-versions",
        level: Level::Must,
        spec: "REFERENCE B.2",
    },
    |ctx| {
        let sent = ctx
            .send_imds(Request::get("/metadata/instance").metadata())
            .await;
        let r = expect_status(&sent, 400, "/metadata/instance without api-version")?;
        let body = r.json().unwrap_or_default();
        let newest = body["newest-versions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        fail_if(
            newest.is_empty() || !newest.iter().all(|v| v.is_string()),
            "a JSON body with a non-empty `newest-versions` array of strings",
            || r.summary(),
        )?;
        Ok(())
    }
);

declare_case!(
    IMDS_004 = Case {
        id: "IMDS-004",
        title: "token without resource → 400 exact body",
        level: Level::Must,
        spec: "REFERENCE B.4",
    },
    |ctx| {
        let sent = ctx
            .send_imds(
                Request::get("/metadata/identity/oauth2/token?api-version=2018-02-01").metadata(),
            )
            .await;
        let r = expect_status(&sent, 400, "token request without resource")?;
        let want = serde_json::json!({"error":"invalid_request","error_description":"Required query variable 'resource' is missing"});
        if r.json() != Some(want.clone()) {
            return Err(Outcome::fail(format!("body {want}"), r.summary()));
        }
        Ok(())
    }
);

declare_case!(
    IMDS_005 = Case {
        id: "IMDS-005",
        title: "unknown client_id → 400 Identity not found (exact)",
        level: Level::Must,
        spec: "REFERENCE B.4",
    },
    |ctx| {
        let sent = ctx
            .send_imds(
                Request::get(token_target(
                    "&client_id=0badc0de-0000-4000-8000-000000000000",
                ))
                .metadata(),
            )
            .await;
        let r = expect_status(&sent, 400, "token for an identity the VM does not have")?;
        let want =
            serde_json::json!({"error":"invalid_request","error_description":"Identity not found"});
        if r.json() != Some(want.clone()) {
            return Err(Outcome::fail(format!("body {want}"), r.summary()));
        }
        Ok(())
    }
);

declare_case!(
    IMDS_006 = Case {
        id: "IMDS-006",
        title: "JSON content type, Server: IMDS/…, compact body",
        level: Level::Must,
        spec: "REFERENCE B.1",
    },
    |ctx| {
        let sent = ctx.send_imds(Request::get(INSTANCE).metadata()).await;
        let r = expect_status(&sent, 200, "instance document")?;
        let ct = r.header("content-type").unwrap_or_default();
        if !ct.eq_ignore_ascii_case("application/json; charset=utf-8") {
            return Err(Outcome::fail(
                "Content-Type: application/json; charset=utf-8",
                format!("{ct:?}"),
            ));
        }
        let server = r.header("server").unwrap_or_default();
        if !server.starts_with("IMDS/") {
            return Err(Outcome::fail(
                "Server: IMDS/<version>",
                format!("{server:?}"),
            ));
        }
        let text = r.text();
        if text.contains("\": ") || text.contains('\n') {
            return Err(Outcome::fail("compact JSON (no whitespace)", r.summary()));
        }
        Ok(())
    }
);

declare_case!(
    IMDS_007 = Case {
        id: "IMDS-007",
        title: "unsupported verb → 405",
        level: Level::Must,
        spec: "REFERENCE B.1",
    },
    |ctx| {
        let sent = ctx
            .send_imds(Request::method("PUT", INSTANCE).metadata())
            .await;
        expect_status(&sent, 405, "PUT /metadata/instance")?;
        Ok(())
    }
);

declare_case!(
    IMDS_008 = Case {
        id: "IMDS-008",
        title: "/metadata/versions lists the api-versions",
        level: Level::Must,
        spec: "REFERENCE B.2",
    },
    |ctx| {
        let sent = ctx
            .send_imds(Request::get("/metadata/versions").metadata())
            .await;
        let r = expect_status(&sent, 200, "/metadata/versions")?;
        let body = r.json().unwrap_or_default();
        let list = body["apiVersions"].as_array().cloned().unwrap_or_default();
        fail_if(
            !list.iter().any(|v| v == "2018-02-01") || !list.iter().any(|v| v == "2021-02-01"),
            "{\"apiVersions\":[...]} including 2018-02-01 and 2021-02-01",
            || r.summary(),
        )?;
        Ok(())
    }
);

declare_case!(
    IMDS_009 = Case {
        id: "IMDS-009",
        title: "leaf needs format=text; then the bare value",
        level: Level::Must,
        spec: "REFERENCE B.3",
    },
    |ctx| {
        let leaf = "/metadata/instance/compute/vmId?api-version=2021-02-01";
        let sent = ctx.send_imds(Request::get(leaf).metadata()).await;
        expect_status(&sent, 400, "a leaf without format=text")?;
        let sent = ctx
            .send_imds(Request::get(format!("{leaf}&format=text")).metadata())
            .await;
        let r = expect_status(&sent, 200, "a leaf with format=text")?;
        let t = r.text();
        if t.starts_with('"') || t.starts_with('{') || uuid::Uuid::parse_str(t.trim()).is_err() {
            return Err(Outcome::fail("the bare vmId GUID as text", r.summary()));
        }
        Ok(())
    }
);

declare_case!(
    IMDS_010 = Case {
        id: "IMDS-010",
        title: "token body all strings; cached token on repeat",
        level: Level::Must,
        spec: "REFERENCE B.4",
    },
    |ctx| {
        let sent = ctx
            .send_imds(Request::get(token_target("")).metadata())
            .await;
        let r = response(&sent, "a token")?;
        if r.status == 400 && r.text().contains("Identity not found") {
            return Err(Outcome::skip("the VM has no system-assigned identity"));
        }
        let r = expect_status(&sent, 200, "a system-assigned token")?;
        let body = r.json().unwrap_or_default();
        for key in [
            "access_token",
            "client_id",
            "expires_in",
            "expires_on",
            "ext_expires_in",
            "not_before",
            "resource",
            "token_type",
        ] {
            fail_if(
                !body.get(key).is_some_and(|v| v.is_string()),
                format!("`{key}` present as a string"),
                || r.summary(),
            )?;
        }
        let e1: i64 = body["expires_in"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        let t1 = body["access_token"].clone();
        let again = ctx
            .send_imds(Request::get(token_target("")).metadata())
            .await;
        let r2 = expect_status(&again, 200, "the same token again (cached)")?;
        let b2 = r2.json().unwrap_or_default();
        let e2: i64 = b2["expires_in"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        if b2["access_token"] != t1 || e2 > e1 {
            return Err(Outcome::fail(
                "the cached token with expires_in not larger than before",
                format!(
                    "same token: {}, expires_in {e1} then {e2}",
                    b2["access_token"] == t1
                ),
            ));
        }
        Ok(())
    }
);

declare_case!(
    IMDS_011 = Case {
        id: "IMDS-011",
        title: "duplicate query parameter → 400",
        level: Level::Must,
        spec: "REFERENCE B.1",
    },
    |ctx| {
        let sent = ctx
            .send_imds(
                Request::get("/metadata/instance?api-version=2021-02-01&api-version=2021-02-01")
                    .metadata(),
            )
            .await;
        expect_status(&sent, 400, "duplicate query parameter")?;
        Ok(())
    }
);

declare_case!(
    IMDS_012 = Case {
        id: "IMDS-012",
        title: "nonexistent element → 404",
        level: Level::Must,
        spec: "REFERENCE B.3",
    },
    |ctx| {
        let sent = ctx
            .send_imds(
                Request::get(
                    "/metadata/instance/compute/doesNotExist?api-version=2021-02-01&format=text",
                )
                .metadata(),
            )
            .await;
        expect_status(&sent, 404, "a nonexistent element")?;
        Ok(())
    }
);
