//! `mock-imds` binary: parses the command line, resolves the configuration, serves until SIGINT/SIGTERM.
//! All behaviour lives in the library; this file is the process edge (exit codes, signals, logging).

use std::process::ExitCode;

use clap::Parser;
use mock_imds::MockImds;
use mock_imds::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with status 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-imds: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.resolve()?;
    if cli.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    let listen = config.server.listen;
    let mock = MockImds::builder()
        .config(config)
        .listen(listen)
        .start()
        .await?;
    // Key generation started with the server; announce readiness only once it is done, so that no client
    // started after this line waits seconds for its first token, attested document or discovery document.
    mock.signing_keys()
        .await
        .map_err(|e| anyhow::anyhow!("generating the signing keys: {e}"))?;
    eprintln!("mock-imds listening on {}", mock.uri());
    wait_for_signal().await?;
    mock.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
