//! `[service.rollout]` and `[service.rollout.gates]` (SPEC "Progressive rollout with
//! automated analysis"): the checked settings and their validation, every problem with
//! its field path. The engine that runs a rollout is [`crate::rollout`].

use super::error::Errors;
use super::file::{GatesFile, RolloutFile};
use std::collections::HashMap;

/// Default `steps`: canary share (%) of the users the canary and baseline split.
pub const DEFAULT_STEPS: [f64; 4] = [1.0, 5.0, 25.0, 50.0];

/// A variant named by the rollout: its index in the service's variants and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantRef {
    pub index: usize,
    pub name: String,
}

/// What a step that has not passed by `max_step_secs` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInconclusive {
    Rollback,
    Advance,
    /// Stay at the step: it still advances once a check passes, and still rolls back
    /// after `failure_limit` failed checks.
    Hold,
}

impl OnInconclusive {
    pub fn as_str(self) -> &'static str {
        match self {
            OnInconclusive::Rollback => "rollback",
            OnInconclusive::Advance => "advance",
            OnInconclusive::Hold => "hold",
        }
    }
}

/// `[service.rollout]` after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// The release; a new id starts a new rollout.
    pub id: String,
    pub canary: VariantRef,
    pub baseline: VariantRef,
    /// Canary percentages, strictly increasing, each in (0, 100).
    pub steps: Vec<f64>,
    /// Minimum time at a step before it may advance.
    pub step_secs: u64,
    /// How often the gates are evaluated.
    pub check_secs: u64,
    /// A step not passed by then applies `on_inconclusive`.
    pub max_step_secs: u64,
    pub on_inconclusive: OnInconclusive,
    /// Failed checks in a row that roll back (>= 1).
    pub failure_limit: u32,
    /// `http(s)://` URL posted on every transition; `None` when empty or absent.
    pub webhook: Option<String>,
    pub gates: Gates,
}

/// `[service.rollout.gates]` after validation (serialized in `GET /rollout`'s `gates`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gates {
    /// Largest allowed canary error rate minus baseline's (absolute), in [0, 1).
    pub max_error_increase: f64,
    /// Two-sided level of the intervals, in (0, 1).
    pub confidence: f64,
    /// Fewer requests than this on either side: that gate is inconclusive (>= 1).
    pub min_requests: u64,
    /// The latency quantile compared, in (0, 1).
    pub latency_quantile: f64,
    /// canary quantile <= ratio x baseline's + slack (>= 1).
    pub max_latency_ratio: f64,
    /// Added to the latency limit, in milliseconds (>= 0).
    pub latency_slack_ms: f64,
}

impl Default for Gates {
    /// SPEC's defaults.
    fn default() -> Gates {
        Gates {
            max_error_increase: 0.005,
            confidence: 0.99,
            min_requests: 500,
            latency_quantile: 0.99,
            max_latency_ratio: 1.25,
            latency_slack_ms: 5.0,
        }
    }
}

/// Checks `[service.rollout]` of the service at `path` (`service[i]`), whose variants
/// are `index` (name → index) with configured `weights`.
pub(super) fn rollout(
    r: &RolloutFile,
    index: &HashMap<&str, usize>,
    weights: &[f64],
    path: &str,
    errs: &mut Errors,
) -> Option<RolloutConfig> {
    let path = format!("{path}.rollout");
    if r.id.trim().is_empty() {
        errs.push(format!("{path}.id"), "must name the release (not empty)");
    } else if r.id.len() > 128 || r.id.chars().any(char::is_control) {
        errs.push(
            format!("{path}.id"),
            "must be at most 128 characters, with no control characters",
        );
    }
    let variant = |name: &str, field: &str, errs: &mut Errors| match index.get(name) {
        Some(&i) => Some(VariantRef {
            index: i,
            name: name.to_string(),
        }),
        None => {
            let mut declared: Vec<&str> = index.keys().copied().collect();
            declared.sort_unstable();
            errs.push(
                format!("{path}.{field}"),
                format!(
                    "unknown variant {name:?} (declared: {})",
                    declared.join(", ")
                ),
            );
            None
        }
    };
    let canary = variant(&r.canary, "canary", errs);
    let baseline = variant(&r.baseline, "baseline", errs);
    if let (Some(c), Some(b)) = (&canary, &baseline) {
        if c.index == b.index {
            errs.push(
                format!("{path}.baseline"),
                format!(
                    "must differ from canary ({:?}): the canary is judged against it",
                    c.name
                ),
            );
        } else {
            let sum = weights.get(c.index).copied().unwrap_or(0.0)
                + weights.get(b.index).copied().unwrap_or(0.0);
            if sum <= 0.0 {
                errs.push(
                    path.clone(),
                    format!(
                        "the weights of {:?} and {:?} sum to 0: the rollout has no users to split",
                        c.name, b.name
                    ),
                );
            }
        }
    }
    let steps = steps(r, &path, errs);
    let step_secs = r.step_secs.unwrap_or(300);
    let check_secs = r.check_secs.unwrap_or(30);
    let max_step_secs = r.max_step_secs.unwrap_or(1800);
    let mut timing_ok = true;
    for (field, v) in [
        ("step_secs", step_secs),
        ("check_secs", check_secs),
        ("max_step_secs", max_step_secs),
    ] {
        if !(1..=MAX_SECS).contains(&v) {
            errs.push(
                format!("{path}.{field}"),
                format!("must be 1 to {MAX_SECS} seconds (got {v})"),
            );
            timing_ok = false;
        }
    }
    if timing_ok && check_secs > step_secs {
        errs.push(
            format!("{path}.check_secs"),
            format!("must be <= step_secs ({check_secs} > {step_secs}): a step needs a check before it may advance"),
        );
    }
    if timing_ok && step_secs > max_step_secs {
        errs.push(
            format!("{path}.max_step_secs"),
            format!("must be >= step_secs ({max_step_secs} < {step_secs})"),
        );
    }
    let on_inconclusive = match r.on_inconclusive.as_deref().unwrap_or("rollback") {
        "rollback" => OnInconclusive::Rollback,
        "advance" => OnInconclusive::Advance,
        "hold" => OnInconclusive::Hold,
        other => {
            errs.push(
                format!("{path}.on_inconclusive"),
                format!("{other:?}: expected rollback, advance or hold"),
            );
            OnInconclusive::Rollback
        }
    };
    let failure_limit = r.failure_limit.unwrap_or(2);
    if failure_limit == 0 {
        errs.push(format!("{path}.failure_limit"), "must be >= 1");
    }
    let webhook = match r.webhook.as_deref() {
        None | Some("") => None,
        Some(url) => {
            if !is_http_url(url) {
                errs.push(
                    format!("{path}.webhook"),
                    format!("{url:?} is not an http:// or https:// URL with a host"),
                );
            }
            Some(url.to_string())
        }
    };
    let gates = gates(&r.gates, &format!("{path}.gates"), errs);
    Some(RolloutConfig {
        id: r.id.clone(),
        canary: canary?,
        baseline: baseline?,
        steps,
        step_secs,
        check_secs,
        max_step_secs,
        on_inconclusive,
        failure_limit,
        webhook,
        gates,
    })
}

/// Longest step, check or step limit accepted: 30 days.
const MAX_SECS: u64 = 30 * 86_400;

fn steps(r: &RolloutFile, path: &str, errs: &mut Errors) -> Vec<f64> {
    let Some(raw) = &r.steps else {
        return DEFAULT_STEPS.to_vec();
    };
    let path = format!("{path}.steps");
    if raw.is_empty() {
        errs.push(&path, "must list at least one step (canary %)");
    }
    let steps: Vec<f64> = raw.iter().map(|w| w.0).collect();
    for (i, &p) in steps.iter().enumerate() {
        if !(p > 0.0 && p < 100.0) {
            errs.push(
                format!("{path}[{i}]"),
                format!("must be a percentage in (0, 100) (got {p}); 100% is reached by promotion"),
            );
        } else if i > 0 && steps[i - 1] < 100.0 && steps[i - 1] > 0.0 && p <= steps[i - 1] {
            errs.push(
                format!("{path}[{i}]"),
                format!(
                    "must be greater than the step before ({p} <= {}): steps strictly increase",
                    steps[i - 1]
                ),
            );
        }
    }
    steps
}

fn gates(g: &GatesFile, path: &str, errs: &mut Errors) -> Gates {
    let d = Gates::default();
    let mut number =
        |v: Option<f64>, default: f64, field: &str, ok: fn(f64) -> bool, rule: &str| {
            let x = v.unwrap_or(default);
            if !(x.is_finite() && ok(x)) {
                errs.push(
                    format!("{path}.{field}"),
                    format!("must be {rule} (got {x})"),
                );
            }
            x
        };
    let max_error_increase = number(
        g.max_error_increase.map(|w| w.0),
        d.max_error_increase,
        "max_error_increase",
        |x| (0.0..1.0).contains(&x),
        "in [0, 1): an absolute error-rate difference",
    );
    let confidence = number(
        g.confidence.map(|w| w.0),
        d.confidence,
        "confidence",
        |x| x > 0.0 && x < 1.0,
        "in (0, 1)",
    );
    let latency_quantile = number(
        g.latency_quantile.map(|w| w.0),
        d.latency_quantile,
        "latency_quantile",
        |x| x > 0.0 && x < 1.0,
        "in (0, 1)",
    );
    let max_latency_ratio = number(
        g.max_latency_ratio.map(|w| w.0),
        d.max_latency_ratio,
        "max_latency_ratio",
        |x| x >= 1.0,
        ">= 1",
    );
    let latency_slack_ms = number(
        g.latency_slack_ms.map(|w| w.0),
        d.latency_slack_ms,
        "latency_slack_ms",
        |x| x >= 0.0,
        ">= 0",
    );
    let min_requests = g.min_requests.unwrap_or(d.min_requests);
    if min_requests == 0 {
        errs.push(format!("{path}.min_requests"), "must be >= 1");
    }
    Gates {
        max_error_increase,
        confidence,
        min_requests,
        latency_quantile,
        max_latency_ratio,
        latency_slack_ms,
    }
}

/// `http://host...` or `https://host...`.
fn is_http_url(url: &str) -> bool {
    match url.parse::<http::Uri>() {
        Ok(u) => {
            matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.host().is_some_and(|h| !h.is_empty())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
