//! `mock-imds` binary: parses the command line, resolves the configuration, serves until SIGINT/SIGTERM.
//! All behaviour lives in the library; this file is the process edge (exit codes, signals, logging).

use std::process::ExitCode;

use clap::Parser;
use mock_imds::MockImds;
use mock_imds::cli::Cli;
use mock_support::process::{self, stop_signal};

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with status 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    process::init_logging();
    process::exit_code("mock-imds", run(cli).await)
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
