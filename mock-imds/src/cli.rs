//! The command line of the `mock-imds` binary and how it resolves to a [`Config`]: flags win over
//! `MOCK_IMDS_*` environment variables (clap does that), which win over the TOML file, which wins over the
//! generated defaults. Kept in the library so the precedence is unit-tested; `main.rs` only runs it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, ConfigError};

/// A faithful Azure Instance Metadata Service emulator.
///
/// Serves the IMDS API (/metadata/...) and a control API (/_mock/...). It listens on 127.0.0.1:8080 unless
/// told otherwise and never binds 169.254.169.254 by itself: give that address explicitly, and only inside a
/// network namespace you own.
///
/// Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 2 on usage or environment errors (bad flag, unreadable
/// or invalid config file, address in use).
#[derive(Debug, Clone, Parser)]
#[command(name = "mock-imds", version, about, long_about)]
pub struct Cli {
    /// Address to listen on [default: 127.0.0.1:8080, or server.listen from the config file].
    #[arg(long, env = "MOCK_IMDS_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// TOML file describing the VM (compute, network, identities, faults, rate limits). Unset keys keep
    /// their defaults.
    #[arg(long, env = "MOCK_IMDS_CONFIG", value_name = "FILE.toml")]
    pub config: Option<PathBuf>,

    /// Seed for generated ids and keys: the same seed gives the same VM, identities and signing keys.
    #[arg(long, env = "MOCK_IMDS_SEED", value_name = "N")]
    pub seed: Option<u64>,

    /// Disable the real service's rate limits (5 req/s general; identity 20 req/s, 5 concurrent).
    #[arg(long, env = "MOCK_IMDS_NO_RATE_LIMIT")]
    pub no_rate_limit: bool,

    /// Do not serve the /_mock/ control API.
    #[arg(long, env = "MOCK_IMDS_NO_CONTROL")]
    pub no_control: bool,

    /// Number of requests the journal keeps (oldest dropped first) [default: 10000].
    #[arg(long, env = "MOCK_IMDS_JOURNAL_CAPACITY", value_name = "N")]
    pub journal_capacity: Option<usize>,

    /// The `<build>` in the `Server: IMDS/150.870.65.<build>` header [default: 1103].
    #[arg(long, env = "MOCK_IMDS_SERVER_BUILD", value_name = "BUILD")]
    pub server_build: Option<String>,

    /// Close a connection whose request head is not complete this many seconds after its first byte (or
    /// whose body is not complete this many seconds after its head) [default: 10, or
    /// server.limits.header_read_timeout_secs].
    #[arg(long, env = "MOCK_IMDS_HEADER_READ_TIMEOUT", value_name = "SECS")]
    pub header_read_timeout: Option<u64>,

    /// Close a connection with no request in flight that sends nothing for this many seconds [default: 30,
    /// or server.limits.idle_timeout_secs].
    #[arg(long, env = "MOCK_IMDS_IDLE_TIMEOUT", value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Most open connections per listener; beyond it an idle connection of the heaviest source is closed,
    /// or the new one refused [default: 512, or server.limits.max_connections].
    #[arg(long, env = "MOCK_IMDS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most open connections per source IP address per listener; beyond it that source's oldest idle
    /// connection is closed, or the new one refused [default: 128, or server.limits.max_connections_per_source].
    #[arg(long, env = "MOCK_IMDS_MAX_CONNECTIONS_PER_SOURCE", value_name = "N")]
    pub max_connections_per_source: Option<usize>,

    /// On SIGINT/SIGTERM, requests in flight get this many seconds to finish; the exit log names those cut
    /// [default: 90, or server.limits.shutdown_grace_secs].
    #[arg(long, env = "MOCK_IMDS_SHUTDOWN_GRACE", value_name = "SECS")]
    pub shutdown_grace: Option<u64>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl Cli {
    /// The effective configuration: defaults < file < environment < flags.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path, self.seed)?,
            None => Config::generate(self.seed),
        };
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if self.no_rate_limit {
            config.rate_limits.enabled = false;
        }
        if self.no_control {
            config.server.control = false;
        }
        if let Some(n) = self.journal_capacity {
            config.server.journal_capacity = n;
        }
        if let Some(b) = &self.server_build {
            config.server.server_build = b.clone();
        }
        let limits = &mut config.server.limits;
        let flags = [
            (
                self.header_read_timeout,
                &mut limits.header_read_timeout_secs,
            ),
            (self.idle_timeout, &mut limits.idle_timeout_secs),
            (self.shutdown_grace, &mut limits.shutdown_grace_secs),
        ];
        for (flag, slot) in flags {
            if let Some(v) = flag {
                *slot = v;
            }
        }
        if let Some(n) = self.max_connections {
            limits.max_connections = n;
        }
        if let Some(n) = self.max_connections_per_source {
            limits.max_connections_per_source = n;
        }
        limits.validate().map_err(|e| ConfigError::Invalid {
            origin: "the flags and MOCK_IMDS_* environment".into(),
            message: e.to_string(),
        })?;
        Ok(config)
    }
}
