//! The mock as a container for [testcontainers](https://docs.rs/testcontainers): [`MockImdsImage`] describes
//! the `imds-conformance/mock-imds` image (built locally by `ci/build-images.sh`; it is never pulled from a
//! registry by this project), how to configure it, and when it is ready (the `mock-imds listening on` log
//! line). [`MockImdsContainer::uri`] gives the base URI through the mapped port.
//!
//! Only compiled with the `testcontainers` cargo feature. This module owns nothing of the server itself: it
//! drives the `mock-imds` binary inside the container through its CLI flags and a TOML file (the same
//! [`Config`] type as the library), and must not reach into server state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mock_imds::testcontainers::{MockImdsContainer, MockImdsImage};
//! use testcontainers::runners::AsyncRunner;
//!
//! let mock = MockImdsImage::default().start().await?; // removed when `mock` is dropped
//! let uri = mock.uri().await?;                          // "http://127.0.0.1:<mapped port>"
//! let url = format!("{uri}/metadata/instance?api-version=2021-02-01");
//! let body = reqwest::Client::new().get(url).header("Metadata", "true").send().await?.text().await?;
//! # let _ = body;
//! # Ok(())
//! # }
//! ```
//!
//! The same builder as the library, as far as the container allows:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mock_imds::{config::Config, testcontainers::MockImdsImage};
//! use testcontainers::runners::AsyncRunner;
//!
//! let config = Config::generate(Some(7));
//! let mock = MockImdsImage::default()
//!     .with_config(&config)?   // written into the container as TOML
//!     .with_seed(7)            // same seed: same signing keys as an in-process mock seeded with 7
//!     .with_rate_limits(false)
//!     .start()
//!     .await?;
//! # let _ = mock;
//! # Ok(())
//! # }
//! ```

use ::testcontainers::core::ContainerPort;
use ::testcontainers::{ContainerAsync, TestcontainersError};
use mock_support::testcontainers::ImageCore;

use crate::config::{Config, ConfigError};

/// The image name `ci/build-images.sh` builds.
pub const IMAGE_NAME: &str = "imds-conformance/mock-imds";
/// The tag `ci/build-images.sh` gives it by default: this crate's (the workspace's) version.
pub const IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");
/// The port the mock listens on inside the container (`--listen 0.0.0.0:8080`).
pub const CONTAINER_PORT: ContainerPort = ContainerPort::Tcp(8080);
/// Where [`MockImdsImage::with_config`] puts the TOML file inside the container.
pub const CONFIG_PATH: &str = "/mock-imds.toml";
/// The line the binary writes to stderr once it serves; readiness waits for it.
pub const READY_LINE: &str = "mock-imds listening on";

/// The mock-imds container image. `MockImdsImage::default()` is the image built from this checkout with the
/// binary's defaults (realistic VM, system-assigned + one user-assigned identity, rate limits on, control
/// API on).
#[derive(Debug, Clone)]
pub struct MockImdsImage {
    core: ImageCore,
    rate_limits: bool,
    control: bool,
}

impl Default for MockImdsImage {
    fn default() -> Self {
        MockImdsImage {
            core: ImageCore::new(
                IMAGE_NAME,
                IMAGE_TAG,
                CONTAINER_PORT,
                READY_LINE,
                CONFIG_PATH,
            ),
            rate_limits: true,
            control: true,
        }
    }
}

impl MockImdsImage {
    /// The real service's rate limits (default on); `false` passes `--no-rate-limit`.
    pub fn with_rate_limits(mut self, enabled: bool) -> Self {
        self.rate_limits = enabled;
        self
    }

    /// The `/_mock/` control API (default on); `false` passes `--no-control`.
    pub fn with_control(mut self, enabled: bool) -> Self {
        self.control = enabled;
        self
    }

    /// The arguments the binary gets (the image's entrypoint is `/mock-imds`).
    pub fn args(&self) -> Vec<String> {
        let mut args = self.core.args();
        if !self.rate_limits {
            args.push("--no-rate-limit".to_owned());
        }
        if !self.control {
            args.push("--no-control".to_owned());
        }
        args
    }
}

mock_support::impl_mock_image!(MockImdsImage, config: Config, error: ConfigError);

/// What a started mock container offers beyond testcontainers' own API.
pub trait MockImdsContainer {
    /// `http://<docker host>:<mapped port>`: the base URI to give the client under test.
    fn uri(&self) -> impl Future<Output = Result<String, TestcontainersError>> + Send;
}

impl MockImdsContainer for ContainerAsync<MockImdsImage> {
    async fn uri(&self) -> Result<String, TestcontainersError> {
        mock_support::testcontainers::uri(self, CONTAINER_PORT).await
    }
}

#[cfg(test)]
mod tests {
    use ::testcontainers::Image as _;

    use super::*;

    #[test]
    fn default_args_listen_on_all_container_interfaces() {
        assert_eq!(
            MockImdsImage::default().args(),
            ["--listen", "0.0.0.0:8080"]
        );
    }

    #[test]
    fn builder_maps_to_cli_flags() -> Result<(), ConfigError> {
        let image = MockImdsImage::default()
            .with_config(&Config::generate(Some(1)))?
            .with_seed(9)
            .with_rate_limits(false)
            .with_control(false);
        assert_eq!(
            image.args(),
            [
                "--listen",
                "0.0.0.0:8080",
                "--config",
                CONFIG_PATH,
                "--seed",
                "9",
                "--no-rate-limit",
                "--no-control"
            ]
        );
        assert_eq!(image.copy_to_sources().into_iter().count(), 1);
        assert_eq!(image.name(), IMAGE_NAME);
        assert_eq!(image.tag(), env!("CARGO_PKG_VERSION"));
        Ok(())
    }
}
