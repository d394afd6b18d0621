//! The command line: MIC's flags with MIC's names and defaults (REFERENCE E.1), so that a MIC deployment's
//! arguments start imds-controller unchanged, plus the few this implementation adds (marked "imds-controller:").
//! Durations are written as Go writes them (`3600s`, `3m`, `1h0m0s`). This module only parses; `Settings`
//! is what the rest of the crate consumes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::Settings;

/// Log line format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// imds-controller: keeps AzureAssignedIdentities and the identities of the cluster's VMs and scale sets in
/// step with the pods that ask for them, as aad-pod-identity's MIC (Managed Identity Controller) does.
///
/// For every pod whose `aadpodidbinding` label matches an AzureIdentityBinding's selector it creates an
/// AzureAssignedIdentity `<pod>-<namespace>-<identity>` (label `nodename`, state Created), adds the
/// user-assigned identity to the pod's VM (or its scale set) with one ARM PATCH per VM/VMSS carrying the
/// changes only, and marks the object Assigned once ARM shows the identity. When the pod goes, the identity
/// is removed from the VM unless another pod there still uses it or it is listed in --immutable-user-msis.
///
/// Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 on a fatal runtime error (leadership lost), 2 on
/// a usage or configuration error.
#[derive(Debug, Parser)]
#[command(
    name = "imds-controller",
    version,
    about,
    long_about,
    max_term_width = 110
)]
pub struct Args {
    /// Kubeconfig file; in-cluster configuration (or $KUBECONFIG) when empty.
    #[arg(long, default_value = "")]
    pub kubeconfig: String,

    /// Cloud configuration (azure.json: tenantId, subscriptionId, resourceGroup, vmType standard|vmss,
    /// useManagedIdentityExtension + userAssignedIdentityID, or aadClientId + aadClientSecret; imds-controller
    /// also reads resourceManagerEndpoint, activeDirectoryEndpoint and tokenAudience). Empty: the
    /// environment variables MIC reads (CLOUD, TENANT_ID, CLIENT_ID, CLIENT_SECRET, SUBSCRIPTION_ID,
    /// RESOURCE_GROUP, VM_TYPE, USE_MSI, USER_ASSIGNED_MSI_CLIENT_ID).
    #[arg(long, default_value = "")]
    pub cloudconfig: String,

    /// Put AzureAssignedIdentities in the identity's namespace and match bindings, identities and pods only
    /// within one namespace, for every identity (without it: only identities annotated
    /// `aadpodidentity.k8s.io/Behavior: namespaced`).
    #[arg(long = "forceNamespaced", env = "FORCENAMESPACED", action = ArgAction::Set,
          num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub force_namespaced: bool,

    /// Period of a full cycle even when nothing changed (Go duration).
    #[arg(long = "syncRetryDuration", default_value = "3600s", value_parser = parse_go_duration)]
    pub sync_retry_duration: Duration,

    /// At most this many Kubernetes API operations (AzureAssignedIdentity create, status patch, delete) in
    /// flight at once per node or scale set.
    #[arg(long = "createDeleteBatch", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub create_delete_batch: u32,

    /// Requests per second to the Kubernetes API server: one token bucket (rate = burst = clientQps, burst at
    /// least 1) over every request this controller makes, watches included. ARM calls are not counted.
    #[arg(long = "clientQps", default_value_t = 5.0, value_parser = parse_qps)]
    pub client_qps: f64,

    /// Comma-separated user-assigned identities (client ids) never removed from a VM or scale set, compared
    /// case-insensitively. The controller's own identity (userAssignedIdentityID of the cloud config) is added.
    #[arg(long = "immutable-user-msis", default_value = "")]
    pub immutable_user_msis: String,

    /// How many times one ARM update is retried without the identities ARM named as refused.
    #[arg(long = "update-user-msi-max-retry", default_value_t = 2)]
    pub update_user_msi_max_retry: u32,

    /// Pause before such a retry (Go duration).
    #[arg(long = "update-user-msi-retry-interval", default_value = "1s", value_parser = parse_go_duration)]
    pub update_user_msi_retry_interval: Duration,

    /// Period of the reconcile that re-adds identities removed from a VM/VMSS behind the controller's back
    /// (Go duration; it never removes).
    #[arg(long = "identity-assignment-reconcile-interval", default_value = "3m", value_parser = parse_go_duration)]
    pub identity_assignment_reconcile_interval: Duration,

    /// Leader election (a coordination.k8s.io/v1 Lease; only the leader writes): this replica's identity
    /// (default: the host name).
    #[arg(long = "leader-election-instance", default_value = "")]
    pub leader_election_instance: String,

    /// Leader election: namespace of the lock.
    #[arg(long = "leader-election-namespace", default_value = "default")]
    pub leader_election_namespace: String,

    /// Leader election: name of the lock.
    #[arg(long = "leader-election-name", default_value = "aad-pod-identity-mic")]
    pub leader_election_name: String,

    /// Leader election: lease duration (Go duration); renewals every quarter of it, leadership given up (exit
    /// 1) after half of it without a renewal.
    #[arg(long = "leader-election-duration", default_value = "15s", value_parser = parse_go_duration)]
    pub leader_election_duration: Duration,

    /// Port of the health probe (`/healthz`: 200 "Active" once this replica leads and ran a cycle, 200 "Not
    /// Active" before, as MIC).
    #[arg(long = "http-probe-port", default_value_t = 8080)]
    pub http_probe_port: u16,

    /// Port of the Prometheus metrics (`/metrics`).
    #[arg(long = "prometheus-port", default_value_t = 8888)]
    pub prometheus_port: u16,

    /// Log format.
    #[arg(long = "log-format", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// MIC's Go profiler switch; accepted for compatibility, no effect.
    #[arg(long = "enableProfile", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    pub enable_profile: bool,

    /// Deprecated in MIC and without effect there; accepted for compatibility.
    #[arg(long = "enableScaleFeatures", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    pub enable_scale_features: bool,

    /// MIC's one-time AzureIdentity type upgrade (string to integer); accepted, no effect (identities must
    /// carry the integer form).
    #[arg(long = "enable-type-upgrade", action = ArgAction::Set, num_args = 0..=1,
          default_value = "true", default_missing_value = "true")]
    pub enable_type_upgrade: bool,

    /// See --enable-type-upgrade.
    #[arg(long = "config-map-name", default_value = "aad-pod-identity-config")]
    pub config_map_name: String,

    /// See --enable-type-upgrade.
    #[arg(
        long = "type-upgrade-status-key",
        default_value = "type-upgrade-status"
    )]
    pub type_upgrade_status_key: String,

    /// imds-controller: address the probe and metrics ports listen on.
    #[arg(long = "bind-address", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// imds-controller: the IMDS the managed-identity ARM token comes from (MIC: always 169.254.169.254).
    #[arg(
        long = "imds-endpoint",
        env = "IMDS_ENDPOINT",
        default_value = "http://169.254.169.254"
    )]
    pub imds_endpoint: String,

    /// imds-controller: extra PEM CA certificates trusted for ARM and Azure AD (besides the system's), e.g.
    /// mock-arm's --ca-out.
    #[arg(long = "arm-ca-file", env = "ARM_CA_FILE")]
    pub arm_ca_file: Option<PathBuf>,
}

impl Args {
    /// The settings these arguments describe (the cloud config is read later, by `Settings::load_cloud`).
    pub fn settings(&self) -> Settings {
        Settings {
            kubeconfig: non_empty(&self.kubeconfig).map(PathBuf::from),
            cloudconfig: non_empty(&self.cloudconfig).map(PathBuf::from),
            force_namespaced: self.force_namespaced,
            sync_retry_duration: self.sync_retry_duration,
            create_delete_batch: self.create_delete_batch as usize,
            client_qps: self.client_qps,
            immutable_user_msis: split_list(&self.immutable_user_msis),
            update_user_msi_max_retry: self.update_user_msi_max_retry,
            update_user_msi_retry_interval: self.update_user_msi_retry_interval,
            identity_assignment_reconcile_interval: self.identity_assignment_reconcile_interval,
            probe_addr: (self.bind_address, self.http_probe_port).into(),
            metrics_addr: (self.bind_address, self.prometheus_port).into(),
            imds_endpoint: self.imds_endpoint.trim_end_matches('/').to_owned(),
            arm_ca_file: self.arm_ca_file.clone(),
            leader_election: Some(crate::leader::LeaderElection {
                namespace: self.leader_election_namespace.clone(),
                name: self.leader_election_name.clone(),
                instance: non_empty(&self.leader_election_instance)
                    .map_or_else(crate::hostname, str::to_owned),
                lease_duration: self.leader_election_duration,
            }),
            ..Settings::default()
        }
    }
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

/// A comma-separated list, entries trimmed, empty entries dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_qps(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 1_000_000.0 {
        Ok(v)
    } else {
        Err("must be a number greater than 0 (and at most 1000000)".into())
    }
}

/// Parses a Go duration (`time.ParseDuration`): an optional sign, then one or more decimal numbers each with
/// a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`), e.g. `300ms`, `1.5h`, `2h45m`; `0` alone is zero.
/// Negative durations are refused (no flag here accepts one).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let orig = s;
    let bad = || format!("invalid duration {orig:?} (Go syntax, e.g. 90s, 3m, 1h0m0s)");
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(format!("negative duration {orig:?}"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = next;
    }
    // Go's limit: about 292 years.
    if !total.is_finite() || total > 9.2e9 {
        return Err(format!("duration {orig:?} out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_durations() {
        let ok = [
            ("3600s", 3600.0),
            ("3m", 180.0),
            ("1h0m0s", 3600.0),
            ("1.5s", 1.5),
            ("300ms", 0.3),
            ("2h45m", 9900.0),
            ("0", 0.0),
            ("+5s", 5.0),
            ("10us", 0.00001),
            (".5s", 0.5),
        ];
        for (s, secs) in ok {
            let d = parse_go_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!((d.as_secs_f64() - secs).abs() < 1e-9, "{s}: {d:?}");
        }
        for bad in ["", "5", "s", "1x", "-1s", "1..5s", "1s5", "h1"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn defaults_are_mics() {
        let a = Args::parse_from(["imds-controller"]);
        assert_eq!(a.create_delete_batch, 20);
        assert!((a.client_qps - 5.0).abs() < f64::EPSILON);
        assert_eq!(a.sync_retry_duration, Duration::from_secs(3600));
        assert_eq!(
            a.identity_assignment_reconcile_interval,
            Duration::from_secs(180)
        );
        assert_eq!(a.update_user_msi_max_retry, 2);
        assert_eq!(a.update_user_msi_retry_interval, Duration::from_secs(1));
        assert_eq!(a.leader_election_name, "aad-pod-identity-mic");
        assert_eq!(a.leader_election_duration, Duration::from_secs(15));
        assert_eq!((a.http_probe_port, a.prometheus_port), (8080, 8888));
        assert!(!a.force_namespaced);
        let a = Args::parse_from([
            "imds-controller",
            "--forceNamespaced",
            "--immutable-user-msis=A, b,,",
            "--createDeleteBatch=3",
        ]);
        assert!(a.force_namespaced);
        assert_eq!(a.settings().immutable_user_msis, vec!["A", "b"]);
        assert_eq!(a.settings().create_delete_batch, 3);
        assert!(Args::try_parse_from(["imds-controller", "--createDeleteBatch=0"]).is_err());
        assert!(Args::try_parse_from(["imds-controller", "--clientQps=0"]).is_err());
    }

    proptest! {
        /// Whatever the input, the parser answers (no panic); what it accepts it can print back.
        #[test]
        fn never_panics(s in "\\PC{0,16}") {
            let _ = parse_go_duration(&s);
        }

        #[test]
        fn round_trips_h_m_s(h in 0u64..100, m in 0u64..60, s in 0u64..60) {
            let text = format!("{h}h{m}m{s}s");
            prop_assert_eq!(parse_go_duration(&text), Ok(Duration::from_secs(h * 3600 + m * 60 + s)));
        }
    }
}
