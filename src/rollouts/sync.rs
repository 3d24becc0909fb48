//! The two ends of `POST /fleet/sync` ([`super::fleet`]) on [`Rollouts`]: the decider
//! takes a follower's report into its windows and answers the states
//! ([`Rollouts::receive`]); the follower routes with them ([`Rollouts::adopt`]). Also the
//! fleet-wide counters a check reads ([`Rollouts::snapshot`]), who may decide now
//! ([`Rollouts::decides`]) and the `fleet` object of `GET /rollout`.

use super::fleet::{Answer, Followers, Report, Role};
use super::Rollouts;
use crate::config::RolloutConfig;
use crate::rollout::state::STATE_VERSION;
use crate::rollout::{Snapshot, Window};
use crate::routing::RoutingTable;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

impl Rollouts {
    /// Whether this process may check, act and write now: not handing over to a
    /// `--upgrade` process, not a follower, and a decider only once it holds its admin
    /// listener.
    pub fn decides(&self) -> bool {
        !self.is_retired()
            && match &self.role {
                Role::Single => true,
                Role::Decider(f) => f.holds_admin(),
                Role::Follower(_) => false,
            }
    }

    /// Every instance's counters of service `svc` for a check: this process's, and on
    /// the decider every follower's last report.
    pub fn snapshot(&self, table: &RoutingTable, svc: usize, cfg: &RolloutConfig) -> Snapshot {
        let mut snap = match &self.role {
            Role::Decider(f) => table
                .router
                .services
                .get(svc)
                .map(|s| f.snapshot(&s.cfg.name, cfg))
                .unwrap_or_default(),
            Role::Single | Role::Follower(_) => Snapshot::new(),
        };
        snap.insert(
            super::INSTANCE.to_string(),
            super::local_counters(table, svc, cfg),
        );
        snap
    }

    /// The decider takes a follower's report (from `peer`, the address it connects
    /// from) and answers the states. Each report is taken into the windows at once, so
    /// a follower's counts are in the window from its first report, not from the next
    /// check. `None` when this process is not the decider.
    pub fn receive(
        &self,
        serving: impl Fn() -> Arc<RoutingTable>,
        peer: IpAddr,
        report: Report,
    ) -> Option<Answer> {
        let Role::Decider(followers) = &self.role else {
            return None;
        };
        let addr = SocketAddr::new(peer.to_canonical(), report.port);
        let name = Followers::name(addr, &report.boot);
        let mut states = self.lock();
        let table = serving();
        for s in &table.router.services {
            let (Some(cfg), Some(state)) = (&s.cfg.rollout, states.get_mut(&s.cfg.name)) else {
                continue;
            };
            let Some(r) = report.services.get(&s.cfg.name) else {
                continue;
            };
            if r.counts_for(cfg) && state.id == cfg.id && !state.phase.is_final() {
                state
                    .window
                    .observe(&Snapshot::from([(name.clone(), r.counters.clone())]));
            }
        }
        followers.record(addr, report);
        let services = self
            .current_locked(&states, &table)
            .into_iter()
            .map(|(name, mut s)| {
                s.window = Window::default();
                s.checks.clear();
                (name, s)
            })
            .collect();
        Some(Answer { services })
    }

    /// A follower takes the decider's states: each one of a rollout this process runs
    /// with the same id and pair (the decider may not have polled a new config yet; the
    /// next sync settles it) replaces the one held, and the routing follows.
    pub fn adopt(&self, serving: impl Fn() -> Arc<RoutingTable>, answer: Answer) {
        let Role::Follower(link) = &self.role else {
            return;
        };
        let mut states = self.lock();
        let table = serving();
        let mut changed = false;
        for (si, s) in table.router.services.iter().enumerate() {
            let Some(cfg) = &s.cfg.rollout else { continue };
            let Some(new) = answer.services.get(&s.cfg.name) else {
                continue;
            };
            let same = new.version == STATE_VERSION
                && new.id == cfg.id
                && new.canary == cfg.canary.name
                && new.baseline == cfg.baseline.name;
            let held = states.get(&s.cfg.name);
            if !same || held == Some(new) {
                continue;
            }
            let moved = held
                .is_none_or(|h| (h.phase, h.step, h.percent) != (new.phase, new.step, new.percent));
            if moved {
                log::info!(
                    "rollout {} {:?}: following the decider at {}: {} at step {} ({}%)",
                    s.cfg.name,
                    new.id,
                    link.decider,
                    new.phase.as_str(),
                    new.step + 1,
                    new.percent
                );
            }
            states.insert(s.cfg.name.clone(), new.clone());
            self.route(&states, &table, si);
            changed = true;
        }
        if changed {
            self.keep_copy(&states);
        }
        drop(states);
        if link.synced() {
            log::info!(
                "rollout: the fleet's decider at {} answers again",
                link.decider
            );
        }
    }

    /// The `fleet` object of `GET /rollout`: this process's role, and on the decider
    /// its followers' last reports, on a follower its link to the decider.
    pub fn fleet_status(&self) -> Value {
        match &self.role {
            Role::Single => json!({ "role": "single" }),
            Role::Decider(f) => json!({ "role": "decider", "followers": f.status() }),
            Role::Follower(link) => {
                let s = link.status();
                json!({
                    "role": "follower",
                    "decider": link.decider.to_string(),
                    "synced_at": s.synced_at,
                    "error": s.error,
                })
            }
        }
    }
}
