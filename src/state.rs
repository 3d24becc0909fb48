//! Process-wide state shared by the proxy, the admin API and background work: the one
//! `ArcSwap` holding the routing table, the listener settings the process actually runs
//! with, the last reload's outcome, the drain flag and the in-flight request count.

use crate::access_log::AccessLog;
use crate::config::bound::Bound;
use crate::listeners::Listeners;
use crate::rollouts::Rollouts;
use crate::routing::RoutingTable;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What the last reload did (for `/status`).
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    /// `applied`, `unchanged` or `error`.
    pub result: &'static str,
    pub at: SystemTime,
    pub errors: Vec<String>,
    /// Changed settings that only a `cohort run --upgrade` applies.
    pub needs_upgrade: Vec<String>,
    pub trigger: String,
}

/// Shared state. The table is replaced whole by [`State::swap`]; readers take one
/// snapshot per request with [`State::table`].
pub struct State {
    table: ArcSwap<RoutingTable>,
    /// The settings bound at start (a reload cannot change them).
    pub bound: Bound,
    /// The proxy listeners, and whether this process holds them (readiness).
    pub listeners: Listeners,
    draining: AtomicBool,
    /// When draining started (SIGTERM, or SIGQUIT on the old process of an upgrade).
    drain_started: std::sync::OnceLock<std::time::Instant>,
    in_flight: AtomicUsize,
    last_reload: Mutex<Option<ReloadRecord>>,
    /// The latest config version whose every setting is in effect (a reload with
    /// upgrade-only changes applies the rest, and leaves this behind).
    serving_version: Mutex<String>,
    /// The access log, opened at start (`None` = off).
    pub access_log: Option<AccessLog>,
    /// The request sample log (`server.sample_log`), opened at start (`None` = off).
    pub sample_log: Option<AccessLog>,
    /// The services' rollout states (in memory only unless [`State::with_rollouts`]).
    pub rollouts: Rollouts,
}

/// Which config this process runs: the version whose every setting is in effect, and the
/// version loaded with the settings only an upgrade applies (empty when converged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    pub serving: String,
    pub loaded: String,
    pub pending_upgrade: Vec<String>,
}

impl State {
    pub fn new(table: RoutingTable) -> State {
        Self::with_access_log(table, None)
    }

    pub fn with_access_log(table: RoutingTable, access_log: Option<AccessLog>) -> State {
        State {
            access_log,
            sample_log: None,
            bound: table.config.server.bound(),
            listeners: Listeners::new(
                &table.config.server.listen,
                &table
                    .config
                    .server
                    .tls
                    .iter()
                    .map(|t| t.listen)
                    .collect::<Vec<_>>(),
            ),
            serving_version: Mutex::new(table.config.version.clone()),
            table: ArcSwap::from_pointee(table),
            draining: AtomicBool::new(false),
            drain_started: std::sync::OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            last_reload: Mutex::new(None),
            rollouts: Rollouts::default(),
        }
    }

    /// The same state with the rollout states persisted in `rollouts`, applied to the
    /// serving table (at start, before it serves).
    pub fn with_rollouts(self, rollouts: Rollouts) -> State {
        let state = State { rollouts, ..self };
        let table = state.table();
        state.rollouts.apply(&mut state.rollouts.lock(), &table);
        state
    }

    /// The same state, writing request samples to `sample_log`.
    pub fn with_sample_log(self, sample_log: Option<AccessLog>) -> State {
        State { sample_log, ..self }
    }

    /// One consistent snapshot of the routing table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Replaces the routing table atomically and deletes the metric series the new table
    /// no longer has; returns the previous table.
    pub fn install(&self, table: RoutingTable) -> Arc<RoutingTable> {
        let table = Arc::new(table);
        // The rollouts' weights are set before the table serves, and no check runs
        // between setting them and the swap.
        let mut rollouts = self.rollouts.lock();
        self.rollouts.apply(&mut rollouts, &table);
        let previous = self.table.swap(table.clone());
        drop(rollouts);
        previous.metrics.retire(&table.metrics);
        previous
    }

    /// The versions as they stand now ([`Versions`]); a loaded table with no pending
    /// upgrade-only change is the serving one.
    pub fn versions(&self) -> Versions {
        let table = self.table();
        let pending_upgrade = self.bound.changes(&table.config.server.bound());
        let loaded = table.config.version.clone();
        let Ok(mut serving) = self.serving_version.lock() else {
            return Versions {
                serving: String::new(),
                loaded,
                pending_upgrade,
            };
        };
        if pending_upgrade.is_empty() {
            serving.clone_from(&loaded);
        }
        Versions {
            serving: serving.clone(),
            loaded,
            pending_upgrade,
        }
    }

    /// Marks the process as draining: `/readyz` answers 503 from now on, every response
    /// says `Connection: close`, and keep-alive connections still idle at the end of the
    /// drain window ([`State::drain_window_end`]) are closed.
    pub fn start_draining(&self) {
        let _ = self.drain_started.set(std::time::Instant::now());
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The end of the drain window: `drain_delay_secs` after draining started. Until
    /// then an idle keep-alive connection stays open, so a client that sends its next
    /// request gets an answer (with `Connection: close`) instead of a closed socket.
    pub fn drain_window_end(&self) -> Option<std::time::Instant> {
        let started = *self.drain_started.get()?;
        Some(started + self.table().config.server.drain_delay)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn set_last_reload(&self, r: ReloadRecord) {
        if let Ok(mut g) = self.last_reload.lock() {
            *g = Some(r);
        }
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload.lock().ok().and_then(|g| g.clone())
    }

    /// Counts a request until the returned guard drops.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Decrements the in-flight count on drop.
pub struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
