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
//! window. The decider's own counters are the entry [`super::INSTANCE`]. Both ends of the
//! exchange are in [`super::sync`]; the follower's loop in [`super::follow`].

use super::now;
use crate::config::{RolloutConfig, ServerConfig};
use crate::rollout::{Counters, RolloutState, Snapshot};
use crate::routing::RoutingTable;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
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
        if let Some(admin) = server.admin.filter(|a| listens_at(*a, fleet.decider)) {
            return Role::Decider(Followers::new(admin));
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
    pub(super) fn counts_for(&self, cfg: &RolloutConfig) -> bool {
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

/// The decider's admin listener, and its record of its followers: the last report of
/// each.
#[derive(Debug)]
pub struct Followers {
    admin: SocketAddr,
    /// Latched once this process holds `admin` ([`Followers::holds_admin`]).
    holding: AtomicBool,
    reports: Mutex<BTreeMap<SocketAddr, Reported>>,
}

#[derive(Debug)]
struct Reported {
    at: Instant,
    report: Report,
}

impl Followers {
    fn new(admin: SocketAddr) -> Followers {
        Followers {
            admin,
            holding: AtomicBool::new(false),
            reports: Mutex::default(),
        }
    }

    /// Whether this process holds its admin listener (asked of the kernel until it
    /// does). A second process started with the same admin address fails to bind it and
    /// so never decides: the one listening at the address is the one writer.
    pub(super) fn holds_admin(&self) -> bool {
        if self.holding.load(Ordering::Relaxed) {
            return true;
        }
        let held = crate::listeners::holds(self.admin);
        self.holding.store(held, Ordering::Relaxed);
        held
    }

    pub(super) fn name(addr: SocketAddr, boot: &str) -> String {
        format!("{addr}#{boot}")
    }

    /// Every follower's last counters of `service` counted under `cfg`, by name.
    pub(super) fn snapshot(&self, service: &str, cfg: &RolloutConfig) -> Snapshot {
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

    pub(super) fn record(&self, addr: SocketAddr, report: Report) {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.retain(|_, r| r.at.elapsed() < FORGET);
        let at = Instant::now();
        reports.insert(addr, Reported { at, report });
    }

    pub(super) fn status(&self) -> Vec<Value> {
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
pub(super) struct LinkStatus {
    /// Unix seconds of the last answer taken.
    pub(super) synced_at: Option<u64>,
    /// Why the last sync failed (`None` after a success).
    pub(super) error: Option<String>,
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
    pub(super) fn synced(&self) -> bool {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.synced_at = Some(now());
        s.error.take().is_some()
    }

    pub(super) fn status(&self) -> LinkStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let f = Followers::new("127.0.0.1:9090".parse().unwrap());
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
