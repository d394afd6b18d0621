//! `mock-arm` binary: parses the command line, resolves the configuration, serves until SIGINT/SIGTERM. All
//! behaviour lives in the library; this file is the process edge (exit codes, signals, logging).

use std::process::ExitCode;

use clap::Parser;
use mock_arm::MockArm;
use mock_arm::cli::Cli;
use mock_support::process::{self, stop_signal};

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with status 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    process::init_logging();
    process::exit_code("mock-arm", run(cli).await)
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
