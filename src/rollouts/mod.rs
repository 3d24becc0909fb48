//! The rollout engine ([`crate::rollout`], pure) wired into a running instance: the
//! services' rollout states, persisted in the state file (`server.rollout_state`), applied
//! to the routing table as effective weights, advanced by checks ([`task`]) and by the
//! operator (`POST /rollout/<action>`). In a fleet ([`fleet`]) one process decides and
//! writes; the others take its states ([`follow`]).
//!
//! Consistency: one lock ([`Rollouts::lock`]) covers a state change, writing it to the
//! state file *and* setting the effective weights of the table serving; a reload holds it
//! from applying the states to its new table to swapping that table in
//! ([`crate::state::State::install`]), so a check never updates a table that is about to
//! be replaced, and nothing reads a state (a follower's sync included) before it is
//! written.

pub mod admin;
pub mod fleet;
pub mod follow;
pub mod sync;
pub mod task;
pub mod webhook;

use crate::analysis;
use crate::config::RolloutConfig;
use crate::rollout::store::{self, StateFile, StoreError};
use crate::rollout::{Action, ActionError, Counters, Engine, Outcome, RolloutState};
use crate::routing::RoutingTable;
use fleet::Role;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// The name of this process's entry in a counters snapshot.
pub const INSTANCE: &str = "local";

/// Every service's rollout state, where it is persisted, and this process's part in a
/// fleet.
#[derive(Debug, Default)]
pub struct Rollouts {
    /// `None`: kept in memory only (a follower; tests, tools).
    path: Option<PathBuf>,
    /// A follower's copy of the decider's last answer ([`Rollouts::follower`]).
    cache: Option<PathBuf>,
    role: Role,
    states: Mutex<BTreeMap<String, RolloutState>>,
    /// Set when a `cohort run --upgrade` process takes over: from then on this one runs
    /// no check and no action, and writes nothing.
    retired: AtomicBool,
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
    #[error("this instance follows the fleet's decider at {0}: send rollout actions there")]
    Follower(SocketAddr),
    #[error("this process does not decide rollouts now (it is handing over to a new one, or does not hold its admin listener)")]
    NotDeciding,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This process's cumulative analysis counters of the service's canary and baseline.
pub fn local_counters(table: &RoutingTable, svc: usize, cfg: &RolloutConfig) -> Counters {
    let read = |v: usize| {
        table
            .metrics
            .variants
            .get(svc)
            .and_then(|vs| vs.get(v))
            .map(|m| m.analysis())
            .unwrap_or_default()
    };
    Counters {
        canary: read(cfg.canary.index),
        baseline: read(cfg.baseline.index),
    }
}

impl Rollouts {
    /// A deciding process (alone, or the fleet's decider) with the states persisted at
    /// `path` (none when the file does not exist).
    pub fn open(path: PathBuf, role: Role) -> Result<Rollouts, StoreError> {
        let states = store::load(&path)?.map(|f| f.services).unwrap_or_default();
        Ok(Rollouts {
            path: Some(path),
            cache: None,
            role,
            states: Mutex::new(states),
            retired: AtomicBool::new(false),
        })
    }

    /// A follower: it holds what the decider answers. It never reads the state file (its
    /// own would be stale, and only the decider writes one); it keeps a copy of the
    /// decider's last answer in `cache` instead, and starts from that copy, so a follower
    /// that restarts while the decider is down serves the step the fleet was on (a
    /// rolled-back canary stays without users) rather than the first step.
    pub fn follower(link: fleet::Link, cache: PathBuf) -> Rollouts {
        let states = match store::load(&cache) {
            Ok(f) => f.map(|f| f.services).unwrap_or_default(),
            Err(e) => {
                log::warn!(
                    "rollout: the copy of the decider's states in {} is not used: {e}",
                    cache.display()
                );
                BTreeMap::new()
            }
        };
        Rollouts {
            role: Role::Follower(link),
            cache: Some(cache),
            states: Mutex::new(states),
            ..Rollouts::default()
        }
    }

    /// Writes a follower's copy of the decider's states.
    fn keep_copy(&self, states: &Guard<'_>) {
        let Some(cache) = &self.cache else { return };
        if let Err(e) = store::save(cache, &StateFile::new((**states).clone())) {
            log::warn!(
                "rollout: the decider's states not copied to {}: {e}",
                cache.display()
            );
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn lock(&self) -> Guard<'_> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on this process runs no check and no action and writes nothing: a
    /// `--upgrade` process is taking over and reads the state file once it has the
    /// sockets. Returns once a change in progress is written.
    pub fn retire(&self) {
        let _states = self.lock();
        self.retired.store(true, Ordering::SeqCst);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Resumes every rollout of `table`'s config from the states held (at start and for
    /// every new table), drops the states of services that have no `[service.rollout]`
    /// any more, and sets the table's effective weights. Call with the lock held until
    /// the table is swapped in. A follower resumes nothing: it keeps the decider's state
    /// of the same rollout, or until it has one routes with the first step (what the
    /// decider starts a new rollout with).
    pub fn apply(&self, states: &mut Guard<'_>, table: &RoutingTable) {
        let mut changed = false;
        for (si, s) in table.router.services.iter().enumerate() {
            let Some(cfg) = &s.cfg.rollout else { continue };
            let name = s.cfg.name.as_str();
            let engine = Engine::new(cfg.clone());
            let counters = self.snapshot(table, si, cfg);
            let held = states.get(name);
            let out = match &self.role {
                Role::Follower(link) => {
                    let same = held.is_some_and(|h| {
                        h.id == cfg.id
                            && h.canary == cfg.canary.name
                            && h.baseline == cfg.baseline.name
                    });
                    if same {
                        self.route(states, table, si);
                        continue;
                    }
                    log::info!(
                        "rollout {name} {:?}: at the first step until the fleet's decider at {} answers",
                        cfg.id,
                        link.decider
                    );
                    engine.resume(None, now(), &counters)
                }
                Role::Single | Role::Decider(_) => {
                    let out = engine.resume(held, now(), &counters);
                    self.announce(name, cfg.webhook.as_deref(), &out);
                    out
                }
            };
            changed |= states.get(name) != Some(&out.state);
            states.insert(name.to_string(), out.state);
            self.route(states, table, si);
        }
        let with_rollout = |name: &str| {
            table
                .router
                .services
                .iter()
                .any(|s| s.cfg.name == name && s.cfg.rollout.is_some())
        };
        states.retain(|name, state| {
            let keep = with_rollout(name);
            if !keep {
                log::info!(
                    "rollout {name} {:?} ({}): no [service.rollout] any more; its state is dropped",
                    state.id,
                    state.phase.as_str()
                );
                analysis::remove_rollout(name);
                changed = true;
            }
            keep
        });
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
    /// under the lock (so a reload cannot swap in a table between the two). Only the
    /// process that decides acts.
    pub fn act(
        &self,
        serving: impl Fn() -> Arc<RoutingTable>,
        service: &str,
        action: Action,
    ) -> Result<RolloutState, ActError> {
        if let Role::Follower(link) = &self.role {
            return Err(ActError::Follower(link.decider));
        }
        let no = || ActError::NoRollout(service.to_string());
        let mut states = self.lock();
        if !self.decides() {
            return Err(ActError::NotDeciding);
        }
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
        self.current_locked(&self.lock(), table)
    }

    fn current_locked(
        &self,
        states: &Guard<'_>,
        table: &RoutingTable,
    ) -> Vec<(String, RolloutState)> {
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

    /// Writes the states: only a process that [`Rollouts::decides`] (a follower has no
    /// path either). A decider that does not hold its listener yet writes at its first
    /// check after it does.
    fn persist(&self, states: &Guard<'_>) {
        let Some(path) = &self.path else { return };
        if !self.decides() {
            return;
        }
        if let Err(e) = store::save(path, &StateFile::new((**states).clone())) {
            log::error!("rollout state not saved to {}: {e}", path.display());
        }
    }
}
