//! The rollout engine ([`crate::rollout`], pure) wired into one running instance: the
//! services' rollout states, persisted in the state file (`server.rollout_state`), applied
//! to the routing table as effective weights, advanced by checks ([`task`]) and by the
//! operator (`POST /rollout/<action>`).
//!
//! Consistency: one lock ([`Rollouts::lock`]) covers a state change *and* setting the
//! effective weights of the table serving; a reload holds it from applying the states to
//! its new table to swapping that table in ([`crate::state::State::install`]), so a check
//! never updates a table that is about to be replaced.

pub mod admin;
pub mod task;
pub mod webhook;

use crate::analysis;
use crate::rollout::store::{self, StateFile, StoreError};
use crate::rollout::{Action, ActionError, Counters, Engine, Outcome, RolloutState, Snapshot};
use crate::routing::RoutingTable;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// The name of this process's entry in a counters [`Snapshot`].
pub const INSTANCE: &str = "local";

/// Every service's rollout state, and where it is persisted.
#[derive(Debug, Default)]
pub struct Rollouts {
    /// `None`: kept in memory only (tests, tools).
    path: Option<PathBuf>,
    states: Mutex<BTreeMap<String, RolloutState>>,
}

/// The locked states.
pub type Guard<'a> = MutexGuard<'a, BTreeMap<String, RolloutState>>;

/// Why an operator action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("no service {0:?} with a [service.rollout]")]
    NoRollout(String),
    #[error("{0}")]
    Refused(#[from] ActionError),
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This process's cumulative analysis counters of the service's canary and baseline.
pub fn counters(table: &RoutingTable, svc: usize, engine: &Engine) -> Snapshot {
    let cfg = engine.config();
    let read = |v: usize| {
        table
            .metrics
            .variants
            .get(svc)
            .and_then(|vs| vs.get(v))
            .map(|m| m.analysis())
            .unwrap_or_default()
    };
    let c = Counters {
        canary: read(cfg.canary.index),
        baseline: read(cfg.baseline.index),
    };
    BTreeMap::from([(INSTANCE.to_string(), c)])
}

impl Rollouts {
    /// The states persisted at `path` (none when the file does not exist).
    pub fn open(path: PathBuf) -> Result<Rollouts, StoreError> {
        let states = store::load(&path)?.map(|f| f.services).unwrap_or_default();
        Ok(Rollouts {
            path: Some(path),
            states: Mutex::new(states),
        })
    }

    pub fn lock(&self) -> Guard<'_> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resumes every rollout of `table`'s config from the states held (at start and for
    /// every new table) and sets the table's effective weights. Call with the lock held
    /// until the table is swapped in.
    pub fn apply(&self, states: &mut Guard<'_>, table: &RoutingTable) {
        let mut changed = false;
        for (si, s) in table.router.services.iter().enumerate() {
            let Some(cfg) = &s.cfg.rollout else { continue };
            let engine = Engine::new(cfg.clone());
            let name = s.cfg.name.as_str();
            let out = engine.resume(states.get(name), now(), &counters(table, si, &engine));
            changed |= states.get(name) != Some(&out.state);
            self.announce(name, cfg.webhook.as_deref(), &out);
            states.insert(name.to_string(), out.state);
            self.route(states, table, si);
        }
        if changed {
            self.persist(states);
        }
    }

    /// Sets the effective weights of service `svc` of `table` from its state.
    pub fn route(&self, states: &Guard<'_>, table: &RoutingTable, svc: usize) {
        let Some(s) = table.router.services.get(svc) else {
            return;
        };
        let (Some(cfg), Some(state)) = (&s.cfg.rollout, states.get(&s.cfg.name)) else {
            return;
        };
        s.set_effective(crate::rollout::shares::effective(&s.weights, cfg, state));
        analysis::set_rollout(&s.cfg.name, state.phase, state.percent);
    }

    /// Records an outcome of service `svc` of `table`: the state, the routing, the
    /// state file when it changed, and its events (log, webhook).
    pub fn commit(&self, states: &mut Guard<'_>, table: &RoutingTable, svc: usize, out: Outcome) {
        let Some(s) = table.router.services.get(svc) else {
            return;
        };
        let name = s.cfg.name.as_str();
        let webhook = s.cfg.rollout.as_ref().and_then(|c| c.webhook.as_deref());
        let changed = states.get(name) != Some(&out.state);
        self.announce(name, webhook, &out);
        states.insert(name.to_string(), out.state);
        if changed {
            self.route(states, table, svc);
            self.persist(states);
        }
    }

    /// An operator's action on `service`'s rollout in the table `serving` returns, read
    /// under the lock (so a reload cannot swap in a table between the two).
    pub fn act(
        &self,
        serving: impl Fn() -> Arc<RoutingTable>,
        service: &str,
        action: Action,
    ) -> Result<RolloutState, ActError> {
        let no = || ActError::NoRollout(service.to_string());
        let mut states = self.lock();
        let table = serving();
        let svc = table.router.service_by_name(service).ok_or_else(no)?;
        let cfg = table.router.services[svc]
            .cfg
            .rollout
            .clone()
            .ok_or_else(no)?;
        let state = states.get(service).cloned().ok_or_else(no)?;
        let out = Engine::new(cfg).act(&state, action, now())?;
        let after = out.state.clone();
        self.commit(&mut states, &table, svc, out);
        Ok(after)
    }

    /// The states of `table`'s rollouts, in config order.
    pub fn current(&self, table: &RoutingTable) -> Vec<(String, RolloutState)> {
        let states = self.lock();
        table
            .router
            .services
            .iter()
            .filter(|s| s.cfg.rollout.is_some())
            .filter_map(|s| Some((s.cfg.name.clone(), states.get(&s.cfg.name)?.clone())))
            .collect()
    }

    fn announce(&self, service: &str, webhook: Option<&str>, out: &Outcome) {
        for e in &out.events {
            log::warn!(
                "rollout {service} {:?}: {} at step {} ({}%): {}",
                out.state.id,
                e.event.as_str(),
                e.step + 1,
                e.percent,
                e.why
            );
            if let Some(url) = webhook {
                let body = crate::rollout::view::webhook_body(service, &out.state, e);
                webhook::post(url, &body);
            }
        }
    }

    fn persist(&self, states: &Guard<'_>) {
        let Some(path) = &self.path else { return };
        if let Err(e) = store::save(path, &StateFile::new((**states).clone())) {
            log::error!("rollout state not saved to {}: {e}", path.display());
        }
    }
}
