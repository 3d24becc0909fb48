//! Metrics in one place (SPEC "Metrics"): names as constants, the process-wide families
//! in [`Metrics`], registered in prometheus' default registry (served by `GET /metrics`).
//!
//! The per-variant families (requests, durations, assignments, upstream errors, weights,
//! and the rollout's analysis inputs) are kept compactly in [`series`] and exported by
//! [`export`]; a table's handles to them are [`TableMetrics`] ([`table`]). Hot path:
//! every series a request can touch is resolved once per table build; a request never
//! looks labels up by string and takes no lock. Label values come from config names only,
//! never from requests.

mod export;
pub mod series;
mod table;

pub use table::{TableMetrics, VariantMetrics};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;

pub const REQUESTS_TOTAL: &str = "cohort_requests_total";
pub const REQUEST_DURATION: &str = "cohort_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "cohort_upstream_duration_seconds";
pub const ASSIGNMENTS_TOTAL: &str = "cohort_assignments_total";
pub const UPSTREAM_ERRORS_TOTAL: &str = "cohort_upstream_errors_total";
pub const BACKEND_UP: &str = "cohort_backend_up";
pub const VARIANT_WEIGHT: &str = "cohort_variant_weight";
pub const CONFIG_RELOADS_TOTAL: &str = "cohort_config_reloads_total";
pub const CONFIG_INFO: &str = "cohort_config_info";
pub const CONFIG_PENDING_UPGRADE: &str = "cohort_config_pending_upgrade_info";

/// Label value for requests that match no service.
pub const NONE: &str = "_none";

/// The `kind` label of `cohort_upstream_errors_total` (SPEC "Metrics").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
    Other,
    /// The TLS handshake with the backend failed (certificate, hostname, protocol).
    Tls,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`].
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
        ErrorKind::Other,
        ErrorKind::Tls,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Other => "other",
            ErrorKind::Tls => "tls",
        }
    }

    /// Position in [`ErrorKind::ALL`] (the metric handles are kept in that order).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Histogram buckets: 0.5 ms to 10 s, each 20% above the last, so any quantile read by
/// interpolation is within ±10% of the true value.
pub fn duration_buckets() -> Vec<f64> {
    let mut b = Vec::new();
    let mut v = 0.0005f64;
    while v < 10.0 {
        // Rounded to 4 significant digits (readable `le` labels), never more than 20%
        // above the previous bound.
        let digits = 3 - v.log10().floor() as i32;
        let scale = 10f64.powi(digits);
        let rounded = (v * scale).floor() / scale;
        b.push(rounded);
        v = rounded * 1.2;
    }
    b.push(10.0);
    b
}

/// Process-wide metric families (the per-variant ones are in [`series`]).
pub struct Metrics {
    pub backend_up: IntGaugeVec,
    reloads: IntCounterVec,
    config_info: IntGaugeVec,
    config_pending: IntGaugeVec,
}

/// The one instance, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::register);

fn reg<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only for a duplicate name: a programming error caught by tests.
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        log::error!("metric registration: {e}");
    }
    c
}

fn counters(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// Outcome of a reload attempt, as the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Unchanged,
    Error,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Error => "error",
        }
    }
}

impl Metrics {
    fn register() -> Metrics {
        let m = Metrics {
            backend_up: gauges(
                BACKEND_UP,
                "1 if the backend is considered healthy, else 0.",
                &["service", "variant", "backend"],
            ),
            reloads: counters(
                CONFIG_RELOADS_TOTAL,
                "Config reload attempts by result (applied, unchanged, error).",
                &["result"],
            ),
            config_info: gauges(
                CONFIG_INFO,
                "Always 1; the version label is the config version whose every setting is in effect (see cohort_config_pending_upgrade_info).",
                &["version"],
            ),
            config_pending: gauges(
                CONFIG_PENDING_UPGRADE,
                "1 while a loaded config version waits for a process upgrade to apply some settings (listed in the settings label); absent when converged.",
                &["version", "settings"],
            ),
        };
        if let Err(e) = prometheus::register(Box::new(export::Exporter::new())) {
            log::error!("metric registration: {e}");
        }
        for r in [
            ReloadResult::Applied,
            ReloadResult::Unchanged,
            ReloadResult::Error,
        ] {
            m.reloads.with_label_values(&[r.as_str()]);
        }
        m
    }

    pub fn record_reload(&self, result: ReloadResult) {
        self.reloads.with_label_values(&[result.as_str()]).inc();
    }

    /// Points `cohort_config_info` at the serving version, and
    /// `cohort_config_pending_upgrade_info` at the loaded one while it has upgrade-only
    /// changes (previous series are deleted).
    pub fn set_config_versions(&self, v: &crate::state::Versions) {
        self.config_info.reset();
        self.config_info
            .with_label_values(&[v.serving.as_str()])
            .set(1);
        self.config_pending.reset();
        if !v.pending_upgrade.is_empty() {
            let settings = v.pending_upgrade.join(",");
            self.config_pending
                .with_label_values(&[v.loaded.as_str(), settings.as_str()])
                .set(1);
        }
    }
}

const HASH_SLOT: usize = 1;
const COOKIE_SLOT: usize = 2;

/// Index of a reason in [`VariantMetrics`]'s assignment handles: the reasons of
/// [`series::FIXED_REASONS`], then one per rule.
pub fn reason_slot(r: crate::routing::Reason) -> usize {
    use crate::routing::Reason;
    match r {
        Reason::Forced => 0,
        Reason::Hash => HASH_SLOT,
        Reason::Cookie => COOKIE_SLOT,
        Reason::NoKey => 3,
        Reason::Fallback => 4,
        Reason::Rollback => 5,
        Reason::Rule(i) => 6 + i,
    }
}

/// Prometheus text exposition of the default registry.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut out) {
        log::error!("encoding metrics: {e}");
    }
    out
}
