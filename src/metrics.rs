//! Metrics in one place (SPEC "Metrics"): names as constants, one [`Metrics`] type with
//! `record_*` methods, registered in prometheus' default registry (which `/metrics` on the
//! admin listener serves). Label values come from config names only, never from requests.

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;

pub const CONFIG_RELOADS_TOTAL: &str = "cohort_config_reloads_total";
pub const CONFIG_INFO: &str = "cohort_config_info";

/// Process-wide metric families.
pub struct Metrics {
    reloads: IntCounterVec,
    config_info: IntGaugeVec,
}

/// The one instance, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::register);

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Registration fails only for a duplicate name, which would be a programming error.
    let _ = prometheus::register(Box::new(c.clone()));
    c
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = prometheus::register(Box::new(g.clone()));
    g
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
            reloads: counter_vec(
                CONFIG_RELOADS_TOTAL,
                "Config reload attempts by result (applied, unchanged, error).",
                &["result"],
            ),
            config_info: gauge_vec(
                CONFIG_INFO,
                "Always 1; the version label is the loaded config's version.",
                &["version"],
            ),
        };
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

    /// Points `cohort_config_info` at `version` (the previous series is deleted).
    pub fn set_config_version(&self, previous: Option<&str>, version: &str) {
        if let Some(p) = previous.filter(|p| *p != version) {
            let _ = self.config_info.remove_label_values(&[p]);
        }
        self.config_info.with_label_values(&[version]).set(1);
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
