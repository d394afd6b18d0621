//! The vocabulary of cases: what a case can conclude ([`Outcome`], [`Status`]), how much it matters
//! ([`Level`]), and what selects it ([`Feature`], [`Profile`], [`BackendKind`]).
//!
//! A leaf module: it imports nothing of the crate, so every other module (backends, scenarios, reports)
//! can use these words without depending on cases. It knows nothing about how requests are sent (that is
//! [`crate::backend`]) nor how results are printed ([`crate::report`]). The case itself
//! ([`crate::catalog::Case`]: data plus one async function of [`crate::ctx::Ctx`]) lives with the catalogue.
//!
//! A case is declared once, data and body together, with [`crate::declare_case!`] in one of the
//! `catalog/` files; the same declaration registers it in [`crate::catalog::CASES`]:
//!
//! ```ignore
//! declare_case!(
//!     HDR_001 = Case {
//!         id: "HDR-001",
//!         title: "token request without Metadata header → 400 exact JSON, not forwarded",
//!         level: Level::Must,
//!         features: &[Feature::MetadataHeaderRequired],
//!         backends: ANY_BACKEND,
//!         profiles: &[Profile::Nmi, Profile::Hardened],
//!         spec: "SPEC §3 Metadata header; REFERENCE A.3.1 step 1",
//!         explain: "A non-host pod calls …",
//!     },
//!     |ctx| { /* -> Result<(), Outcome> */ Ok(()) }
//! );
//! ```
//!
//! The runner decides UNCLAIMED / SKIP before calling `run` (feature not claimed, backend cannot run it);
//! inside `run` a case returns PASS, FAIL (expected vs observed), SKIP (a precondition discovered at run
//! time) or INFO.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A boxed, sendable future: the return type of case functions and backend operations.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How much a case matters. Only a failing MUST case makes the run fail (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Required for conformance with the profile.
    Must,
    /// Recommended; a FAIL is reported but does not fail the run.
    Should,
    /// Documents behaviour; never fails.
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::Info => "INFO",
        })
    }
}

/// The conclusion of one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "UPPERCASE")]
pub enum Outcome {
    /// The interceptor behaved as specified.
    Pass,
    /// It did not: what the case expected, what it observed.
    Fail {
        /// What the specification requires.
        expected: String,
        /// What the harness saw from outside.
        observed: String,
    },
    /// The case could not run here (backend, privileges, precondition); the reason says which.
    Skip {
        /// Why the case did not run.
        reason: String,
    },
    /// The interceptor does not claim a feature the case needs.
    Unclaimed {
        /// The features that were needed and not claimed.
        features: Vec<Feature>,
    },
    /// Behaviour documented, not judged.
    Info {
        /// What was observed.
        note: String,
    },
}

/// The kind of an [`Outcome`], without its details: what reports count and filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// [`Outcome::Pass`].
    Pass,
    /// [`Outcome::Fail`].
    Fail,
    /// [`Outcome::Skip`].
    Skip,
    /// [`Outcome::Unclaimed`].
    Unclaimed,
    /// [`Outcome::Info`].
    Info,
}

impl Status {
    /// The upper-case word used in every report (the JSON `outcome.status`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
            Status::Unclaimed => "UNCLAIMED",
            Status::Info => "INFO",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    /// Shorthand for [`Outcome::Fail`].
    pub fn fail(expected: impl Into<String>, observed: impl Into<String>) -> Self {
        Outcome::Fail {
            expected: expected.into(),
            observed: observed.into(),
        }
    }

    /// Shorthand for [`Outcome::Skip`].
    pub fn skip(reason: impl Into<String>) -> Self {
        Outcome::Skip {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Outcome::Info`].
    pub fn info(note: impl Into<String>) -> Self {
        Outcome::Info { note: note.into() }
    }

    /// Which kind of outcome this is (its upper-case word in every report: [`Status::as_str`]).
    pub fn status(&self) -> Status {
        match self {
            Outcome::Pass => Status::Pass,
            Outcome::Fail { .. } => Status::Fail,
            Outcome::Skip { .. } => Status::Skip,
            Outcome::Unclaimed { .. } => Status::Unclaimed,
            Outcome::Info { .. } => Status::Info,
        }
    }

    /// One-line human explanation (empty for PASS).
    pub fn detail(&self) -> String {
        match self {
            Outcome::Pass => String::new(),
            Outcome::Fail { expected, observed } => {
                format!("expected {expected}; observed {observed}")
            }
            Outcome::Skip { reason } => reason.clone(),
            Outcome::Unclaimed { features } => {
                let names: Vec<&str> = features.iter().map(|f| f.name()).collect();
                format!("feature not claimed: {}", names.join(", "))
            }
            Outcome::Info { note } => note.clone(),
        }
    }
}

/// A capability an interceptor may claim (`--features`, scenario `interceptor.features`). Names follow the
/// NMI flag / feature names so vendors recognise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Feature {
    /// `--metadata-header-required`: requests without `Metadata: true` get 400 and are not forwarded.
    #[serde(rename = "metadataHeaderRequired")]
    MetadataHeaderRequired,
    /// `--block-instance-metadata`: non-host pods get 403 on `/metadata/instance`.
    #[serde(rename = "blockInstanceMetadata")]
    BlockInstanceMetadata,
    /// `--set-retry-after-header`: identity not (yet) assigned → 503 + `Retry-After: 20`.
    #[serde(rename = "setRetryAfterHeader")]
    SetRetryAfterHeader,
    /// `--enable-conntrack-deletion`: pre-existing IMDS flows are deleted when the interceptor starts.
    #[serde(rename = "enableConntrackDeletion")]
    EnableConntrackDeletion,
    /// `--enableScaleFeatures`: AzureAssignedIdentities are watched with `nodename=<node>`.
    #[serde(rename = "enableScaleFeatures")]
    EnableScaleFeatures,
    /// The interceptor redirects pod traffic with iptables (NMI's `aad-metadata` chain).
    #[serde(rename = "iptables")]
    Iptables,
    /// Identity selection and token issuance as NMI does (standard mode).
    #[serde(rename = "tokens")]
    Tokens,
    /// NMI's `/host/token` endpoint for host-network callers.
    #[serde(rename = "hostToken")]
    HostToken,
    /// Pass-through of the other IMDS endpoints.
    #[serde(rename = "passthrough")]
    Passthrough,
    /// Fails closed when the cluster view is unavailable.
    #[serde(rename = "failClosed")]
    FailClosed,
    /// AKS IMDS restriction: non-host pods cannot reach IMDS at all.
    #[serde(rename = "imdsRestriction")]
    ImdsRestriction,
}

impl Feature {
    /// Every feature, in display order.
    pub const ALL: &'static [Feature] = &[
        Feature::MetadataHeaderRequired,
        Feature::BlockInstanceMetadata,
        Feature::SetRetryAfterHeader,
        Feature::EnableConntrackDeletion,
        Feature::EnableScaleFeatures,
        Feature::Iptables,
        Feature::Tokens,
        Feature::HostToken,
        Feature::Passthrough,
        Feature::FailClosed,
        Feature::ImdsRestriction,
    ];

    /// The wire / CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Feature::MetadataHeaderRequired => "metadataHeaderRequired",
            Feature::BlockInstanceMetadata => "blockInstanceMetadata",
            Feature::SetRetryAfterHeader => "setRetryAfterHeader",
            Feature::EnableConntrackDeletion => "enableConntrackDeletion",
            Feature::EnableScaleFeatures => "enableScaleFeatures",
            Feature::Iptables => "iptables",
            Feature::Tokens => "tokens",
            Feature::HostToken => "hostToken",
            Feature::Passthrough => "passthrough",
            Feature::FailClosed => "failClosed",
            Feature::ImdsRestriction => "imdsRestriction",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Feature {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Feature::ALL
            .iter()
            .copied()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
                format!("unknown feature {s:?}; known: {}", names.join(", "))
            })
    }
}

/// A selection of cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// aad-pod-identity NMI compatibility.
    Nmi,
    /// AKS IMDS restriction (the AgentBaker FORWARD DROP rule).
    AksRestriction,
    /// Header + block + conntrack + isolation.
    Hardened,
    /// Endpoint fidelity of an IMDS (mock-imds, or the real service from an Azure VM).
    Imds,
}

impl Profile {
    /// Every profile, in display order.
    pub const ALL: &'static [Profile] = &[
        Profile::Nmi,
        Profile::AksRestriction,
        Profile::Hardened,
        Profile::Imds,
    ];

    /// The features an interceptor must claim to be judged against this profile (its floor). Claiming
    /// less is `NOT CONFORMANT` with the missing features named: a claim set decides which cases apply, and
    /// the floor decides what must be claimed.
    ///
    /// - `nmi` — what a drop-in for aad-pod-identity's NMI does in the configuration AKS documents: NMI's
    ///   iptables redirect, identity selection and tokens, the `/host/token` endpoint, pass-through of the
    ///   other IMDS endpoints, the Metadata header check (NMI's default since v1.8) and label-filtered
    ///   watches (`enableScaleFeatures`, what large clusters run). `setRetryAfterHeader`,
    ///   `blockInstanceMetadata` and `enableConntrackDeletion` are NMI options off by default: optional.
    /// - `hardened` — the `nmi` floor plus the three protections the seed documents add:
    ///   `blockInstanceMetadata`, `enableConntrackDeletion`, and `failClosed` (no token while the cluster view
    ///   cannot be shown fresh).
    /// - `aks-restriction` — `imdsRestriction` (non-host pods cannot reach IMDS at all).
    /// - `imds` — nothing: the profile judges an IMDS, not an interceptor.
    pub fn floor(self) -> &'static [Feature] {
        const NMI: &[Feature] = &[
            Feature::MetadataHeaderRequired,
            Feature::EnableScaleFeatures,
            Feature::Iptables,
            Feature::Tokens,
            Feature::HostToken,
            Feature::Passthrough,
        ];
        match self {
            Profile::Nmi => NMI,
            Profile::Hardened => &[
                Feature::MetadataHeaderRequired,
                Feature::BlockInstanceMetadata,
                Feature::EnableConntrackDeletion,
                Feature::EnableScaleFeatures,
                Feature::Iptables,
                Feature::Tokens,
                Feature::HostToken,
                Feature::Passthrough,
                Feature::FailClosed,
            ],
            Profile::AksRestriction => &[Feature::ImdsRestriction],
            Profile::Imds => &[],
        }
    }

    /// Whether the security floor (area `SEC`) applies: every profile that judges an interceptor.
    pub fn has_security_floor(self) -> bool {
        self != Profile::Imds
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Nmi => "nmi",
            Profile::AksRestriction => "aks-restriction",
            Profile::Hardened => "hardened",
            Profile::Imds => "imds",
        })
    }
}

/// Where cases can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Unprivileged: pods are 127.0.0.0/8 source addresses, no kernel redirect.
    Loopback,
    /// Root: network namespaces, real iptables and conntrack.
    Netns,
    /// A kind cluster: real Kubernetes, real pods, the interceptor as a DaemonSet.
    Kind,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Loopback => "loopback",
            BackendKind::Netns => "netns",
            BackendKind::Kind => "kind",
        })
    }
}

/// Every backend.
pub const ANY_BACKEND: &[BackendKind] =
    &[BackendKind::Loopback, BackendKind::Netns, BackendKind::Kind];
/// Backends with real kernel networking (iptables, conntrack, the redirect): netns and kind.
pub const KERNEL_BACKENDS: &[BackendKind] = &[BackendKind::Netns, BackendKind::Kind];
