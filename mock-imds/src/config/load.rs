//! Loading and layering: a TOML document merged over the generated defaults (tables key by key, arrays and
//! values replaced), validated, identities completed; and the effective configuration as TOML
//! (`--print-config`). Environment variables and flags are layered on top by `cli`.

use mock_support::layering::LayerError;

use super::{Config, ConfigError, complete_identity};

impl Config {
    /// Layers a TOML document over the generated defaults: tables merge key by key, arrays and values replace.
    /// The seed is `seed` if given, else the file's `server.seed`.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        seed: Option<u64>,
    ) -> Result<Config, ConfigError> {
        let (mut config, seed) = mock_support::layering::layer(text, seed, Config::generate)
            .map_err(|e| match e {
                LayerError::Parse(source) => ConfigError::Parse {
                    origin: origin.to_string(),
                    source: Box::new(source),
                },
                LayerError::Serialize(e) => ConfigError::Serialize(e),
            })?;
        config.server.seed = seed;
        config
            .faults
            .validate()
            .map_err(|source| ConfigError::Faults {
                origin: origin.to_string(),
                source,
            })?;
        config
            .server
            .limits
            .validate()
            .map_err(|e| ConfigError::Invalid {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        config.complete_identities();
        Ok(config)
    }

    /// Reads and layers a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path, seed: Option<u64>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string(), seed)
    }

    /// The effective configuration as TOML (`--print-config`).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// Fills generated values into user-assigned identities that only gave a client id.
    pub fn complete_identities(&mut self) {
        let subscription = self.compute.subscription_id.clone();
        let rg = self.compute.resource_group_name.clone();
        for (i, id) in self.identities.user_assigned.iter_mut().enumerate() {
            complete_identity(id, &subscription, &rg, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_config() {
        assert_eq!(Config::generate(Some(7)), Config::generate(Some(7)));
        assert_ne!(
            Config::generate(Some(7)).compute.vm_id,
            Config::generate(Some(8)).compute.vm_id
        );
    }

    #[test]
    fn toml_round_trip() {
        let c = Config::generate(Some(1));
        let text = c.to_toml().expect("serialise");
        let back = Config::from_toml_str(&text, "test", None).expect("parse");
        assert_eq!(back, c);
    }

    #[test]
    fn file_overrides_defaults_partially() {
        let c = Config::from_toml_str(
            "[compute]\nlocation = \"westeurope\"\n[identities]\nsystem_assigned = false\n\
             [[identities.user_assigned]]\nclient_id = \"11111111-1111-1111-1111-111111111111\"\n",
            "test",
            Some(3),
        )
        .expect("parse");
        assert_eq!(c.compute.location, "westeurope");
        assert_eq!(c.compute.vm_size, "Standard_D2s_v3");
        assert!(!c.identities.system_assigned);
        assert_eq!(c.identities.user_assigned.len(), 1);
        assert!(!c.identities.user_assigned[0].object_id.is_empty());
        assert!(
            c.identities.user_assigned[0]
                .resource_id
                .ends_with("/id-imds-mock-1")
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_toml_str("[compute]\nvmid = \"x\"\n", "test", Some(1)).is_err());
    }
}
