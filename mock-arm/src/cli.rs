//! The command line of the `mock-arm` binary and how it resolves to a [`Config`]: flags win over `MOCK_ARM_*`
//! environment variables (clap does that), which win over the TOML file, which wins over the generated
//! defaults. Kept in the library so the precedence is unit-tested; `main.rs` only runs it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, ConfigError};

/// Azure Resource Manager's identity surface for virtual machines and scale sets.
///
/// Serves GET/PATCH of Microsoft.Compute virtualMachines and virtualMachineScaleSets (identity PATCH
/// semantics, long-running operations, ARM errors, throttling), GET of user-assigned identities, and a control
/// API under /_mock/. Identity changes reach each VM's mock-imds through its control API. Listens on
/// 127.0.0.1:8090 unless told otherwise.
///
/// Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 2 on usage or environment errors (bad flag,
/// unreadable or invalid config file, address in use).
#[derive(Debug, Clone, Parser)]
#[command(name = "mock-arm", version, about, long_about)]
pub struct Cli {
    /// Address to listen on [default: 127.0.0.1:8090, or server.listen from the config file].
    #[arg(long, env = "MOCK_ARM_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// TOML file describing the estate (VMs, scale sets, identities, their mock-imds) and behaviour (LRO
    /// durations, propagation delay, throttling, auth). Unset keys keep their defaults; arrays replace.
    #[arg(long, env = "MOCK_ARM_CONFIG", value_name = "FILE.toml")]
    pub config: Option<PathBuf>,

    /// Seed for generated ids: the same seed gives the same subscription, resources and identities.
    #[arg(long, env = "MOCK_ARM_SEED", value_name = "N")]
    pub seed: Option<u64>,

    /// Serve https with a generated CA; its PEM is written to --ca-out and served at /_mock/ca.pem.
    #[arg(long, env = "MOCK_ARM_TLS")]
    pub tls: bool,

    /// With --tls: write the CA certificate (PEM) to this file for clients to trust.
    #[arg(long, env = "MOCK_ARM_CA_OUT", value_name = "FILE.pem")]
    pub ca_out: Option<PathBuf>,

    /// Verify bearer tokens with the JWKS at this URI (mock-imds: http://HOST:PORT/_mock/discovery/keys).
    #[arg(long, env = "MOCK_ARM_JWKS_URI", value_name = "URI")]
    pub jwks_uri: Option<String>,

    /// Accept requests without (valid) bearer tokens.
    #[arg(long, env = "MOCK_ARM_NO_AUTH")]
    pub no_auth: bool,

    /// Disable ARM's and Compute's throttling.
    #[arg(long, env = "MOCK_ARM_NO_THROTTLING")]
    pub no_throttling: bool,

    /// Seconds a VM / scale-set PATCH stays Updating [defaults: 15 / 50].
    #[arg(long, env = "MOCK_ARM_VM_LRO_SECS", value_name = "S")]
    pub vm_lro_secs: Option<f64>,
    #[arg(long, env = "MOCK_ARM_VMSS_LRO_SECS", value_name = "S")]
    pub vmss_lro_secs: Option<f64>,

    /// Do not serve the /_mock/ control API.
    #[arg(long, env = "MOCK_ARM_NO_CONTROL")]
    pub no_control: bool,

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
        if self.tls {
            config.server.tls = true;
        }
        if let Some(uri) = &self.jwks_uri {
            config.auth.jwks_uri = Some(uri.clone());
        }
        if self.no_auth {
            config.auth.enabled = false;
        }
        if self.no_throttling {
            config.throttling.enabled = false;
        }
        if let Some(s) = self.vm_lro_secs {
            config.lro.vm_secs = s;
        }
        if let Some(s) = self.vmss_lro_secs {
            config.lro.vmss_secs = s;
        }
        if self.no_control {
            config.server.control = false;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("arm.toml");
        std::fs::write(&file, "[lro]\nvm_secs = 3.0\nvmss_secs = 4.0\n").expect("write");
        let cli = Cli::parse_from([
            "mock-arm",
            "--config",
            file.to_str().expect("utf-8"),
            "--seed",
            "9",
            "--vmss-lro-secs",
            "1",
            "--no-auth",
        ]);
        let c = cli.resolve().expect("resolves");
        assert_eq!((c.lro.vm_secs, c.lro.vmss_secs), (3.0, 1.0));
        assert!(!c.auth.enabled);
        assert_eq!(
            c.virtual_machines,
            Config::generate(Some(9)).virtual_machines
        );
        let bad = Cli::parse_from(["mock-arm", "--vm-lro-secs=-1"]);
        assert!(bad.resolve().is_err());
    }
}
