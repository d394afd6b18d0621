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
    // Signal handlers first: a SIGTERM while the keys are being generated still stops the mock cleanly.
    let stop = stop_signal()?;
    tokio::pin!(stop);
    let mock = MockImds::builder()
        .config(config)
        .listen(listen)
        .start()
        .await?;
    // Key generation started with the server; announce readiness only once it is done, so that no client
    // started after this line waits seconds for its first token, attested document or discovery document.
    tokio::select! {
        keys = mock.signing_keys() => {
            keys.map_err(|e| anyhow::anyhow!("generating the signing keys: {e}"))?;
            match mock.control_addr() {
                Some(control) => eprintln!(
                    "mock-imds listening on {} (control API on http://{control})",
                    mock.uri()
                ),
                None => eprintln!("mock-imds listening on {}", mock.uri()),
            }
            stop.await;
        }
        () = &mut stop => {}
    }
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
