//! Process-wide state shared by the proxy, the admin API and background work: the one
//! `ArcSwap` holding the routing table, and the drain flag.

use crate::routing::RoutingTable;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared state. The table is replaced whole by [`State::swap`]; readers take one
/// snapshot per request with [`State::table`].
pub struct State {
    table: ArcSwap<RoutingTable>,
    draining: AtomicBool,
}

impl State {
    pub fn new(table: RoutingTable) -> State {
        State {
            table: ArcSwap::from_pointee(table),
            draining: AtomicBool::new(false),
        }
    }

    /// One consistent snapshot of the routing table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Replaces the routing table atomically; returns the previous one.
    pub fn swap(&self, table: RoutingTable) -> Arc<RoutingTable> {
        self.table.swap(Arc::new(table))
    }

    /// Marks the process as draining: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
