//! Upstream pools: one Pingora [`LoadBalancer`] per variant over its resolved backends
//! (the selection algorithm), our own per-address health ([`health`]), and the
//! [`HttpPeer`] built for each pick. DNS names are resolved ([`resolve`]) when a table is
//! compiled and on re-resolution, never on the request path; a backend whose name does
//! not resolve stays in its pool as a down member, with the reason.

pub mod grpc_health;
pub mod health;
pub mod resolve;
pub mod tls;

pub use resolve::{Lookup, Resolver, HOSTS_FILE_ENV};

use health::{BackendHealth, HEALTH};
use std::sync::Arc;

use crate::config::{Balance, HealthCheck, Passive, UpstreamProtocol, VariantConfig};
use futures::FutureExt;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{Backend, Backends, Extensions, LoadBalancer};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tls::UpstreamTlsClient;

/// Idle upstream connections are closed after this long, so connections to backends
/// removed by a reload are reaped.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent streams cohort opens on one HTTP/2 connection to a backend (Pingora opens
/// another connection past it).
const H2_STREAMS: usize = 100;

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
    /// TLS to the backends (`None`: plaintext).
    tls: Option<Arc<UpstreamTlsClient>>,
    /// The TLS server name of each address, aligned with `addrs`.
    names: Vec<Option<Arc<str>>>,
    /// The key of each address's idle connections in the engine's pool, aligned with
    /// `addrs`: 0 for plaintext; for TLS it also covers the settings and server name, so
    /// a connection is only reused for the same backend identity.
    conn_keys: Vec<u64>,
    host_header: Option<String>,
    protocol: UpstreamProtocol,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("addrs", &self.addrs).finish()
    }
}

impl Pool {
    /// Builds the pool for a variant from its backends' lookups ([`Resolver`]), with its
    /// TLS client when it has `tls` ([`UpstreamTlsClient::load`]).
    pub fn new(
        v: &VariantConfig,
        lookups: Vec<Lookup>,
        tls: Option<Arc<UpstreamTlsClient>>,
    ) -> Pool {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut names = Vec::new();
        for l in &lookups {
            for a in l.addrs() {
                if !addrs.contains(a) {
                    addrs.push(*a);
                    let name = tls
                        .as_ref()
                        .and_then(|t| t.server_name(&l.name, v.host_header.as_deref()));
                    names.push(name.map(Arc::from));
                }
            }
        }
        let conn_keys = names
            .iter()
            .map(|n: &Option<Arc<str>>| match &tls {
                None => 0,
                Some(t) => {
                    let name = n.as_deref().unwrap_or_default();
                    xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), t.id) | 1
                }
            })
            .collect();
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
            tls,
            names,
            conn_keys,
            host_header: v.host_header.clone(),
            protocol: v.protocol,
        }
    }

    fn index(&self, addr: SocketAddr) -> Option<usize> {
        self.addrs.iter().position(|a| *a == addr)
    }

    /// The TLS client of the variant (`None`: plaintext backends).
    pub fn tls(&self) -> Option<&Arc<UpstreamTlsClient>> {
        self.tls.as_ref()
    }

    /// The TLS server name for `addr` (SNI, and the name its certificate must cover).
    pub fn server_name(&self, addr: SocketAddr) -> Option<&Arc<str>> {
        self.index(addr).and_then(|i| self.names[i].as_ref())
    }

    /// The key of `addr`'s idle connections in the engine's pool (0: plaintext).
    #[inline]
    pub fn conn_key(&self, addr: SocketAddr) -> u64 {
        if self.tls.is_none() {
            return 0;
        }
        self.index(addr).map_or(1, |i| self.conn_keys[i])
    }

    /// The `Host` the backends get instead of the client's, if set.
    pub fn host_header(&self) -> Option<&str> {
        self.host_header.as_deref()
    }

    /// The HTTP version spoken to the backends.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// How the health checks reach `addr` (the same TLS settings as requests).
    pub fn probe_target(&self, addr: SocketAddr) -> health::ProbeTarget {
        let name = self.server_name(addr).cloned();
        let host = match (&self.host_header, &name) {
            (Some(h), _) => h.clone(),
            (None, Some(n)) => n.to_string(),
            (None, None) => addr.to_string(),
        };
        health::ProbeTarget {
            tls: self.tls.clone(),
            name,
            host,
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

    /// The peer Pingora connects to for `addr`: TLS with the variant's settings, and
    /// HTTP/2 (by ALPN over TLS, with prior knowledge in cleartext) when its `protocol`
    /// says so, with streams multiplexed on pooled connections.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let name = self
            .server_name(addr)
            .map_or(String::new(), |n| n.to_string());
        let mut peer = HttpPeer::new(addr, self.tls.is_some(), name);
        if let Some(t) = &self.tls {
            peer.options.verify_cert = t.settings.verify;
            peer.options.verify_hostname = t.settings.verify;
            peer.options.ca = t.ca.clone();
            peer.client_cert_key = t.client_cert.clone();
        }
        match self.protocol {
            UpstreamProtocol::H1 => {}
            UpstreamProtocol::H2 => peer.options.alpn = ALPN::H2,
            UpstreamProtocol::H2c => peer.options.set_http_version(2, 2),
        }
        if self.protocol != UpstreamProtocol::H1 {
            peer.options.max_h2_streams = H2_STREAMS;
        }
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
