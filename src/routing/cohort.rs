//! The normative assignment function: weighted rendezvous hashing (SPEC "Assignment
//! algorithm"). Pure, seeded and versioned: never `DefaultHasher`, whose output may change
//! between Rust releases. Every instance, restart and language computes the same variant.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// 2^53 as binary64; `u = ((h >> 11) + 0.5) / 2^53`.
const TWO_POW_53: f64 = 9_007_199_254_740_992.0;

/// Per-variant seed: `xxh3_64(utf8(salt) ++ 0x00 ++ utf8(variant_name))`.
pub fn variant_seed(salt: &str, variant: &str) -> u64 {
    let mut buf = Vec::with_capacity(salt.len() + 1 + variant.len());
    buf.extend_from_slice(salt.as_bytes());
    buf.push(0);
    buf.extend_from_slice(variant.as_bytes());
    xxh3_64(&buf)
}

/// `u_i` in (0, 1]: the top 53 bits of `xxh3_64_with_seed(key, seed)`, centred.
/// It can round to exactly 1.0 (whose score is then -inf).
#[inline]
pub fn unit(key: &[u8], seed: u64) -> f64 {
    let h = xxh3_64_with_seed(key, seed);
    ((h >> 11) as f64 + 0.5) / TWO_POW_53
}

/// `score_i = w_i / -ln(u_i)` evaluated in binary64 exactly as written.
#[inline]
pub fn score(weight: f64, u: f64) -> f64 {
    weight / -u.ln()
}

/// Picks the winner among `(seed, weight)` pairs for `key`: the highest score among
/// variants with weight > 0, ties to the first in order. `None` when no weight is positive
/// or every candidate scores -inf (all `u` rounded to 1.0); callers then use the first
/// variant with weight > 0.
#[inline]
pub fn pick(key: &[u8], seeds: &[u64], weights: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (&seed, &w)) in seeds.iter().zip(weights).enumerate() {
        if w <= 0.0 {
            continue;
        }
        let s = score(w, unit(key, seed));
        match best {
            Some((_, b)) if s <= b => {}
            _ if s == f64::NEG_INFINITY => {}
            _ => best = Some((i, s)),
        }
    }
    best.map(|(i, _)| i)
}

/// Index of the first weight > 0 (the `no_key` choice).
pub fn first_positive(weights: &[f64]) -> Option<usize> {
    weights.iter().position(|&w| w > 0.0)
}

/// Winner for `key`, falling back to the first positive weight (see [`pick`]).
#[inline]
pub fn assign(key: &[u8], seeds: &[u64], weights: &[f64]) -> Option<usize> {
    pick(key, seeds, weights).or_else(|| first_positive(weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_seeds_for_salt_api() {
        assert_eq!(variant_seed("api", "stable"), 0xfa91bc11e567cf4d);
        assert_eq!(variant_seed("api", "canary"), 0xcf9de49cab2063cb);
    }

    #[test]
    fn spec_golden_u_values_and_winners() {
        let s = variant_seed("api", "stable");
        let c = variant_seed("api", "canary");
        let rows: [(&str, f64, f64, usize, usize); 5] = [
            (
                "user-1",
                0.635_420_128_005_970_6,
                0.463_015_018_317_452_45,
                0,
                0,
            ),
            (
                "user-27",
                0.025_422_852_471_970_014,
                0.953_646_074_904_342_1,
                1,
                0,
            ),
            (
                "user-154",
                0.175_668_321_054_689_38,
                0.997_517_494_640_429_7,
                1,
                1,
            ),
            (
                "alice",
                0.718_864_584_135_274_5,
                0.740_975_728_252_871_5,
                0,
                0,
            ),
            (
                "203.0.113.7",
                0.027_185_234_927_115_054,
                0.219_743_017_143_733_5,
                0,
                0,
            ),
        ];
        for (key, us, uc, w95, w99) in rows {
            assert_eq!(unit(key.as_bytes(), s), us, "u stable for {key}");
            assert_eq!(unit(key.as_bytes(), c), uc, "u canary for {key}");
            assert_eq!(
                assign(key.as_bytes(), &[s, c], &[95.0, 5.0]),
                Some(w95),
                "95/5 {key}"
            );
            assert_eq!(
                assign(key.as_bytes(), &[s, c], &[99.0, 1.0]),
                Some(w99),
                "99/1 {key}"
            );
        }
    }

    #[test]
    fn u_of_one_scores_negative_infinity() {
        assert_eq!(score(5.0, 1.0), f64::NEG_INFINITY);
    }

    #[test]
    fn zero_weights_never_win_and_all_zero_is_none() {
        let seeds = [1, 2, 3];
        assert_eq!(pick(b"k", &seeds, &[0.0, 0.0, 0.0]), None);
        assert_eq!(assign(b"k", &seeds, &[0.0, 0.0, 0.0]), None);
        for i in 0..200u32 {
            let k = i.to_string();
            assert_eq!(pick(k.as_bytes(), &seeds, &[0.0, 3.0, 0.0]), Some(1));
        }
    }
}
