//! The rollout's metrics (SPEC "Progressive rollout", Interfaces): the gates' inputs
//! `cohort_analysis_requests_total{service,variant,outcome}` and
//! `cohort_analysis_duration_seconds{service,variant}`, counting hash- and
//! cookie-assigned requests only, and the rollout's own `cohort_rollout_percent`,
//! `cohort_rollout_state` and `cohort_rollout_checks_total`.
//!
//! As in [`crate::metrics`], a request records into handles resolved once per table
//! ([`Analysis`], held by each `VariantMetrics`); the rollout loop reads the same handles
//! back as the engine's cumulative [`SideCounters`].

use crate::metrics::duration_buckets;
use crate::rollout::{Phase, SideCounters, Verdict};
use prometheus::core::Collector;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
};
use std::sync::LazyLock;

pub const ANALYSIS_REQUESTS_TOTAL: &str = "cohort_analysis_requests_total";
pub const ANALYSIS_DURATION: &str = "cohort_analysis_duration_seconds";
pub const ROLLOUT_PERCENT: &str = "cohort_rollout_percent";
pub const ROLLOUT_STATE: &str = "cohort_rollout_state";
pub const ROLLOUT_CHECKS_TOTAL: &str = "cohort_rollout_checks_total";

/// The families, registered in the default registry on first use.
pub struct Families {
    requests: IntCounterVec,
    duration: HistogramVec,
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

pub static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    Families {
    requests: reg(IntCounterVec::new(
        Opts::new(
            ANALYSIS_REQUESTS_TOTAL,
            "Hash- and cookie-assigned requests by variant and outcome (error: status >= 500 sent, or a gRPC server fault), the rollout gates' input.",
        ),
        &["service", "variant", "outcome"],
    )
    .unwrap_or_else(|e| panic!("{ANALYSIS_REQUESTS_TOTAL}: {e}"))),
    duration: reg(HistogramVec::new(
        HistogramOpts::new(
            ANALYSIS_DURATION,
            "Duration of hash- and cookie-assigned requests, the rollout latency gate's input.",
        )
        .buckets(duration_buckets()),
        &["service", "variant"],
    )
    .unwrap_or_else(|e| panic!("{ANALYSIS_DURATION}: {e}"))),
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
}
});

/// One variant's analysis handles.
pub struct Analysis {
    ok: IntCounter,
    error: IntCounter,
    duration: Histogram,
}

impl Analysis {
    /// The series of (`service`, `variant`), created at 0.
    pub fn new(service: &str, variant: &str) -> Analysis {
        let f = &*FAMILIES;
        Analysis {
            ok: f.requests.with_label_values(&[service, variant, "ok"]),
            error: f.requests.with_label_values(&[service, variant, "error"]),
            duration: f.duration.with_label_values(&[service, variant]),
        }
    }

    /// Handles exported nowhere (requests that match no service).
    pub fn detached() -> Analysis {
        let h = Histogram::with_opts(HistogramOpts::new("unexported", "not exported"));
        let c = || IntCounter::new("unexported", "not exported");
        match (c(), c(), h) {
            (Ok(ok), Ok(error), Ok(duration)) => Analysis {
                ok,
                error,
                duration,
            },
            _ => Analysis::new(crate::metrics::NONE, crate::metrics::NONE),
        }
    }

    /// Counts one hash- or cookie-assigned request, an error or not
    /// ([`crate::forward::grpc::is_error`]).
    #[inline]
    pub fn record(&self, error: bool, seconds: f64) {
        if error {
            self.error.inc();
        } else {
            self.ok.inc();
        }
        self.duration.observe(seconds);
    }

    /// The cumulative counts, as the engine reads them.
    pub fn read(&self) -> SideCounters {
        let (ok, errors) = (self.ok.get(), self.error.get());
        let mut buckets = Vec::new();
        let mut total = 0;
        for m in self.duration.collect().iter().flat_map(|f| f.get_metric()) {
            let h = m.get_histogram();
            buckets = h
                .get_bucket()
                .iter()
                .map(|b| b.cumulative_count())
                .collect();
            total = h.get_sample_count();
        }
        buckets.push(total);
        SideCounters {
            requests: ok + errors,
            errors,
            buckets,
        }
    }

    /// Deletes the series of (`service`, `variant`) (a variant no longer configured).
    pub fn remove(service: &str, variant: &str) {
        let f = &*FAMILIES;
        for outcome in ["ok", "error"] {
            let _ = f.requests.remove_label_values(&[service, variant, outcome]);
        }
        let _ = f.duration.remove_label_values(&[service, variant]);
    }
}

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

/// Counts one check of `service`'s rollout.
pub fn count_check(service: &str, result: Verdict) {
    FAMILIES
        .checks
        .with_label_values(&[service, result.as_str()])
        .inc();
}
