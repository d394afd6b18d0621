//! The `imds-controller` binary: parses MIC's flags, sets up logging, runs the controller until SIGINT or
//! SIGTERM. Exit codes: 0 clean shutdown, 1 runtime error, 2 usage or configuration error.

use std::process::ExitCode;

use clap::Parser;
use imds_controller::Controller;
use imds_controller::cli::{Args, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if args.enable_profile {
        tracing::warn!("--enableProfile has no effect in imds-controller (no Go profiler)");
    }
    let controller = match Controller::start(args.settings()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("imds-controller: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "imds-controller running (probe {}, metrics {})",
        controller.probe_addr(),
        controller.metrics_addr()
    );
    tokio::select! {
        signal = shutdown_signal() => {
            if let Err(e) = signal {
                eprintln!("imds-controller: waiting for signals: {e}");
                controller.shutdown().await;
                return ExitCode::from(1);
            }
        }
        reason = controller.failed() => {
            eprintln!("imds-controller: {reason}");
            controller.shutdown().await;
            return ExitCode::from(1);
        }
    }
    tracing::info!("shutting down");
    controller.shutdown().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
