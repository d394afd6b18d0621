//! Unit and property tests of the pure decisions (REFERENCE A.2–A.8). No network, no clock.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::model::fixtures::*;
use crate::model::*;

/// The candidates of a `Found` step (panics on any other step).
fn found(step: StandardStep) -> Vec<IdentityInfo> {
    match step {
        StandardStep::Found(ids) => ids,
        other => panic!("expected Found, got {other:?}"),
    }
}

/// The message of a `Fail` step (panics on any other step).
fn failure(step: StandardStep) -> String {
    match step {
        StandardStep::Fail(m) => m.to_string(),
        other => panic!("expected Fail, got {other:?}"),
    }
}

const BUDGET: RetryBudget = RetryBudget {
    attempts_for_created: 16,
    attempts_for_assigned: 4,
    interval_secs: 5,
};

// ---- header -------------------------------------------------------------------------------------------

#[test]
fn header_must_be_exactly_true() {
    assert!(metadata_header_ok([b"true".as_slice()].into_iter()));
    for bad in [&b"True"[..], b"TRUE", b"false", b"", b" true", b"true "] {
        assert!(
            !metadata_header_ok([bad].into_iter()),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(!metadata_header_ok(std::iter::empty()));
    // Go's Header.Get reads the first value only.
    assert!(!metadata_header_ok([&b"false"[..], b"true"].into_iter()));
    assert!(metadata_header_ok([&b"true"[..], b"false"].into_iter()));
}

#[test]
fn metadata_body_is_nmi_bytes() {
    assert_eq!(METADATA_REQUIRED_BODY.len(), 89);
    assert!(METADATA_REQUIRED_BODY.ends_with("}\n"));
}

// ---- routes (A.2 router test table plus our canonicalisation) ------------------------------------------

#[test]
fn nmi_router_table() {
    let cases = [
        ("/metadata/identity/oauth2/token/", Route::Token),
        ("/metadata/identity/oauth2/token", Route::Token),
        ("/Metadata/identity/oauth2/token/", Route::Token),
        ("/host/token/", Route::HostToken),
        ("/host/token", Route::HostToken),
        ("/metadata/instance", Route::BlockedInstance),
        ("/Metadata/instance", Route::BlockedInstance),
        ("/Metadata/instance/", Route::BlockedInstance),
        ("/metadata/", Route::PassThrough),
        ("/metadata/identity\\oauth2/token/", Route::InvalidTokenPath),
        ("/metadata/identity/oauth2\\token/", Route::InvalidTokenPath),
        (
            "/metadata/identity\\oauth2\\token/",
            Route::InvalidTokenPath,
        ),
        (
            "/metadata/identity/\\oauth2\\token/",
            Route::InvalidTokenPath,
        ),
        (
            "/metadata/identity\\\\\\oauth2\\\\token/",
            Route::InvalidTokenPath,
        ),
        ("/metadata/identity/info", Route::PassThrough),
        ("/metadata/attested/document", Route::PassThrough),
        ("/metadata/scheduledevents", Route::PassThrough),
        ("/metadata/versions", Route::PassThrough),
        ("/healthz", Route::PassThrough),
        ("/", Route::PassThrough),
    ];
    for (path, want) in cases {
        assert_eq!(route(path, true).route, want, "{path}");
    }
}

#[test]
fn mixed_case_identity_is_a_token_path_not_a_pass_through() {
    // NMI forwards this to IMDS (a VM identity token for any pod); we route it to the token handler.
    assert_eq!(
        route("/metadata/Identity/oauth2/token/", false).route,
        Route::Token
    );
    assert_eq!(
        route("/METADATA/IDENTITY/OAUTH2/TOKEN", false).route,
        Route::Token
    );
}

/// The ≥ 20 spellings of `/metadata/instance` the block must catch (BLK-001/002).
pub const INSTANCE_SPELLINGS: &[&str] = &[
    "/metadata/instance",
    "/metadata/instance/",
    "/Metadata/instance",
    "/METADATA/INSTANCE",
    "/metadata/Instance",
    "/metadata/instance/compute",
    "/metadata/instance/compute/vmId",
    "/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress",
    "//metadata/instance",
    "/metadata//instance",
    "/metadata/instance//compute",
    "/./metadata/instance",
    "/metadata/./instance",
    "/metadata/x/../instance",
    "/x/../metadata/instance",
    "/../metadata/instance",
    "/metadata/%69nstance",
    "/metadata/%49NSTANCE",
    "/%6detadata/instance",
    "/metadata%2finstance",
    "/metadata%2Finstance",
    "/metadata/%2569nstance",
    "/metadata;x=1/instance",
    "/metadata/instance;jsessionid=1",
    "/metadata\\instance",
    "/metadata/instance%2F",
    "/metadata/%2e/instance",
    "/metadata/%2E%2E/metadata/instance",
    "/metadata/instancefoo",
];

#[test]
fn every_instance_spelling_is_blocked_and_passes_when_off() {
    assert!(INSTANCE_SPELLINGS.len() >= 20);
    for p in INSTANCE_SPELLINGS {
        assert_eq!(route(p, true).route, Route::BlockedInstance, "{p}");
        assert_eq!(route(p, false).route, Route::PassThrough, "{p}");
    }
}

#[test]
fn canonical_forward_path() {
    assert_eq!(canonical_path("/metadata/%69nstance"), "/metadata/instance");
    assert_eq!(
        canonical_path("//metadata/./x/../instance/"),
        "/metadata/instance/"
    );
    assert_eq!(
        canonical_path("/metadata%2Finstance"),
        "/metadata%2Finstance"
    );
    assert_eq!(canonical_path("/a%2fb"), "/a%2Fb");
    assert_eq!(
        canonical_path("/metadata;p=1/versions"),
        "/metadata/versions"
    );
    assert_eq!(canonical_path(""), "/");
    assert_eq!(canonical_path("/.."), "/");
    assert_eq!(canonical_path("/Metadata/Versions"), "/Metadata/Versions");
    assert_eq!(canonical_path("/%zz"), "/%zz");
}

#[test]
fn other_paths_are_not_blocked() {
    for p in [
        "/metadata/instances/../versions",
        "/metadata/attested/document",
        "/metadata/identity/info",
        "/metadata/loadbalancer",
    ] {
        assert_eq!(route(p, true).route, Route::PassThrough, "{p}");
    }
}

// ---- pod matching -------------------------------------------------------------------------------------

#[test]
fn pod_matching_requires_exactly_one() {
    let a = pod("ns", "a", "10.0.0.1");
    let b = pod("ns", "b", "10.0.0.2");
    let ip = "10.0.0.1"
        .parse()
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    assert_eq!(match_pod([&a, &b], ip).map(|p| p.name), Ok("a".to_string()));
    assert_eq!(
        match_pod([&b], ip).map_err(|e| e.to_string()),
        Err("pod list is empty".to_string())
    );
    let a2 = pod("other", "a2", "10.0.0.1");
    let err = match_pod([&a, &a2], ip)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.starts_with("failed to match pod IP 10.0.0.1"), "{err}");
    let mut done = a2.clone();
    done.phase = "Succeeded".into();
    assert_eq!(
        match_pod([&a, &done], ip).map(|p| p.name),
        Ok("a".to_string())
    );
    let mut host = a2;
    host.host_network = true;
    assert_eq!(
        match_pod([&a, &host], ip).map(|p| p.name),
        Ok("a".to_string())
    );
}

// ---- exceptions -----------------------------------------------------------------------------------------

#[test]
fn exception_and_mic_bypass() {
    let mut p = pod("ns", "a", "10.0.0.1");
    p.labels.insert("app".into(), "Custom".into());
    let exc = ExceptionInfo {
        namespace: "ns".into(),
        name: "e".into(),
        pod_labels: BTreeMap::from([("app".to_string(), "custom".to_string())]),
    };
    assert!(is_excepted(&p, std::slice::from_ref(&exc)));
    let mut other_ns = exc.clone();
    other_ns.namespace = "x".into();
    assert!(!is_excepted(&p, &[other_ns]));
    let mut other_val = exc;
    other_val.pod_labels.insert("app".into(), "nope".into());
    assert!(!is_excepted(&p, &[other_val]));

    let mut mic = pod("Default", "mic-abc-1", "10.0.0.9");
    mic.replicaset = Some("mic-7d9c".into());
    assert!(is_mic(&mic, "default"));
    mic.replicaset = Some("nmi-x".into());
    assert!(!is_mic(&mic, "default"));
    mic.replicaset = Some("mic-x".into());
    assert!(!is_mic(&mic, "kube-system"));
}

// ---- standard mode ----------------------------------------------------------------------------------------

#[test]
fn standard_no_id_prefers_legacy_then_assigned() {
    let p = pod("ns", "a", "10.0.0.1");
    let aais = vec![
        aai(
            &p,
            identity("ns", "id-assigned", "11111111-aaaa"),
            "Assigned",
        ),
        aai(&p, identity("ns", "id-legacy", "22222222-bbbb"), ""),
    ];
    let req = IdentityRequest::default();
    assert_eq!(
        found(standard_step(&aais, &p, &req, 0, &BUDGET))[0].name,
        "id-legacy"
    );
    assert_eq!(
        found(standard_step(&aais[..1], &p, &req, 0, &BUDGET))[0].name,
        "id-assigned"
    );
}

#[test]
fn standard_created_waits_then_fails_after_budget() {
    let p = pod("ns", "a", "10.0.0.1");
    let created = vec![aai(&p, identity("ns", "id", "33333333-cccc"), "Created")];
    let req = IdentityRequest::default();
    // In Created: keep waiting through the whole budget (the loop ends with the ASSIGNED message).
    for attempt in 0..BUDGET.total_attempts() {
        assert_eq!(
            standard_step(&created, &p, &req, attempt, &BUDGET),
            StandardStep::Wait
        );
    }
    assert!(
        assigned_failure(&p, &BUDGET)
            .to_string()
            .contains("in ASSIGNED state failed after 20 attempts, retry duration [5]s")
    );
    // Nothing at all: wait until the created budget, then fail with the CREATED message.
    for attempt in 0..BUDGET.attempts_for_created {
        assert_eq!(
            standard_step(&[], &p, &req, attempt, &BUDGET),
            StandardStep::Wait
        );
    }
    assert_eq!(
        failure(standard_step(&[], &p, &req, 16, &BUDGET)),
        "getting assigned identities for pod ns/a in CREATED state failed after 16 attempts, retry duration [5]s, error: <nil>. Check MIC pod logs for identity assignment errors"
    );
}

#[test]
fn wait_bound_failure_says_what_the_wait_saw() {
    let p = pod("ns", "a", "10.0.0.1");
    let other = pod("ns", "b", "10.0.0.2");
    let theirs = vec![aai(
        &other,
        identity("ns", "id", "55555555-eeee"),
        "Assigned",
    )];
    let none = wait_bound_failure(&theirs, &p, &IdentityRequest::default(), 10).to_string();
    assert_eq!(
        none,
        "no identity is assigned to pod ns/a: no AzureAssignedIdentity names the pod after waiting 10s (--identity-wait-bound-sec). Check MIC pod logs for identity assignment errors"
    );
    let created = vec![aai(&p, identity("ns", "id", "66666666-ffff"), "Created")];
    let req = IdentityRequest {
        client_id: "77777777-1234-5678".into(),
        resource_id: String::new(),
    };
    let waiting = wait_bound_failure(&created, &p, &req, 3).to_string();
    assert!(
        waiting.starts_with("clientID in request: 7777##### REDACTED #####5678, no identity is assigned to pod ns/a: none of its AzureAssignedIdentities is ASSIGNED and matches the request after waiting 3s"),
        "{waiting}"
    );
}

#[test]
fn standard_ignores_other_pods_aais() {
    let p = pod("ns", "a", "10.0.0.1");
    // Another pod of the namespace, and a pod of the same name in another namespace.
    for owner in [pod("ns", "b", "10.0.0.2"), pod("other", "a", "10.0.0.2")] {
        let theirs = identity(&owner.namespace, "theirs", "44444444-dddd");
        let aais = vec![aai(&owner, theirs, "Assigned")];
        assert_eq!(
            standard_step(&aais, &p, &IdentityRequest::default(), 0, &BUDGET),
            StandardStep::Wait,
            "{owner:?}"
        );
    }
}

#[test]
fn standard_selection_by_client_id_and_resource_id_case_insensitive() {
    let p = pod("ns", "a", "10.0.0.1");
    let one = identity("ns", "one", "AAAAAAAA-1111");
    let two = identity("ns", "two", "bbbbbbbb-2222");
    let aais = vec![
        aai(&p, one.clone(), "Assigned"),
        aai(&p, two.clone(), "Assigned"),
    ];
    let by_client = IdentityRequest {
        client_id: "aaaaaaaa-1111".into(),
        resource_id: String::new(),
    };
    let StandardStep::Found(c) = standard_step(&aais, &p, &by_client, 0, &BUDGET) else {
        panic!("not found")
    };
    // NMI's final pick is case-sensitive and would fail here; ours is not.
    assert_eq!(pick_standard(&c, &p, &by_client, false), Ok(one));
    let by_res = IdentityRequest {
        client_id: String::new(),
        resource_id: two.resource_id.to_uppercase(),
    };
    let StandardStep::Found(c) = standard_step(&aais, &p, &by_res, 0, &BUDGET) else {
        panic!("not found")
    };
    assert_eq!(pick_standard(&c, &p, &by_res, false), Ok(two));
    let unknown = IdentityRequest {
        client_id: "cccccccc-3333".into(),
        resource_id: String::new(),
    };
    assert_eq!(
        standard_step(&aais, &p, &unknown, 0, &BUDGET),
        StandardStep::Wait
    );
    let m = failure(standard_step(&aais, &p, &unknown, 16, &BUDGET));
    assert!(
        m.starts_with("clientID in request: cccc##### REDACTED #####3333, getting"),
        "{m}"
    );
}

#[test]
fn namespaced_filter_empty_list_is_not_found_not_panic() {
    let p = pod("ns", "a", "10.0.0.1");
    let foreign = identity("elsewhere", "id", "dddddddd-4444");
    assert_eq!(
        pick_standard(
            std::slice::from_ref(&foreign),
            &p,
            &IdentityRequest::default(),
            true
        )
        .map_err(|e| e.to_string()),
        Err("no azure identity found for request clientID ".to_string())
    );
    assert_eq!(
        pick_standard(
            std::slice::from_ref(&foreign),
            &p,
            &IdentityRequest::default(),
            false
        ),
        Ok(foreign.clone())
    );
    let mut annotated = foreign;
    annotated.namespaced = true;
    assert!(pick_standard(&[annotated], &p, &IdentityRequest::default(), false).is_err());
    assert!(pick_standard(&[], &p, &IdentityRequest::default(), false).is_err());
}

// ---- managed mode -----------------------------------------------------------------------------------------

#[test]
fn managed_mode_selects_through_bindings() {
    let mut p = pod("ns", "a", "10.0.0.1");
    p.labels.insert("aadpodidbinding".into(), "sel".into());
    let ids = vec![
        identity("ns", "one", "eeeeeeee-5555"),
        identity("ns", "two", "ffffffff-6666"),
        identity("x", "one", "99999999-7777"),
    ];
    let bindings = vec![
        BindingInfo {
            namespace: "ns".into(),
            name: "b1".into(),
            azure_identity: "one".into(),
            selector: "sel".into(),
        },
        BindingInfo {
            namespace: "ns".into(),
            name: "b2".into(),
            azure_identity: "two".into(),
            selector: "other".into(),
        },
        BindingInfo {
            namespace: "x".into(),
            name: "b3".into(),
            azure_identity: "one".into(),
            selector: "sel".into(),
        },
    ];
    assert_eq!(
        pick_managed(&bindings, &ids, &p, &IdentityRequest::default()).map(|i| i.client_id),
        Ok("eeeeeeee-5555".to_string())
    );
    let req_two = IdentityRequest {
        client_id: "ffffffff-6666".into(),
        resource_id: String::new(),
    };
    assert!(pick_managed(&bindings, &ids, &p, &req_two).is_err());
    let mut unlabelled = p.clone();
    unlabelled.labels.clear();
    assert!(pick_managed(&bindings, &ids, &unlabelled, &IdentityRequest::default()).is_err());
}

// ---- Retry-After and redaction ------------------------------------------------------------------------------

#[test]
fn retry_after_decision() {
    assert_eq!(identity_failure_status(false), (404, None));
    assert_eq!(identity_failure_status(true), (503, Some("20")));
}

#[test]
fn redaction_matches_nmi() {
    assert_eq!(
        redact_client_id("12345678-aaaa-bbbb-cccc-1234567890ab"),
        "1234##### REDACTED #####90ab"
    );
    assert_eq!(redact_client_id("abcdefgh"), "abcd##### REDACTED #####efgh");
    assert_eq!(redact_client_id("short"), "short");
    assert_eq!(redact_client_id(""), "");
}

// ---- properties ---------------------------------------------------------------------------------------------

fn spelling() -> impl Strategy<Value = String> {
    // Build arbitrary spellings of "/metadata/instance<suffix>" from per-character encodings and noise segments.
    let enc_char = |c: char| {
        prop_oneof![
            Just(c.to_string()),
            Just(c.to_ascii_uppercase().to_string()),
            Just(format!("%{:02x}", c as u8)),
            Just(format!("%{:02X}", c as u8)),
            Just(format!("%25{:02X}", c as u8)),
        ]
    };
    let word = |w: &'static str| {
        w.chars()
            .map(enc_char)
            .collect::<Vec<_>>()
            .prop_map(|parts| parts.concat())
    };
    let sep = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just("/./".to_string()),
        Just("/zz/../".to_string()),
        Just("%2f".to_string()),
        Just("\\".to_string()),
        Just(";p=1/".to_string()),
    ];
    let suffix = prop_oneof![
        Just(String::new()),
        Just("/".to_string()),
        Just("/compute".to_string()),
        Just("/compute/vmId".to_string()),
        Just("s".to_string())
    ];
    (sep.clone(), word("metadata"), sep, word("instance"), suffix).prop_map(|(a, m, b, i, s)| {
        format!(
            "{}{m}{b}{i}{s}",
            if a == "%2f" || a == "\\" {
                "/".to_string()
            } else {
                a
            }
        )
    })
}

proptest! {
    /// The fast path for plain paths gives exactly the general computation's forms (hence the same route
    /// and forward path); the alphabet is biased towards plain paths and the spellings that are not.
    #[test]
    fn plain_path_fast_path_matches_the_general_forms(p in "/?[/a-zA-Z0-9.%;\\\\_~-]{0,30}") {
        if is_plain_path(&p) {
            let lower = p.to_ascii_lowercase();
            prop_assert_eq!(path_forms(&p), (p.clone(), lower.clone(), lower), "{}", p);
        }
    }

    #[test]
    fn no_spelling_of_instance_escapes_the_block(p in spelling()) {
        prop_assert_eq!(route(&p, true).route, Route::BlockedInstance, "{}", p);
    }

    #[test]
    fn canonicalisation_is_idempotent(p in "[/a-zA-Z0-9%.;\\\\_~-]{0,40}") {
        let once = canonical_path(&p);
        prop_assert_eq!(canonical_path(&once), once.clone());
        prop_assert!(once.starts_with('/'));
        prop_assert!(!once.contains("//"));
        prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
    }

    #[test]
    fn route_never_panics_and_forward_path_is_canonical(p in any::<String>(), block in any::<bool>()) {
        let r = route(&p, block);
        prop_assert_eq!(canonical_path(&r.forward_path), r.forward_path.clone());
        if !block {
            prop_assert_ne!(r.route, Route::BlockedInstance);
        }
    }

    #[test]
    fn header_ok_iff_first_value_is_true(vals in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..3)) {
        let ok = metadata_header_ok(vals.iter().map(|v| v.as_slice()));
        prop_assert_eq!(ok, vals.first().is_some_and(|v| v.as_slice() == b"true"));
    }

    #[test]
    fn selection_never_returns_another_pods_identity(
        n_mine in 0usize..3, n_theirs in 0usize..3, status_idx in 0usize..4, attempt in 0u32..25,
        ask in proptest::option::of(0usize..6), upper in any::<bool>(),
    ) {
        let statuses = ["", "Created", "Assigned", "Unassigned"];
        let me = pod("ns", "me", "10.0.0.1");
        let them = pod("ns", "them", "10.0.0.2");
        let mut aais = Vec::new();
        for i in 0..n_mine { aais.push(aai(&me, identity("ns", &format!("mine{i}"), &format!("aaaaaaa{i}-mine")), statuses[status_idx])); }
        for i in 0..n_theirs { aais.push(aai(&them, identity("ns", &format!("theirs{i}"), &format!("bbbbbbb{i}-them")), "Assigned")); }
        let all_ids: Vec<String> = aais.iter().map(|a| a.identity.client_id.clone()).collect();
        let req = match ask.and_then(|i| all_ids.get(i)) {
            Some(id) => IdentityRequest { client_id: if upper { id.to_uppercase() } else { id.clone() }, resource_id: String::new() },
            None => IdentityRequest::default(),
        };
        if let StandardStep::Found(c) = standard_step(&aais, &me, &req, attempt, &BUDGET)
            && let Ok(id) = pick_standard(&c, &me, &req, false)
        {
            prop_assert!(id.name.starts_with("mine"));
            if !req.unspecified() { prop_assert!(id.client_id.eq_ignore_ascii_case(&req.client_id)); }
        }
    }

    #[test]
    fn retry_after_only_with_flag(flag in any::<bool>()) {
        let (status, header) = identity_failure_status(flag);
        prop_assert_eq!(header.is_some(), flag);
        prop_assert_eq!(status == 503, flag);
    }

    #[test]
    fn redaction_hides_the_middle(id in "[a-f0-9-]{8,40}") {
        let r = redact_client_id(&id);
        prop_assert!(r.starts_with(&id[..4]) && r.ends_with(&id[id.len() - 4..]));
        prop_assert!(r.contains("##### REDACTED #####"));
    }
}

#[test]
fn decisions_are_a_closed_set_with_unique_labels() {
    let mut labels = std::collections::BTreeSet::new();
    for (i, d) in Decision::ALL.iter().enumerate() {
        assert_eq!(d.index(), i, "{d:?} out of place in Decision::ALL");
        assert!(labels.insert(d.label()), "duplicate label {}", d.label());
        assert!(
            d.label()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{d:?}: labels are snake_case"
        );
    }
}

#[test]
fn plain_paths_are_recognised() {
    for p in [
        "/",
        "/metadata/instance",
        "/Metadata/Instance/",
        "/a/.../b",
        "/a-b_c~d.e",
    ] {
        assert!(is_plain_path(p), "{p}");
    }
    for p in [
        "",
        "metadata",
        "//metadata",
        "/a//b",
        "/a/./b",
        "/a/..",
        "/a/.",
        "/a%2Fb",
        "/a;x",
        "/a\\b",
        "/a b",
        "/ä",
    ] {
        assert!(!is_plain_path(p), "{p}");
    }
}
