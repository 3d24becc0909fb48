//! Process lifecycle: Unix signals mapped to Pingora's shutdown kinds (with the SIGTERM
//! drain delay first), and the early exit once no request is in flight after shutdown.

use crate::state::State;
use async_trait::async_trait;
use pingora_core::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;

/// Once Pingora stops accepting (SIGTERM after the drain delay, or SIGQUIT after the
/// hand-over), exit as soon as no request is in flight instead of sleeping the whole
/// `shutdown_timeout_secs`; Pingora still enforces that limit for slow requests. Runs as
/// a background service, so it also works after `--daemon` forks.
pub struct IdleExit {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    state: Arc<State>,
    /// Removed before exiting (when it still names this process).
    pid_file: String,
}

impl IdleExit {
    pub fn new(
        phases: broadcast::Receiver<ExecutionPhase>,
        state: Arc<State>,
        pid_file: String,
    ) -> IdleExit {
        IdleExit {
            phases: Mutex::new(Some(phases)),
            state,
            pid_file,
        }
    }
}

#[async_trait]
impl BackgroundService for IdleExit {
    // The shutdown watch is ignored on purpose: this task must outlive the broadcast.
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        loop {
            match phases.recv().await {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        // Idle keep-alive connections stay open to the end of the drain window.
        if let Some(end) = self.state.drain_window_end() {
            tokio::time::sleep_until(end.into()).await;
        }
        // Let connections that were mid-request register before counting.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut idle_polls = 0;
        while idle_polls < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            idle_polls = if self.state.in_flight() == 0 {
                idle_polls + 1
            } else {
                0
            };
        }
        log::info!("no request in flight: exiting");
        remove_pid_file(&self.pid_file);
        std::process::exit(0);
    }
}

/// Maps Unix signals to Pingora's shutdown kinds, with the SIGTERM drain delay first
/// (`server.drain_delay_secs` as the current table has it).
pub struct Signals {
    pub state: Arc<State>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => {
                // The new process gets the listeners; connections kept alive here get
                // `Connection: close` on their next response, or close when idle at the
                // end of the drain window.
                self.state.start_draining();
                // The new process reads the rollout state file once it has the sockets:
                // from now on only it checks and writes.
                self.state.rollouts.retire();
                log::info!("SIGQUIT: handing the listening sockets to the new process; rollout checks stop here");
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                self.state.start_draining();
                let drain_delay = self.state.table().config.server.drain_delay;
                log::info!(
                    "SIGTERM: draining; /readyz answers 503, still accepting for {:?}",
                    drain_delay
                );
                tokio::select! {
                    _ = tokio::time::sleep(drain_delay) => {
                        log::info!("drain delay over: stopping accepting, finishing in-flight requests");
                        ShutdownSignal::GracefulTerminate
                    }
                    _ = int.recv() => ShutdownSignal::FastShutdown,
                }
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// Removes the pid file on exit, unless it names another process by now: after an
/// upgrade the new process has written its own pid there.
pub fn remove_pid_file(path: &str) {
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("cannot remove pid_file {path}: {e}");
        }
    }
}
