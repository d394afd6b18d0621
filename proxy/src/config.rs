//! Command line and settings: every NMI flag of REFERENCE A.9 with its name and default, plus the few this
//! proxy adds (`--kubeconfig`, `--manage-iptables`, `--probe-listen-address`, `--imds-retry-backoff-unit-ms`,
//! the listener bounds and shutdown grace: `--header-read-timeout-sec`, `--idle-timeout-sec`,
//! `--max-connections[-per-ip]`, `--probe-max-connections[-per-ip]`, `--shutdown-grace-sec`; and the SDK
//! opt-ins, off by default: `--sdk-friendly-errors`, `--identity-wait-bound-sec`).
//!
//! Boolean flags behave like Go's pflag booleans: bare `--flag` means true and `--flag=<v>` accepts what
//! `strconv.ParseBool` accepts (`1 t T TRUE true True 0 f F FALSE false False`); anything else is a usage
//! error (exit 2). This module parses and validates; it starts nothing.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::cluster::freshness::Freshness;

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => Err(format!(
            "invalid boolean value {other:?} (expected true or false)"
        )),
    }
}

/// `--operation-mode` (lower-cased before matching, as NMI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OperationMode {
    Standard,
    Managed,
}

fn parse_mode(s: &str) -> Result<OperationMode, String> {
    match s.to_ascii_lowercase().as_str() {
        "standard" => Ok(OperationMode::Standard),
        "managed" => Ok(OperationMode::Managed),
        other => Err(format!(
            "invalid operation mode {other:?} (expected standard or managed)"
        )),
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

macro_rules! go_bool {
    () => {
        clap::builder::ValueParser::new(parse_go_bool)
    };
}

/// All settings of one proxy instance. `Settings::default()` equals the binary run without flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "imds-proxy",
    version,
    about = "IMDS interception proxy for Kubernetes nodes, drop-in compatible with aad-pod-identity NMI",
    long_about = "IMDS interception proxy for Kubernetes nodes, drop-in compatible with aad-pod-identity NMI.\n\n\
        Flag names and defaults follow NMI (v1.8.17). Boolean flags take `--flag`, `--flag=true` or `--flag=false`.\n\
        A flag given twice takes its last value, as NMI's Go flag parsing does.\n\
        Exit codes: 0 clean shutdown, 1 runtime failure (e.g. iptables), 2 usage or environment error.",
    rename_all = "kebab-case",
    // NMI (Go pflag) lets a repeated flag override the earlier one: `--retry-attempts-for-created=1
    // --retry-attempts-for-created=16` means 16. Harnesses append overrides after a scenario's flags.
    args_override_self = true
)]
pub struct Settings {
    /// Address the proxy listens on (and the DNAT target; 0.0.0.0 becomes 127.0.0.1 in the rule)
    #[arg(long = "nmi-listen-address", default_value = "127.0.0.1")]
    pub nmi_listen_address: IpAddr,

    /// Port the proxy listens on (0 = any free port; library and tests only)
    #[arg(long = "nmi-port", default_value_t = 2579)]
    pub nmi_port: u16,

    /// IMDS address: intercepted traffic's destination and where the proxy sends its own requests
    #[arg(long = "metadata-ip", default_value = "169.254.169.254")]
    pub metadata_ip: IpAddr,

    /// IMDS port
    #[arg(long = "metadata-port", default_value_t = 80)]
    pub metadata_port: u16,

    /// Name of this node (DaemonSet: --node=$(NODE_NAME)); selects pods and AzureAssignedIdentities
    #[arg(long = "node", default_value = "")]
    pub node: String,

    /// Seconds between iptables reconciliations
    #[arg(long = "ipt-update-interval-sec", default_value_t = 60)]
    pub ipt_update_interval_sec: u64,

    /// Only use identities from the pod's namespace (also on when env FORCENAMESPACED=true)
    #[arg(long = "forceNamespaced", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub force_namespaced: bool,

    /// Namespace of MIC pods (their token requests bypass identity selection)
    #[arg(long = "MICNamespace", default_value = "default")]
    pub mic_namespace: String,

    /// Port of the health probe (/healthz: Active / Not Active)
    #[arg(long = "http-probe-port", default_value_t = 8080)]
    pub http_probe_port: u16,

    /// Identity lookups while no AzureAssignedIdentity is even Created
    #[arg(long = "retry-attempts-for-created", default_value_t = 16)]
    pub retry_attempts_for_created: u32,

    /// Further identity lookups while an AzureAssignedIdentity is Created but not Assigned
    #[arg(long = "retry-attempts-for-assigned", default_value_t = 4)]
    pub retry_attempts_for_assigned: u32,

    /// Seconds between identity lookups
    #[arg(long = "find-identity-retry-interval", default_value_t = 5)]
    pub find_identity_retry_interval: u64,

    /// Accepted for NMI compatibility; imds-proxy serves no pprof endpoint
    #[arg(long = "enableProfile", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub enable_profile: bool,

    /// Watch only this node's AzureAssignedIdentities (label selector nodename=<node>)
    #[arg(long = "enableScaleFeatures", num_args = 0..=1, require_equals = true, default_value = "true",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub enable_scale_features: bool,

    /// Answer 403 to /metadata/instance (every spelling of it)
    #[arg(long = "block-instance-metadata", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub block_instance_metadata: bool,

    /// Require the header `Metadata: true` on token and pass-through requests
    #[arg(long = "metadata-header-required", num_args = 0..=1, require_equals = true, default_value = "true",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub metadata_header_required: bool,

    /// Port of the Prometheus metrics endpoint (/metrics)
    #[arg(long = "prometheus-port", default_value_t = 9090)]
    pub prometheus_port: u16,

    /// standard (AzureAssignedIdentities from MIC) or managed (bindings, no MIC); case-insensitive
    #[arg(long = "operation-mode", default_value = "standard", value_parser = parse_mode)]
    pub operation_mode: OperationMode,

    /// Start even if the kubelet config says --network-plugin=kubenet
    #[arg(long = "allow-network-plugin-kubenet", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub allow_network_plugin_kubenet: bool,

    /// Kubelet config file checked by the kubenet guard
    #[arg(long = "kubelet-config", default_value = "/etc/default/kubelet")]
    pub kubelet_config: PathBuf,

    /// Answer 503 + Retry-After: 20 instead of 404 when no identity is assigned yet
    #[arg(long = "set-retry-after-header", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub set_retry_after_header: bool,

    /// Delete conntrack entries of TCP flows to IMDS once after the first iptables reconcile
    #[arg(long = "enable-conntrack-deletion", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub enable_conntrack_deletion: bool,

    /// Log format
    #[arg(long = "log-format", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Appended to the User-Agent of requests to IMDS
    #[arg(long = "custom-user-agent", default_value = "")]
    pub custom_user_agent: String,

    /// Log verbosity (klog -v): 0-3 info, 4-5 debug, 6+ trace
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,

    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster service account)
    #[arg(long = "kubeconfig")]
    pub kubeconfig: Option<PathBuf>,

    /// Install and reconcile the aad-metadata nat chain (false: loopback/test use, no kernel redirect)
    #[arg(long = "manage-iptables", num_args = 0..=1, require_equals = true, default_value = "true",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub manage_iptables: bool,

    /// Address of the health and metrics listeners (NMI: all interfaces)
    #[arg(long = "probe-listen-address", default_value = "0.0.0.0")]
    pub probe_listen_address: IpAddr,

    /// Unit of the IMDS retry back-off (adal: 1 s, giving waits of 2, 6, 14, 30 s); tests shorten it
    #[arg(long = "imds-retry-backoff-unit-ms", default_value_t = 1000)]
    pub imds_retry_backoff_unit_ms: u64,

    /// Seconds a client has to send a request's header, counted from the connection's accept or from the
    /// first byte of a later request on a kept-alive connection (every listener; also bounds reading a
    /// pass-through request body)
    #[arg(long = "header-read-timeout-sec", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_sec: u64,

    /// Seconds a kept-alive connection may wait for its next request before it is closed (every listener)
    #[arg(long = "idle-timeout-sec", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout_sec: u64,

    /// Open connections allowed on the IMDS listener; more are answered 503 and closed at once (lowered
    /// at startup if RLIMIT_NOFILE cannot hold them)
    #[arg(long = "max-connections", default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Open connections allowed from one source address (one pod) on the IMDS listener
    #[arg(long = "max-connections-per-ip", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections_per_ip: u64,

    /// Open connections allowed on each of the health and metrics listeners
    #[arg(long = "probe-max-connections", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub probe_max_connections: u64,

    /// Open connections allowed from one source address on each of the health and metrics listeners
    #[arg(long = "probe-max-connections-per-ip", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub probe_max_connections_per_ip: u64,

    /// Seconds in-flight requests may still run after SIGTERM/SIGINT (the listeners stop accepting and the
    /// rules are removed at once); what is still running then is cut and counted in the exit log (exit 3)
    #[arg(long = "shutdown-grace-sec", default_value_t = 90,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_sec: u64,

    /// Staleness bound of the cluster view: when any watched resource has had no list, watch event,
    /// bookmark or watch end from the API server for this long, no token is handed out and /healthz says
    /// Not Active until a fresh list succeeds; also the client-side timeout of every API request
    /// (at least 2000)
    #[arg(long = "cluster-view-staleness-bound-ms", default_value_t = 10_000)]
    pub cluster_view_staleness_bound_ms: u64,

    /// Beyond NMI (off = NMI's plain-text errors): answer token-path errors as real IMDS does, JSON
    /// {"error","error_description"}; a pod without identity gets IMDS's 400 "Identity not found" with
    /// NMI's explanation appended
    #[arg(long = "sdk-friendly-errors", num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = go_bool!(), action = ArgAction::Set)]
    pub sdk_friendly_errors: bool,

    /// Beyond NMI (0 = NMI's whole wait loop): answer "no identity" after at most this many seconds of
    /// the standard-mode identity wait, before SDKs' own timeouts; never changes which identity is served
    #[arg(long = "identity-wait-bound-sec", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub identity_wait_bound_sec: u64,
}

impl Default for Settings {
    fn default() -> Self {
        // Parsing an empty command line cannot fail: every argument has a default.
        Settings::try_parse_from(["imds-proxy"])
            .unwrap_or_else(|e| unreachable!("defaults must parse: {e}"))
    }
}

impl Settings {
    /// Settings for in-process tests: every listener on 127.0.0.1 port 0, IMDS at `imds`, no iptables.
    pub fn for_tests(imds: std::net::SocketAddr, node: &str) -> Self {
        Self {
            nmi_listen_address: IpAddr::from([127, 0, 0, 1]),
            nmi_port: 0,
            metadata_ip: imds.ip(),
            metadata_port: imds.port(),
            node: node.to_string(),
            http_probe_port: 0,
            prometheus_port: 0,
            manage_iptables: false,
            probe_listen_address: IpAddr::from([127, 0, 0, 1]),
            imds_retry_backoff_unit_ms: 10,
            ..Self::default()
        }
    }

    /// Applies the environment fallbacks NMI has (`FORCENAMESPACED=true`).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if get("FORCENAMESPACED").as_deref() == Some("true") {
            self.force_namespaced = true;
        }
    }

    /// Cross-flag checks NMI makes at startup (usage errors: exit 2).
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.operation_mode == OperationMode::Managed && !self.force_namespaced {
            return Err(SettingsError::ManagedNeedsForceNamespaced);
        }
        if self.manage_iptables {
            if !self.metadata_ip.is_ipv4() || !self.nmi_listen_address.is_ipv4() {
                return Err(SettingsError::IptablesNeedsIpv4);
            }
            if self.nmi_port == 0 {
                return Err(SettingsError::IptablesNeedsFixedPort);
            }
            if self.ipt_update_interval_sec == 0 {
                return Err(SettingsError::IptablesInterval);
            }
        }
        if Duration::from_millis(self.cluster_view_staleness_bound_ms) < Freshness::MIN_BOUND {
            return Err(SettingsError::StalenessBound {
                min_ms: Freshness::MIN_BOUND.as_millis(),
            });
        }
        if self
            .retry_attempts_for_created
            .saturating_add(self.retry_attempts_for_assigned)
            == 0
        {
            return Err(SettingsError::NoRetryAttempts);
        }
        Ok(())
    }

    /// The cluster view's staleness bound and the deadlines derived from it.
    pub fn freshness(&self) -> Freshness {
        Freshness::new(Duration::from_millis(self.cluster_view_staleness_bound_ms))
    }

    /// The `User-Agent` of requests to IMDS (NMI: `aad-pod-identity/NMI/<version>/...` + custom suffix).
    pub fn user_agent(&self) -> String {
        let base = format!("imds-proxy/{}", env!("CARGO_PKG_VERSION"));
        if self.custom_user_agent.is_empty() {
            base
        } else {
            format!("{base} {}", self.custom_user_agent)
        }
    }
}

/// Settings the proxy refuses to start with (usage errors: exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "managed mode requires force namespaced mode: add --forceNamespaced=true (NMI: \"managed mode not intialized in force namespaced mode\")"
    )]
    ManagedNeedsForceNamespaced,
    #[error(
        "--manage-iptables needs IPv4 --metadata-ip and --nmi-listen-address (the aad-metadata chain is iptables, not ip6tables)"
    )]
    IptablesNeedsIpv4,
    #[error("--nmi-port=0 cannot be used with --manage-iptables: the DNAT rule needs a fixed port")]
    IptablesNeedsFixedPort,
    #[error("--ipt-update-interval-sec must be at least 1")]
    IptablesInterval,
    #[error("--cluster-view-staleness-bound-ms must be at least {min_ms}")]
    StalenessBound { min_ms: u128 },
    #[error("--retry-attempts-for-created plus --retry-attempts-for-assigned must be at least 1")]
    NoRetryAttempts,
    /// iptables interception was asked for with an IPv6 address.
    #[error("iptables interception needs IPv4 addresses")]
    InterceptionNeedsIpv4,
    /// NMI's kubenet guard refused (see [`kubenet_guard`]).
    #[error(
        "AAD Pod Identity is not supported for Kubenet (found --network-plugin=kubenet in {}): pods with CAP_NET_RAW could spoof ARP and impersonate other pods. Review https://azure.github.io/aad-pod-identity/docs/configure/aad_pod_identity_on_kubenet/ and pass --allow-network-plugin-kubenet=true to run anyway",
        .kubelet_config.display()
    )]
    Kubenet { kubelet_config: PathBuf },
}

/// NMI's kubenet guard: refuse to start when the kubelet config mentions `--network-plugin=kubenet`, unless
/// allowed. A missing or unreadable file is not an error (NMI only logs it).
pub fn kubenet_guard(settings: &Settings) -> Result<(), SettingsError> {
    if settings.allow_network_plugin_kubenet {
        return Ok(());
    }
    match std::fs::read_to_string(&settings.kubelet_config) {
        Ok(text) if text.contains("--network-plugin=kubenet") => Err(SettingsError::Kubenet {
            kubelet_config: settings.kubelet_config.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::try_parse_from(std::iter::once("imds-proxy").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_nmi() {
        let s = Settings::default();
        assert_eq!(s.nmi_listen_address.to_string(), "127.0.0.1");
        assert_eq!(s.nmi_port, 2579);
        assert_eq!(s.metadata_ip.to_string(), "169.254.169.254");
        assert_eq!(s.metadata_port, 80);
        assert_eq!(s.node, "");
        assert_eq!(s.ipt_update_interval_sec, 60);
        assert!(!s.force_namespaced);
        assert_eq!(s.mic_namespace, "default");
        assert_eq!(s.http_probe_port, 8080);
        assert_eq!(
            (
                s.retry_attempts_for_created,
                s.retry_attempts_for_assigned,
                s.find_identity_retry_interval
            ),
            (16, 4, 5)
        );
        assert!(!s.enable_profile);
        assert!(s.enable_scale_features);
        assert!(!s.block_instance_metadata);
        assert!(s.metadata_header_required);
        assert_eq!(s.prometheus_port, 9090);
        assert_eq!(s.operation_mode, OperationMode::Standard);
        assert!(!s.allow_network_plugin_kubenet);
        assert_eq!(s.kubelet_config, PathBuf::from("/etc/default/kubelet"));
        assert!(!s.set_retry_after_header);
        assert!(!s.enable_conntrack_deletion);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.custom_user_agent, "");
        assert!(s.manage_iptables);
        assert_eq!(s.freshness().bound, Duration::from_secs(10));
        assert!(
            !s.sdk_friendly_errors,
            "NMI's plain-text errors unless asked"
        );
        assert_eq!(
            s.identity_wait_bound_sec, 0,
            "NMI's whole wait loop unless asked"
        );
        assert!(s.validate().is_ok());
    }

    #[test]
    fn sdk_opt_ins_parse() -> Result<(), clap::Error> {
        let s = parse(&["--sdk-friendly-errors", "--identity-wait-bound-sec=7"])?;
        assert!(s.sdk_friendly_errors);
        assert_eq!(s.identity_wait_bound_sec, 7);
        assert!(!parse(&["--sdk-friendly-errors=false"])?.sdk_friendly_errors);
        assert!(parse(&["--identity-wait-bound-sec=-1"]).is_err());
        Ok(())
    }

    #[test]
    fn go_style_booleans() -> Result<(), clap::Error> {
        assert!(parse(&["--block-instance-metadata"])?.block_instance_metadata);
        assert!(parse(&["--block-instance-metadata=true"])?.block_instance_metadata);
        assert!(parse(&["--block-instance-metadata=T"])?.block_instance_metadata);
        assert!(!parse(&["--metadata-header-required=false"])?.metadata_header_required);
        assert!(!parse(&["--enableScaleFeatures=0"])?.enable_scale_features);
        assert!(parse(&["--forceNamespaced"])?.force_namespaced);
        assert!(!parse(&["--manage-iptables=False"])?.manage_iptables);
        assert!(parse(&["--block-instance-metadata=yes"]).is_err());
        // pflag booleans never take a separate value: `--flag false` leaves `false` as a stray argument.
        assert!(parse(&["--block-instance-metadata", "false"]).is_err());
        Ok(())
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value_as_nmi() -> Result<(), clap::Error> {
        let s = parse(&[
            "--retry-attempts-for-created=1",
            "--metadata-header-required=false",
            "--retry-attempts-for-created=16",
            "--metadata-header-required",
            "--node=a",
            "--node",
            "b",
        ])?;
        assert_eq!(s.retry_attempts_for_created, 16);
        assert!(s.metadata_header_required);
        assert_eq!(s.node, "b");
        let s = parse(&[
            "--block-instance-metadata=true",
            "--block-instance-metadata=false",
        ])?;
        assert!(!s.block_instance_metadata);
        Ok(())
    }

    #[test]
    fn invalid_values_are_usage_errors() {
        for bad in [
            &["--nmi-port=abc"][..],
            &["--metadata-ip=not-an-ip"],
            &["--operation-mode=bogus"],
            &["--log-format=xml"],
            &["--no-such-flag"],
            &["--nmi-port=70000"],
        ] {
            let err = parse(bad).err();
            assert_eq!(err.map(|e| e.exit_code()), Some(2), "{bad:?}");
        }
    }

    #[test]
    fn operation_mode_is_case_insensitive_and_managed_needs_namespaced() -> Result<(), clap::Error>
    {
        let s = parse(&["--operation-mode=MANAGED"])?;
        assert_eq!(s.operation_mode, OperationMode::Managed);
        assert!(s.validate().is_err());
        let s = parse(&["--operation-mode=Managed", "--forceNamespaced=true"])?;
        assert!(s.validate().is_ok());
        Ok(())
    }

    #[test]
    fn staleness_bound_has_a_floor() -> Result<(), clap::Error> {
        let s = parse(&["--cluster-view-staleness-bound-ms=2000"])?;
        assert_eq!(s.freshness().bound, Duration::from_secs(2));
        assert!(s.validate().is_ok());
        assert!(
            parse(&["--cluster-view-staleness-bound-ms=1999"])?
                .validate()
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn env_fallback() {
        let mut s = Settings::default();
        s.apply_env(|k| (k == "FORCENAMESPACED").then(|| "True".to_string()));
        assert!(
            !s.force_namespaced,
            "NMI compares the env value to exactly \"true\""
        );
        s.apply_env(|k| (k == "FORCENAMESPACED").then(|| "true".to_string()));
        assert!(s.force_namespaced);
    }

    #[test]
    fn kubenet_guard_reads_the_kubelet_config() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("kubelet");
        std::fs::write(
            &path,
            "KUBELET_FLAGS=--network-plugin=kubenet --max-pods=110\n",
        )?;
        let mut s = Settings {
            kubelet_config: path.clone(),
            ..Settings::default()
        };
        assert!(kubenet_guard(&s).is_err());
        s.allow_network_plugin_kubenet = true;
        assert!(kubenet_guard(&s).is_ok());
        s.allow_network_plugin_kubenet = false;
        std::fs::write(&path, "KUBELET_FLAGS=--network-plugin=cni\n")?;
        assert!(kubenet_guard(&s).is_ok());
        s.kubelet_config = dir.path().join("missing");
        assert!(kubenet_guard(&s).is_ok());
        Ok(())
    }

    #[test]
    fn listener_flags_have_defaults_and_refuse_zero() -> Result<(), clap::Error> {
        let s = Settings::default();
        assert_eq!((s.header_read_timeout_sec, s.idle_timeout_sec), (10, 60));
        assert_eq!((s.max_connections, s.max_connections_per_ip), (2048, 128));
        assert_eq!(
            (s.probe_max_connections, s.probe_max_connections_per_ip),
            (64, 8)
        );
        assert_eq!(s.shutdown_grace_sec, 90);
        let s = parse(&["--idle-timeout-sec=2", "--shutdown-grace-sec=0"])?;
        assert_eq!((s.idle_timeout_sec, s.shutdown_grace_sec), (2, 0));
        for bad in [
            "--header-read-timeout-sec=0",
            "--idle-timeout-sec=0",
            "--max-connections=0",
            "--max-connections-per-ip=0",
            "--probe-max-connections=-1",
        ] {
            assert_eq!(parse(&[bad]).err().map(|e| e.exit_code()), Some(2), "{bad}");
        }
        Ok(())
    }
}
