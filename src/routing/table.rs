//! [`RoutingTable`]: everything a request needs, compiled from one [`Config`] and
//! immutable afterwards. The server holds it in one `ArcSwap`; a request takes one
//! snapshot and keeps it to the end, so a reload never mixes two configs in one request.

use super::router::Router;
use crate::config::{Config, ConfigError};
use crate::metrics::TableMetrics;
use crate::tls::Certificates;
use crate::upstream::resolve::{Session, UNRESOLVED_RETRY};
use crate::upstream::tls::UpstreamTlsClient;
use crate::upstream::{Lookup, Pool, Resolver};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// The compiled, immutable routing state.
#[derive(Debug)]
pub struct RoutingTable {
    pub config: Arc<Config>,
    pub router: Router,
    /// `pools[service][variant]`.
    pub pools: Vec<Vec<Pool>>,
    /// Metric handles for this table's services and variants.
    pub metrics: TableMetrics,
    /// Certificates of the TLS listeners, read from disk for this table.
    pub certs: Certificates,
    pub loaded_at: SystemTime,
}

/// `lookups[service][variant]`: what each configured backend resolved to.
pub type Lookups = Vec<Vec<Vec<Lookup>>>;

/// Looks up every backend of `config`, `lookups[service][variant]`.
fn resolve_all(config: &Config, session: &Session) -> Lookups {
    config
        .services
        .iter()
        .enumerate()
        .map(|(si, s)| {
            s.variants
                .iter()
                .enumerate()
                .map(|(vi, v)| session.variant(v, &format!("service[{si}].variant[{vi}]")))
                .collect()
        })
        .collect()
}

/// Which backends a re-resolution looks up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every backend named by DNS (`resolve_interval_secs`).
    All,
    /// Only the names that do not resolve yet (with `resolve_interval_secs = 0`).
    Unresolved,
}

impl RoutingTable {
    /// Resolves every backend ([`Resolver::from_env`]) and builds the pools. A name that
    /// does not resolve is no error: its backend is a down member of its pool (see
    /// [`RoutingTable::unresolved`]) until a re-resolution finds it.
    pub fn build(config: Config) -> Result<RoutingTable, ConfigError> {
        Self::build_with(config, &Resolver::from_env())
    }

    /// [`RoutingTable::build`] with the given resolver.
    pub fn build_with(config: Config, resolver: &Resolver) -> Result<RoutingTable, ConfigError> {
        let lookups = resolve_all(&config, &resolver.session());
        Self::build_resolved(config, lookups)
    }

    /// [`RoutingTable::build`] for a reload that replaces `self`: a name that fails to
    /// resolve now but has addresses in `self` keeps them, as on re-resolution.
    pub fn build_replacing(
        &self,
        config: Config,
        resolver: &Resolver,
    ) -> Result<RoutingTable, ConfigError> {
        let mut lookups = resolve_all(&config, &resolver.session());
        for l in lookups.iter_mut().flatten().flatten() {
            if l.answer.is_ok() {
                continue;
            }
            let mut known = self.pools.iter().flatten().flat_map(Pool::lookups);
            if let Some(k) = known.find(|k| k.name == l.name && k.answer.is_ok()) {
                log::debug!("{}: {:?}; keeping {:?}", l.path, l.error(), k.addrs());
                l.answer = k.answer.clone();
            }
        }
        Self::build_resolved(config, lookups)
    }

    /// Builds the pools from lookups already made (`lookups[service][variant]`, aligned
    /// with the config).
    pub fn build_resolved(config: Config, lookups: Lookups) -> Result<RoutingTable, ConfigError> {
        let mut errs = Vec::new();
        let mut lookups = lookups.into_iter();
        let pools: Vec<Vec<Pool>> = config
            .services
            .iter()
            .enumerate()
            .map(|(si, s)| {
                let mut vl = lookups.next().unwrap_or_default().into_iter();
                s.variants
                    .iter()
                    .enumerate()
                    .map(|(vi, v)| {
                        let path = format!("service[{si}].variant[{vi}].tls");
                        let tls = v.tls.as_ref().and_then(|t| {
                            let h2 = v.protocol == crate::config::UpstreamProtocol::H2;
                            UpstreamTlsClient::load(t, &path, h2)
                                .map_err(|e| errs.extend(e))
                                .ok()
                                .map(Arc::new)
                        });
                        Pool::new(v, vl.next().unwrap_or_default(), tls)
                    })
                    .collect()
            })
            .collect();
        let certs = match crate::tls::load(&config.server.tls) {
            Ok(c) => c,
            Err(e) => {
                errs.extend(e);
                Certificates::default()
            }
        };
        if !errs.is_empty() {
            return Err(ConfigError::Invalid(errs));
        }
        let router = Router::new(&config);
        // `cohort_backend_up` members: the addresses, then the names that do not resolve
        // (as configured), the order of `refresh_backend_up`.
        let addrs: Vec<Vec<Vec<String>>> = pools
            .iter()
            .map(|vp| {
                vp.iter()
                    .map(|p| {
                        let resolved = p.addrs.iter().map(|a| a.to_string());
                        resolved
                            .chain(p.unresolved().map(|l| l.name.clone()))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let metrics = TableMetrics::new(&router, &addrs);
        let table = RoutingTable {
            router,
            config: Arc::new(config),
            pools,
            metrics,
            certs,
            loaded_at: SystemTime::now(),
        };
        table.refresh_backend_up();
        Ok(table)
    }

    /// The configured backends whose names do not resolve (down, no address).
    pub fn unresolved(&self) -> impl Iterator<Item = &Lookup> {
        self.pools.iter().flatten().flat_map(Pool::unresolved)
    }

    /// Looks the backends in `scope` up again with `lookup`; `Some` with every backend's
    /// lookup when any answer differs from what this table serves, `None` when nothing
    /// changed. A name that resolved before and fails now keeps its addresses: a DNS
    /// hiccup does not take a working backend down (health checks judge the addresses).
    pub fn re_resolve<F>(&self, scope: Scope, lookup: F) -> Option<Lookups>
    where
        F: Fn(&str) -> Result<Vec<SocketAddr>, String>,
    {
        let mut changed = false;
        let mut again = |old: &Lookup| {
            let skip = scope == Scope::Unresolved && old.answer.is_ok()
                || old.name.parse::<SocketAddr>().is_ok();
            if skip {
                return old.clone();
            }
            let answer = match lookup(&old.name) {
                Err(e) if old.answer.is_ok() => {
                    log::debug!("{}: {e}; keeping {:?}", old.path, old.addrs());
                    old.answer.clone()
                }
                // Still no address: no change, whatever the resolver's words this time.
                Err(_) => old.answer.clone(),
                answer => answer,
            };
            changed |= answer != old.answer;
            Lookup {
                answer,
                ..old.clone()
            }
        };
        let lookups = self
            .pools
            .iter()
            .map(|vp| {
                vp.iter()
                    .map(|p| p.lookups().iter().map(&mut again).collect())
                    .collect()
            })
            .collect();
        changed.then_some(lookups)
    }

    /// Logs each backend whose resolution changed state since `before` (the table this
    /// one replaces, if any): a warning naming the field path and the name when it does
    /// not resolve, a notice when it resolves again. Nothing for an unchanged state, so a
    /// retry that fails again stays quiet.
    pub fn log_resolution(&self, before: Option<&RoutingTable>) {
        let was_unresolved = |l: &Lookup| {
            before.is_some_and(|b| b.unresolved().any(|o| o.path == l.path && o.name == l.name))
        };
        let retry = self
            .config
            .server
            .resolve_interval
            .unwrap_or(UNRESOLVED_RETRY)
            .as_secs();
        for l in self.pools.iter().flatten().flat_map(Pool::lookups) {
            match &l.answer {
                Err(e) if !was_unresolved(l) => log::warn!(
                    "{}: {e}; this backend is down until the name resolves (retried every {retry}s)",
                    l.path
                ),
                Ok(addrs) if was_unresolved(l) => log::info!(
                    "{}: {:?} resolves now, to {addrs:?}; it takes traffic",
                    l.path,
                    l.name
                ),
                _ => {}
            }
        }
    }

    /// The service's `fallback` variant and a healthy backend of it, for a request whose
    /// variant `served` has none (SPEC: `fallback`); `None` without a (different, healthy)
    /// fallback.
    pub fn fallback_backend(
        &self,
        svc: usize,
        served: usize,
        pool_key: u64,
    ) -> Option<(usize, std::net::SocketAddr)> {
        let f = self.router.services[svc]
            .cfg
            .fallback
            .filter(|f| *f != served)?;
        self.pools[svc][f].select(pool_key, None).map(|a| (f, a))
    }

    /// Whether any backend is named by a DNS name (not an IP literal).
    pub fn uses_dns(&self) -> bool {
        self.config
            .services
            .iter()
            .flat_map(|s| &s.variants)
            .flat_map(|v| &v.backends)
            .any(|b| b.parse::<std::net::SocketAddr>().is_err())
    }

    /// Publishes every backend's current health in `cohort_backend_up`.
    pub fn refresh_backend_up(&self) {
        let healthy: Vec<bool> = self
            .pools
            .iter()
            .flatten()
            .flat_map(|p| {
                let resolved = p.health().into_iter().map(|(_, h)| h);
                resolved.chain(p.unresolved().map(|_| false))
            })
            .collect();
        self.metrics.set_backend_up(&healthy);
    }
}
