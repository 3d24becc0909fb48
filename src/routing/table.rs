//! [`RoutingTable`]: everything a request needs, compiled from one [`Config`] and
//! immutable afterwards. The server holds it in one `ArcSwap`; a request takes one
//! snapshot and keeps it to the end, so a reload never mixes two configs in one request.

use super::router::Router;
use crate::config::{Config, ConfigError};
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
        if !errs.is_empty() {
            return Err(ConfigError::Invalid(errs));
        }
        Ok(RoutingTable {
            router: Router::new(&config),
            config: Arc::new(config),
            pools,
            loaded_at: SystemTime::now(),
        })
    }
}
