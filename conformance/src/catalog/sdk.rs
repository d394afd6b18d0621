//! SDK — what the Azure SDKs that pods run experience behind the interceptor (SHOULD and INFO, never MUST).
//!
//! Owns the SDK-experience cases and what they need: the real, unmodified clients — Python azure-identity,
//! Node @azure/identity and Rust azure_identity, each a `ManagedIdentityCredential` asking for one token —
//! run inside a pod's network namespace ([`crate::backend::Backend::run_in_pod`]), where 169.254.169.254 is
//! what the pod sees. Per SDK, two cases: a pod with an identity gets a token of that identity (and how long
//! the first token took), and a pod without identity gets, within the `--sdk-timeout` cap, an error that
//! names the cause (and how long that took). With NMI's real wait loop (16 × 5 s) the second one is "no
//! answer within the cap"; imds-proxy's opt-ins beyond NMI (`--sdk-friendly-errors`,
//! `--identity-wait-bound-sec`) make it a quick, clear error — this area measures the difference.
//!
//! A case whose SHOULD is met reports INFO with what it measured (SDK version, time, the SDK's own words),
//! since a PASS carries no observation; one whose SHOULD is not met is a FAIL with the same observation.
//! The clients come from `--sdk-clients DIR` (made by `scripts/sdk-clients.sh`: `DIR/python` a virtualenv
//! with azure-identity and `sdk_client.py`, `DIR/node` the @azure/identity packages and `sdk_client.js`);
//! the Rust client is the workspace binary `imds-sdk-client`, found next to this executable, then on PATH.
//! Without `--sdk-clients`, or where an SDK's runtime or package is missing, its cases SKIP and say what is
//! missing. Needs the netns backend (pods are namespaces of this machine).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::backend::{PodCommand, PodRun};
use crate::case::{BackendKind, Feature, Level, Outcome, Profile};
use crate::catalog::{identity_pod, plain_pod};
use crate::ctx::{Ctx, RESOURCE};
use crate::declare_case;

/// The profiles of every case in this file.
const PROFILES: &[Profile] = &[Profile::Nmi, Profile::Hardened];

/// Backends whose pods are network namespaces of this machine.
const POD_BACKENDS: &[BackendKind] = &[BackendKind::Netns];

/// Where the SDK area's clients are and how long each run may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkClients {
    /// `--sdk-clients DIR`.
    pub dir: PathBuf,
    /// `--sdk-timeout`: a client still running then is killed ("no answer within …").
    pub timeout: Duration,
}

/// One of the SDKs the area runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sdk {
    /// azure-identity (Python).
    Python,
    /// @azure/identity (Node).
    Node,
    /// azure_identity (Rust).
    Rust,
}

impl Sdk {
    /// How reports name it.
    pub fn label(self) -> &'static str {
        match self {
            Sdk::Python => "Python azure-identity",
            Sdk::Node => "Node @azure/identity",
            Sdk::Rust => "Rust azure_identity",
        }
    }

    /// The command that runs this SDK's client for `resource` (and a client id), or a SKIP naming what is
    /// missing.
    fn command(
        self,
        clients: &SdkClients,
        resource: &str,
        client_id: Option<&str>,
    ) -> Result<PodCommand, Outcome> {
        let missing = |what: String| {
            Outcome::skip(format!(
                "{}: {what} (install with `scripts/sdk-clients.sh {}`)",
                self.label(),
                clients.dir.display()
            ))
        };
        let (program, mut args) = match self {
            Sdk::Python => {
                let python = clients.dir.join("python/bin/python");
                let script = clients.dir.join("python/sdk_client.py");
                for f in [&python, &script] {
                    if !f.is_file() {
                        return Err(missing(format!("{} not found", f.display())));
                    }
                }
                (python, vec![script.display().to_string()])
            }
            Sdk::Node => {
                let Some(node) = on_path("node") else {
                    return Err(missing("node not found on PATH".into()));
                };
                let script = clients.dir.join("node/sdk_client.js");
                let package = clients
                    .dir
                    .join("node/node_modules/@azure/identity/package.json");
                for f in [&script, &package] {
                    if !f.is_file() {
                        return Err(missing(format!("{} not found", f.display())));
                    }
                }
                (node, vec![script.display().to_string()])
            }
            Sdk::Rust => {
                let bin = std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(|d| d.join("imds-sdk-client")))
                    .filter(|p| p.is_file())
                    .or_else(|| on_path("imds-sdk-client"));
                let Some(bin) = bin else {
                    return Err(missing(
                        "imds-sdk-client not found next to imds-conformance nor on PATH (cargo build -p imds-sdk-client)"
                            .into(),
                    ));
                };
                (bin, Vec::new())
            }
        };
        args.push(resource.to_string());
        args.extend(client_id.map(str::to_string));
        let mut env = vec![
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            ),
            (
                "HOME".to_string(),
                std::env::temp_dir().display().to_string(),
            ),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        if self == Sdk::Python {
            env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
        }
        Ok(PodCommand {
            program: program.display().to_string(),
            args,
            env,
            timeout: clients.timeout,
        })
    }
}

/// `name` in one of the directories of this process's PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| Path::new(p).is_file())
}

/// What one client run showed.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// The SDK returned: a token, or its error.
    Answered {
        /// SDK name and version as the client reports it.
        sdk: String,
        /// Milliseconds from the credential's construction to its answer.
        elapsed_ms: u64,
        /// The token, or the SDK's error type and text.
        result: Result<String, (String, String)>,
    },
    /// Still waiting at the cap (killed).
    NoAnswer(Duration),
    /// The client did not run as expected (crash, no JSON line).
    Broken(String),
}

impl Observed {
    /// Reads the client's JSON line from `stdout` (the last line that is a JSON object).
    pub fn parse(code: i32, stdout: &str, stderr: &str) -> Observed {
        let line = stdout.lines().rev().find_map(|l| {
            serde_json::from_str::<Value>(l.trim())
                .ok()
                .filter(Value::is_object)
        });
        let Some(v) = line else {
            return Observed::Broken(format!(
                "exit {code}, no JSON line; stderr: {}",
                tail(stderr.trim(), 400)
            ));
        };
        // One line per observation: the SDKs' messages may span lines.
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let result = if v["ok"] == Value::Bool(true) {
            Ok(s("token"))
        } else {
            Err((s("error_type"), s("error")))
        };
        Observed::Answered {
            sdk: s("sdk"),
            elapsed_ms: v["elapsed_ms"].as_u64().unwrap_or_default(),
            result,
        }
    }
}

/// The last `max` bytes of `s` (or fewer, on a character boundary).
fn tail(s: &str, max: usize) -> &str {
    let start = s.len().saturating_sub(max);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// A time as reports show it: milliseconds below a second, else seconds with one decimal.
fn secs(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// Whether an SDK's error text says why there is no token: the identity is not assigned / not found (as
/// IMDS, NMI and the opt-in put it). A timeout or "network unreachable" does not.
pub fn names_cause(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    [
        "identity not found",
        "no identity",
        "not been assigned",
        "not assigned",
        "assigned identities for pod",
        "no azure identity found",
        "no azureassignedidentity",
    ]
    .iter()
    .any(|p| e.contains(p))
}

/// The area's clients, or a SKIP saying how to enable the area.
fn clients(ctx: &Ctx, sdk: Sdk) -> Result<&SdkClients, Outcome> {
    ctx.sdk.as_ref().ok_or_else(|| {
        Outcome::skip(format!(
            "{}: the SDK area needs --sdk-clients DIR (made by scripts/sdk-clients.sh, `just sdk-clients`)",
            sdk.label()
        ))
    })
}

/// Runs `sdk`'s client as `pod` (asking for `client_id`, if any); SKIP when the area is not enabled, the
/// client is missing, or the backend cannot run programs in pods.
async fn run_sdk(
    ctx: &Ctx,
    sdk: Sdk,
    pod: &str,
    client_id: Option<&str>,
) -> Result<Observed, Outcome> {
    let clients = clients(ctx, sdk)?;
    let cmd = sdk.command(clients, RESOURCE, client_id)?;
    let cap = cmd.timeout;
    match ctx.backend.run_in_pod(pod, cmd).await {
        Ok(PodRun::Finished(out)) => Ok(Observed::parse(out.code, &out.stdout, &out.stderr)),
        Ok(PodRun::TimedOut) => Ok(Observed::NoAnswer(cap)),
        Err(e) => Err(Outcome::skip(format!("{}: {e}", sdk.label()))),
    }
}

/// A pod with an identity asks for a token without a selector: a token of one of its identities.
async fn token_case(ctx: &mut Ctx, sdk: Sdk) -> Result<(), Outcome> {
    let pod = identity_pod(ctx)?;
    let ids: Vec<String> = ctx
        .identities_of(&pod.name)
        .iter()
        .map(|i| i.client_id().to_ascii_lowercase())
        .collect();
    let expected = format!(
        "{} in pod {}: a token of the pod's identity",
        sdk.label(),
        pod.name
    );
    match run_sdk(ctx, sdk, &pod.name, None).await? {
        Observed::Answered {
            sdk: version,
            elapsed_ms,
            result: Ok(token),
        } => {
            let appid = crate::http::jwt_claims(&token).and_then(|c| {
                c.get("appid")
                    .or_else(|| c.get("azp"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            match appid {
                Some(a) if ids.contains(&a.to_ascii_lowercase()) => Err(Outcome::info(format!(
                    "{version}: token of {a} (the pod's identity) after {}",
                    secs(elapsed_ms)
                ))),
                other => Err(Outcome::fail(
                    expected,
                    format!("{version}: a token of {other:?} after {}", secs(elapsed_ms)),
                )),
            }
        }
        Observed::Answered {
            sdk: version,
            elapsed_ms,
            result: Err((kind, error)),
        } => Err(Outcome::fail(
            expected,
            format!("{version}: {kind} after {}: {error}", secs(elapsed_ms)),
        )),
        Observed::NoAnswer(cap) => Err(Outcome::fail(
            expected,
            format!("no answer within {} s (client killed)", cap.as_secs()),
        )),
        Observed::Broken(why) => Err(Outcome::fail(expected, why)),
    }
}

/// A pod without identity asks for a token: within the cap, an error that names the cause.
async fn failure_case(ctx: &mut Ctx, sdk: Sdk) -> Result<(), Outcome> {
    let pod = plain_pod(ctx)?;
    let cap = clients(ctx, sdk)?.timeout;
    let expected = format!(
        "{} in pod {} (no identity): an error naming the cause within {} s",
        sdk.label(),
        pod.name,
        cap.as_secs()
    );
    match run_sdk(ctx, sdk, &pod.name, None).await? {
        Observed::Answered {
            sdk: version,
            elapsed_ms,
            result: Err((kind, error)),
        } => {
            let seen = format!("{version}: {kind} after {}: {error}", secs(elapsed_ms));
            if names_cause(&error) {
                Err(Outcome::info(format!("{seen} (names the cause)")))
            } else {
                Err(Outcome::fail(
                    expected,
                    format!("{seen} (does not name the cause)"),
                ))
            }
        }
        Observed::Answered {
            sdk: version,
            elapsed_ms,
            result: Ok(_),
        } => Err(Outcome::fail(
            expected,
            format!(
                "{version}: a token after {} for a pod without identity",
                secs(elapsed_ms)
            ),
        )),
        Observed::NoAnswer(cap) => Err(Outcome::fail(
            expected,
            format!("no answer within {} s (client killed)", cap.as_secs()),
        )),
        Observed::Broken(why) => Err(Outcome::fail(expected, why)),
    }
}

const TOKEN_EXPLAIN: &str = "Runs the SDK's ManagedIdentityCredential (unmodified, default options, no selector) inside the first node's pod with an Assigned identity, as an application of the pod would: it probes 169.254.169.254 and asks for a token of https://management.azure.com/. Met when the token it returns is one of the pod's identities (JWT appid); the report gives the SDK version and the time from the credential's construction to the token. Needs --sdk-clients DIR (scripts/sdk-clients.sh) and the netns backend.";

const FAILURE_EXPLAIN: &str = "Runs the SDK's ManagedIdentityCredential inside the first node's pod without identity. Met when, within --sdk-timeout, the SDK raises an error whose text names the cause (identity not found / not assigned); the report gives the time to that error and the SDK's words, or 'no answer within N s'. NMI's real wait loop (16 × 5 s, retried by the SDKs) makes this minutes; imds-proxy's --sdk-friendly-errors and --identity-wait-bound-sec make it seconds. Needs --sdk-clients DIR (scripts/sdk-clients.sh) and the netns backend.";

declare_case!(
    SDK_001 = Case {
        id: "SDK-001",
        title: "Python azure-identity: a pod with identity gets its token (time to first token)",
        level: Level::Should,
        features: &[Feature::Tokens, Feature::Iptables],
        backends: POD_BACKENDS,
        spec: "issue 16 (SDK experience); REFERENCE B.4, D",
        explain: TOKEN_EXPLAIN,
    },
    |ctx| { token_case(ctx, Sdk::Python).await }
);

declare_case!(
    SDK_002 = Case {
        id: "SDK-002",
        title: "Python azure-identity: a pod without identity gets an error naming the cause, in time",
        level: Level::Should,
        features: &[Feature::Tokens, Feature::Iptables],
        backends: POD_BACKENDS,
        spec: "issue 16 (SDK experience); REFERENCE A.6, B.4, D",
        explain: FAILURE_EXPLAIN,
    },
    |ctx| { failure_case(ctx, Sdk::Python).await }
);

declare_case!(
    SDK_003 = Case {
        id: "SDK-003",
        title: "Node @azure/identity: a pod with identity gets its token (time to first token)",
        level: Level::Should,
        features: &[Feature::Tokens, Feature::Iptables],
        backends: POD_BACKENDS,
        spec: "issue 16 (SDK experience); REFERENCE B.4, D",
        explain: TOKEN_EXPLAIN,
    },
    |ctx| { token_case(ctx, Sdk::Node).await }
);

declare_case!(
    SDK_004 = Case {
        id: "SDK-004",
        title: "Node @azure/identity: a pod without identity gets an error naming the cause, in time",
        level: Level::Should,
        features: &[Feature::Tokens, Feature::Iptables],
        backends: POD_BACKENDS,
        spec: "issue 16 (SDK experience); REFERENCE A.6, B.4, D",
        explain: FAILURE_EXPLAIN,
    },
    |ctx| { failure_case(ctx, Sdk::Node).await }
);

declare_case!(
    SDK_005 = Case {
        id: "SDK-005",
        title: "Rust azure_identity: a pod with identity gets its token (time to first token)",
        level: Level::Should,
        features: &[Feature::Tokens, Feature::Iptables],
        backends: POD_BACKENDS,
        spec: "issue 16 (SDK experience); REFERENCE B.4, D",
        explain: TOKEN_EXPLAIN,
    },
    |ctx| { token_case(ctx, Sdk::Rust).await }
);

declare_case!(
    SDK_006 = Case {
        id: "SDK-006",
        title: "Rust azure_identity: a pod without identity gets an error naming the cause, in time",
        level: Level::Should,
        features: &[Feature::Tokens, Feature::Iptables],
        backends: POD_BACKENDS,
        spec: "issue 16 (SDK experience); REFERENCE A.6, B.4, D",
        explain: FAILURE_EXPLAIN,
    },
    |ctx| { failure_case(ctx, Sdk::Rust).await }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_lines_are_parsed() {
        let ok = Observed::parse(
            0,
            "noise\n{\"sdk\":\"x 1\",\"ok\":true,\"elapsed_ms\":12,\"token\":\"t\"}\n",
            "",
        );
        assert_eq!(
            ok,
            Observed::Answered {
                sdk: "x 1".into(),
                elapsed_ms: 12,
                result: Ok("t".into())
            }
        );
        let err = Observed::parse(
            0,
            "{\"sdk\":\"x\",\"ok\":false,\"elapsed_ms\":5,\"error_type\":\"E\",\"error\":\"m\"}",
            "",
        );
        assert!(
            matches!(err, Observed::Answered { result: Err((ref k, ref m)), .. } if k == "E" && m == "m")
        );
        assert!(matches!(
            Observed::parse(1, "Traceback", "boom"),
            Observed::Broken(w) if w.contains("exit 1") && w.contains("boom")
        ));
    }

    #[test]
    fn times_read_well() {
        assert_eq!(secs(12), "12 ms");
        assert_eq!(secs(1234), "1.2 s");
    }

    #[test]
    fn causes_are_recognised() {
        assert!(names_cause(
            "ManagedIdentityCredential authentication unavailable. (invalid_request) Identity not found: no identity is assigned to pod default/other"
        ));
        assert!(names_cause(
            "getting assigned identities for pod default/other in CREATED state failed after 1 attempts"
        ));
        assert!(!names_cause("Network unreachable"));
        assert!(!names_cause("token_parsing_error"));
        assert!(!names_cause(""));
    }
}
