//! The `imds-conformance` command line (clap derive): `run`, `matrix` (its arguments live in
//! [`crate::matrix::cmd`]), `list`, `explain`, `env …` (its subcommands live in [`crate::env`]),
//! `apiserver`. Owns argument parsing and exit codes; everything else is delegated (runner, catalog,
//! backends, env, apiserver).
//!
//! Exit codes: 0 = every selected MUST case passed; 1 = a MUST case failed; 2 = usage or environment
//! error (bad flags, scenario, missing binary, no root for netns); 130/143 = interrupted by SIGINT/SIGTERM
//! after tearing everything down.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use regex::Regex;

use crate::backend::interceptor::{self, InterceptorSpec};
use crate::case::{Feature, Profile};
use crate::catalog;
use crate::report::ReportTargets;
use crate::runner::{self, BackendChoice, RunError, RunOptions};
use crate::scenario::Scenario;

/// The scenario used when `--scenario` is not given (also embedded so the binary works anywhere).
pub const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/nmi-default.yaml");

/// Conformance harness for IMDS interceptors (aad-pod-identity NMI and compatibles, AKS IMDS restriction):
/// builds a node from network namespaces (or loopback addresses), runs the interceptor under test inside
/// it, and judges it case by case from the outside.
#[derive(Debug, Parser)]
#[command(name = "imds-conformance", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the catalogue against an interceptor and report (exit 0 CONFORMANT; 1 NOT CONFORMANT: a MUST case failed, the profile's floor of features is not claimed, the security floor or every MUST case did not run; 2 error).
    Run(Box<RunArgs>),
    /// Run one scenario and profile against several interceptors side by side and write the case ×
    /// interceptor table (Markdown, self-contained HTML, JSON); `matrix --help` for the column syntax.
    Matrix(Box<crate::matrix::cmd::MatrixArgs>),
    /// List the cases (id, level, features, backends, title) of a profile or of all profiles.
    List {
        /// Only cases of this profile.
        #[arg(long, value_enum)]
        profile: Option<Profile>,
    },
    /// Explain one case: what it checks, how, and where the rule comes from.
    Explain {
        /// Case id, e.g. HDR-001.
        id: String,
    },
    /// Named environments to work in (netns backend, root): `env up`, `list`, `exec`, `logs`, `journal`, `down`.
    Env(crate::env::EnvArgs),
    /// Run the test Kubernetes API server alone (develop an interceptor against it).
    Apiserver {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
        /// Where to write a kubeconfig for it.
        #[arg(long, default_value = "kubeconfig.yaml")]
        kubeconfig_out: PathBuf,
    },
}

/// How to pick and start the interceptor.
#[derive(Debug, Clone, Args)]
pub struct InterceptorArgs {
    /// Interceptor under test: `builtin` (imds-proxy), `aks-rule` (AgentBaker's FORWARD DROP rule), `none`,
    /// `cmd:TEMPLATE` — a shell command started inside each node with placeholders {node}, {node_ip},
    /// {kubeconfig}, {imds_ip}, {imds_port}, {listen_port}, {probe_port}, {metrics_port}. It must listen
    /// on 127.0.0.1:{listen_port} and, on netns, install its own redirect rules — or, on kind only,
    /// `manifest:FILE`: a multi-document YAML with exactly one DaemonSet (the interceptor), applied as
    /// given plus a per-node gate label in its nodeSelector.
    /// Default: the scenario's `interceptor.kind`, else `builtin`.
    #[arg(long, env = "IMDS_CONFORMANCE_INTERCEPTOR")]
    pub interceptor: Option<String>,
    /// Path to the imds-proxy binary (default: next to this executable, then PATH).
    #[arg(long, env = "IMDS_PROXY_BIN")]
    pub proxy_bin: Option<PathBuf>,
    /// Extra flag for the built-in interceptor, appended after the scenario's flags (repeatable),
    /// e.g. `--proxy-flag=--metadata-header-required=false`. A flag the scenario sets too is overridden:
    /// imds-proxy, like NMI, takes a repeated flag's last value.
    #[arg(long = "proxy-flag", allow_hyphen_values = true)]
    pub proxy_flags: Vec<String>,
}

/// Options of `--backend kind`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "kind backend (--backend kind)")]
pub struct KindArgs {
    /// kind cluster to use: reused when it exists, else created (and deleted after the run unless
    /// --keep-cluster). Default: a new cluster named per run (imdsc-<pid>-<random>).
    #[arg(long)]
    pub kind_cluster: Option<String>,
    /// Keep the cluster and everything deployed in it after the run (for debugging).
    #[arg(long)]
    pub keep_cluster: bool,
    /// kind configuration for a new cluster (multi-node: the scenario's nodes map to its workers).
    #[arg(long, default_value = "ci/kind/two-workers.yaml")]
    pub kind_config: PathBuf,
    /// Node image for a new cluster, e.g. kindest/node:v1.33.1 (default: kind's own).
    #[arg(long)]
    pub kind_node_image: Option<String>,
    /// Directory with the image archives of ci/build-images.sh (`kind load image-archive`); default:
    /// target/images when it holds them, else `kind load docker-image` from the local engine.
    #[arg(long)]
    pub kind_images: Option<PathBuf>,
    /// Tag of the imds-conformance/{mock-imds,imds-proxy,imds-probe} images.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub kind_image_tag: String,
    /// The interceptor's node-local listen port (127.0.0.1:<port> on every node).
    #[arg(long, default_value_t = crate::kind::DEFAULT_LISTEN_PORT)]
    pub kind_listen_port: u16,
    /// Print the kind / kubectl / docker commands the set-up and teardown would run, without running
    /// anything (answers are simulated), and exit.
    #[arg(long)]
    pub kind_dry_run: bool,
}

impl KindArgs {
    /// The backend's options.
    pub fn options(&self) -> crate::kind::KindOptions {
        let cluster = self
            .kind_cluster
            .clone()
            .unwrap_or_else(crate::netns::new_run_prefix);
        let mut o = crate::kind::KindOptions::new(cluster);
        o.keep_cluster = self.keep_cluster;
        o.config = self.kind_config.clone();
        o.node_image = self.kind_node_image.clone();
        o.images = crate::kind::manifests::Images::tagged(&self.kind_image_tag);
        o.listen_port = self.kind_listen_port;
        o.archives = self.kind_images.clone().or_else(|| {
            let dir = PathBuf::from("target/images");
            o.images
                .archives()
                .iter()
                .all(|f| dir.join(f).is_file())
                .then_some(dir)
        });
        o
    }
}

/// `run` arguments.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Profile to run (default: the scenario's).
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// Backend: auto = netns when root and supported, else loopback (listing what it skips).
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    #[command(flatten)]
    pub interceptor: InterceptorArgs,
    /// Features the interceptor claims, comma-separated (replaces the scenario's list); unclaimed
    /// features make their cases UNCLAIMED instead of FAIL. `none` claims nothing.
    #[arg(long)]
    pub features: Option<String>,
    /// Scenario file (default: the built-in nmi-default).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Only cases whose "ID title" matches this regex.
    #[arg(long)]
    pub focus: Option<String>,
    /// Skip cases whose "ID title" matches this regex.
    #[arg(long)]
    pub skip: Option<String>,
    /// Reports to write: junit=PATH,json=PATH,md=PATH (repeatable; md appends, e.g. to $GITHUB_STEP_SUMMARY).
    #[arg(long)]
    pub report: Vec<String>,
    /// Base URL of a real IMDS for the `imds` profile (e.g. http://169.254.169.254 on an Azure VM); default:
    /// each run's own mock-imds.
    #[arg(long)]
    pub imds_url: Option<String>,
    /// The SDK area's clients: a directory made by `scripts/sdk-clients.sh` (`just sdk-clients`): Python
    /// azure-identity in DIR/python, Node @azure/identity in DIR/node; the Rust client imds-sdk-client is
    /// found next to this executable. Without it the SDK cases SKIP.
    #[arg(long, env = "IMDS_CONFORMANCE_SDK_CLIENTS")]
    pub sdk_clients: Option<PathBuf>,
    /// Cap on each SDK client run, in seconds: a client still waiting then is killed and reported as
    /// "no answer within N s".
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=150))]
    pub sdk_timeout: u64,
    /// No live per-case lines (reports only).
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub kind: KindArgs,
}

/// Parses `--interceptor`.
pub fn interceptor_spec(
    args: &InterceptorArgs,
    scenario: &Scenario,
    backend: BackendChoice,
) -> Result<InterceptorSpec, String> {
    let s = args
        .interceptor
        .as_deref()
        .or(scenario.interceptor.kind.as_deref())
        .unwrap_or("builtin")
        .trim();
    if let Some(t) = s.strip_prefix("cmd:") {
        if t.trim().is_empty() {
            return Err("--interceptor cmd: needs a command template".into());
        }
        return Ok(InterceptorSpec::Cmd {
            template: t.to_string(),
        });
    }
    if let Some(p) = s.strip_prefix("manifest:") {
        if backend != BackendChoice::Kind {
            return Err(
                "--interceptor manifest:FILE deploys a DaemonSet: it needs --backend kind".into(),
            );
        }
        let path = PathBuf::from(p.trim());
        if !path.is_file() {
            return Err(format!(
                "--interceptor manifest: {} is not a file",
                path.display()
            ));
        }
        return Ok(InterceptorSpec::Manifest { path });
    }
    match s {
        // On kind the built-in interceptor runs from its image; the local binary is not needed.
        "builtin" if backend == BackendChoice::Kind => {
            let mut flags = scenario.interceptor.flags.clone();
            flags.extend(args.proxy_flags.iter().cloned());
            let bin = interceptor::find_proxy_bin(args.proxy_bin.as_deref())
                .unwrap_or_else(|| PathBuf::from("imds-proxy"));
            Ok(InterceptorSpec::Builtin { bin, flags })
        }
        "builtin" => {
            let bin = interceptor::find_proxy_bin(args.proxy_bin.as_deref()).ok_or_else(|| {
                "imds-proxy binary not found (build it with `cargo build -p imds-proxy`, or pass --proxy-bin)".to_string()
            })?;
            let mut flags = scenario.interceptor.flags.clone();
            flags.extend(args.proxy_flags.iter().cloned());
            Ok(InterceptorSpec::Builtin { bin, flags })
        }
        "aks-rule" => Ok(InterceptorSpec::AksRule),
        "none" => Ok(InterceptorSpec::None),
        other => Err(format!(
            "unknown --interceptor {other:?}: builtin, aks-rule, none, cmd:TEMPLATE or manifest:FILE"
        )),
    }
}

/// Parses `--features`.
pub fn parse_features(s: &str) -> Result<BTreeSet<Feature>, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(BTreeSet::new());
    }
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// Loads `--scenario` or the built-in default.
pub fn load_scenario(path: Option<&Path>) -> Result<Scenario, String> {
    match path {
        Some(p) => Scenario::load(p).map_err(|e| e.to_string()),
        None => {
            Scenario::parse(DEFAULT_SCENARIO, "built-in nmi-default").map_err(|e| e.to_string())
        }
    }
}

fn usage(msg: impl std::fmt::Display) -> i32 {
    eprintln!("imds-conformance: {msg}");
    2
}

/// Runs the CLI and returns the process exit code.
pub async fn main_with(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => run_cmd(*args).await,
        Command::Matrix(args) => crate::matrix::cmd::matrix_cmd(*args).await,
        Command::List { profile } => {
            // Written through a locked handle so a closed pipe (`list | head`) ends the listing quietly
            // instead of panicking in println!.
            let mut out = std::io::stdout().lock();
            for c in catalog::all()
                .into_iter()
                .filter(|c| profile.is_none_or(|p| c.profiles.contains(&p)))
            {
                let feats: Vec<&str> = c.features.iter().map(|f| f.name()).collect();
                let backends = if c.backends == crate::case::ANY_BACKEND {
                    "any".to_string()
                } else {
                    let b: Vec<String> = c.backends.iter().map(|b| b.to_string()).collect();
                    b.join(",")
                };
                let profiles: Vec<String> = c.profiles.iter().map(|p| p.to_string()).collect();
                let line = writeln!(
                    out,
                    "{:<9} {:<6} {:<10} {:<28} {:<32} {}",
                    c.id,
                    c.level.to_string(),
                    backends,
                    profiles.join(","),
                    feats.join(","),
                    c.title
                );
                if line.is_err() {
                    break;
                }
            }
            0
        }
        Command::Explain { id } => match catalog::find(&id) {
            Some(c) => {
                let feats: Vec<&str> = c.features.iter().map(|f| f.name()).collect();
                let unless: Vec<&str> = c.unless.iter().map(|f| f.name()).collect();
                let backends: Vec<String> = c.backends.iter().map(|b| b.to_string()).collect();
                let profiles: Vec<String> = c.profiles.iter().map(|p| p.to_string()).collect();
                println!("{} — {}\n", c.id, c.title);
                println!("level:     {}", c.level);
                println!(
                    "features:  {}",
                    if feats.is_empty() {
                        "-".into()
                    } else {
                        feats.join(", ")
                    }
                );
                if !unless.is_empty() {
                    println!("only when NOT claimed: {}", unless.join(", "));
                }
                println!("backends:  {}", backends.join(", "));
                println!("profiles:  {}", profiles.join(", "));
                println!("spec:      {}\n", c.spec);
                println!("{}", c.explain);
                0
            }
            None => usage(format!("no case {id:?}; see `imds-conformance list`")),
        },
        Command::Apiserver {
            listen,
            kubeconfig_out,
        } => {
            let shutdown = async {
                runner::shutdown_signal().await;
            };
            match kube_test_apiserver::run_standalone(listen, &kubeconfig_out, shutdown).await {
                Ok(()) => 0,
                Err(e) => usage(format!("apiserver: {e}")),
            }
        }
        Command::Env(args) => crate::env::main(args).await,
    }
}

async fn run_cmd(args: RunArgs) -> i32 {
    let scenario = match load_scenario(args.scenario.as_deref()) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let features = match &args.features {
        Some(f) => match parse_features(f) {
            Ok(f) => f,
            Err(e) => return usage(e),
        },
        None => scenario.interceptor.features.clone(),
    };
    let interceptor = match interceptor_spec(&args.interceptor, &scenario, args.backend) {
        Ok(i) => i,
        Err(e) => return usage(e),
    };
    if args.backend == BackendChoice::Kind && matches!(interceptor, InterceptorSpec::Cmd { .. }) {
        return usage(
            "--interceptor cmd:TEMPLATE starts a process inside a node; on kind give the interceptor's \
             manifest instead: --interceptor manifest:FILE",
        );
    }
    if args.backend == BackendChoice::Kind
        && args.kind.kind_cluster.is_none()
        && !args.kind.kind_config.is_file()
    {
        return usage(format!(
            "--kind-config {}: no such file (a new cluster needs a kind config; run from the repository \
             root, or pass --kind-config or --kind-cluster NAME of an existing cluster)",
            args.kind.kind_config.display()
        ));
    }
    if args.kind.kind_dry_run {
        if args.backend != BackendChoice::Kind {
            return usage("--kind-dry-run needs --backend kind");
        }
        return match crate::kind::dryrun::transcript(&scenario, interceptor, args.kind.options()) {
            Ok(t) => {
                // A closed pipe (`--kind-dry-run | head`) just ends the output.
                let _ = writeln!(std::io::stdout().lock(), "{t}");
                0
            }
            Err(e) => usage(e),
        };
    }
    let (focus, skip) = match focus_and_skip(&args.focus, &args.skip) {
        Ok(both) => both,
        Err(e) => return usage(e),
    };
    let mut targets = ReportTargets::default();
    for r in &args.report {
        match r.parse::<ReportTargets>() {
            Ok(t) => targets.merge(t),
            Err(e) => return usage(format!("--report: {e}")),
        }
    }
    let opts = RunOptions {
        profile: args.profile.unwrap_or(scenario.profile),
        scenario,
        backend: args.backend,
        interceptor,
        features,
        focus,
        skip,
        imds_url: args.imds_url.clone(),
        sdk: args
            .sdk_clients
            .clone()
            .map(|dir| catalog::sdk::SdkClients {
                dir: std::path::absolute(&dir).unwrap_or(dir),
                timeout: std::time::Duration::from_secs(args.sdk_timeout),
            }),
        live: !args.quiet,
        kind: (args.backend == BackendChoice::Kind).then(|| args.kind.options()),
    };
    match runner::run(opts).await {
        Ok(report) => {
            if let Err(e) = targets.write(&report) {
                return usage(format!("writing reports: {e}"));
            }
            report.exit_code()
        }
        Err(RunError::Interrupted(sig)) => {
            eprintln!("imds-conformance: interrupted by {sig}; environment torn down");
            if sig == "SIGTERM" { 143 } else { 130 }
        }
        Err(e) => usage(e),
    }
}

/// `--focus` and `--skip` compiled; the error names the flag.
pub(crate) fn focus_and_skip(
    focus: &Option<String>,
    skip: &Option<String>,
) -> Result<(Option<Regex>, Option<Regex>), String> {
    let re = |s: &Option<String>, flag: &str| -> Result<Option<Regex>, String> {
        s.as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| format!("{flag}: {e}"))
    };
    Ok((re(focus, "--focus")?, re(skip, "--skip")?))
}
