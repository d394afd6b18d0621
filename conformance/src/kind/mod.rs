//! Driving kind clusters from Rust: typed, time-bounded wrappers for the `kind`, `kubectl` and `docker`
//! command-line tools ([`tools`], [`wrappers`]) and the Kubernetes objects the harness deploys
//! ([`manifests`]).
//!
//! The kind backend itself is [`crate::backend::kind`]; this module never decides what a case does. No
//! Kubernetes client library is used on purpose: kind, kubectl and docker are what users run, their
//! errors are what users see, and a [`tools::Recorder`] can replay a whole bring-up in a test.

pub mod dryrun;
pub mod manifests;
pub mod tools;
pub mod wrappers;
