//! The standard normal quantile Φ⁻¹, for the gates' `z = Φ⁻¹(1 − (1 − confidence)/2)`.
//!
//! Wichura's algorithm AS 241 (PPND16), Applied Statistics 37 (1988) 477–484: three
//! rational approximations (central, intermediate tail, far tail), accurate to about 1
//! part in 10^16. It is the algorithm of R's `qnorm` and Python's
//! `statistics.NormalDist.inv_cdf`; written here from the published coefficients rather
//! than taking a statistics crate (and its linear-algebra dependencies) for one function.

/// Φ⁻¹(p): the z with P(Z ≤ z) = p for a standard normal Z. `p` outside (0, 1) gives
/// −∞ (p ≤ 0), +∞ (p ≥ 1) or NaN (p NaN); validated settings never ask for those.
pub fn inverse_cdf(p: f64) -> f64 {
    if p.is_nan() {
        return f64::NAN;
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q * poly(&A, r) / poly(&B, r);
    }
    let tail = if q < 0.0 { p } else { 1.0 - p };
    let r = (-tail.ln()).sqrt();
    let x = if r <= 5.0 {
        let r = r - 1.6;
        poly(&C, r) / poly(&D, r)
    } else {
        let r = r - 5.0;
        poly(&E, r) / poly(&F, r)
    };
    if q < 0.0 {
        -x
    } else {
        x
    }
}

/// The two-sided critical value for a confidence level in (0, 1):
/// `Φ⁻¹(1 − (1 − confidence)/2)` (0.95 → 1.959964, 0.99 → 2.575829).
pub fn z_for(confidence: f64) -> f64 {
    inverse_cdf(1.0 - (1.0 - confidence) / 2.0)
}

/// `c[0] + c[1] r + ... + c[7] r^7` by Horner's rule.
fn poly(c: &[f64; 8], r: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &k| acc * r + k)
}

// AS 241 coefficients (PPND16), lowest degree first; the denominators' constant term is 1.
// Written with the paper's digits (more than binary64 holds) so they can be checked
// against it.
#[allow(clippy::excessive_precision)]
const A: [f64; 8] = [
    3.387_132_872_796_366_608,
    1.331_416_678_917_843_774_5e2,
    1.971_590_950_306_551_442_7e3,
    1.373_169_376_550_946_112_5e4,
    4.592_195_393_154_987_145_7e4,
    6.726_577_092_700_870_085_3e4,
    3.343_057_558_358_812_810_5e4,
    2.509_080_928_730_122_672_7e3,
];
#[allow(clippy::excessive_precision)]
const B: [f64; 8] = [
    1.0,
    4.231_333_070_160_091_125_2e1,
    6.871_870_074_920_579_083e2,
    5.394_196_021_424_751_107_7e3,
    2.121_379_430_158_659_586_7e4,
    3.930_789_580_009_271_061e4,
    2.872_908_573_572_194_267_4e4,
    5.226_495_278_852_854_561e3,
];
#[allow(clippy::excessive_precision)]
const C: [f64; 8] = [
    1.423_437_110_749_683_577_34,
    4.630_337_846_156_545_295_9,
    5.769_497_221_460_691_405_5,
    3.647_848_324_763_204_605_04,
    1.270_458_252_452_368_382_58,
    2.417_807_251_774_506_117_7e-1,
    2.272_384_498_926_918_458_33e-2,
    7.745_450_142_783_414_076_4e-4,
];
#[allow(clippy::excessive_precision)]
const D: [f64; 8] = [
    1.0,
    2.053_191_626_637_758_821_87,
    1.676_384_830_183_803_849_4,
    6.897_673_349_851_000_045_5e-1,
    1.481_039_764_274_800_745_9e-1,
    1.519_866_656_361_645_719_66e-2,
    5.475_938_084_995_344_946e-4,
    1.050_750_071_644_416_843_24e-9,
];
#[allow(clippy::excessive_precision)]
const E: [f64; 8] = [
    6.657_904_643_501_103_777_2,
    5.463_784_911_164_114_369_9,
    1.784_826_539_917_291_335_8,
    2.965_605_718_285_048_912_3e-1,
    2.653_218_952_657_612_309_3e-2,
    1.242_660_947_388_078_438_6e-3,
    2.711_555_568_743_487_578_15e-5,
    2.010_334_399_292_288_132_65e-7,
];
#[allow(clippy::excessive_precision)]
const F: [f64; 8] = [
    1.0,
    5.998_322_065_558_879_376_9e-1,
    1.369_298_809_227_358_053_1e-1,
    1.487_536_129_085_061_485_25e-2,
    7.868_691_311_456_132_591e-4,
    1.846_318_317_510_054_681_8e-5,
    1.421_511_758_316_445_888_7e-7,
    2.044_263_103_389_939_785_64e-15,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values: Python's `statistics.NormalDist().inv_cdf` (an independent AS 241)
    /// and published tables, to 12 significant digits.
    #[test]
    fn matches_reference_values_in_every_region() {
        for (p, want) in [
            (0.5f64, 0.0f64),
            (0.975, 1.959_963_984_540_054),
            (0.995, 2.575_829_303_548_901),
            (0.9, 1.281_551_565_544_601),
            (0.1, -1.281_551_565_544_601),
            (0.841_344_746_068_542_9, 1.0),
            (0.025, -1.959_963_984_540_054),
            (1e-10, -6.361_340_902_404_056),
            (1e-300, -37.047_096_299_361_2),
            (0.999_999, 4.753_424_308_817_089),
        ] {
            let got = inverse_cdf(p);
            let tol = 1e-12 * want.abs().max(1.0);
            assert!((got - want).abs() < tol, "Φ⁻¹({p}) = {got}, want {want}");
        }
    }

    #[test]
    fn z_of_the_usual_confidence_levels() {
        assert!((z_for(0.95) - 1.959_964).abs() < 1e-6);
        assert!((z_for(0.99) - 2.575_829).abs() < 1e-6);
        assert!((z_for(0.90) - 1.644_854).abs() < 1e-6);
    }

    #[test]
    fn symmetric_and_increasing() {
        let mut last = f64::NEG_INFINITY;
        for i in 1..1000 {
            let p = i as f64 / 1000.0;
            let z = inverse_cdf(p);
            assert!(z > last, "not increasing at {p}");
            assert!(
                (z + inverse_cdf(1.0 - p)).abs() < 1e-9,
                "not symmetric at {p}"
            );
            last = z;
        }
    }

    #[test]
    fn out_of_range_is_infinite_never_a_panic() {
        assert_eq!(inverse_cdf(0.0), f64::NEG_INFINITY);
        assert_eq!(inverse_cdf(1.0), f64::INFINITY);
        assert!(inverse_cdf(f64::NAN).is_nan());
    }
}
