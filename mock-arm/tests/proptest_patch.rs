//! Property tests over PATCH bodies: whatever the body — arbitrary JSON, or identity documents mixing valid,
//! malformed, unknown and differently-cased ids with `{}`, `null` and wrong values and any `type` — the PATCH
//! policy never panics, an accepted plan keeps ARM's invariants (no duplicate ids, within the limit, what
//! was removed is gone), and through the server every answer is a 200 or an ARM-shaped 4xx error.

mod common;

use common::{API, call, config, manual_clock};
use mock_arm::error::ErrorResponse;
use mock_arm::patch::{IdentityState, plan};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const LIMIT: usize = 4;

fn ua(name: &str) -> String {
    format!(
        "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_id() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..6usize).prop_map(|i| ua(&format!("id{i}"))),
        (0..6usize).prop_map(|i| ua(&format!("id{i}")).to_uppercase()),
        Just(ua("unknown")),
        ".{0,20}",
        Just(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
                .to_string()
        ),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(json!({})),
        3 => Just(Value::Null),
        1 => Just(json!({"principalId": "p", "clientId": "c"})),
        1 => arb_json(),
    ]
}

fn arb_type() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(json!("UserAssigned"))),
        Just(Some(json!("SystemAssigned, UserAssigned"))),
        Just(Some(json!("systemassigned,userassigned"))),
        Just(Some(json!("None"))),
        Just(Some(json!("SystemAssigned"))),
        arb_json().prop_map(Some),
    ]
}

fn arb_identity_body() -> impl Strategy<Value = Value> {
    (
        arb_type(),
        prop::collection::vec((arb_id(), arb_value()), 0..8),
        any::<bool>(),
    )
        .prop_map(|(t, entries, with_map)| {
            let mut identity = Map::new();
            if let Some(t) = t {
                identity.insert("type".into(), t);
            }
            if with_map {
                identity.insert(
                    "userAssignedIdentities".into(),
                    Value::Object(entries.into_iter().collect()),
                );
            }
            json!({ "identity": identity })
        })
}

fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => arb_identity_body().prop_map(|v| v.to_string().into_bytes()),
        1 => arb_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn known(id: &str) -> bool {
    (0..6).any(|i| id.eq_ignore_ascii_case(&ua(&format!("id{i}"))))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plan_never_panics_and_keeps_invariants(
        system in any::<bool>(),
        current in prop::collection::btree_set(0..6usize, 0..LIMIT),
        body in arb_body(),
    ) {
        let state = IdentityState { system, user: current.iter().map(|i| ua(&format!("id{i}"))).collect() };
        match plan(&state, &body, &known, LIMIT) {
            Ok(p) => {
                prop_assert!(p.user.len() <= LIMIT);
                for (i, a) in p.user.iter().enumerate() {
                    prop_assert!(known(a), "unknown id attached: {a}");
                    prop_assert!(!p.user[i + 1..].iter().any(|b| b.eq_ignore_ascii_case(a)), "duplicate {a}");
                }
                for r in &p.removed {
                    prop_assert!(!p.user.iter().any(|u| u.eq_ignore_ascii_case(r)), "removed {r} still attached");
                }
                for a in &p.added {
                    prop_assert!(p.user.iter().any(|u| u.eq_ignore_ascii_case(a)));
                    prop_assert!(!state.user.iter().any(|u| u.eq_ignore_ascii_case(a)), "{a} was already attached");
                }
            }
            Err(e) => {
                prop_assert!(e.status.is_client_error(), "{e}");
                prop_assert!(!e.body.code.is_empty() && !e.body.message.is_empty());
            }
        }
    }
}

#[test]
fn every_answer_to_a_patch_is_200_or_an_arm_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = config(21);
    c.throttling.enabled = false;
    let targets = [c.virtual_machines[0].id.clone(), c.scale_sets[0].id.clone()];
    let real: Vec<String> = c.identities.iter().map(|i| i.id.clone()).collect();
    let router = mock_arm::router(c, manual_clock(), None);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    // Bodies naming the estate's real identities as well as the generated ones.
    let strategy = (
        arb_body(),
        0..2usize,
        prop::sample::select(real),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(body, target, real_id, use_real)| {
            let body = if use_real {
                String::from_utf8_lossy(&body)
                    .replace(&ua("id0"), &real_id)
                    .into_bytes()
            } else {
                body
            };
            let text = String::from_utf8_lossy(&body).into_owned();
            let reply = rt.block_on(call(
                &router,
                "PATCH",
                &format!("{}?{API}", targets[target]),
                Some(&text),
                &[],
            ));
            if reply.status == 200 {
                prop_assert!(reply.json().get("properties").is_some());
            } else {
                prop_assert!(
                    (400..500).contains(&reply.status),
                    "status {} for {text}",
                    reply.status
                );
                let e: Result<ErrorResponse, _> = serde_json::from_slice(&reply.body);
                prop_assert!(e.is_ok(), "not ARM-shaped: {}", reply.text());
            }
            Ok(())
        })
        .expect("property holds");
}
