//! imds-conformance: a conformance harness for IMDS interceptors (aad-pod-identity NMI and compatibles,
//! the AKS IMDS restriction) and for IMDS itself.
//!
//! It builds a node — network namespaces, veths, real iptables and conntrack (`netns` backend, root) or
//! distinct 127.0.0.0/8 source addresses (`loopback`, any user) — with one mock-imds per VM and a test
//! Kubernetes API server, starts the interceptor under test inside it, and judges it case by case from the
//! outside: what pods get back, what each VM's IMDS journal saw, what the API server sent to whom, what
//! the kernel's tables hold.
//!
//! Map of the crate (no import cycles: `case`, `http` and `process` are leaves; the backends,
//! `ctx` and the catalogue build on them in that order):
//! - [`case`] — the vocabulary: levels, features, profiles, backend kinds, outcomes (a leaf);
//! - [`process`] — the one process runner (timeouts, kill, stderr in errors, a recorder for dry runs);
//! - [`backend`] — the environment trait and its loopback / netns implementations (kind: [`kind`]);
//! - [`ctx`] — what a case body gets (the case-author API);
//! - [`catalog`] — what a case is ([`catalog::Case`], `declare_case!`) and the cases, one file per area;
//! - [`scenario`], [`cluster`], [`world`] — scenario files, the Kubernetes objects they imply, and the
//!   nodes and pods a backend made of them;
//! - [`runner`] — selection and the run lifecycle; [`report`] — terminal, JSON, JUnit, Markdown, and the
//!   matrix's Markdown / HTML / JSON; [`matrix`] — one scenario against several interceptors, side by side;
//! - [`http`] — the raw pod-side HTTP client; [`cli`] — the command line; [`env`] — named environments
//!   a person works in (`env up|list|exec|logs|journal|down`);
//! - [`netns`] — namespaces, veths, cleanup (the test Kubernetes API server is the crate
//!   `kube-test-apiserver`);
//! - [`kind`] — the kind backend, all of it: facade, bring-up steps, interceptor control, API access,
//!   typed kind / kubectl / docker wrappers, manifests, dry run; [`probe`] — the protocol of the probe
//!   that runs inside kind test pods (crate and binary `imds-probe`).

pub mod backend;
pub mod case;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod ctx;
pub mod env;
pub mod http;
pub mod kind;
pub mod matrix;
pub mod netns;
pub mod process;
/// The probe's protocol (crate `imds-probe`), re-exported for the relay and the kind backend.
pub use imds_probe as probe;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod world;
