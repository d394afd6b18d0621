//! mock-arm as a container for [testcontainers](https://docs.rs/testcontainers): [`MockArmImage`] describes the
//! `imds-conformance/mock-arm` image (built locally by `ci/build-images.sh`; never pulled by this project),
//! how to configure it, and when it is ready (the `mock-arm listening on` log line).
//! [`MockArmContainer::uri`] gives the base URI through the mapped port.
//!
//! Only compiled with the `testcontainers` cargo feature. It drives the `mock-arm` binary inside the
//! container through its CLI flags and a TOML file (the same [`Config`] type as the library) and must not
//! reach into server state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mock_arm::{config::Config, testcontainers::{MockArmContainer, MockArmImage}};
//! use testcontainers::runners::AsyncRunner;
//!
//! let arm = MockArmImage::default()
//!     .with_config(&Config::generate(Some(7)))? // written into the container as TOML
//!     .with_auth(false)
//!     .start()
//!     .await?;                                  // removed when `arm` is dropped
//! let uri = arm.uri().await?;                   // "http://127.0.0.1:<mapped port>"
//! # let _ = uri;
//! # Ok(())
//! # }
//! ```

use ::testcontainers::core::ContainerPort;
use ::testcontainers::{ContainerAsync, TestcontainersError};
use mock_support::testcontainers::ImageCore;

use crate::config::{Config, ConfigError};

/// The image name `ci/build-images.sh` builds.
pub const IMAGE_NAME: &str = "imds-conformance/mock-arm";
/// The tag `ci/build-images.sh` gives it by default: the workspace's version.
pub const IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");
/// The port mock-arm listens on inside the container.
pub const CONTAINER_PORT: ContainerPort = ContainerPort::Tcp(8090);
/// Where [`MockArmImage::with_config`] puts the TOML file inside the container.
pub const CONFIG_PATH: &str = "/mock-arm.toml";
/// The line the binary writes to stderr once it serves.
pub const READY_LINE: &str = "mock-arm listening on";

/// The mock-arm container image (defaults: generated estate, auth and throttling on, plain http).
#[derive(Debug, Clone)]
pub struct MockArmImage {
    core: ImageCore,
    auth: bool,
    throttling: bool,
}

impl Default for MockArmImage {
    fn default() -> Self {
        MockArmImage {
            core: ImageCore::new(
                IMAGE_NAME,
                IMAGE_TAG,
                CONTAINER_PORT,
                READY_LINE,
                CONFIG_PATH,
            ),
            auth: true,
            throttling: true,
        }
    }
}

impl MockArmImage {
    /// Bearer-token authentication (default on); `false` passes `--no-auth`.
    pub fn with_auth(mut self, on: bool) -> Self {
        self.auth = on;
        self
    }

    /// Throttling (default on); `false` passes `--no-throttling`.
    pub fn with_throttling(mut self, on: bool) -> Self {
        self.throttling = on;
        self
    }

    /// The arguments the binary gets (the entrypoint is `/mock-arm`).
    pub fn args(&self) -> Vec<String> {
        let mut args = self.core.args();
        if !self.auth {
            args.push("--no-auth".to_owned());
        }
        if !self.throttling {
            args.push("--no-throttling".to_owned());
        }
        args
    }
}

mock_support::impl_mock_image!(MockArmImage, config: Config, error: ConfigError);

/// What a started mock-arm container offers beyond testcontainers' own API.
pub trait MockArmContainer {
    /// `http://<docker host>:<mapped port>`.
    fn uri(&self) -> impl Future<Output = Result<String, TestcontainersError>> + Send;
}

impl MockArmContainer for ContainerAsync<MockArmImage> {
    async fn uri(&self) -> Result<String, TestcontainersError> {
        mock_support::testcontainers::uri(self, CONTAINER_PORT).await
    }
}

#[cfg(test)]
mod tests {
    use ::testcontainers::Image as _;

    use super::*;

    #[test]
    fn builder_maps_to_cli_flags() -> Result<(), ConfigError> {
        let image = MockArmImage::default()
            .with_config(&Config::generate(Some(1)))?
            .with_seed(9)
            .with_auth(false)
            .with_throttling(false);
        assert_eq!(
            image.args(),
            [
                "--listen",
                "0.0.0.0:8090",
                "--config",
                CONFIG_PATH,
                "--seed",
                "9",
                "--no-auth",
                "--no-throttling"
            ]
        );
        assert_eq!(image.copy_to_sources().into_iter().count(), 1);
        assert_eq!(MockArmImage::default().args(), ["--listen", "0.0.0.0:8090"]);
        Ok(())
    }
}
