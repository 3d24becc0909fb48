//! One check: the three gates on the window's counts, combined (SPEC "Gates"). Pure:
//! the window's totals and the canary's availability in, a [`CheckReport`] out.

use super::error_gate::{error_gate, ErrorGate};
use super::latency_gate::{latency_gate, LatencyGate};
use super::quantile::Buckets;
use super::verdict::Verdict;
use super::window::Counters;
use crate::config::Gates;
use serde::{Deserialize, Serialize};

/// Whether the canary could serve during the check interval: the availability gate's
/// input, observed by the caller (health checks) over the whole `check_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// At least one canary backend was healthy at some time during the interval.
    Available,
    /// No canary backend was healthy for the whole interval.
    Unavailable,
}

/// The availability gate: fails when the canary had no healthy backend all along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailabilityGate {
    pub result: Verdict,
}

/// What one check found (`last_check` in `GET /rollout`, and one point of the report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Unix seconds.
    pub at: u64,
    pub result: Verdict,
    /// The step and canary percent the window was taken at.
    pub step: usize,
    pub percent: f64,
    pub errors: ErrorGate,
    pub latency: LatencyGate,
    pub availability: AvailabilityGate,
}

/// Runs the gates on a window. `z` is [`super::normal::z_for`]`(gates.confidence)`;
/// `bounds` the histogram's finite bucket bounds.
pub fn evaluate(
    gates: &Gates,
    z: f64,
    bounds: &[f64],
    window: &Counters,
    availability: Availability,
) -> (Verdict, ErrorGate, LatencyGate, AvailabilityGate) {
    let errors = error_gate(
        window.canary.tally(),
        window.baseline.tally(),
        z,
        gates.max_error_increase,
        gates.min_requests,
    );
    let latency = latency_gate(
        Buckets {
            bounds,
            counts: &window.canary.buckets,
        },
        Buckets {
            bounds,
            counts: &window.baseline.buckets,
        },
        gates,
    );
    let availability = AvailabilityGate {
        result: match availability {
            Availability::Available => Verdict::Pass,
            Availability::Unavailable => Verdict::Fail,
        },
    };
    let result = Verdict::combine([errors.result, latency.result, availability.result]);
    (result, errors, latency, availability)
}

impl CheckReport {
    /// One line with every number behind the verdict, for logs, `why` and webhooks.
    pub fn summary(&self, gates: &Gates) -> String {
        let e = &self.errors;
        let rate = |n: u64, err: u64| {
            if n == 0 {
                0.0
            } else {
                100.0 * err.min(n) as f64 / n as f64
            }
        };
        let ms = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.1} ms", s * 1000.0));
        let q = gates.latency_quantile * 100.0;
        format!(
            "errors {}: canary {:.3}% ({}/{}), baseline {:.3}% ({}/{}), difference in [{:+.3}%, {:+.3}%] vs max {:+.3}%{}; \
             latency {}: p{q} canary {}, baseline {}, limit {}{}; availability {}",
            e.result,
            rate(e.canary.n, e.canary.e),
            e.canary.e,
            e.canary.n,
            rate(e.baseline.n, e.baseline.e),
            e.baseline.e,
            e.baseline.n,
            100.0 * e.lower,
            100.0 * e.upper,
            100.0 * gates.max_error_increase,
            if e.canary.n < gates.min_requests || e.baseline.n < gates.min_requests {
                format!(" (needs {} requests a side)", gates.min_requests)
            } else {
                String::new()
            },
            self.latency.result,
            ms(self.latency.canary_s),
            ms(self.latency.baseline_s),
            ms(self.latency.limit_s),
            if e.canary.n < self.latency.min_count || e.baseline.n < self.latency.min_count {
                format!(" (needs {} requests a side)", self.latency.min_count)
            } else {
                String::new()
            },
            self.availability.result,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::normal::z_for;
    use crate::rollout::window::SideCounters;

    const BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];

    fn side(n: u64, e: u64, per_bucket: [u64; 4]) -> SideCounters {
        SideCounters {
            requests: n,
            errors: e,
            buckets: crate::rollout::quantile::cumulative(&per_bucket),
        }
    }

    fn run(
        c: SideCounters,
        b: SideCounters,
        a: Availability,
    ) -> (Verdict, ErrorGate, LatencyGate, AvailabilityGate) {
        let gates = Gates {
            min_requests: 100,
            latency_quantile: 0.5,
            ..Gates::default()
        };
        evaluate(
            &gates,
            z_for(gates.confidence),
            &BOUNDS,
            &Counters {
                canary: c,
                baseline: b,
            },
            a,
        )
    }

    #[test]
    fn each_gate_decides_its_part() {
        let good = side(10_000, 0, [10_000, 0, 0, 0]);
        let (v, e, l, a) = run(good.clone(), good.clone(), Availability::Available);
        assert_eq!(
            (v, e.result, l.result, a.result),
            (Verdict::Pass, Verdict::Pass, Verdict::Pass, Verdict::Pass)
        );
        // Errors alone fail the check.
        let (v, e, ..) = run(
            side(10_000, 500, [10_000, 0, 0, 0]),
            good.clone(),
            Availability::Available,
        );
        assert_eq!((v, e.result), (Verdict::Fail, Verdict::Fail));
        // Latency alone fails it.
        let (v, _, l, _) = run(
            side(10_000, 0, [0, 0, 10_000, 0]),
            good.clone(),
            Availability::Available,
        );
        assert_eq!((v, l.result), (Verdict::Fail, Verdict::Fail));
        // Availability alone fails it, even with no traffic at all.
        let empty = side(0, 0, [0, 0, 0, 0]);
        let (v, e, l, a) = run(empty.clone(), empty.clone(), Availability::Unavailable);
        assert_eq!(
            (v, e.result, l.result, a.result),
            (
                Verdict::Fail,
                Verdict::Inconclusive,
                Verdict::Inconclusive,
                Verdict::Fail
            )
        );
        // Low traffic and available: inconclusive.
        let (v, ..) = run(
            side(50, 50, [0, 0, 0, 50]),
            side(50, 0, [50, 0, 0, 0]),
            Availability::Available,
        );
        assert_eq!(v, Verdict::Inconclusive);
    }

    #[test]
    fn the_summary_carries_the_numbers() {
        let gates = Gates::default();
        let (result, errors, latency, availability) = run(
            side(1000, 50, [1000, 0, 0, 0]),
            side(1000, 0, [1000, 0, 0, 0]),
            Availability::Available,
        );
        let r = CheckReport {
            at: 7,
            result,
            step: 1,
            percent: 5.0,
            errors,
            latency,
            availability,
        };
        let s = r.summary(&gates);
        assert!(
            s.starts_with(
                "errors fail: canary 5.000% (50/1000), baseline 0.000% (0/1000), difference in [+"
            ),
            "{s}"
        );
        assert!(
            s.contains("latency") && s.contains("availability pass"),
            "{s}"
        );
    }
}
