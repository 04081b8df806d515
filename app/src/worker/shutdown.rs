//! The shutdown signal: SIGINT or SIGTERM, whichever comes first.

use std::future::Future;

/// Listens for SIGINT (Ctrl-C) and SIGTERM from now on, and returns a
/// future that resolves on the first of them.
///
/// The handlers are installed by this call, not when the future is first
/// polled: a worker polls it only once it is serving, and a SIGTERM that
/// came during start-up would otherwise kill the process outright (exit by
/// signal, nothing torn down).
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |listener: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
                match listener {
                    Ok(mut stream) => {
                        stream.recv().await;
                    }
                    Err(err) => {
                        tracing::warn!(%err, signal = name, "cannot listen for the signal");
                        std::future::pending::<()>().await;
                    }
                }
                name
            };
            let name = tokio::select! {
                name = wait(interrupt, "SIGINT") => name,
                name = wait(terminate, "SIGTERM") => name,
            };
            tracing::info!(signal = name, "shutdown requested");
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!(signal = "SIGINT", "shutdown requested");
        }
    }
}
