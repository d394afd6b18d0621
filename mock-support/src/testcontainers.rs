//! What a mock's container image has in common, whichever mock it is (cargo feature `testcontainers`): the
//! image name and tag, the port the binary listens on inside the container (`--listen 0.0.0.0:<port>`), an
//! optional TOML file copied in (`--config <path>`), the seed (`--seed`), readiness as a line on stderr, and
//! the base URI through the mapped port. A mock's image type holds an [`ImageCore`] named `core`, adds its own
//! flags in an `args` method, and gets its `testcontainers::Image` implementation from [`impl_mock_image!`].

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::{ContainerAsync, CopyToContainer, Image, TestcontainersError};

/// The testcontainers crate this module is built against, for [`impl_mock_image!`].
#[doc(hidden)]
pub use testcontainers as reexport;

/// The mock-independent part of a mock's container image.
#[derive(Debug, Clone)]
pub struct ImageCore {
    name: String,
    tag: String,
    ready_line: &'static str,
    config_path: &'static str,
    seed: Option<u64>,
    config: Option<CopyToContainer>,
    ports: [ContainerPort; 1],
}

impl ImageCore {
    /// `name:tag`, listening on TCP `port` inside the container, ready once `ready_line` is on stderr, a
    /// config file (if any) copied to `config_path`.
    pub fn new(
        name: &str,
        tag: &str,
        port: ContainerPort,
        ready_line: &'static str,
        config_path: &'static str,
    ) -> Self {
        Self {
            name: name.to_owned(),
            tag: tag.to_owned(),
            ready_line,
            config_path,
            seed: None,
            config: None,
            ports: [port],
        }
    }

    /// Another image name and tag.
    pub fn set_image(&mut self, name: impl Into<String>, tag: impl Into<String>) {
        self.name = name.into();
        self.tag = tag.into();
    }

    /// The configuration file's text, copied into the container before it starts.
    pub fn set_config_toml(&mut self, toml: String) {
        self.config = Some(CopyToContainer::new(toml.into_bytes(), self.config_path));
    }

    /// `--seed`.
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = Some(seed);
    }

    /// The flags every mock takes: `--listen 0.0.0.0:<port>`, `--config <path>` with a file, `--seed`.
    pub fn args(&self) -> Vec<String> {
        let port = match self.ports[0] {
            ContainerPort::Tcp(p) | ContainerPort::Udp(p) | ContainerPort::Sctp(p) => p,
        };
        let mut args = vec!["--listen".to_owned(), format!("0.0.0.0:{port}")];
        if self.config.is_some() {
            args.extend(["--config".to_owned(), self.config_path.to_owned()]);
        }
        if let Some(seed) = self.seed {
            args.extend(["--seed".to_owned(), seed.to_string()]);
        }
        args
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Ready once the binary wrote its ready line (it does so only when it serves).
    pub fn ready_conditions(&self) -> Vec<WaitFor> {
        vec![WaitFor::message_on_stderr(self.ready_line)]
    }

    pub fn copy_to_sources(&self) -> impl IntoIterator<Item = &CopyToContainer> {
        self.config.iter()
    }

    pub fn expose_ports(&self) -> &[ContainerPort] {
        &self.ports
    }

    /// The port the binary listens on inside the container.
    pub fn port(&self) -> ContainerPort {
        self.ports[0]
    }
}

/// `http://<docker host>:<mapped port>` of `port` of a started container.
pub async fn uri<I: Image>(
    container: &ContainerAsync<I>,
    port: ContainerPort,
) -> Result<String, TestcontainersError> {
    let host = container.get_host().await?;
    let port = container.get_host_port_ipv4(port).await?;
    Ok(format!("http://{host}:{port}"))
}

/// `impl testcontainers::Image for $image` from its `core: ImageCore` field and its `args(&self) ->
/// Vec<String>` method, and the builder methods every mock image has: `with_image(name, tag)`,
/// `with_config(&$config)` (serialised with the config's `to_toml`, whose error is `$error`) and
/// `with_seed(seed)`.
#[macro_export]
macro_rules! impl_mock_image {
    ($image:ty, config: $config:ty, error: $error:ty) => {
        impl $image {
            /// Another image name and tag (e.g. one pushed to your own registry).
            pub fn with_image(mut self, name: impl Into<String>, tag: impl Into<String>) -> Self {
                self.core.set_image(name, tag);
                self
            }

            /// The mock's configuration: serialised to TOML and copied into the container before it
            /// starts (its `server.listen` is overridden by the image's `--listen`).
            pub fn with_config(mut self, config: &$config) -> Result<Self, $error> {
                self.core.set_config_toml(config.to_toml()?);
                Ok(self)
            }

            /// Deterministic ids and keys (`--seed`).
            pub fn with_seed(mut self, seed: u64) -> Self {
                self.core.set_seed(seed);
                self
            }
        }

        impl $crate::testcontainers::reexport::Image for $image {
            fn name(&self) -> &str {
                self.core.name()
            }
            fn tag(&self) -> &str {
                self.core.tag()
            }
            fn ready_conditions(&self) -> Vec<$crate::testcontainers::reexport::core::WaitFor> {
                self.core.ready_conditions()
            }
            fn cmd(&self) -> impl IntoIterator<Item = impl Into<std::borrow::Cow<'_, str>>> {
                self.args()
            }
            fn copy_to_sources(
                &self,
            ) -> impl IntoIterator<Item = &$crate::testcontainers::reexport::CopyToContainer> {
                self.core.copy_to_sources()
            }
            fn expose_ports(&self) -> &[$crate::testcontainers::reexport::core::ContainerPort] {
                self.core.expose_ports()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_flags() {
        let mut core = ImageCore::new("n", "t", ContainerPort::Tcp(8080), "ready", "/c.toml");
        assert_eq!(core.args(), ["--listen", "0.0.0.0:8080"]);
        core.set_config_toml("a = 1\n".into());
        core.set_seed(9);
        assert_eq!(
            core.args(),
            [
                "--listen",
                "0.0.0.0:8080",
                "--config",
                "/c.toml",
                "--seed",
                "9"
            ]
        );
        assert_eq!(core.copy_to_sources().into_iter().count(), 1);
        core.set_image("m", "u");
        assert_eq!((core.name(), core.tag()), ("m", "u"));
    }
}
