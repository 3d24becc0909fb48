//! The four charts of one rollout, on one time axis: the canary's share (transitions and
//! checks marked), the two error rates with their Wilson intervals, the difference with
//! its Newcombe interval against `max_error_increase`, and the latency quantiles against
//! the limit. Every check's verdict is its mark's colour.

use super::chart::Chart;
use super::{check_tip, checks_of, num, pct, signed_pct, ServiceEntry};
use crate::rollout::error_gate::{wilson, Tally};
use crate::rollout::normal::z_for;
use crate::rollout::{CheckReport, EventKind};

const TALL: f64 = 240.0;
const SHORT: f64 = 200.0;

/// The time axis of a rollout: from its first event or check to its last (at least 1 s).
fn span(e: &ServiceEntry) -> (f64, f64) {
    let checks = checks_of(e);
    let times = e
        .history
        .iter()
        .map(|h| h.at)
        .chain(checks.iter().map(|c| c.at));
    let (lo, hi) = times.fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let (lo, hi) = (lo as f64, hi as f64);
    // A little room on both sides so the first and last marks are not on the frame.
    let pad = ((hi - lo) * 0.03).max(0.5);
    (lo - pad, hi + pad)
}

/// The checks in runs of one step each (a step's window starts afresh, so its lines do
/// not join the previous step's).
fn by_step<'a>(checks: &[&'a CheckReport]) -> Vec<Vec<&'a CheckReport>> {
    checks
        .chunk_by(|a, b| a.step == b.step && a.percent == b.percent)
        .map(<[&CheckReport]>::to_vec)
        .collect()
}

fn figure(caption: &str, legend: &str, svg: String) -> String {
    format!(
        r#"<figure><figcaption>{caption}<span class="legend">{legend}</span></figcaption>{svg}</figure>"#
    )
}

/// The canary's share: a step line through the transitions, a dot per check coloured by
/// its result, a ring per transition (its `why` on hover) labelled with what it did.
pub fn share(i: usize, e: &ServiceEntry) -> String {
    let (t0, t1) = span(e);
    let mut c = Chart::new(&format!("r{i}-share"), TALL, (t0, t1), (0.0, 100.0), |v| {
        format!("{}%", num(v))
    });
    let mut points: Vec<(f64, f64)> = e.history.iter().map(|h| (h.at as f64, h.percent)).collect();
    if points.is_empty() {
        points = checks_of(e)
            .iter()
            .map(|k| (k.at as f64, k.percent))
            .collect();
    }
    c.steps(&points, t1, "share");
    for k in checks_of(e) {
        c.dot(
            k.at as f64,
            k.percent,
            3.0,
            k.result.as_str(),
            &check_tip(k, e.gates.as_ref()),
        );
    }
    for h in &e.history {
        let (t, p) = (h.at as f64, h.percent);
        c.dot(
            t,
            p,
            5.5,
            "event",
            &format!("{}: {}", h.event.as_str(), h.why),
        );
        let label = match h.event {
            EventKind::Started | EventKind::Advanced => format!("{}%", num(p)),
            other => other.as_str().replace('_', " "),
        };
        c.label(t, p, &label, "ev");
    }
    figure(
        "Canary share of the split users",
        r#"<i class="pass"></i>check passed<i class="inconclusive"></i>inconclusive<i class="fail"></i>failed; rings: transitions"#,
        c.finish(&format!("{}: canary share over time", e.service)),
    )
}

/// Each side's error rate per check with its Wilson interval (when the confidence is
/// known); the canary's dot is coloured by the error gate's verdict.
pub fn error_rates(i: usize, e: &ServiceEntry) -> String {
    let checks = checks_of(e);
    let z = e.gates.map(|g| z_for(g.confidence));
    let rate = |t: Tally| {
        if t.n == 0 {
            None
        } else {
            Some(t.e.min(t.n) as f64 / t.n as f64)
        }
    };
    let mut top: f64 = 0.001;
    for k in &checks {
        for r in [rate(k.errors.canary), rate(k.errors.baseline)]
            .into_iter()
            .flatten()
        {
            top = top.max(r * 1.5);
        }
        if let (Some(g), Some(b)) = (e.gates, rate(k.errors.baseline)) {
            top = top.max(b + g.max_error_increase * 1.2);
        }
    }
    let (t0, t1) = span(e);
    let mut c = Chart::new(
        &format!("r{i}-errors"),
        SHORT,
        (t0, t1),
        (0.0, top.min(1.0)),
        |v| format!("{}%", num(v * 100.0)),
    );
    // One line (and band) per step: each step's window starts afresh.
    for step in by_step(&checks) {
        for (side, class) in [(Side::Baseline, "baseline"), (Side::Canary, "canary")] {
            let seen: Vec<(f64, Tally)> = step
                .iter()
                .map(|k| (k.at as f64, side.of(k)))
                .filter(|(_, t)| t.n > 0)
                .collect();
            if let Some(z) = z {
                let times: Vec<f64> = seen.iter().map(|(t, _)| *t).collect();
                let w: Vec<_> = seen.iter().map(|(_, t)| wilson(*t, z)).collect();
                let lower: Vec<f64> = w.iter().map(|r| r.lower).collect();
                let upper: Vec<f64> = w.iter().map(|r| r.upper).collect();
                c.band(&times, &lower, &upper, class);
            }
            let line: Vec<(f64, f64)> = seen
                .iter()
                .filter_map(|(t, n)| Some((*t, rate(*n)?)))
                .collect();
            c.line(&line, class);
        }
    }
    for k in &checks {
        if let Some(r) = rate(k.errors.canary) {
            let tip = format!(
                "canary {} ({}/{}), baseline {} ({}/{}): errors {}",
                pct(r),
                k.errors.canary.e,
                k.errors.canary.n,
                rate(k.errors.baseline).map_or("-".to_string(), pct),
                k.errors.baseline.e,
                k.errors.baseline.n,
                k.errors.result
            );
            c.dot(k.at as f64, r, 3.0, k.errors.result.as_str(), &tip);
        }
    }
    let band = if z.is_some() {
        " (bands: Wilson intervals)"
    } else {
        ""
    };
    figure(
        "Error rate (status ≥ 500) since the step began",
        &format!(
            r#"<i class="canary"></i>canary<i class="baseline"></i>baseline{band}; dots: error gate verdict"#
        ),
        c.finish(&format!("{}: canary and baseline error rates", e.service)),
    )
}

/// The difference canary − baseline with its Newcombe interval per check, coloured by
/// the error gate's verdict, against `max_error_increase`.
pub fn difference(i: usize, e: &ServiceEntry) -> String {
    let checks = checks_of(e);
    let min = e.gates.map_or(1, |g| g.min_requests);
    let judged: Vec<&&CheckReport> = checks
        .iter()
        .filter(|k| k.errors.canary.n >= min && k.errors.baseline.n >= min)
        .collect();
    let shown: Vec<&&CheckReport> = if judged.is_empty() {
        checks
            .iter()
            .filter(|k| k.errors.canary.n > 0 && k.errors.baseline.n > 0)
            .collect()
    } else {
        judged
    };
    let limit = e.gates.map_or(0.0, |g| g.max_error_increase);
    let (mut lo, mut hi) = (0.0f64, (limit * 1.5).max(0.001));
    for k in &shown {
        lo = lo.min(k.errors.lower);
        hi = hi.max(k.errors.upper);
    }
    let pad = (hi - lo) * 0.05;
    let (t0, t1) = span(e);
    let mut c = Chart::new(
        &format!("r{i}-diff"),
        SHORT,
        (t0, t1),
        ((lo - pad).max(-1.0), (hi + pad).min(1.0)),
        |v| signed_pct(v).replace(".000", ""),
    );
    c.hline(0.0, "zero", "");
    if e.gates.is_some() {
        c.hline(
            limit,
            "limit",
            &format!("max_error_increase {}", signed_pct(limit)),
        );
    }
    for k in checks
        .iter()
        .filter(|k| k.errors.canary.n > 0 && k.errors.baseline.n > 0)
    {
        let (pc, pb) = (
            k.errors.canary.e.min(k.errors.canary.n) as f64 / k.errors.canary.n as f64,
            k.errors.baseline.e.min(k.errors.baseline.n) as f64 / k.errors.baseline.n as f64,
        );
        let tip = format!(
            "difference {} in [{}, {}]: errors {}",
            signed_pct(pc - pb),
            signed_pct(k.errors.lower),
            signed_pct(k.errors.upper),
            k.errors.result
        );
        c.interval(
            k.at as f64,
            k.errors.lower,
            pc - pb,
            k.errors.upper,
            k.errors.result.as_str(),
            &tip,
        );
    }
    figure(
        "Canary − baseline error rate, with its Newcombe interval",
        r#"<i class="pass"></i>pass (wholly at or below the line)<i class="fail"></i>fail (wholly above)<i class="inconclusive"></i>inconclusive<i class="limit"></i>max_error_increase"#,
        c.finish(&format!("{}: error rate difference", e.service)),
    )
}

/// Each side's latency quantile per check and the limit; the canary's dot is coloured
/// by the latency gate's verdict.
pub fn latency(i: usize, e: &ServiceEntry) -> String {
    let checks = checks_of(e);
    let q = e.gates.map_or("quantile".to_string(), |g| {
        format!("p{}", num(g.latency_quantile * 100.0))
    });
    let top = checks
        .iter()
        .flat_map(|k| [k.latency.canary_s, k.latency.baseline_s, k.latency.limit_s])
        .flatten()
        .fold(0.001f64, f64::max)
        * 1.15;
    let (t0, t1) = span(e);
    let mut c = Chart::new(&format!("r{i}-latency"), SHORT, (t0, t1), (0.0, top), |v| {
        format!("{} ms", num(v * 1000.0))
    });
    for step in by_step(&checks) {
        let series = |f: fn(&CheckReport) -> Option<f64>| -> Vec<(f64, f64)> {
            step.iter()
                .filter_map(|k| Some((k.at as f64, f(k)?)))
                .collect()
        };
        c.line(&series(|k| k.latency.limit_s), "limit");
        c.line(&series(|k| k.latency.baseline_s), "baseline");
        c.line(&series(|k| k.latency.canary_s), "canary");
    }
    for k in &checks {
        if let Some(v) = k.latency.canary_s {
            let tip = format!(
                "{q} canary {}, baseline {}, limit {}: latency {}",
                super::ms(k.latency.canary_s),
                super::ms(k.latency.baseline_s),
                super::ms(k.latency.limit_s),
                k.latency.result
            );
            c.dot(k.at as f64, v, 3.0, k.latency.result.as_str(), &tip);
        }
    }
    figure(
        &format!("Latency {q} since the step began"),
        r#"<i class="canary"></i>canary<i class="baseline"></i>baseline<i class="limit"></i>limit; dots: latency gate verdict"#,
        c.finish(&format!("{}: latency {q}", e.service)),
    )
}

#[derive(Clone, Copy)]
enum Side {
    Canary,
    Baseline,
}

impl Side {
    fn of(self, k: &CheckReport) -> Tally {
        match self {
            Side::Canary => k.errors.canary,
            Side::Baseline => k.errors.baseline,
        }
    }
}
