//! SIGINT and SIGTERM, the signals a terminal and an orchestrator send to stop a process.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves at the first SIGINT or SIGTERM, with the signal's name.
pub(crate) async fn shutdown() -> &'static str {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the process can still be killed; it just cannot drain.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "interrupt",
        _ = terminate.recv() => "terminated",
    }
}
