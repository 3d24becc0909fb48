//! The latency gate (SPEC, normative): each side's `latency_quantile` from the window's
//! histogram buckets ([`super::quantile`]); inconclusive unless both sides have at least
//! `max(min_requests, 20 / (1 − q))` requests (so that at least 20 observations lie
//! above the quantile); **fail** if canary's > `max_latency_ratio` × baseline's +
//! `latency_slack_ms`; else **pass**.

use super::quantile::Buckets;
use super::verdict::Verdict;
use crate::config::Gates;
use serde::{Deserialize, Serialize};

/// The latency gate's numbers and verdict (`last_check.latency` in `GET /rollout`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyGate {
    /// The canary's quantile in seconds (`None`: no observations).
    pub canary_s: Option<f64>,
    pub baseline_s: Option<f64>,
    /// `max_latency_ratio × baseline_s + slack`, in seconds (`None` without a baseline).
    pub limit_s: Option<f64>,
    /// Requests each side needs for a verdict.
    pub min_count: u64,
    pub result: Verdict,
}

/// `max(min_requests, 20 / (1 − q))`, the fraction rounded up. A part in 10^9 is taken
/// off first so that binary rounding cannot ask for one more (20 / (1 − 0.99) evaluates
/// to 2000.0000000000018; the rule means 2000).
pub fn min_count(gates: &Gates) -> u64 {
    let tail = (20.0 / (1.0 - gates.latency_quantile) - 1e-9).ceil();
    let tail = if tail.is_finite() && tail > 0.0 {
        tail.min(u64::MAX as f64) as u64
    } else {
        u64::MAX
    };
    gates.min_requests.max(tail)
}

/// Judges canary against baseline latency.
pub fn latency_gate(canary: Buckets<'_>, baseline: Buckets<'_>, gates: &Gates) -> LatencyGate {
    let q = gates.latency_quantile;
    let canary_s = canary.quantile(q);
    let baseline_s = baseline.quantile(q);
    let limit_s = baseline_s.map(|b| gates.max_latency_ratio * b + gates.latency_slack_ms / 1000.0);
    let min_count = min_count(gates);
    let result = match (canary_s, limit_s) {
        _ if canary.total() < min_count || baseline.total() < min_count => Verdict::Inconclusive,
        (Some(c), Some(limit)) if c > limit => Verdict::Fail,
        (Some(_), Some(_)) => Verdict::Pass,
        _ => Verdict::Inconclusive,
    };
    LatencyGate {
        canary_s,
        baseline_s,
        limit_s,
        min_count,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::quantile::cumulative;

    const BOUNDS: [f64; 4] = [0.010, 0.050, 0.100, 0.500];

    fn side(counts: &[u64]) -> Buckets<'_> {
        Buckets {
            bounds: &BOUNDS,
            counts,
        }
    }

    fn gates(min_requests: u64, q: f64) -> Gates {
        Gates {
            min_requests,
            latency_quantile: q,
            ..Gates::default()
        }
    }

    #[test]
    fn min_count_is_the_larger_of_min_requests_and_twenty_above_the_quantile() {
        for (min, q, want) in [
            (500, 0.99, 2000),
            (5000, 0.99, 5000),
            (1, 0.95, 400),
            (1, 0.5, 40),
            (100, 0.5, 100),
            (1, 0.999, 20_000),
            (1, 0.9, 200),
        ] {
            assert_eq!(min_count(&gates(min, q)), want, "min_requests {min}, q {q}");
        }
    }

    #[test]
    fn verdicts() {
        let g = gates(1, 0.5); // min count 40
        let h = |per: [u64; 5]| cumulative(&per);
        // Baseline median 0.030 s (all 100 in (0.010, 0.050]); limit 1.25 × 0.030 + 0.005.
        let base = h([0, 100, 0, 0, 0]);
        // Same shape: pass.
        let r = latency_gate(side(&base), side(&base), &g);
        assert_eq!(r.result, Verdict::Pass);
        assert!((r.baseline_s.unwrap() - 0.030).abs() < 1e-12);
        assert!((r.limit_s.unwrap() - 0.0425).abs() < 1e-12);
        // Canary median 0.075 s: fail.
        let slow = h([0, 0, 100, 0, 0]);
        let r = latency_gate(side(&slow), side(&base), &g);
        assert_eq!(r.result, Verdict::Fail, "{r:?}");
        assert!((r.canary_s.unwrap() - 0.075).abs() < 1e-12);
        // Canary faster: pass.
        let fast = h([100, 0, 0, 0, 0]);
        assert_eq!(
            latency_gate(side(&fast), side(&base), &g).result,
            Verdict::Pass
        );
        // Exactly at the limit passes (fail is strictly above): ratio 1, no slack, the
        // canary's median equal to the baseline's (0.030 s).
        let at_limit = h([0, 80, 0, 0, 0]);
        let r = latency_gate(
            side(&at_limit),
            side(&base),
            &Gates {
                max_latency_ratio: 1.0,
                latency_slack_ms: 0.0,
                ..g
            },
        );
        assert_eq!(r.result, Verdict::Pass, "equal quantiles are not slower");
    }

    #[test]
    fn too_few_requests_on_either_side_is_inconclusive_even_when_far_slower() {
        let g = gates(1, 0.5); // min count 40
        let slow = cumulative(&[0, 0, 0, 39, 0]);
        let base = cumulative(&[1000, 0, 0, 0, 0]);
        assert_eq!(
            latency_gate(side(&slow), side(&base), &g).result,
            Verdict::Inconclusive
        );
        assert_eq!(
            latency_gate(side(&base), side(&slow), &g).result,
            Verdict::Inconclusive
        );
        let slow40 = cumulative(&[0, 0, 0, 40, 0]);
        assert_eq!(
            latency_gate(side(&slow40), side(&base), &g).result,
            Verdict::Fail
        );
        // Empty histograms: no quantile, inconclusive, nothing NaN.
        let empty = [0u64; 5];
        let r = latency_gate(side(&empty), side(&empty), &g);
        assert_eq!(
            (r.canary_s, r.baseline_s, r.result),
            (None, None, Verdict::Inconclusive)
        );
    }

    #[test]
    fn p99_needs_two_thousand_requests_with_the_default_min_requests() {
        let g = Gates::default();
        let slow = cumulative(&[0, 0, 0, 1999, 0]);
        let base = cumulative(&[1999, 0, 0, 0, 0]);
        assert_eq!(
            latency_gate(side(&slow), side(&base), &g).result,
            Verdict::Inconclusive
        );
        let slow = cumulative(&[0, 0, 0, 2000, 0]);
        let base = cumulative(&[2000, 0, 0, 0, 0]);
        assert_eq!(
            latency_gate(side(&slow), side(&base), &g).result,
            Verdict::Fail
        );
    }
}
