//! Upstream pools: one Pingora [`LoadBalancer`] per variant over its resolved backends
//! (the selection algorithm), our own per-address health ([`health`]), and the
//! [`HttpPeer`] built for each pick. DNS names are resolved ([`resolve`]) when a table is
//! compiled and on re-resolution, never on the request path; a backend whose name does
//! not resolve stays in its pool as a down member, with the reason.

pub mod health;
pub mod resolve;

pub use resolve::{Lookup, Resolver, HOSTS_FILE_ENV};

use health::{BackendHealth, HEALTH};
use std::sync::Arc;

use crate::config::{Balance, HealthCheck, Passive, VariantConfig};
use futures::FutureExt;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{Backend, Backends, Extensions, LoadBalancer};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Idle upstream connections are closed after this long, so connections to backends
/// removed by a reload are reaped.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

/// A variant's backends and how to pick among them.
pub struct Pool {
    /// `None` with one address or none: there is nothing to choose (Pingora's balancer
    /// and backend set cost about 5 KiB per pool, for 1,000 services of 3 variants 15 MB).
    selector: Option<Selector>,
    /// Resolved addresses, in config order (duplicates removed).
    pub addrs: Vec<SocketAddr>,
    /// What each configured backend resolved to, in config order: the names that do not
    /// resolve are the pool's down members that have no address.
    lookups: Vec<Lookup>,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// Health per address, aligned with `addrs` (shared with other tables).
    health: Vec<Arc<BackendHealth>>,
    check: Option<HealthCheck>,
    passive: Passive,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("addrs", &self.addrs).finish()
    }
}

impl Pool {
    /// Builds the pool for a variant from its backends' lookups ([`Resolver`]).
    pub fn new(v: &VariantConfig, lookups: Vec<Lookup>) -> Pool {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in lookups.iter().flat_map(Lookup::addrs) {
            if !addrs.contains(a) {
                addrs.push(*a);
            }
        }
        let selector = (addrs.len() > 1).then(|| {
            let set: BTreeSet<Backend> = addrs
                .iter()
                .map(|a| Backend {
                    addr: PSocketAddr::Inet(*a),
                    weight: 1,
                    ext: Extensions::new(),
                })
                .collect();
            match v.balance {
                Balance::RoundRobin => Selector::RoundRobin(lb(set)),
                Balance::Random => Selector::Random(lb(set)),
                Balance::Consistent => Selector::Consistent(lb(set)),
            }
        });
        Pool {
            selector,
            health: addrs.iter().map(|a| HEALTH.entry(*a)).collect(),
            addrs,
            lookups,
            connect_timeout: v.connect_timeout,
            read_timeout: v.read_timeout,
            check: v.health_check.clone(),
            passive: v.passive,
        }
    }

    fn is_up(&self, addr: &SocketAddr) -> bool {
        self.health
            .iter()
            .find(|h| h.addr == *addr)
            .is_some_and(|h| h.is_up())
    }

    /// How long connecting to a backend may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long the backend may take to answer (each read).
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The active check settings, if any.
    pub fn health_check(&self) -> Option<&HealthCheck> {
        self.check.as_ref()
    }

    pub fn backend_health(&self) -> &[Arc<BackendHealth>] {
        &self.health
    }

    /// A request failed to connect to `addr`: passive health.
    pub fn connect_failed(&self, addr: SocketAddr) {
        if let Some(h) = self.health.iter().find(|h| h.addr == addr) {
            h.connect_failed(self.check.as_ref(), self.passive);
        }
    }

    /// A fresh connection to `addr` closed without answering a request: passive health
    /// ([`crate::config::Passive`]).
    pub fn hung_up(&self, addr: SocketAddr) {
        let Some(h) = self.health.iter().find(|h| h.addr == addr) else {
            return;
        };
        let last_healthy = !self.health.iter().any(|o| o.addr != addr && o.is_up());
        h.hung_up(self.passive, last_healthy);
    }

    /// Picks a healthy backend, skipping `exclude` (the one a connect just failed on).
    /// `key` steers `consistent` pools; the others ignore it.
    pub fn select(&self, key: u64, exclude: Option<SocketAddr>) -> Option<SocketAddr> {
        match self.addrs[..] {
            // No backend resolves (yet): the caller falls back.
            [] => return None,
            // One backend: every balance policy picks it.
            [only] => return (Some(only) != exclude && self.is_up(&only)).then_some(only),
            _ => {}
        }
        let key = key.to_le_bytes();
        let accept = |b: &Backend, _: bool| match b.addr.as_inet() {
            Some(a) => Some(a) != exclude.as_ref() && self.is_up(a),
            None => false,
        };
        let picked = match self.selector.as_ref()? {
            Selector::RoundRobin(lb) => lb.select_with(&key, 256, accept),
            Selector::Random(lb) => lb.select_with(&key, 256, accept),
            Selector::Consistent(lb) => lb.select_with(&key, 256, accept),
        }?;
        picked.addr.as_inet().copied()
    }

    /// The peer Pingora connects to for `addr`.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        // An upstream that stops taking the request (its body) is a timeout too.
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        peer
    }
}

fn lb<S>(set: BTreeSet<Backend>) -> LoadBalancer<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let lb = LoadBalancer::from_backends(Backends::new(Static::new(set)));
    // Static discovery completes immediately and cannot fail.
    let _ = lb.update().now_or_never();
    lb
}

impl Pool {
    /// Every backend with its current health, in config order.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        self.health.iter().map(|h| (h.addr, h.is_up())).collect()
    }

    /// What each configured backend resolved to, in config order.
    pub fn lookups(&self) -> &[Lookup] {
        &self.lookups
    }

    /// The configured backends whose names do not resolve: down, with no address.
    pub fn unresolved(&self) -> impl Iterator<Item = &Lookup> {
        self.lookups.iter().filter(|l| l.answer.is_err())
    }
}
