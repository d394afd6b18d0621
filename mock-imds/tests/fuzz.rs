//! Fuzzing: no panic from any input, control API included (issue 10). Two targets, each driven by proptest
//! (stable Rust; shrinking gives a minimal failing input):
//! - the control API and the IMDS routes behind one real router, in process (`tower::ServiceExt::oneshot`),
//!   with arbitrary methods, paths, queries, headers and bodies — among them JSON built from the control
//!   API's own types (`Faults`, `UserAssignedIdentity`, `ScheduledEvent`) with extreme values, and mutations
//!   of it. The router's state lives on between inputs (faults set by one input apply to the next IMDS
//!   request; each state-changing input is followed by probe requests on the token and instance paths) and is
//!   reset every 512 inputs;
//! - the query parser (`ImdsQuery::parse`, differential against the obvious quadratic implementation) and
//!   the request validation around it (`rules::validate`).
//!
//! `cargo test` runs a short pass of each (seconds, in CI); `just fuzz` runs the `#[ignore]`d long passes,
//! `MOCK_IMDS_FUZZ_INPUTS` inputs each (default 1,000,000), and prints the count and the time taken.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt as _;
use mock_imds::config::{
    Fault, FaultRule, Faults, MAX_FAULT_DELAY_SECS, ScheduledEvent, UserAssignedIdentity,
};
use mock_imds::error::{ErrorKind, Surface};
use mock_imds::rules::{ImdsQuery, validate};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Inputs of a long pass: `MOCK_IMDS_FUZZ_INPUTS`, else one million.
fn long_inputs() -> u32 {
    std::env::var("MOCK_IMDS_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..RunnerConfig::default()
    })
}

/// Runs `cases` inputs of `strategy` through `test`; fails with the (shrunk) input on the first failure.
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    // Panics are what we look for: proptest catches them and reports the shrunk input with the message, so
    // the default hook's printing (and backtraces) for each of thousands of shrinking steps only slows it.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = runner(cases).run(&strategy, test);
    std::panic::set_hook(hook);
    if let Err(e) = result {
        panic!("fuzz target {name}: {e}");
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {cases} inputs, no panic, {secs:.1} s ({:.0} inputs/s)",
        f64::from(cases) / secs.max(1e-9)
    );
}

// ---------------------------------------------------------------------------------------------------------
// Control API (and IMDS routes) through the real router.

/// Numbers at and around every boundary the code has (and random ones).
fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(MAX_FAULT_DELAY_SECS),
        Just(MAX_FAULT_DELAY_SECS + 1),
        Just(8_210_266_876_799), // chrono's largest timestamp, in seconds
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
        Just(u64::MAX),
        0u64..100,
        any::<u64>(),
    ]
}

/// Latencies: tiny ones (applied) or ones beyond the bound (refused); a valid long one would only make the
/// fuzzer wait.
fn latency_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        1 => 1u64..3,
        1 => Just(MAX_FAULT_DELAY_SECS.saturating_mul(1000).saturating_add(1000)),
        1 => Just(u64::MAX),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9/_:.-]{1,40}",
        "\\PC{0,24}",
        Just("/metadata/identity".to_string()),
        Just("/metadata".to_string()),
        Just("/".to_string()),
    ]
}

/// Mostly injectable statuses (so that the rest of the input is looked at), sometimes anything.
fn status() -> impl Strategy<Value = u16> {
    prop_oneof![4 => 400u16..=599, 1 => any::<u16>()]
}

fn fault() -> impl Strategy<Value = Fault> {
    (
        latency_ms(),
        proptest::option::of(status()),
        proptest::option::of(extreme_u64()),
        proptest::bool::weighted(0.1),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(latency_ms, status, retry_after, reset, times)| Fault {
            latency_ms,
            status,
            retry_after,
            reset,
            times,
        })
}

fn faults() -> impl Strategy<Value = Faults> {
    (
        extreme_u64(),
        status(),
        extreme_u64(),
        proptest::collection::vec(
            (text(), fault()).prop_map(|(path_prefix, fault)| FaultRule { path_prefix, fault }),
            0..4,
        ),
    )
        .prop_map(|(startup, status, delay, rules)| Faults {
            startup_unavailable_secs: startup,
            startup_unavailable_status: status,
            identity_assignment_delay_secs: delay,
            rules,
        })
}

fn identity() -> impl Strategy<Value = UserAssignedIdentity> {
    (text(), text(), text(), text()).prop_map(|(client_id, object_id, resource_id, name)| {
        UserAssignedIdentity {
            client_id,
            object_id,
            resource_id,
            name,
        }
    })
}

fn event() -> impl Strategy<Value = ScheduledEvent> {
    (
        text(),
        prop_oneof![
            Just("Reboot".to_string()),
            Just("Preempt".to_string()),
            Just("Redeploy".to_string()),
            text()
        ],
        proptest::collection::vec(text(), 0..3),
        prop_oneof![Just("Scheduled".to_string()), text()],
        text(),
        prop_oneof![
            Just(i64::MIN),
            Just(-1i64),
            Just(0i64),
            Just(i64::MAX),
            any::<i64>()
        ],
    )
        .prop_map(
            |(event_id, event_type, resources, event_status, not_before, duration)| {
                ScheduledEvent {
                    event_id,
                    event_type,
                    resources,
                    event_status,
                    not_before,
                    duration_in_seconds: duration,
                    ..ScheduledEvent::default()
                }
            },
        )
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_A-Z]{1,30}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a random place in `v` (an object field or array element, at any depth) with `with`.
fn mutate(v: &mut Value, pick: usize, with: Value) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let i = pick % m.len();
            if let Some((_, slot)) = m.iter_mut().nth(i) {
                if pick.is_multiple_of(3) {
                    *slot = with;
                } else {
                    mutate(slot, pick / 3, with);
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = pick % a.len();
            if pick.is_multiple_of(2) {
                a[i] = with;
            } else {
                mutate(&mut a[i], pick / 2, with);
            }
        }
        other => *other = with,
    }
}

/// A request body: nothing, typed JSON of the control API (possibly mutated), any JSON, or bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let typed = prop_oneof![
        faults().prop_map(|f| serde_json::to_value(f).unwrap_or_default()),
        identity().prop_map(|i| serde_json::to_value(i).unwrap_or_default()),
        event().prop_map(|e| serde_json::to_value(e).unwrap_or_default()),
        any::<bool>().prop_map(|b| json!({ "enabled": b })),
        proptest::collection::vec(text(), 0..4)
            .prop_map(|ids| json!({"StartRequests": ids.iter().map(|i| json!({"EventId": i})).collect::<Vec<_>>()})),
    ];
    prop_oneof![
        2 => Just(Vec::new()),
        6 => typed.clone().prop_map(|v| v.to_string().into_bytes()),
        2 => (typed, any::<usize>(), any_json()).prop_map(|(mut v, pick, with)| {
            mutate(&mut v, pick, with);
            v.to_string().into_bytes()
        }),
        1 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

const CONTROL_PATHS: &[&str] = &[
    "/_mock/health",
    "/_mock/journal",
    "/_mock/identities",
    "/_mock/faults",
    "/_mock/rate-limits",
    "/_mock/scheduledevents",
    "/_mock/reset",
    "/_mock/config",
    "/_mock/.well-known/openid-configuration",
    "/_mock/discovery/keys",
    "/_mock/attested/chain.pem",
];

const IMDS_PATHS: &[&str] = &[
    "/metadata/instance",
    "/metadata/instance/compute",
    "/metadata/instance/compute/vmId",
    "/metadata/instance/network/interface/0/ipv4/ipAddress/0",
    "/metadata/instance/compute/tagsList/99999999999999999999",
    "/metadata/identity/oauth2/token",
    "/metadata/identity/oauth2/token/",
    "/metadata/identity/info",
    "/metadata/attested/document",
    "/metadata/scheduledevents",
    "/metadata/loadbalancer",
    "/metadata/versions",
    "/metadata/reprovisiondata",
];

/// A path segment from URI-safe characters and percent escapes (valid and not).
fn segment() -> impl Strategy<Value = String> {
    "([a-zA-Z0-9._~!$'()*+,;=:@-]|%[0-9a-fA-F]{2}|%[g-z]{2}|%){0,12}"
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(CONTROL_PATHS).prop_map(str::to_string),
        2 => segment().prop_map(|s| format!("/_mock/identities/{s}")),
        2 => proptest::collection::vec(segment(), 0..4).prop_map(|s| format!("/_mock/{}", s.join("/"))),
        4 => proptest::sample::select(IMDS_PATHS).prop_map(str::to_string),
        1 => (proptest::sample::select(IMDS_PATHS), segment()).prop_map(|(p, s)| format!("{p}/{s}")),
        1 => proptest::collection::vec(segment(), 0..5).prop_map(|s| format!("/{}", s.join("/"))),
    ]
}

/// A query string: none, typical IMDS pairs (sometimes repeated or mangled), or anything URI-safe.
fn query() -> impl Strategy<Value = Option<String>> {
    let key = prop_oneof![
        Just("api-version"),
        Just("resource"),
        Just("client_id"),
        Just("object_id"),
        Just("msi_res_id"),
        Just("mi_res_id"),
        Just("format"),
        Just("nonce"),
        Just("bypass_cache"),
        Just("extended"),
        Just("api%2Dversion"),
    ]
    .prop_map(str::to_string);
    let value = prop_oneof![
        Just("2021-02-01".to_string()),
        Just("2018-02-01".to_string()),
        Just("https://management.azure.com/".to_string()),
        Just("text".to_string()),
        Just("json".to_string()),
        Just("true".to_string()),
        segment(),
    ];
    prop_oneof![
        1 => Just(None),
        4 => proptest::collection::vec((key, proptest::option::of(value)), 0..5).prop_map(|pairs| {
            Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| v.map_or(k.clone(), |v| format!("{k}={v}")))
                    .collect::<Vec<_>>()
                    .join("&"),
            )
        }),
        1 => "([a-zA-Z0-9=&+._~%-]){0,60}".prop_map(Some),
    ]
}

#[derive(Debug, Clone)]
struct Input {
    method: String,
    path: String,
    query: Option<String>,
    metadata: Option<&'static str>,
    json: bool,
    forwarded: bool,
    body: Vec<u8>,
}

/// A well-formed control call (right method, path and body type) with extreme values.
fn control_call() -> impl Strategy<Value = Input> {
    let call = |method: &str, path: String, body: Value| Input {
        method: method.to_string(),
        path,
        query: None,
        metadata: None,
        json: true,
        forwarded: false,
        body: body.to_string().into_bytes(),
    };
    let to = |v: Result<Value, serde_json::Error>| v.unwrap_or_default();
    prop_oneof![
        4 => faults().prop_map(move |f| call("PUT", "/_mock/faults".into(), to(serde_json::to_value(f)))),
        2 => identity().prop_map(move |i| call("POST", "/_mock/identities".into(), to(serde_json::to_value(i)))),
        1 => segment().prop_map(move |id| call("DELETE", format!("/_mock/identities/{id}"), Value::Null)),
        2 => event().prop_map(move |e| call("POST", "/_mock/scheduledevents".into(), to(serde_json::to_value(e)))),
        1 => any::<bool>().prop_map(move |b| call("PUT", "/_mock/rate-limits".into(), json!({ "enabled": b }))),
        1 => Just(call("DELETE", "/_mock/faults".into(), Value::Null)),
        1 => Just(call("GET", "/_mock/journal".into(), Value::Null)),
        1 => Just(call("DELETE", "/_mock/journal".into(), Value::Null)),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![1 => control_call(), 1 => free_input()]
}

fn free_input() -> impl Strategy<Value = Input> {
    let method = prop_oneof![
        4 => Just("GET".to_string()),
        2 => Just("POST".to_string()),
        2 => Just("PUT".to_string()),
        2 => Just("DELETE".to_string()),
        1 => prop_oneof![Just("PATCH"), Just("HEAD"), Just("OPTIONS"), Just("TRACE")].prop_map(str::to_string),
        1 => "[A-Z]{1,12}",
    ];
    (
        method,
        path(),
        query(),
        prop_oneof![8 => Just(Some("true")), 1 => Just(Some("True")), 1 => Just(None)],
        proptest::bool::weighted(0.9),
        proptest::bool::weighted(0.05),
        body(),
    )
        .prop_map(
            |(method, path, query, metadata, json, forwarded, body)| Input {
                method,
                path,
                query,
                metadata,
                json,
                forwarded,
                body,
            },
        )
}

/// The router under test, its runtime, and a count of inputs (for the periodic reset).
struct Target {
    rt: tokio::runtime::Runtime,
    router: Router,
    inputs: std::cell::Cell<u64>,
}

/// A request that does not answer within this long counts as hung (latencies the fuzzer sets are ≤ 2 ms).
const HANG: Duration = Duration::from_secs(60);

impl Target {
    fn new() -> Target {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let router = mock_imds::router(
            common::seeded_config(11),
            Arc::new(mock_imds::clock::SystemClock),
        );
        let target = Target {
            rt,
            router,
            inputs: std::cell::Cell::new(0),
        };
        // Generate the signing keys once, up front.
        let warm = target.send(probe(common::TOKEN));
        assert_eq!(warm.map(|(s, _)| s), Ok(200), "warm-up token request");
        target
    }

    /// Sends one request; its status and body, or why it failed (a panic propagates).
    fn send(&self, req: http::Request<Body>) -> Result<(u16, bytes::Bytes), String> {
        let router = self.router.clone();
        self.rt.block_on(async move {
            let answer = tokio::time::timeout(HANG, async move {
                let resp = router
                    .oneshot(req)
                    .await
                    .map_err(|e| format!("router error: {e}"))?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body error: {e}"))?
                    .to_bytes();
                Ok((status, body))
            })
            .await;
            answer.unwrap_or_else(|_| Err(format!("no answer within {HANG:?}")))
        })
    }

    fn run(&self, input: &Input) -> Result<(), TestCaseError> {
        let n = self.inputs.get() + 1;
        self.inputs.set(n);
        if n.is_multiple_of(512) {
            self.send(bare("POST", "/_mock/reset"))
                .map_err(TestCaseError::fail)?;
        }
        let target = match &input.query {
            Some(q) => format!("{}?{q}", input.path),
            None => input.path.clone(),
        };
        let mut builder = http::Request::builder()
            .method(input.method.as_str())
            .uri(&target);
        if let Some(m) = input.metadata {
            builder = builder.header("Metadata", m);
        }
        if input.json {
            builder = builder.header("Content-Type", "application/json");
        }
        if input.forwarded {
            builder = builder.header("X-Forwarded-For", "10.0.0.9");
        }
        // The http crate refuses some targets the generators can produce; those never reach a server.
        let Ok(req) = builder.body(Body::from(input.body.clone())) else {
            return Ok(());
        };
        let (status, _) = self.send(req).map_err(TestCaseError::fail)?;
        prop_assert!((100..=599).contains(&status), "status {status}");
        // State may have changed (a state-changing call succeeded): the IMDS paths that read it must answer.
        if input.method != "GET" && (200..300).contains(&status) {
            for p in [common::TOKEN, common::INSTANCE] {
                let (status, _) = self.send(probe(p)).map_err(TestCaseError::fail)?;
                prop_assert!((200..=599).contains(&status), "probe {p}: status {status}");
            }
        }
        Ok(())
    }
}

fn probe(path_and_query: &str) -> http::Request<Body> {
    http::Request::get(path_and_query)
        .header("Metadata", "true")
        .body(Body::empty())
        .unwrap_or_default()
}

fn bare(method: &str, path: &str) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap_or_default()
}

/// Runs `f` on a thread with a large stack: unoptimised builds of the router's futures and of the nested
/// strategies are deep.
fn with_big_stack(f: impl FnOnce() + Send + 'static) {
    let joined = std::thread::Builder::new()
        .stack_size(256 * 1024 * 1024)
        .spawn(f)
        .expect("fuzz thread")
        .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

fn fuzz_router(cases: u32) {
    with_big_stack(move || {
        let target = Target::new();
        fuzz("control API + IMDS router", cases, input(), |i| {
            target.run(&i)
        });
    });
}

#[test]
fn fuzz_control_api_short() {
    fuzz_router(3_000);
}

#[test]
#[ignore = "long: `just fuzz`"]
fn fuzz_control_api_long() {
    fuzz_router(long_inputs());
}

// ---------------------------------------------------------------------------------------------------------
// Query parser.

/// The parser's specification, written the obvious way (quadratic duplicate check).
fn reference_parse(raw: &str) -> Result<Vec<(String, String)>, ErrorKind> {
    fn decode(s: &str) -> Result<String, ErrorKind> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = b.get(i + 1..i + 3).ok_or(ErrorKind::MalformedQuery)?;
                    let hex = std::str::from_utf8(hex).map_err(|_| ErrorKind::MalformedQuery)?;
                    out.push(u8::from_str_radix(hex, 16).map_err(|_| ErrorKind::MalformedQuery)?);
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| ErrorKind::MalformedQuery)
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for segment in raw.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = segment.split_once('=').unwrap_or((segment, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if pairs.iter().any(|(e, _)| *e == k) {
            return Err(ErrorKind::DuplicateQuery(k));
        }
        pairs.push((k, v));
    }
    Ok(pairs)
}

fn raw_query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("api-version".to_string()),
        Just("resource".to_string()),
        Just("a".to_string()),
        Just("%61".to_string()),
        Just("a+b".to_string()),
        Just("a%20b".to_string()),
        "[a-c%+]{0,4}",
        segment(),
    ];
    let value = prop_oneof![
        segment(),
        "[ -~]{0,12}",
        "%[0-9a-fA-F]{2}(%[89a-fA-F][0-9a-fA-F]){0,3}"
    ];
    let pairs = proptest::collection::vec(
        (
            key,
            proptest::option::of(value),
            prop_oneof![Just("&"), Just("&&"), Just("")],
        ),
        0..12,
    )
    .prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v, sep)| {
                format!("{k}{}{sep}", v.map(|v| format!("={v}")).unwrap_or_default())
            })
            .collect::<String>()
    });
    prop_oneof![
        30 => pairs,
        10 => "[ -~]{0,80}",
        5 => "\\PC{0,40}",
        // Many keys: the duplicate check's worst case.
        // (Rare: the reference implementation is quadratic.)
        1 => (1usize..300, any::<bool>()).prop_map(|(n, dup)| {
            let mut q = (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join("&");
            if dup {
                q.push_str(&format!("&k{}=again", n / 2));
            }
            q
        }),
    ]
}

fn check_query(raw: &str, method: &str, path: &str) -> Result<(), TestCaseError> {
    let parsed = ImdsQuery::parse(raw).map(|q| q.pairs().to_vec());
    prop_assert_eq!(&parsed, &reference_parse(raw), "query {:?}", raw);
    if let Ok(pairs) = &parsed {
        let q = ImdsQuery::parse(raw).unwrap_or_default();
        for (k, v) in pairs {
            prop_assert_eq!(q.get(k), Some(v.as_str()));
        }
    }
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return Ok(());
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("metadata", http::HeaderValue::from_static("true"));
    static BEHAVIOR: std::sync::OnceLock<mock_imds::config::Behavior> = std::sync::OnceLock::new();
    let behavior = BEHAVIOR.get_or_init(|| mock_imds::config::Config::generate(Some(1)).behavior);
    let _ = validate(
        &method,
        path,
        raw,
        &headers,
        Surface::of_path(path),
        behavior,
    );
    Ok(())
}

fn fuzz_query(cases: u32) {
    with_big_stack(move || fuzz_query_here(cases));
}

fn fuzz_query_here(cases: u32) {
    let strategy = (
        raw_query(),
        prop_oneof![
            Just("GET".to_string()),
            Just("POST".to_string()),
            "[A-Z]{1,6}"
        ],
        proptest::sample::select(IMDS_PATHS),
    );
    fuzz(
        "query parser + request validation",
        cases,
        strategy,
        |(raw, method, path)| check_query(&raw, &method, path),
    );
}

#[test]
fn fuzz_query_parser_short() {
    fuzz_query(20_000);
}

#[test]
#[ignore = "long: `just fuzz`"]
fn fuzz_query_parser_long() {
    fuzz_query(long_inputs());
}
