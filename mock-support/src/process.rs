//! The edge of a mock's binary: logging to stderr (`RUST_LOG`, default `warn`), the first SIGINT or SIGTERM,
//! and the exit code (0, or 2 with the error chain on stderr, prefixed with the binary's name).

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are installed when this is called, so call it
/// before anything slow.
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
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

/// Exit code 0, or 2 after `<name>: <error>` on stderr (`{:#}`: an `anyhow` error with its causes).
pub fn exit_code<E: Display>(name: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(2)
        }
    }
}
