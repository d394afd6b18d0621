//! Acceptance (issue 2): arbitrary paths, query strings, methods and headers never panic and always get an
//! IMDS-shaped response: a status in the documented set, the JSON content type (text/plain only for a
//! successful `format=text`), the `Server: IMDS/...` header and a request id. Driven in-process with
//! `tower::ServiceExt::oneshot` for speed.

mod common;

use axum::body::Body;
use common::*;
use proptest::prelude::*;

const DOCUMENTED: &[u16] = &[200, 400, 404, 405, 410, 429, 500, 503];

fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("metadata".to_string()),
        Just("instance".to_string()),
        Just("identity".to_string()),
        Just("oauth2".to_string()),
        Just("token".to_string()),
        Just("compute".to_string()),
        Just("network".to_string()),
        Just("interface".to_string()),
        Just("0".to_string()),
        Just("attested".to_string()),
        Just("document".to_string()),
        Just("scheduledevents".to_string()),
        Just("loadbalancer".to_string()),
        Just("versions".to_string()),
        Just("userData".to_string()),
        Just("_mock".to_string()),
        Just("".to_string()),
        "[A-Za-z0-9._~!$'()*,;:@-]{0,12}",
        "(%[0-9A-Fa-f]{2}|%[G-Zg-z]{0,2}|[a-z]){0,6}",
    ]
}

fn query_pair() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("api-version".to_string()),
        Just("format".to_string()),
        Just("resource".to_string()),
        Just("client_id".to_string()),
        Just("object_id".to_string()),
        Just("msi_res_id".to_string()),
        Just("mi_res_id".to_string()),
        Just("nonce".to_string()),
        Just("extended".to_string()),
        "[a-z_%0-9+-]{0,10}",
    ];
    let value = prop_oneof![
        Just("2021-02-01".to_string()),
        Just("2018-02-01".to_string()),
        Just("2025-04-07".to_string()),
        Just("text".to_string()),
        Just("json".to_string()),
        Just("true".to_string()),
        Just("https://management.azure.com/".to_string()),
        "[ -~&&[^#&]]{0,20}",
        "(%[0-9A-Fa-f]{2}|%|[a-z+]){0,8}",
    ];
    (key, value, any::<bool>()).prop_map(|(k, v, eq)| if eq { format!("{k}={v}") } else { k })
}

fn method() -> impl Strategy<Value = http::Method> {
    prop_oneof![
        4 => Just(http::Method::GET),
        1 => Just(http::Method::POST),
        1 => Just(http::Method::PUT),
        1 => Just(http::Method::DELETE),
        1 => Just(http::Method::HEAD),
        1 => Just(http::Method::OPTIONS),
        1 => "[A-Z]{1,8}".prop_map(|m| http::Method::from_bytes(m.as_bytes()).unwrap_or(http::Method::PATCH)),
    ]
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop_oneof![
        Just("metadata".to_string()),
        Just("x-forwarded-for".to_string()),
        Just("content-type".to_string()),
        "[a-z][a-z0-9-]{0,15}",
    ];
    let value = prop_oneof![
        Just(b"true".to_vec()),
        Just(b"True".to_vec()),
        proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..40),
    ];
    (name, value)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_request_gets_an_imds_shaped_answer(
        segs in proptest::collection::vec(path_segment(), 0..7),
        pairs in proptest::collection::vec(query_pair(), 0..5),
        method in method(),
        headers in proptest::collection::vec(header(), 0..5),
        with_metadata in any::<bool>(),
        control in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut config = seeded_config(99);
        config.server.control = control;
        let router = mock_imds::router(config, manual_clock());
        let path = format!("/{}", segs.join("/"));
        let uri = if pairs.is_empty() { path.clone() } else { format!("{path}?{}", pairs.join("&")) };
        let Ok(uri) = uri.parse::<http::Uri>() else {
            // Not a valid request target: hyper refuses it before the router (tests/bad_input.rs covers that).
            return Ok(());
        };
        let mut req = http::Request::builder().method(method).uri(uri);
        if with_metadata {
            req = req.header("Metadata", "true");
        }
        for (n, v) in &headers {
            if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(n.as_bytes()), http::HeaderValue::from_bytes(v)) {
                req = req.header(n, v);
            }
        }
        let req = req.body(Body::empty()).expect("request");
        let reply = rt.block_on(oneshot(&router, req));
        if (path == "/_mock" || path.starts_with("/_mock/")) && control {
            // The control API is not IMDS; it only has to answer without panicking.
            return Ok(());
        }
        prop_assert!(DOCUMENTED.contains(&reply.status), "status {} for {path}: {}", reply.status, reply.text());
        let ct = reply.header("content-type").unwrap_or_default();
        if reply.status == 200 && ct.starts_with("text/plain") {
            prop_assert_eq!(ct, "text/plain; charset=utf-8");
        } else {
            prop_assert_eq!(ct, "application/json; charset=utf-8");
            if reply.status != 200 {
                let v: serde_json::Value = serde_json::from_slice(&reply.body).map_err(|e| TestCaseError::fail(format!("{e}: {}", reply.text())))?;
                prop_assert!(v.get("error").is_some_and(|e| e.is_string()), "error body {}", reply.text());
            }
        }
        prop_assert!(reply.header("server").unwrap_or_default().starts_with("IMDS/150.870.65."));
        prop_assert!(reply.header("x-ms-request-id").is_some());
    }
}
