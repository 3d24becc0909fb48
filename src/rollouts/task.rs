//! The rollout loop: a background service that runs each service's checks every
//! `check_secs` on the analysis counters (this process's, and on a fleet's decider every
//! follower's last report) and the canary's health as this process sees it, and commits
//! the outcome (state file, routing, log, webhook, `cohort_rollout_checks_total`). A
//! follower runs no check; a process handing over to a `--upgrade` one stops.

use super::fleet::Role;
use super::now;
use crate::analysis;
use crate::rollout::{Availability, CheckInput, Engine};
use crate::state::State;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the loop looks at the canaries' health and whether a check is due.
const TICK: Duration = Duration::from_millis(250);

/// The background service.
pub struct RolloutTask {
    pub state: Arc<State>,
}

/// Per service: when its last check ran, and whether the canary had a healthy backend
/// at any tick since.
struct Pace {
    last: Instant,
    seen_healthy: bool,
}

#[async_trait]
impl BackgroundService for RolloutTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if matches!(self.state.rollouts.role(), Role::Follower(_)) {
            return;
        }
        let mut pace: HashMap<String, Pace> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.tick(&mut pace),
            }
        }
    }
}

impl RolloutTask {
    fn tick(&self, pace: &mut HashMap<String, Pace>) {
        let table = self.state.table();
        for (si, s) in table.router.services.iter().enumerate() {
            let Some(cfg) = &s.cfg.rollout else { continue };
            let healthy = table
                .pools
                .get(si)
                .and_then(|p| p.get(cfg.canary.index))
                .is_some_and(|p| p.health().iter().any(|(_, up)| *up));
            let p = pace.entry(s.cfg.name.clone()).or_insert(Pace {
                last: Instant::now(),
                seen_healthy: false,
            });
            p.seen_healthy |= healthy;
            if p.last.elapsed() < Duration::from_secs(cfg.check_secs) {
                continue;
            }
            let availability = if p.seen_healthy {
                Availability::Available
            } else {
                Availability::Unavailable
            };
            *p = Pace {
                last: Instant::now(),
                seen_healthy: healthy,
            };
            let engine = Engine::new(cfg.clone());
            let rollouts = &self.state.rollouts;
            let mut states = rollouts.lock();
            if !rollouts.decides() {
                return;
            }
            // A reload may have swapped tables since this one was taken: check the one
            // serving, under the lock.
            let serving = self.state.table();
            if !Arc::ptr_eq(&serving, &table) {
                return;
            }
            let Some(state) = states.get(&s.cfg.name).cloned() else {
                continue;
            };
            let input = CheckInput {
                now: now(),
                counters: rollouts.snapshot(&table, si, cfg),
                availability,
            };
            let out = engine.check(&state, &input);
            if let Some(r) = &out.report {
                analysis::count_check(&s.cfg.name, r.result);
                log::info!(
                    "rollout {} check at step {} ({}%): {}",
                    s.cfg.name,
                    r.step + 1,
                    r.percent,
                    r.summary(&cfg.gates)
                );
            }
            rollouts.commit(&mut states, &table, si, out);
        }
    }
}
