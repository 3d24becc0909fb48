//! The rollout's metrics (SPEC "Progressive rollout", Interfaces): the gates' inputs
//! `cohort_analysis_requests_total{service,variant,outcome}` and
//! `cohort_analysis_duration_seconds{service,variant}`, counting hash- and
//! cookie-assigned requests only, and the rollout's own `cohort_rollout_percent`,
//! `cohort_rollout_state` and `cohort_rollout_checks_total`.
//!
//! The two analysis families are per variant: a request records them with the others
//! of its variant (`VariantMetrics::record_request`, kept in [`crate::metrics::series`]),
//! and the rollout loop reads them back as the engine's cumulative counters
//! (`VariantMetrics::analysis`). The rollout's own families are here.

use crate::rollout::{Phase, Verdict};
use prometheus::core::Collector;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;

pub const ANALYSIS_REQUESTS_TOTAL: &str = "cohort_analysis_requests_total";
pub const ANALYSIS_DURATION: &str = "cohort_analysis_duration_seconds";
pub const ROLLOUT_PERCENT: &str = "cohort_rollout_percent";
pub const ROLLOUT_STATE: &str = "cohort_rollout_state";
pub const ROLLOUT_CHECKS_TOTAL: &str = "cohort_rollout_checks_total";

/// The rollout's families, registered in the default registry on first use.
pub struct Families {
    percent: GaugeVec,
    state: IntGaugeVec,
    checks: IntCounterVec,
}

fn reg<C: Collector + Clone + 'static>(c: C) -> C {
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        log::error!("metric registration: {e}");
    }
    c
}

pub static FAMILIES: LazyLock<Families> = LazyLock::new(|| Families {
    percent: reg(GaugeVec::new(
        Opts::new(ROLLOUT_PERCENT, "The rollout's canary share (%)."),
        &["service"],
    )
    .unwrap_or_else(|e| panic!("{ROLLOUT_PERCENT}: {e}"))),
    state: reg(IntGaugeVec::new(
        Opts::new(ROLLOUT_STATE, "1 for the rollout's current state."),
        &["service", "state"],
    )
    .unwrap_or_else(|e| panic!("{ROLLOUT_STATE}: {e}"))),
    checks: reg(IntCounterVec::new(
        Opts::new(ROLLOUT_CHECKS_TOTAL, "Rollout checks by result."),
        &["service", "result"],
    )
    .unwrap_or_else(|e| panic!("{ROLLOUT_CHECKS_TOTAL}: {e}"))),
});

/// Publishes a rollout's percent and state.
pub fn set_rollout(service: &str, phase: Phase, percent: f64) {
    let f = &*FAMILIES;
    f.percent.with_label_values(&[service]).set(percent);
    for p in Phase::ALL {
        f.state
            .with_label_values(&[service, p.as_str()])
            .set(i64::from(p == phase));
    }
    for v in [Verdict::Pass, Verdict::Fail, Verdict::Inconclusive] {
        f.checks.with_label_values(&[service, v.as_str()]);
    }
}

/// Deletes the series of `service`'s rollout (its `[service.rollout]`, or the service,
/// left the config), so dashboards do not keep showing its last step.
pub fn remove_rollout(service: &str) {
    let f = &*FAMILIES;
    let _ = f.percent.remove_label_values(&[service]);
    for p in Phase::ALL {
        let _ = f.state.remove_label_values(&[service, p.as_str()]);
    }
    for v in [Verdict::Pass, Verdict::Fail, Verdict::Inconclusive] {
        let _ = f.checks.remove_label_values(&[service, v.as_str()]);
    }
}

/// Counts one check of `service`'s rollout.
pub fn count_check(service: &str, result: Verdict) {
    FAMILIES
        .checks
        .with_label_values(&[service, result.as_str()])
        .inc();
}
