//! The `imds-proxy` binary: parse flags (NMI's, see `imds_proxy::config`), set up logging, run the kubenet
//! guard, start the proxy and stop it cleanly on SIGTERM/SIGINT (removing the interception rules).
//!
//! Exit codes: 0 clean shutdown, 1 runtime failure (iptables, Kubernetes client, rule removal), 2 usage or
//! environment error (unknown flag, invalid value, kubenet guard).

use std::process::ExitCode;

use clap::Parser;
use imds_proxy::config::{LogFormat, Settings, kubenet_guard};
use imds_proxy::{Proxy, ProxyError};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

fn init_logging(settings: &Settings) {
    let level = match settings.verbosity {
        0..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(settings: Settings) -> Result<(), ProxyError> {
    let proxy = Proxy::start(settings).await?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| ProxyError::Stopped(format!("SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| ProxyError::Stopped(format!("SIGINT handler: {e}")))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
        e = proxy.failed() => {
            // NMI exits when a reconcile fails; still try to leave no rules behind.
            let _ = proxy.shutdown().await;
            return Err(ProxyError::Stopped(e));
        }
    }
    proxy.shutdown().await
}

fn main() -> ExitCode {
    let mut settings = match Settings::try_parse() {
        Ok(s) => s,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(u8::try_from(code).unwrap_or(2));
        }
    };
    settings.apply_env(|k| std::env::var(k).ok());
    if let Err(msg) = settings.validate() {
        eprintln!("imds-proxy: {msg}");
        return ExitCode::from(2);
    }
    init_logging(&settings);
    if let Err(msg) = kubenet_guard(&settings) {
        tracing::error!("{msg}");
        return ExitCode::from(2);
    }
    if settings.enable_profile {
        tracing::warn!(
            "--enableProfile is accepted for NMI compatibility; imds-proxy serves no pprof endpoint"
        );
    }
    if settings.node.is_empty() {
        tracing::warn!(
            "--node is empty: no pod will match spec.nodeName= and every token request will be refused"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("imds-proxy: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "imds-proxy failed");
            ExitCode::from(if matches!(e, ProxyError::Settings(_)) {
                2
            } else {
                1
            })
        }
    }
}
