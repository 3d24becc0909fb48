//! The error gate (SPEC, normative): Wilson score intervals for each side's error rate,
//! Newcombe's hybrid score interval for their difference, and the verdict against
//! `max_error_increase` with `min_requests`.
//!
//! References: E. B. Wilson (1927), "Probable inference, the law of succession, and
//! statistical inference"; R. G. Newcombe (1998), "Interval estimation for the difference
//! between independent proportions: comparison of eleven methods", Statistics in Medicine
//! 17, 873–890 (method 10). Zero errors, or only errors, on either side are ordinary
//! cases: every quantity stays finite and in range, never NaN.

use super::verdict::Verdict;
use serde::{Deserialize, Serialize};

/// One side's requests `n` and errors `e` in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub n: u64,
    pub e: u64,
}

/// An error rate with its Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// `e / n` (0 when `n` = 0).
    pub p: f64,
    pub lower: f64,
    pub upper: f64,
}

/// Wilson score interval for `e` errors in `n` requests at critical value `z`.
/// `n` = 0 gives p = 0 in [0, 1] (nothing is known); `e` > `n` counts as `e` = `n`.
pub fn wilson(t: Tally, z: f64) -> Rate {
    if t.n == 0 {
        return Rate {
            p: 0.0,
            lower: 0.0,
            upper: 1.0,
        };
    }
    let n = t.n as f64;
    let e = t.e.min(t.n);
    let p = e as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At e = 0 (e = n) the lower (upper) bound is exactly 0 (1); rounding must not leave
    // it a hair inside, or the interval would exclude p.
    let lower = if e == 0 {
        0.0
    } else {
        (centre - half).clamp(0.0, p)
    };
    let upper = if e == t.n {
        1.0
    } else {
        (centre + half).clamp(p, 1.0)
    };
    Rate { p, lower, upper }
}

/// Newcombe's hybrid score interval `[L, U]` for `d = p_c − p_b`:
/// `L = d − sqrt((p_c − l_c)² + (u_b − p_b)²)`, `U = d + sqrt((u_c − p_c)² + (p_b − l_b)²)`.
pub fn newcombe(canary: Rate, baseline: Rate) -> (f64, f64) {
    let d = canary.p - baseline.p;
    let lower =
        d - ((canary.p - canary.lower).powi(2) + (baseline.upper - baseline.p).powi(2)).sqrt();
    let upper =
        d + ((canary.upper - canary.p).powi(2) + (baseline.p - baseline.lower).powi(2)).sqrt();
    (lower, upper)
}

/// The error gate's numbers and verdict (`last_check.errors` in `GET /rollout`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorGate {
    pub canary: Tally,
    pub baseline: Tally,
    /// Newcombe interval of canary rate − baseline rate.
    pub lower: f64,
    pub upper: f64,
    pub result: Verdict,
}

/// The gate: **fail** if `L > max_error_increase`, **pass** if `U ≤ max_error_increase`,
/// otherwise, or when either side has fewer than `min_requests` requests, inconclusive.
/// The interval is computed (and reported) in every case.
pub fn error_gate(
    canary: Tally,
    baseline: Tally,
    z: f64,
    max_error_increase: f64,
    min_requests: u64,
) -> ErrorGate {
    let (lower, upper) = newcombe(wilson(canary, z), wilson(baseline, z));
    let result = if canary.n < min_requests || baseline.n < min_requests {
        Verdict::Inconclusive
    } else if lower > max_error_increase {
        Verdict::Fail
    } else if upper <= max_error_increase {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    ErrorGate {
        canary,
        baseline,
        lower,
        upper,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::normal::z_for;

    fn t(e: u64, n: u64) -> Tally {
        Tally { n, e }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Newcombe (1998) Table II, method 10 (95%), to the paper's 4 decimals: the eight
    /// published examples, including zero errors on one side and on both.
    #[test]
    fn newcombe_interval_matches_the_published_examples() {
        let z = z_for(0.95);
        for (ec, nc, eb, nb, l, u) in [
            (56, 70, 48, 80, 0.0524, 0.3339),
            (9, 10, 3, 10, 0.1705, 0.8090),
            (6, 7, 2, 7, 0.0582, 0.8062),
            (5, 56, 0, 29, -0.0381, 0.1926),
            (0, 10, 0, 20, -0.1611, 0.2775),
            (0, 10, 0, 10, -0.2775, 0.2775),
            (10, 10, 0, 20, 0.6791, 1.0000),
            (10, 10, 0, 10, 0.6075, 1.0000),
        ] {
            let (lo, hi) = newcombe(wilson(t(ec, nc), z), wilson(t(eb, nb), z));
            assert!(
                close(lo, l, 5e-5) && close(hi, u, 5e-5),
                "{ec}/{nc} - {eb}/{nb}: [{lo:.4}, {hi:.4}], want [{l}, {u}]"
            );
        }
    }

    #[test]
    fn wilson_interval_hand_computed() {
        // 81/263 at 95% (Newcombe 1998, single proportion): 0.2553 to 0.3662.
        let r = wilson(t(81, 263), z_for(0.95));
        assert!(close(r.p, 81.0 / 263.0, 1e-15));
        assert!(
            close(r.lower, 0.2553, 5e-5) && close(r.upper, 0.3662, 5e-5),
            "{r:?}"
        );
        // 0 of 100 at z = 2: upper = z² / (n + z²) = 4 / 104.
        let r = wilson(t(0, 100), 2.0);
        assert_eq!((r.p, r.lower), (0.0, 0.0));
        assert!(close(r.upper, 4.0 / 104.0, 1e-15), "{r:?}");
        // 100 of 100 at z = 2: lower = n / (n + z²) = 100 / 104.
        let r = wilson(t(100, 100), 2.0);
        assert_eq!((r.p, r.upper), (1.0, 1.0));
        assert!(close(r.lower, 100.0 / 104.0, 1e-15), "{r:?}");
    }

    #[test]
    fn edge_counts_are_finite_and_in_range() {
        let z = z_for(0.99);
        for (e, n) in [
            (0, 0),
            (0, 1),
            (1, 1),
            (0, 1_000_000),
            (1_000_000, 1_000_000),
            (5, 3),
            (1, u64::MAX),
        ] {
            let r = wilson(t(e, n), z);
            assert!(
                r.p.is_finite() && r.lower.is_finite() && r.upper.is_finite(),
                "{e}/{n}: {r:?}"
            );
            assert!(
                0.0 <= r.lower && r.lower <= r.p && r.p <= r.upper && r.upper <= 1.0,
                "{e}/{n}: {r:?}"
            );
        }
        assert_eq!(
            wilson(t(0, 0), z),
            Rate {
                p: 0.0,
                lower: 0.0,
                upper: 1.0
            }
        );
        assert_eq!(
            wilson(t(5, 3), z),
            wilson(t(3, 3), z),
            "e > n counts as e = n"
        );
    }

    #[test]
    fn gate_verdicts() {
        let z = z_for(0.99);
        let g = |c: Tally, b: Tally| error_gate(c, b, z, 0.005, 500);
        // 5% against 0%: fail. Interval computed independently: [0.033639, 0.070907].
        let r = g(t(50, 1000), t(0, 1000));
        assert_eq!(r.result, Verdict::Fail);
        assert!(
            close(r.lower, 0.033_638_709_956, 1e-9) && close(r.upper, 0.070_906_972_691, 1e-9),
            "{r:?}"
        );
        // 0 errors on both sides: symmetric interval, never NaN; with enough traffic, pass.
        let r = g(t(0, 1000), t(0, 1000));
        assert!(
            close(r.lower, -0.006_591_164_903, 1e-9) && close(r.upper, 0.006_591_164_903, 1e-9),
            "{r:?}"
        );
        assert_eq!(
            r.result,
            Verdict::Inconclusive,
            "0.0066 > 0.005: not yet sure"
        );
        assert_eq!(g(t(0, 10_000), t(0, 10_000)).result, Verdict::Pass);
        // Equal 1% rates: interval straddles 0 and exceeds 0.005 at n = 1000.
        let r = g(t(10, 1000), t(10, 1000));
        assert!(close(r.upper, 0.013_123_572_649, 1e-9), "{r:?}");
        assert_eq!(r.result, Verdict::Inconclusive);
        // 0.2% against 0.05% with lots of traffic: [0.00018, 0.00306] <= 0.005: pass.
        let r = g(t(20, 10_000), t(5, 10_000));
        assert!(
            close(r.lower, 0.000_180_248_946, 1e-9) && close(r.upper, 0.003_062_930_236, 1e-9),
            "{r:?}"
        );
        assert_eq!(r.result, Verdict::Pass);
        // Zero baseline errors against any canary errors is an ordinary case.
        assert_eq!(g(t(1000, 1000), t(0, 1000)).result, Verdict::Fail);
        assert_eq!(g(t(0, 1000), t(1000, 1000)).result, Verdict::Pass);
    }

    #[test]
    fn fewer_than_min_requests_on_either_side_is_inconclusive() {
        let z = z_for(0.99);
        // Even an all-errors canary: one 5xx at low traffic never rolls back.
        for (c, b) in [
            (t(499, 499), t(0, 10_000)),
            (t(1000, 10_000), t(0, 499)),
            (t(0, 0), t(0, 0)),
            (t(1, 1), t(0, 0)),
        ] {
            let r = error_gate(c, b, z, 0.005, 500);
            assert_eq!(r.result, Verdict::Inconclusive, "{c:?} vs {b:?}");
            assert!(r.lower.is_finite() && r.upper.is_finite());
        }
        // Exactly min_requests is enough.
        assert_eq!(
            error_gate(t(500, 500), t(0, 500), z, 0.005, 500).result,
            Verdict::Fail
        );
    }

    #[test]
    fn the_threshold_is_inclusive_for_pass_and_strict_for_fail() {
        // max_error_increase = U exactly: pass; = L exactly: not a fail.
        let z = z_for(0.99);
        let r = error_gate(t(20, 10_000), t(5, 10_000), z, 0.005, 1);
        assert_eq!(
            error_gate(t(20, 10_000), t(5, 10_000), z, r.upper, 1).result,
            Verdict::Pass
        );
        assert_eq!(
            error_gate(t(20, 10_000), t(5, 10_000), z, r.lower, 1).result,
            Verdict::Inconclusive
        );
    }

    /// The smallest canary count at which a clean canary (no errors) passes against a
    /// clean baseline of 50,000 requests: about z² / max_error_increase. docs/rollout.md
    /// ("How many requests a step needs") quotes these.
    #[test]
    fn a_clean_canary_needs_about_z_squared_over_the_limit_to_pass() {
        let needed = |confidence: f64, max: f64| {
            let z = z_for(confidence);
            (1..100_000u64)
                .find(|&n| error_gate(t(0, n), t(0, 50_000), z, max, 1).result == Verdict::Pass)
                .unwrap()
        };
        assert_eq!(needed(0.99, 0.005), 1_321);
        assert_eq!(needed(0.99, 0.01), 657);
        assert_eq!(needed(0.95, 0.005), 765);
        assert_eq!(needed(0.95, 0.02), 189);
    }

    proptest::proptest! {
        /// Any counts give finite bounds around the observed difference, never NaN.
        #[test]
        fn intervals_are_finite_and_contain_the_difference(
            nc in 0u64..2_000_000, fc in 0.0f64..=1.0,
            nb in 0u64..2_000_000, fb in 0.0f64..=1.0,
            confidence in 0.5f64..0.9999,
        ) {
            let c = t((nc as f64 * fc) as u64, nc);
            let b = t((nb as f64 * fb) as u64, nb);
            let (rc, rb) = (wilson(c, z_for(confidence)), wilson(b, z_for(confidence)));
            let (lo, hi) = newcombe(rc, rb);
            proptest::prop_assert!(lo.is_finite() && hi.is_finite());
            proptest::prop_assert!(lo <= rc.p - rb.p && rc.p - rb.p <= hi, "{} {} {}", lo, rc.p - rb.p, hi);
            proptest::prop_assert!((-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi));
        }

        /// One more canary error never turns a failing or inconclusive verdict into a pass.
        #[test]
        fn more_canary_errors_never_help(nc in 1u64..100_000, fc in 0.0f64..0.99, eb in 0u64..500) {
            let ec = (nc as f64 * fc) as u64;
            let b = t(eb.min(50_000), 50_000);
            let z = z_for(0.99);
            let rank = |v: Verdict| match v { Verdict::Pass => 0, Verdict::Inconclusive => 1, Verdict::Fail => 2 };
            let before = error_gate(t(ec, nc), b, z, 0.005, 500).result;
            let after = error_gate(t(ec + 1, nc), b, z, 0.005, 500).result;
            proptest::prop_assert!(rank(after) >= rank(before), "{:?} -> {:?}", before, after);
        }
    }
}
