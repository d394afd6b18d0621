//! The `imds-proxy` binary: parse flags (NMI's, see `imds_proxy::config`), set up logging, run the kubenet
//! guard, raise RLIMIT_NOFILE, start the proxy and stop it cleanly on SIGTERM/SIGINT: stop accepting, remove
//! the interception rules, drain in-flight requests for up to `--shutdown-grace-sec` (a second signal cuts
//! them at once), and log what was cut.
//!
//! Exit codes: 0 clean shutdown (every in-flight request answered), 1 runtime failure (iptables, Kubernetes
//! client, rule removal), 2 usage or environment error (unknown flag, invalid value, kubenet guard), 3 clean
//! shutdown that had to cut in-flight requests at the end of the grace.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use imds_proxy::config::{LogFormat, Settings, kubenet_guard};
use imds_proxy::{Proxy, ProxyError, ShutdownReport};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

fn init_logging(settings: &Settings) {
    let level = match settings.verbosity {
        0..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colour only on a terminal: a log redirected to a file (a harness, systemd, `2> log`) stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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

/// Exit code of a clean shutdown that cut in-flight requests.
const EXIT_CUT: u8 = 3;

/// How long a proxy whose lifecycle failed drains before it exits (NMI exits at once).
const FAILURE_DRAIN: Duration = Duration::from_secs(5);

async fn run(settings: Settings) -> Result<ShutdownReport, ProxyError> {
    let proxy = Proxy::start(settings).await?;
    let signal_err = |signal| move |source| ProxyError::Signal { signal, source };
    let mut term = signal(SignalKind::terminate()).map_err(signal_err("SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err("SIGINT"))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
        e = proxy.failed() => {
            // NMI exits when a reconcile fails; still try to leave no rules behind.
            let _ = proxy.shutdown_until(tokio::time::sleep(FAILURE_DRAIN)).await;
            return Err(ProxyError::Stopped(e));
        }
    }
    // A second signal during the drain cuts what is still running.
    let again = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: cutting in-flight requests now");
    };
    proxy.shutdown_until(again).await
}

/// The mutation suite's build (cargo feature `mutants`): `--list-mutants`, and the defect this process
/// carries (logged loudly, an unknown name refused). `Some(code)` ends the process.
#[cfg(feature = "mutants")]
fn mutants() -> Option<ExitCode> {
    if std::env::args().nth(1).as_deref() == Some("--list-mutants") {
        print!("{}", imds_proxy::mutant::table());
        return Some(ExitCode::SUCCESS);
    }
    match imds_proxy::mutant::check() {
        Ok(None) => None,
        Ok(Some(name)) => {
            eprintln!("imds-proxy: MUTANT BUILD, deliberate defect `{name}` is on");
            None
        }
        Err(e) => {
            eprintln!("imds-proxy: {e}");
            Some(ExitCode::from(2))
        }
    }
}

#[cfg(not(feature = "mutants"))]
fn mutants() -> Option<ExitCode> {
    None
}

fn main() -> ExitCode {
    if let Some(code) = mutants() {
        return code;
    }
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
    // Connections are file descriptors: take all the kernel allows us (the limits are fitted below it).
    match imds_proxy::listener::raise_nofile_limit() {
        Ok((before, now)) if now > before => {
            tracing::info!(before, now, "raised the RLIMIT_NOFILE soft limit")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the RLIMIT_NOFILE soft limit"),
    }
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
        Ok(report) => {
            tracing::info!(
                in_flight_at_start = report.in_flight_at_start,
                cut_requests = report.cut_requests,
                drained_ms = report.drained_in.as_millis() as u64,
                exit_code = if report.cut_requests > 0 { EXIT_CUT } else { 0 },
                "imds-proxy stopped"
            );
            if report.cut_requests > 0 {
                ExitCode::from(EXIT_CUT)
            } else {
                ExitCode::SUCCESS
            }
        }
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
