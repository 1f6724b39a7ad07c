//! SIGINT and SIGTERM, the signals a terminal and an orchestrator send to stop a process.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, caught from the moment this is made: made first thing, so a signal that
/// arrives while the process is still starting drains it rather than killing it outright.
#[derive(Debug)]
pub(crate) struct Signals {
    handlers: Option<(Signal, Signal)>,
}

impl Signals {
    /// Installs the handlers. Must run inside the runtime.
    pub(crate) fn install() -> Self {
        let handlers = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(interrupt), Ok(terminate)) => Some((interrupt, terminate)),
            // Without handlers the process can still be killed; it just cannot drain.
            _ => None,
        };
        Self { handlers }
    }

    /// The next SIGINT or SIGTERM, by name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        let Some((interrupt, terminate)) = &mut self.handlers else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = interrupt.recv() => "interrupt",
            _ = terminate.recv() => "terminated",
        }
    }
}
