//! The report's tables of one rollout: every check with its numbers (newest first) and
//! every transition with its `why`.

use super::chart::clock;
use super::{checks_of, escape, ms, num, pct, signed_pct, ServiceEntry};
use crate::rollout::error_gate::{wilson, Tally};
use crate::rollout::normal::z_for;
use std::fmt::Write;

/// The checks, newest first: result, each side's errors with rate and Wilson interval,
/// the difference interval, the latency quantiles and limit, availability.
pub fn checks(e: &ServiceEntry) -> String {
    let checks = checks_of(e);
    let z = e.gates.map(|g| z_for(g.confidence));
    let side = |t: Tally| -> String {
        if t.n == 0 {
            return format!("{}/{}", t.e, t.n);
        }
        let rate = t.e.min(t.n) as f64 / t.n as f64;
        match z {
            Some(z) => {
                let w = wilson(t, z);
                format!(
                    "{}/{} = {}<br><small>[{}, {}]</small>",
                    t.e,
                    t.n,
                    pct(rate),
                    pct(w.lower),
                    pct(w.upper)
                )
            }
            None => format!("{}/{} = {}", t.e, t.n, pct(rate)),
        }
    };
    let mut s = format!(
        r#"<details open><summary>Checks ({}, newest first)</summary><div class="scroll"><table class="checks"><thead><tr><th>time</th><th>step</th><th>canary %</th><th>result</th><th>canary errors</th><th>baseline errors</th><th>difference interval</th><th>errors</th><th>canary lat.</th><th>baseline lat.</th><th>limit</th><th>latency</th><th>availability</th></tr></thead><tbody>"#,
        checks.len()
    );
    for k in checks.iter().rev() {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="{r}">{r}</td><td>{}</td><td>{}</td><td>[{}, {}]</td><td class="{er}">{er}</td><td>{}</td><td>{}</td><td>{}</td><td class="{lr}">{lr}</td><td class="{ar}">{ar}</td></tr>"#,
            clock(k.at as f64),
            k.step + 1,
            num(k.percent),
            side(k.errors.canary),
            side(k.errors.baseline),
            signed_pct(k.errors.lower),
            signed_pct(k.errors.upper),
            ms(k.latency.canary_s),
            ms(k.latency.baseline_s),
            ms(k.latency.limit_s),
            r = k.result,
            er = k.errors.result,
            lr = k.latency.result,
            ar = k.availability.result,
        );
    }
    s += "</tbody></table></div></details>";
    s
}

/// The transitions, oldest first, with the numbers behind each.
pub fn events(e: &ServiceEntry) -> String {
    let mut s = format!(
        r#"<details open><summary>Events ({})</summary><table class="events"><thead><tr><th>time</th><th>event</th><th>step</th><th>canary %</th><th class="why">why</th></tr></thead><tbody>"#,
        e.history.len()
    );
    for h in &e.history {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="why">{}</td></tr>"#,
            clock(h.at as f64),
            h.event.as_str().replace('_', " "),
            h.step + 1,
            num(h.percent),
            escape(&h.why)
        );
    }
    s += "</tbody></table></details>";
    s
}
