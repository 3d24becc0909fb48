//! A quantile estimated from histogram buckets exactly as Prometheus'
//! `histogram_quantile` does (`promql/quantile.go`, `bucketQuantile`): find the bucket
//! holding rank `q × count` and interpolate linearly inside it; the lowest bucket starts
//! at 0 (when its upper bound is positive); a rank in the `+Inf` bucket answers the
//! highest finite bound; an empty histogram has no quantile.

/// Cumulative bucket counts of one histogram: `counts[i]` observations ≤ `bounds[i]`,
/// and one more entry for `+Inf` (the total count), as in the text exposition.
#[derive(Debug, Clone, Copy)]
pub struct Buckets<'a> {
    /// Finite upper bounds, increasing (`le` labels without `+Inf`).
    pub bounds: &'a [f64],
    /// `bounds.len() + 1` cumulative counts, the last one the `+Inf` bucket.
    pub counts: &'a [u64],
}

impl Buckets<'_> {
    /// Observations in total (the `+Inf` bucket).
    pub fn total(&self) -> u64 {
        self.counts.last().copied().unwrap_or(0)
    }

    /// The `q`-quantile (q in [0, 1]), or `None` for an empty histogram, a q outside
    /// [0, 1], or counts that do not match the bounds. Counts that decrease (a torn read)
    /// are treated as Prometheus does: each bucket at least the one before.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) || self.counts.len() != self.bounds.len() + 1 {
            return None;
        }
        // Upper bounds with +Inf last, counts made monotonic.
        let mut cum = Vec::with_capacity(self.counts.len());
        let mut max = 0u64;
        for &c in self.counts {
            max = max.max(c);
            cum.push(max as f64);
        }
        let total = *cum.last()?;
        if cum.len() < 2 || total == 0.0 {
            return None;
        }
        let upper = |i: usize| self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
        let mut rank = q * total;
        let b = cum.iter().position(|&c| c >= rank).unwrap_or(cum.len() - 1);
        if b == cum.len() - 1 {
            return Some(upper(cum.len() - 2));
        }
        if b == 0 && upper(0) <= 0.0 {
            return Some(upper(0));
        }
        let mut start = 0.0;
        let end = upper(b);
        let mut count = cum[b];
        if b > 0 {
            start = upper(b - 1);
            count -= cum[b - 1];
            rank -= cum[b - 1];
        }
        Some(start + (end - start) * (rank / count))
    }
}

/// Observations per bucket → cumulative counts with the `+Inf` total last (a helper for
/// tests and for callers that keep per-bucket counts).
pub fn cumulative(per_bucket: &[u64]) -> Vec<u64> {
    per_bucket
        .iter()
        .scan(0u64, |acc, &c| {
            *acc = acc.saturating_add(c);
            Some(*acc)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 4] = [0.1, 0.2, 0.5, 1.0];

    fn q(counts: &[u64], q: f64) -> Option<f64> {
        Buckets {
            bounds: &BOUNDS,
            counts,
        }
        .quantile(q)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn interpolates_linearly_inside_the_bucket() {
        // 10 in (0, 0.1], 10 in (0.1, 0.2], 20 in (0.2, 0.5], 0 above: total 40.
        let c = [10, 20, 40, 40, 40];
        // rank 20 (median) is the top of bucket 1: 0.1 + 0.1 × 10/10.
        assert!(close(q(&c, 0.5), 0.2));
        // rank 30: bucket 2, 10 of 20 in: 0.2 + 0.3 × 0.5.
        assert!(close(q(&c, 0.75), 0.35));
        // rank 36: 0.2 + 0.3 × 16/20.
        assert!(close(q(&c, 0.9), 0.44));
    }

    #[test]
    fn the_lowest_bucket_starts_at_zero() {
        let c = [40, 40, 40, 40, 40];
        assert!(close(q(&c, 0.5), 0.05));
        assert!(close(q(&c, 0.25), 0.025));
    }

    #[test]
    fn a_rank_in_the_inf_bucket_answers_the_highest_finite_bound() {
        let c = [0, 0, 0, 90, 100];
        assert!(close(q(&c, 0.95), 1.0));
        assert!(close(q(&c, 0.5), 0.5 + 0.5 * 50.0 / 90.0));
    }

    #[test]
    fn a_non_positive_lowest_bound_is_returned_as_is() {
        let b = Buckets {
            bounds: &[-1.0, 0.0, 1.0],
            counts: &[5, 10, 10, 10],
        };
        assert_eq!(b.quantile(0.1), Some(-1.0));
    }

    #[test]
    fn empty_or_malformed_histograms_have_no_quantile() {
        assert_eq!(q(&[0, 0, 0, 0, 0], 0.99), None);
        assert_eq!(q(&[1, 2, 3], 0.5), None, "counts must match the bounds");
        assert_eq!(q(&[1, 1, 1, 1, 1], 1.5), None);
        assert_eq!(q(&[1, 1, 1, 1, 1], f64::NAN), None);
        assert_eq!(
            Buckets {
                bounds: &[],
                counts: &[5]
            }
            .quantile(0.5),
            None
        );
    }

    #[test]
    fn decreasing_counts_are_made_monotonic() {
        // Bucket 2 reads lower than bucket 1; Prometheus raises it to 20.
        let c = [10, 20, 15, 40, 40];
        assert!(close(q(&c, 0.5), 0.2));
        assert!(close(q(&c, 0.75), 0.5 + 0.5 * 10.0 / 20.0));
    }

    #[test]
    fn per_bucket_counts_accumulate() {
        assert_eq!(cumulative(&[1, 2, 0, 3]), [1, 3, 3, 6]);
        assert!(close(q(&cumulative(&[10, 10, 20, 0, 0]), 0.75), 0.35));
    }

    proptest::proptest! {
        /// Any non-empty histogram gives a quantile between 0 and the highest finite
        /// bound, not decreasing in q.
        #[test]
        fn quantiles_are_bounded_and_monotonic(per in proptest::collection::vec(0u64..1000, 5)) {
            let counts = cumulative(&per);
            let b = Buckets { bounds: &BOUNDS, counts: &counts };
            let mut last = 0.0;
            for i in 1..100 {
                let v = b.quantile(i as f64 / 100.0);
                if b.total() == 0 {
                    proptest::prop_assert_eq!(v, None);
                    continue;
                }
                let v = v.unwrap_or(f64::NAN);
                proptest::prop_assert!((0.0..=1.0).contains(&v) && v >= last, "{} after {}", v, last);
                last = v;
            }
        }
    }
}
