//! `mock-arm` binary: parses the command line, resolves the configuration, serves until SIGINT/SIGTERM. All
//! behaviour lives in the library; this file is the process edge (exit codes, signals, logging).

use std::process::ExitCode;

use clap::Parser;
use mock_arm::MockArm;
use mock_arm::cli::Cli;

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
            eprintln!("mock-arm: {e:#}");
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
    let stop = stop_signal()?;
    let mock = MockArm::builder()
        .config(config)
        .listen(listen)
        .start()
        .await?;
    if let (Some(path), Some(pem)) = (&cli.ca_out, mock.ca_pem()) {
        std::fs::write(path, pem)
            .map_err(|e| anyhow::anyhow!("writing the CA to {}: {e}", path.display()))?;
    }
    eprintln!("mock-arm listening on {}", mock.uri());
    stop.await;
    mock.shutdown().await;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are installed when this is called.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
