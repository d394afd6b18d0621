//! placeholder, replaced by the crate owner
pub mod netfilter;
