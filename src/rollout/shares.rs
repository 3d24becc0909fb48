//! Effective weights (SPEC "Shares"): while a rollout runs, the canary's and baseline's
//! configured weights are replaced by (`percent`, 100 − `percent`) scaled to their
//! configured sum; other variants keep theirs. Promoted: the canary has the whole sum;
//! rolled back: none of it, and decisions that pin users to the canary (rules) go to the
//! baseline instead, reason `rollback`. The assignment function is unchanged, so every
//! step only moves users *into* the canary.

use super::state::{Phase, RolloutState};
use crate::config::RolloutConfig;

/// What the router uses for a service while it has a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// One weight per variant, in config order, for hashing.
    pub weights: Vec<f64>,
    /// Set when rolled back: (canary, baseline) indexes; a rule decision for the canary
    /// goes to the baseline ([`Effective::redirect`]). `force_header` is not redirected.
    pub suspended: Option<(usize, usize)>,
}

impl Effective {
    /// The variant a *rule* decision for `variant` becomes: the baseline when the canary
    /// is rolled back (reason `rollback`), else `None` (unchanged).
    pub fn redirect(&self, variant: usize) -> Option<usize> {
        match self.suspended {
            Some((canary, baseline)) if canary == variant => Some(baseline),
            _ => None,
        }
    }
}

/// The weights for `configured` (the variants' own, config order) when the canary has
/// `canary_percent` (0–100) of what it and the baseline split.
pub fn weights(
    configured: &[f64],
    canary: usize,
    baseline: usize,
    canary_percent: f64,
) -> Vec<f64> {
    let mut w = configured.to_vec();
    let (Some(&wc), Some(&wb)) = (configured.get(canary), configured.get(baseline)) else {
        return w;
    };
    let sum = wc + wb;
    let p = canary_percent.clamp(0.0, 100.0);
    w[canary] = sum * p / 100.0;
    w[baseline] = sum * (100.0 - p) / 100.0;
    w
}

/// The effective routing of a service whose rollout `cfg` is in `state`.
pub fn effective(configured: &[f64], cfg: &RolloutConfig, state: &RolloutState) -> Effective {
    let (c, b) = (cfg.canary.index, cfg.baseline.index);
    Effective {
        weights: weights(configured, c, b, state.percent),
        suspended: (state.phase == Phase::RolledBack).then_some((c, b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::cohort::{assign, variant_seed};
    use proptest::prelude::*;

    #[test]
    fn canary_and_baseline_split_their_sum_others_keep_theirs() {
        // stable 90, canary 10, beta 20: the pair splits 100.
        let conf = [90.0, 10.0, 20.0];
        assert_eq!(weights(&conf, 1, 0, 1.0), [99.0, 1.0, 20.0]);
        assert_eq!(weights(&conf, 1, 0, 25.0), [75.0, 25.0, 20.0]);
        assert_eq!(weights(&conf, 1, 0, 100.0), [0.0, 100.0, 20.0]);
        assert_eq!(weights(&conf, 1, 0, 0.0), [100.0, 0.0, 20.0]);
        // Scaled to the configured sum (here 2).
        assert_eq!(weights(&[1.0, 1.0], 1, 0, 50.0), [1.0, 1.0]);
        assert_eq!(weights(&[1.5, 0.5], 1, 0, 5.0), [1.9, 0.1]);
        // Out-of-range indexes change nothing.
        assert_eq!(weights(&conf, 7, 0, 50.0), conf);
    }

    #[test]
    fn rolled_back_redirects_rule_decisions_for_the_canary_only() {
        let e = Effective {
            weights: vec![100.0, 0.0, 20.0],
            suspended: Some((1, 0)),
        };
        assert_eq!(e.redirect(1), Some(0));
        assert_eq!(e.redirect(0), None);
        assert_eq!(e.redirect(2), None);
        let running = Effective {
            weights: vec![95.0, 5.0],
            suspended: None,
        };
        assert_eq!(running.redirect(1), None);
    }

    proptest! {
        /// Ramping through any increasing steps (then promotion) never moves a user out of
        /// the canary and never into the baseline, with the real assignment function, with
        /// or without a third variant beside them.
        #[test]
        fn ramping_never_moves_a_user_out_of_the_canary(
            mut steps in proptest::collection::vec(0.01f64..99.99, 1..6),
            stable in 0.1f64..100.0,
            canary in 0.0f64..100.0,
            beta in prop_oneof![Just(0.0), 0.1f64..50.0],
            keys in proptest::collection::vec(any::<u64>(), 200),
        ) {
            steps.sort_by(f64::total_cmp);
            steps.dedup();
            steps.push(100.0);
            let conf = [stable, canary, beta];
            let seeds: Vec<u64> = ["stable", "canary", "beta"].iter().map(|n| variant_seed("api", n)).collect();
            for key in keys {
                let key = key.to_string();
                let mut before = None;
                for &p in &steps {
                    let now = assign(key.as_bytes(), &seeds, &weights(&conf, 1, 0, p));
                    if before == Some(1) {
                        prop_assert_eq!(now, Some(1), "user {} left the canary at {}%", key, p);
                    }
                    if before.is_some() && before != Some(0) {
                        prop_assert_ne!(now, Some(0), "user {} moved into the baseline at {}%", key, p);
                    }
                    before = now;
                }
                prop_assert_ne!(before, Some(0), "user {} still in the baseline at 100%", key);
            }
        }
    }
}
