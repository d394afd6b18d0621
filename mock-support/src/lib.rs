//! Scaffolding shared by the two emulators of this workspace, mock-imds and mock-arm, so that each keeps
//! only what is its own (the emulated service). Nothing here knows either service:
//!
//! - [`listen`]: the listener a mock serves on, from a pre-bound socket or an address (default
//!   `127.0.0.1:0`), and the error naming what failed.
//! - [`serving`]: the lifetime of a running mock's tasks: a shutdown signal for its servers, graceful
//!   [`serving::Serving::shutdown`], and abort on drop.
//! - [`process`]: the binaries' edge: logging to stderr (`RUST_LOG`, default `warn`), the first SIGINT or
//!   SIGTERM, and exit code 2 with the error chain.
//! - [`sync`]: `lock`, a mutex lock that ignores poisoning.
//! - [`layering`]: TOML documents layered over defaults (tables merge key by key, arrays and values replace).
//! - `clients` (cargo feature `test-clients`, for dev-dependencies): real client programs in tests (bounded
//!   runs, loud `SKIP:` set-up steps, a Python virtualenv with pinned requirements).
//! - `images` (cargo feature `test-clients`): a mock's container image in its tests (`docker`, engine
//!   detection for `SKIP:`, the image under test, container removal checks).
//! - `testcontainers` (cargo feature `testcontainers`): the parts of a mock's container image that do not
//!   depend on the mock.

#[cfg(feature = "test-clients")]
pub mod clients;
#[cfg(feature = "test-clients")]
pub mod images;
pub mod layering;
pub mod listen;
pub mod process;
pub mod serving;
pub mod sync;
#[cfg(feature = "testcontainers")]
pub mod testcontainers;
