//! Property tests of the label-selector parser and matcher against a reference model of
//! Kubernetes' semantics, plus field-selector parsing.

use std::collections::BTreeMap;

use kube_test_apiserver::selectors::{FieldSelector, LabelSelector, Operator, Requirement};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]([a-z0-9._-]{0,8}[a-z0-9])?",
        (
            "[a-z]{1,5}(\\.[a-z]{1,4})?",
            "[A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?"
        )
            .prop_map(|(p, n)| format!("{p}/{n}")),
    ]
    .prop_filter("keywords are not keys", |k| k != "in" && k != "notin")
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?"
    ]
    .prop_filter("keywords", |v| v != "in" && v != "notin")
}

/// Gt/Lt operands are non-negative: Kubernetes also validates them as label values, so "-1" is refused.
fn requirement() -> impl Strategy<Value = Requirement> {
    (
        key(),
        0..9u8,
        prop::collection::btree_set(value(), 1..4),
        0i64..50,
    )
        .prop_map(|(key, op, mut values, n)| {
            let one = values.iter().next().cloned().unwrap_or_default();
            // `k in ()` is an empty set to Kubernetes too: a set holding only "" has no spelling.
            if values.len() == 1 && values.contains("") {
                values.insert("v".to_owned());
            }
            let (op, values) = match op {
                0 => (Operator::Equals, vec![one]),
                1 => (Operator::DoubleEquals, vec![one]),
                2 => (Operator::NotEquals, vec![one]),
                3 => (Operator::In, values.into_iter().collect()),
                4 => (Operator::NotIn, values.into_iter().collect()),
                5 => (Operator::Exists, vec![]),
                6 => (Operator::DoesNotExist, vec![]),
                7 => (Operator::GreaterThan, vec![n.to_string()]),
                _ => (Operator::LessThan, vec![n.to_string()]),
            };
            Requirement { key, op, values }
        })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    prop::collection::vec(requirement(), 0..5)
        .prop_map(|requirements| LabelSelector { requirements })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![key(), Just("app".to_owned()), Just("nodename".to_owned())],
        prop_oneof![value(), (-60i64..60).prop_map(|n| n.to_string())],
        0..6,
    )
}

/// Reference semantics written straight from the Kubernetes documentation.
fn reference(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.requirements.iter().all(|r| {
        let v = labels.get(&r.key);
        match r.op {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                v.is_some_and(|v| r.values.contains(v))
            }
            Operator::NotEquals | Operator::NotIn => !v.is_some_and(|v| r.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
            Operator::GreaterThan => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > r.values[0].parse::<i64>().unwrap()),
            Operator::LessThan => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < r.values[0].parse::<i64>().unwrap()),
        }
    })
}

proptest! {
    #[test]
    fn rendered_selectors_parse_back_to_the_same_requirements(sel in selector()) {
        let text = sel.to_string();
        let parsed = LabelSelector::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(parsed, sel);
    }

    #[test]
    fn whitespace_between_tokens_does_not_matter(sel in selector()) {
        let text = sel.to_string();
        let spaced = text.replace(',', " , ").replace('(', " ( ").replace(')', " ) ").replace("!=", " != ");
        prop_assert_eq!(LabelSelector::parse(&spaced).unwrap(), LabelSelector::parse(&text).unwrap());
    }

    #[test]
    fn matching_agrees_with_the_reference(sel in selector(), l in labels()) {
        prop_assert_eq!(sel.matches(&l), reference(&sel, &l));
    }

    #[test]
    fn parser_never_panics(input in "[a-z=!(),<> .\\-/0-9]{0,40}") {
        let _ = LabelSelector::parse(&input);
        let _ = FieldSelector::parse(&input);
    }

    #[test]
    fn a_trailing_comma_is_always_refused(sel in selector().prop_filter("non-empty", |s| !s.is_empty())) {
        let text = format!("{sel},");
        prop_assert!(LabelSelector::parse(&text).is_err());
    }

    #[test]
    fn nodename_selector_matches_exactly_its_node(node in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", other in "[a-z0-9]{1,12}") {
        let sel = LabelSelector::parse(&format!("nodename={node}")).unwrap();
        let mut l = BTreeMap::new();
        l.insert("nodename".to_owned(), node.clone());
        prop_assert!(sel.matches(&l));
        l.insert("nodename".to_owned(), other.clone());
        prop_assert_eq!(sel.matches(&l), other == node);
        prop_assert!(!sel.matches(&BTreeMap::new()), "unlabelled objects never match");
    }

    #[test]
    fn field_selector_values_round_trip_through_escaping(v in "[a-z,=\\\\]{0,12}") {
        let escaped = v.replace('\\', "\\\\").replace(',', "\\,").replace('=', "\\=");
        let f = FieldSelector::parse(&format!("metadata.name={escaped},spec.nodeName!=x")).unwrap();
        prop_assert_eq!(f.requirements.len(), 2);
        prop_assert_eq!(&f.requirements[0].value, &v);
    }
}
