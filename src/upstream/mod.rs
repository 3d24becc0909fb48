//! Upstream pools: one Pingora [`LoadBalancer`] per variant over its resolved backends
//! (the selection algorithm), our own per-address health ([`health`]), and the
//! [`HttpPeer`] built for each pick. DNS names are resolved when a table is compiled,
//! never on the request path.

pub mod health;

use health::{BackendHealth, HEALTH};
use std::sync::Arc;

use crate::config::{Balance, FieldError, HealthCheck, Passive, VariantConfig};
use futures::FutureExt;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{Backend, Backends, Extensions, LoadBalancer};
use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
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
    selector: Selector,
    /// Resolved addresses, in config order (duplicates removed).
    pub addrs: Vec<SocketAddr>,
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
    /// Builds the pool for a variant whose backends are already resolved.
    pub fn new(v: &VariantConfig, addrs: Vec<SocketAddr>) -> Pool {
        let set: BTreeSet<Backend> = addrs
            .iter()
            .map(|a| Backend {
                addr: PSocketAddr::Inet(*a),
                weight: 1,
                ext: Extensions::new(),
            })
            .collect();
        let selector = match v.balance {
            Balance::RoundRobin => Selector::RoundRobin(lb(set)),
            Balance::Random => Selector::Random(lb(set)),
            Balance::Consistent => Selector::Consistent(lb(set)),
        };
        Pool {
            selector,
            health: addrs.iter().map(|a| HEALTH.entry(*a)).collect(),
            addrs,
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
        if let [only] = self.addrs[..] {
            // One backend: every balance policy picks it.
            return (Some(only) != exclude && self.is_up(&only)).then_some(only);
        }
        let key = key.to_le_bytes();
        let accept = |b: &Backend, _: bool| match b.addr.as_inet() {
            Some(a) => Some(a) != exclude.as_ref() && self.is_up(a),
            None => false,
        };
        let picked = match &self.selector {
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

/// Resolves every backend of a variant; errors name the field path.
pub fn resolve(v: &VariantConfig, path: &str) -> Result<Vec<SocketAddr>, Vec<FieldError>> {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, b) in v.backends.iter().enumerate() {
        match b.to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            Err(e) => errs.push(FieldError {
                path: format!("{path}.backends[{i}]"),
                message: format!("cannot resolve {b:?}: {e}"),
            }),
        }
    }
    if errs.is_empty() && out.is_empty() {
        errs.push(FieldError {
            path: format!("{path}.backends"),
            message: "resolved to no address".to_string(),
        });
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

impl Pool {
    /// Every backend with its current health, in config order.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        self.health.iter().map(|h| (h.addr, h.is_up())).collect()
    }
}
