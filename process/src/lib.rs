//! What every long-running mube binary does the same way: structured logs
//! (filtered by `RUST_LOG`, default `info`), one-line configuration errors
//! with exit code 2, a tokio runtime, and SIGINT/SIGTERM as the shutdown
//! signal.

pub mod metrics;
#[cfg(feature = "upgrade")]
pub mod upgrade;

use std::future::Future;
use std::process::ExitCode;

/// Runs a binary: loads its configuration with `load` (an error is printed
/// as `name: message` with exit code 2), then drives `run` to completion on
/// a runtime with `worker_threads` threads (all cores when `None`).
pub fn main<C, F>(
    name: &str,
    worker_threads: Option<usize>,
    load: impl FnOnce() -> Result<C, String>,
    run: impl FnOnce(C) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), String>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Waits for SIGINT/SIGTERM, then cancels `shutdown` and gives `tasks` up to
/// `timeout` to finish. Returns false if they did not finish in time.
pub async fn stop_on_signal(
    shutdown: &tokio_util::sync::CancellationToken,
    timeout: std::time::Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> bool {
    shutdown_signal().await;
    tracing::info!(?timeout, "shutting down");
    shutdown.cancel();
    let finished = tokio::time::timeout(timeout, async {
        for task in tasks {
            let _ = task.await;
        }
    })
    .await
    .is_ok();
    if !finished {
        tracing::warn!("shutdown timeout reached with work still in flight");
    }
    finished
}
