//! Deliberate single defects for the conformance mutation suite (`just mutants`, docs/CONFORMANCE-POWER.md).
//!
//! Each [`Mutant`] is one realistic mistake a vendor's interceptor could make, aimed at one catalogue case.
//! They exist only in a build with the cargo feature `mutants` (the suite builds it into its own target
//! directory): there `IMDS_PROXY_MUTANT=<name>` turns one on for the process, and `imds-proxy
//! --list-mutants` prints the table. Without the feature the [`crate::mutant!`] macro expands to `false`,
//! this module's table is not compiled and the shipped binary holds neither the defects nor their names.

/// Is the defect `$name` (a [`Mutant`] variant), or any of `A | B`, on? Always `false` without the cargo
/// feature `mutants`.
#[macro_export]
macro_rules! mutant {
    ($($name:ident)|+) => {{
        #[cfg(feature = "mutants")]
        {
            false $(|| $crate::mutant::active($crate::mutant::Mutant::$name))+
        }
        #[cfg(not(feature = "mutants"))]
        {
            false
        }
    }};
}

#[cfg(feature = "mutants")]
pub use table::*;

#[cfg(feature = "mutants")]
mod table {
    use std::sync::OnceLock;

    macro_rules! mutants {
        ($($variant:ident $name:literal $case:literal $what:literal;)*) => {
            /// One defect: its name (`IMDS_PROXY_MUTANT`), the case aimed at it, and what is wrong.
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub enum Mutant { $($variant),* }

            /// Every defect with (name, aimed case id, description).
            pub const ALL: &[(Mutant, &str, &str, &str)] = &[$((Mutant::$variant, $name, $case, $what)),*];
        };
    }

    mutants! {
        HeaderIgnoredOnToken "header-ignored-on-token" "HDR-001" "the token route does not check the Metadata header";
        HeaderValueAnyCase "header-value-any-case" "HDR-002" "Metadata: True and TRUE are accepted";
        HeaderIgnoredOnPassThrough "header-ignored-on-pass-through" "HDR-003" "pass-through paths are forwarded without the Metadata header";
        HeaderRefusalForwarded "header-refusal-forwarded" "HDR-001" "a token request without the header is refused but also forwarded to IMDS";
        HeaderRefusalPlainText "header-refusal-plain-text" "HDR-005" "the header refusal is text/plain";
        BlockOff "block-off" "BLK-001" "--block-instance-metadata is ignored";
        BlockCaseSensitive "block-case-sensitive" "BLK-002" "the instance block matches /metadata/instance case-sensitively";
        BlockNoDecode "block-no-decode" "BLK-003" "the instance block matches the path before percent-decoding and cleaning";
        BlockAfterForward "block-after-forward" "BLK-004" "the request is forwarded to IMDS and only then answered 403";
        BlockEverything "block-everything" "BLK-005" "every pass-through path is answered 403";
        HostOutputIntercepted "host-output-intercepted" "IPT-001" "the chain is also jumped to from nat OUTPUT: the node's own processes are intercepted";
        DnatWrongPort "dnat-wrong-port" "IPT-001" "the DNAT rule sends traffic to a port nothing listens on";
        NoReconcile "no-reconcile" "IPT-002" "the rules are installed once and never repaired";
        NoJumpRepair "no-jump-repair" "IPT-006" "a missing PREROUTING jump is never re-inserted";
        RulesKeptOnExit "rules-kept-on-exit" "IPT-003" "the rules stay after SIGTERM";
        ReadyBeforeRules "ready-before-rules" "IPT-004" "/healthz says Active before the rules are installed";
        ConntrackSkipped "conntrack-skipped" "CT-001" "conntrack deletion is claimed but never done";
        ConntrackFlushAll "conntrack-flush-all" "CT-003" "conntrack deletion destroys every TCP flow, not only those to IMDS";
        RetryAfterMissing "retry-after-missing" "RTA-001" "503 without Retry-After";
        RetryAfterWrongValue "retry-after-wrong-value" "RTA-001" "Retry-After: 30 instead of 20";
        RetryAfterOnTokenErrors "retry-after-on-token-errors" "RTA-004" "token-acquisition errors are answered 503 + Retry-After";
        RetryAfterOnHostToken "retry-after-on-host-token" "RTA-005" "/host/token failures are answered 503 + Retry-After";
        CreatedServed "created-served" "TOK-009" "an AzureAssignedIdentity in Created is served as if Assigned";
        UnassignedServed "unassigned-served" "TOK-009" "an AzureAssignedIdentity in Unassigned is served as if Assigned";
        LegacyIgnored "legacy-ignored" "TOK-009" "an AzureAssignedIdentity with the legacy empty state is not served";
        NoLabelSelector "no-label-selector" "LBL-001" "--enableScaleFeatures does not filter the AzureAssignedIdentity watch";
        CrdFieldSelector "crd-field-selector" "LBL-004" "the AzureAssignedIdentity watch uses a field selector, which the API server refuses";
        ClientIdIgnored "client-id-ignored" "TOK-002" "client_id is ignored: the pod's first identity is served";
        MsiResIdIgnored "msi-res-id-ignored" "TOK-003" "msi_res_id is ignored";
        MiResIdIgnored "mi-res-id-ignored" "TOK-004" "mi_res_id (the fallback of msi_res_id) is ignored";
        UnknownClientIdFallsBack "unknown-client-id-falls-back" "TOK-005" "a client_id the pod does not hold gets the pod's first identity";
        ResourceNotRequired "resource-not-required" "TOK-006" "a token request without resource is sent to IMDS";
        TokenBodyNumbers "token-body-numbers" "TOK-007" "expires_in is a JSON number";
        HostTokenAnyCaller "host-token-any-caller" "TOK-008" "/host/token answers callers that are not on the host";
        SelectorCaseFallsBack "selector-case-falls-back" "TOK-010" "a selector in another letter case falls back to the pod's first identity";
        CacheServedWhenStale "cache-served-when-stale" "ISO-006" "the cached cluster view is trusted however long the API server is silent (no staleness bound, no live check of the caller)";
        CallerNotConfirmed "caller-not-confirmed" "ISO-007" "the caller is not confirmed against the API server before a token";
        ForwardedForTrusted "forwarded-for-trusted" "ISO-002" "the caller is taken from X-Forwarded-For when present";
        ForwardedForForwarded "forwarded-for-forwarded" "ISO-002" "X-Forwarded-For is forwarded to IMDS";
        AnyPhaseMatches "any-phase-matches" "ISO-011" "pods in any phase (Succeeded, Failed) are matched to a caller address";
        AaiOfAnyPod "aai-of-any-pod" "ISO-001" "AzureAssignedIdentities are not filtered by pod: any pod's identity on the node may be served";
        NoIdentityForwarded "no-identity-forwarded" "SEC-001" "a pod without identity is forwarded to IMDS (the VM's token)";
        QueryDropped "query-dropped" "PT-002" "the pass-through drops the query string";
        PostAsGet "post-as-get" "PT-002" "the pass-through sends POST as GET";
        UnknownPathsRefused "unknown-paths-refused" "PT-003" "unknown paths are answered 404 by the interceptor";
        TokenRouteCaseSensitive "token-route-case-sensitive" "SEC-003" "the token route is matched case-sensitively (NMI's defect): /metadata/Identity/oauth2/token reaches IMDS";
    }

    static ACTIVE: OnceLock<Option<Mutant>> = OnceLock::new();

    /// The defect named by `IMDS_PROXY_MUTANT`, if any (an unknown name is a start-up error, see [`check`]).
    fn selected() -> Option<Mutant> {
        *ACTIVE.get_or_init(|| {
            let name = std::env::var("IMDS_PROXY_MUTANT").ok()?;
            ALL.iter().find(|m| m.1 == name).map(|m| m.0)
        })
    }

    /// Is `m` the defect of this process?
    pub fn active(m: Mutant) -> bool {
        selected() == Some(m)
    }

    /// `IMDS_PROXY_MUTANT` names no defect.
    #[derive(Debug, thiserror::Error)]
    #[error("IMDS_PROXY_MUTANT={name} names no defect; `imds-proxy --list-mutants` lists them")]
    pub struct UnknownMutant {
        pub name: String,
    }

    /// The name of the selected defect (`None`: the correct proxy); an unknown name is an error.
    pub fn check() -> Result<Option<&'static str>, UnknownMutant> {
        match std::env::var("IMDS_PROXY_MUTANT") {
            Err(_) => Ok(None),
            Ok(name) => match ALL.iter().find(|m| m.1 == name) {
                Some(m) => Ok(Some(m.1)),
                None => Err(UnknownMutant { name }),
            },
        }
    }

    /// `--list-mutants`: one line per defect, `name<TAB>case<TAB>description`.
    pub fn table() -> String {
        ALL.iter()
            .map(|m| format!("{}\t{}\t{}\n", m.1, m.2, m.3))
            .collect()
    }
}
