//! [`RoutingTable`]: everything a request needs, compiled from one [`Config`] and
//! immutable afterwards. The server holds it in one `ArcSwap`; a request takes one
//! snapshot and keeps it to the end, so a reload never mixes two configs in one request.

use super::router::Router;
use crate::config::{Config, ConfigError};
use crate::metrics::TableMetrics;
use crate::tls::Certificates;
use crate::upstream::{self, Pool};
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

impl RoutingTable {
    /// Resolves every backend and builds the pools. All resolution errors are reported.
    pub fn build(config: Config) -> Result<RoutingTable, ConfigError> {
        let mut errs = Vec::new();
        let mut pools = Vec::with_capacity(config.services.len());
        for (si, s) in config.services.iter().enumerate() {
            let mut vp = Vec::with_capacity(s.variants.len());
            for (vi, v) in s.variants.iter().enumerate() {
                match upstream::resolve(v, &format!("service[{si}].variant[{vi}]")) {
                    Ok(addrs) => vp.push(Pool::new(v, addrs)),
                    Err(e) => errs.extend(e),
                }
            }
            pools.push(vp);
        }
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
        let addrs: Vec<Vec<Vec<String>>> = pools
            .iter()
            .map(|vp| {
                vp.iter()
                    .map(|p| p.addrs.iter().map(|a| a.to_string()).collect())
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

    /// Whether resolving the backends again (with `resolve`) would give any pool other
    /// addresses than it has. Resolution errors count as "no change": the table keeps
    /// serving the addresses it has.
    pub fn addresses_changed<F>(&self, resolve: F) -> bool
    where
        F: Fn(
            &crate::config::VariantConfig,
            &str,
        ) -> Result<Vec<std::net::SocketAddr>, Vec<crate::config::FieldError>>,
    {
        self.config.services.iter().enumerate().any(|(si, s)| {
            s.variants.iter().enumerate().any(|(vi, v)| {
                let path = format!("service[{si}].variant[{vi}]");
                match (
                    resolve(v, &path),
                    self.pools.get(si).and_then(|p| p.get(vi)),
                ) {
                    (Ok(addrs), Some(pool)) => addrs != pool.addrs,
                    _ => false,
                }
            })
        })
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
            .flat_map(|p| p.health().into_iter().map(|(_, h)| h))
            .collect();
        self.metrics.set_backend_up(&healthy);
    }
}
