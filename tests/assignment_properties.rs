#![allow(clippy::unwrap_used)]
//! Properties of the normative assignment function (SPEC "Assignment algorithm"), proven
//! over many keys and random weight vectors: determinism, exact shares, monotonic ramps,
//! minimal disruption, and that rule `weights` run the same function.

use cohort::config::Config;
use cohort::routing::cohort::{assign, variant_seed};
use cohort::routing::{Reason, RequestView, Router};
use http::{HeaderMap, HeaderValue, Uri};
use proptest::prelude::*;

const NAMES: [&str; 5] = ["stable", "canary", "beta", "gamma", "delta"];

fn seeds(salt: &str, n: usize) -> Vec<u64> {
    NAMES[..n].iter().map(|v| variant_seed(salt, v)).collect()
}

fn key(i: u64) -> Vec<u8> {
    format!("user-{i}").into_bytes()
}

#[test]
fn assignment_is_deterministic_across_recomputation() {
    let s1 = seeds("api", 3);
    let s2 = seeds("api", 3);
    let w = [70.0, 20.0, 10.0];
    for i in 0..10_000 {
        assert_eq!(assign(&key(i), &s1, &w), assign(&key(i), &s2, &w));
    }
}

/// Observed shares over `n` keys are within 5 standard errors of w_i / sum(w).
fn assert_exact_shares(weights: &[f64], salt: &str, n: u64) {
    let s = seeds(salt, weights.len());
    let mut counts = vec![0u64; weights.len()];
    for i in 0..n {
        counts[assign(&key(i), &s, weights).unwrap()] += 1;
    }
    let total: f64 = weights.iter().sum();
    for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
        let p = w / total;
        let obs = c as f64 / n as f64;
        let se = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (obs - p).abs() <= 5.0 * se + 1e-12,
            "variant {i}: observed {obs:.5}, expected {p:.5} (5 se = {:.5}) for {weights:?}",
            5.0 * se
        );
    }
}

#[test]
fn shares_are_exact_for_two_variants() {
    assert_exact_shares(&[95.0, 5.0], "api", 200_000);
    assert_exact_shares(&[99.0, 1.0], "web", 200_000);
    assert_exact_shares(&[50.0, 50.0], "x", 200_000);
}

#[test]
fn shares_are_exact_for_three_variants() {
    assert_exact_shares(&[70.0, 20.0, 10.0], "api", 200_000);
    assert_exact_shares(&[1.0, 1.0, 1.0], "checkout", 200_000);
}

#[test]
fn shares_are_exact_for_five_variants() {
    assert_exact_shares(&[40.0, 25.0, 20.0, 10.0, 5.0], "api", 300_000);
    assert_exact_shares(&[0.5, 0.25, 0.125, 0.0625, 0.0625], "frac", 300_000);
}

#[test]
fn zero_weight_variants_get_nobody() {
    let s = seeds("api", 3);
    for i in 0..20_000 {
        assert_ne!(assign(&key(i), &s, &[50.0, 0.0, 50.0]), Some(1));
    }
}

#[test]
fn a_one_percent_canary_cohort_is_inside_the_5_25_and_100_percent_cohorts() {
    let s = seeds("api", 2);
    let ramp = [1.0, 5.0, 25.0, 50.0, 100.0];
    let cohorts: Vec<Vec<u64>> = ramp
        .iter()
        .map(|&c| {
            (0..50_000)
                .filter(|&i| assign(&key(i), &s, &[100.0 - c, c]) == Some(1))
                .collect()
        })
        .collect();
    for pair in cohorts.windows(2) {
        let bigger: std::collections::HashSet<_> = pair[1].iter().collect();
        let left_behind = pair[0].iter().filter(|k| !bigger.contains(k)).count();
        assert_eq!(left_behind, 0, "users flipped back out of the canary");
        assert!(pair[1].len() > pair[0].len());
    }
    assert_eq!(cohorts[4].len(), 50_000, "at 100% everyone is on canary");
}

fn weights_strategy() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(prop_oneof![Just(0.0), 0.01f64..1000.0], 2..=5)
        .prop_filter("positive sum", |w| w.iter().sum::<f64>() > 0.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn raising_one_weight_only_moves_users_into_it(
        weights in weights_strategy(), pick in 0usize..5, factor in 1.0001f64..50.0, salt in "[a-z]{0,8}"
    ) {
        let i = pick % weights.len();
        let s = seeds(&salt, weights.len());
        let mut raised = weights.clone();
        raised[i] = if raised[i] == 0.0 { factor } else { raised[i] * factor };
        for k in 0..2_000 {
            let before = assign(&key(k), &s, &weights);
            let after = assign(&key(k), &s, &raised);
            prop_assert!(after == before || after == Some(i),
                "key {k}: {before:?} -> {after:?} when raising {i}");
        }
    }

    #[test]
    fn lowering_one_weight_only_moves_users_out_of_it(
        weights in weights_strategy(), pick in 0usize..5, factor in 0.0f64..0.9999, salt in "[a-z]{0,8}"
    ) {
        let i = pick % weights.len();
        let mut lowered = weights.clone();
        lowered[i] *= factor;
        prop_assume!(lowered.iter().sum::<f64>() > 0.0);
        let s = seeds(&salt, weights.len());
        for k in 0..2_000 {
            let before = assign(&key(k), &s, &weights);
            let after = assign(&key(k), &s, &lowered);
            prop_assert!(after == before || before == Some(i),
                "key {k}: {before:?} -> {after:?} when lowering {i}");
        }
    }

    #[test]
    fn removing_a_variant_only_moves_its_own_users(
        weights in weights_strategy(), pick in 0usize..5, salt in "[a-z]{0,8}"
    ) {
        let i = pick % weights.len();
        let names: Vec<&str> = NAMES[..weights.len()].to_vec();
        let kept: Vec<usize> = (0..weights.len()).filter(|&j| j != i).collect();
        prop_assume!(kept.iter().any(|&j| weights[j] > 0.0));
        let s_all: Vec<u64> = names.iter().map(|n| variant_seed(&salt, n)).collect();
        let s_kept: Vec<u64> = kept.iter().map(|&j| s_all[j]).collect();
        let w_kept: Vec<f64> = kept.iter().map(|&j| weights[j]).collect();
        for k in 0..2_000 {
            let before = assign(&key(k), &s_all, &weights).unwrap();
            let after = kept[assign(&key(k), &s_kept, &w_kept).unwrap()];
            prop_assert!(before == i || after == before,
                "key {k}: {} -> {} after removing {}", names[before], names[after], names[i]);
        }
    }

    #[test]
    fn assignment_is_a_pure_function_of_key_salt_names_and_weights(
        key_bytes in prop::collection::vec(any::<u8>(), 0..64), weights in weights_strategy(), salt in ".{0,12}"
    ) {
        let a = assign(&key_bytes, &seeds(&salt, weights.len()), &weights);
        let b = assign(&key_bytes.clone(), &seeds(&salt.clone(), weights.len()), &weights.clone());
        prop_assert_eq!(a, b);
        prop_assert!(a.is_some_and(|v| weights[v] > 0.0));
    }
}

#[test]
fn a_weights_rule_runs_the_same_function_with_its_own_weights() {
    let cfg = Config::parse(
        r#"
[[service]]
name = "api"
key = ["header:x-user-id"]
[[service.variant]]
name = "stable"
weight = 99
backends = ["127.0.0.1:1"]
[[service.variant]]
name = "canary"
weight = 1
backends = ["127.0.0.1:2"]
[[service.variant]]
name = "beta"
weight = 0
backends = ["127.0.0.1:3"]
[[service.rule]]
name = "eu"
header = { name = "country", in = ["DE", "FR"] }
weights = { canary = 30, beta = 20, stable = 50 }
"#,
    )
    .unwrap();
    let router = Router::new(&cfg);
    let s = seeds("api", 3);
    let uri = Uri::from_static("/");
    for i in 0..5_000u64 {
        let user = format!("user-{i}");
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_str(&user).unwrap());
        let plain = router.decide(0, &RequestView::new(&h, &uri, None));
        assert_eq!(
            Some(plain.variant),
            assign(user.as_bytes(), &s, &[99.0, 1.0, 0.0])
        );
        assert_eq!(plain.reason, Reason::Hash);
        h.insert("country", HeaderValue::from_static("DE"));
        let ruled = router.decide(0, &RequestView::new(&h, &uri, None));
        assert_eq!(
            Some(ruled.variant),
            assign(user.as_bytes(), &s, &[50.0, 30.0, 20.0])
        );
        assert_eq!(ruled.reason, Reason::Rule(0));
    }
}
