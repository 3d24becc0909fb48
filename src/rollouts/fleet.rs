//! Rollouts across a fleet (`[server.fleet]`): one process, the *decider*, runs every
//! check on the fleet's summed counters and is the only writer of rollout state; every
//! other process *follows* it. Each follower, every poll interval, sends the decider its
//! cumulative analysis counters (`POST /fleet/sync`, a [`Report`]) and takes back the
//! states it routes with (an [`Answer`]). One exchange carries both directions, so the
//! decider needs no list of followers and a step reaches every follower within one poll
//! interval. `docs/rollout.md` ("Fleet") gives the reasons and the failure cases.
//!
//! A follower is named in the window by the address it reports from, its admin port and
//! a random id per process start (`127.0.0.1:9091#5f0c…`): a restarted follower is a new
//! instance whose counters start at 0, while what its earlier life reported stays in the
//! window. The decider's own counters are the entry [`super::INSTANCE`].

use super::{now, Rollouts};
use crate::config::{RolloutConfig, ServerConfig};
use crate::rollout::state::STATE_VERSION;
use crate::rollout::{Counters, RolloutState, Snapshot, Window};
use crate::routing::RoutingTable;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A report not refreshed for this long is forgotten (the windows keep what it counted).
const FORGET: Duration = Duration::from_secs(3600);

/// What this process does with rollouts, settled at start.
#[derive(Debug, Default)]
pub enum Role {
    /// No `[server.fleet]`: checks its own traffic and writes its own state file.
    #[default]
    Single,
    /// Checks the fleet's summed counters, writes the state file, answers followers.
    Decider(Followers),
    /// Routes with the decider's states; never checks, never writes.
    Follower(Link),
}

impl Role {
    /// The role of a process running `server` (its effective admin address, after
    /// `--admin`): the decider is the process listening on `server.fleet.decider`, which
    /// one process at most can be. `every` is how often a follower syncs.
    pub fn of(server: &ServerConfig, every: Duration) -> Role {
        let Some(fleet) = &server.fleet else {
            return Role::Single;
        };
        if server.admin.is_some_and(|a| listens_at(a, fleet.decider)) {
            return Role::Decider(Followers::default());
        }
        let port = server
            .admin
            .or(server.listen.first().copied())
            .map_or(0, |a| a.port());
        Role::Follower(Link {
            decider: fleet.decider,
            every,
            port,
            boot: format!("{:016x}", rand::random::<u64>()),
            status: Mutex::new(LinkStatus::default()),
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Decider(_) => "decider",
            Role::Follower(_) => "follower",
        }
    }
}

/// Whether a listener bound to `admin` answers at `decider`: the same port, and the same
/// IP or, for a wildcard listener, an IP of this host.
pub fn listens_at(admin: SocketAddr, decider: SocketAddr) -> bool {
    if admin.port() != decider.port() {
        return false;
    }
    let (a, d) = (admin.ip().to_canonical(), decider.ip().to_canonical());
    a == d || (a.is_unspecified() && is_local(d))
}

/// Whether `ip` is an address of this host (a socket can be bound to it).
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// A follower's report: its counters, per service with a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The follower's admin port (its first listen port without one).
    pub port: u16,
    /// Random per process start.
    pub boot: String,
    pub services: BTreeMap<String, ServiceReport>,
}

/// One service's counters in a [`Report`], with the rollout they were counted under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub id: String,
    pub canary: String,
    pub baseline: String,
    pub counters: Counters,
}

impl ServiceReport {
    /// Whether these counts belong to the rollout `cfg` (same id, same pair).
    fn counts_for(&self, cfg: &RolloutConfig) -> bool {
        self.id == cfg.id && self.canary == cfg.canary.name && self.baseline == cfg.baseline.name
    }
}

/// The decider's answer: every rollout's state, without the window and the list of
/// checks (a follower routes with the state and serves `GET /rollout` from it, which
/// shows neither).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub services: BTreeMap<String, RolloutState>,
}

/// The decider's record of its followers: the last report of each.
#[derive(Debug, Default)]
pub struct Followers {
    reports: Mutex<BTreeMap<SocketAddr, Reported>>,
}

#[derive(Debug)]
struct Reported {
    at: Instant,
    report: Report,
}

impl Followers {
    fn name(addr: SocketAddr, boot: &str) -> String {
        format!("{addr}#{boot}")
    }

    /// Every follower's last counters of `service` counted under `cfg`, by name.
    fn snapshot(&self, service: &str, cfg: &RolloutConfig) -> Snapshot {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports
            .iter()
            .filter_map(|(addr, r)| {
                let s = r.report.services.get(service)?;
                s.counts_for(cfg)
                    .then(|| (Self::name(*addr, &r.report.boot), s.counters.clone()))
            })
            .collect()
    }

    fn record(&self, addr: SocketAddr, report: Report) {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.retain(|_, r| r.at.elapsed() < FORGET);
        let at = Instant::now();
        reports.insert(addr, Reported { at, report });
    }

    fn status(&self) -> Vec<Value> {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports
            .iter()
            .map(|(addr, r)| {
                json!({
                    "instance": addr.to_string(),
                    "boot": r.report.boot,
                    "reported_secs_ago": r.at.elapsed().as_secs(),
                })
            })
            .collect()
    }
}

/// A follower's link to the decider.
#[derive(Debug)]
pub struct Link {
    pub decider: SocketAddr,
    /// How often it syncs (the config poll interval).
    pub every: Duration,
    port: u16,
    boot: String,
    status: Mutex<LinkStatus>,
}

#[derive(Debug, Default, Clone)]
struct LinkStatus {
    /// Unix seconds of the last answer taken.
    synced_at: Option<u64>,
    /// Why the last sync failed (`None` after a success).
    error: Option<String>,
}

impl Link {
    /// This process's report: its own counters of every rollout of `table`.
    pub fn report(&self, table: &RoutingTable) -> Report {
        let services = table
            .router
            .services
            .iter()
            .enumerate()
            .filter_map(|(si, s)| {
                let cfg = s.cfg.rollout.as_ref()?;
                let counters = super::local_counters(table, si, cfg);
                let report = ServiceReport {
                    id: cfg.id.clone(),
                    canary: cfg.canary.name.clone(),
                    baseline: cfg.baseline.name.clone(),
                    counters,
                };
                Some((s.cfg.name.clone(), report))
            })
            .collect();
        Report {
            port: self.port,
            boot: self.boot.clone(),
            services,
        }
    }

    /// Records a failed sync; returns whether it is the first of a run (to log once).
    pub fn failed(&self, error: String) -> bool {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let first = s.error.is_none();
        s.error = Some(error);
        first
    }

    /// Records a sync; returns whether it ends a run of failures.
    fn synced(&self) -> bool {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.synced_at = Some(now());
        s.error.take().is_some()
    }

    fn status(&self) -> LinkStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Rollouts {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decider_is_the_process_listening_at_its_address() {
        let d: SocketAddr = "127.0.0.1:9091".parse().unwrap();
        assert!(listens_at("127.0.0.1:9091".parse().unwrap(), d));
        assert!(listens_at("0.0.0.0:9091".parse().unwrap(), d));
        assert!(listens_at("[::]:9091".parse().unwrap(), d));
        assert!(!listens_at("127.0.0.1:9092".parse().unwrap(), d));
        assert!(!listens_at("0.0.0.0:9092".parse().unwrap(), d));
        assert!(!listens_at("127.0.0.2:9091".parse().unwrap(), d));
        // A wildcard listener answers only for addresses of this host (TEST-NET-3 is
        // nobody's).
        let remote: SocketAddr = "203.0.113.7:9091".parse().unwrap();
        assert!(!listens_at("0.0.0.0:9091".parse().unwrap(), remote));
    }

    fn report(boot: &str, id: &str, n: u64) -> Report {
        let mut counters = Counters::default();
        counters.canary.requests = n;
        let s = ServiceReport {
            id: id.to_string(),
            canary: "canary".to_string(),
            baseline: "stable".to_string(),
            counters,
        };
        Report {
            port: 9091,
            boot: boot.to_string(),
            services: BTreeMap::from([("api".to_string(), s)]),
        }
    }

    #[test]
    fn the_snapshot_names_each_follower_life_and_keeps_counts_of_this_rollout_only() {
        let cfg = crate::rollout::tests::engine(|_| {}).config().clone();
        let f = Followers::default();
        let a: SocketAddr = "10.0.0.1:9091".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:9091".parse().unwrap();
        f.record(a, report("aa", "v2", 10));
        f.record(b, report("bb", "v1", 99));
        let snap = f.snapshot("api", &cfg);
        assert_eq!(snap.keys().collect::<Vec<_>>(), ["10.0.0.1:9091#aa"]);
        assert_eq!(snap["10.0.0.1:9091#aa"].canary.requests, 10);
        // A restart of a: a new life, the last report replaces the old one.
        f.record(a, report("cc", "v2", 1));
        let snap = f.snapshot("api", &cfg);
        assert_eq!(snap.keys().collect::<Vec<_>>(), ["10.0.0.1:9091#cc"]);
        assert!(f.snapshot("other", &cfg).is_empty());
    }
}
