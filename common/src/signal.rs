//! Waiting for the signals that stop a Strata process.

use std::future::Future;

/// Resolves on the first SIGINT or SIGTERM, logging which. The handlers are installed when
/// this is called, not when the future is first polled: a signal that arrives while the
/// server is still starting (before it polls its shutdown future) stops it instead of
/// killing the process. Must be called within a tokio runtime. When a signal cannot be
/// listened for (a warning says so), only the other stops the process.
pub fn shutdown() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .inspect_err(|e| {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
        })
        .ok();
    let mut int = signal(SignalKind::interrupt())
        .inspect_err(|e| {
            tracing::warn!(error = %e, "cannot listen for SIGINT; only SIGTERM stops this process");
        })
        .ok();
    async move {
        let term_recv = async {
            match term.as_mut() {
                Some(term) => term.recv().await,
                None => std::future::pending().await,
            }
        };
        let int_recv = async {
            match int.as_mut() {
                Some(int) => int.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = int_recv => tracing::info!("SIGINT received; stopping"),
            _ = term_recv => tracing::info!("SIGTERM received; stopping"),
        }
    }
}
