//! The `imds-conformance` binary: a thin shell over [`imds_conformance::cli`]. Exit codes: 0 all MUST
//! cases pass, 1 a MUST case fails, 2 usage/environment error, 130/143 interrupted (after teardown).

use clap::Parser as _;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMDS_CONFORMANCE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = imds_conformance::cli::Cli::parse();
    let code = imds_conformance::cli::main_with(cli).await;
    std::process::exit(code);
}
