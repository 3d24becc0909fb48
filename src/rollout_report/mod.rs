//! `cohort rollout report`: one self-contained HTML page of a running instance's
//! rollouts, from `GET /rollout?checks=1`. Per rollout: the canary's share over time with
//! every transition and check, each check's canary and baseline error rates with their
//! Wilson intervals, the difference with its Newcombe interval against
//! `max_error_increase`, the latency quantile of both sides against the limit, every
//! verdict marked, and the checks and events as tables.
//!
//! Self-contained: CSS inline, charts as inline SVG, no script, no font, no image, no
//! link; a Content-Security-Policy of `default-src 'none'` keeps a browser from fetching
//! anything even if a name in the data looked like markup (all data is escaped). Pure:
//! the parsed answer in, the page out ([`render`]); `cohort rollout report` fetches.

mod chart;
mod charts;
mod tables;

use crate::config::Gates;
use crate::rollout::view::ServiceEntry;
use crate::rollout::{CheckReport, Phase};
use std::fmt::Write;
use std::time::SystemTime;

/// The page for `entries` (one section each), generated at `now` from the admin API at
/// `source` (shown, never linked).
pub fn render(entries: &[ServiceEntry], now: SystemTime, source: &str) -> String {
    let mut body = String::new();
    if entries.is_empty() {
        body += r#"<p class="empty">No rollout: no service of the config in force has a <code>[service.rollout]</code>.</p>"#;
    }
    for (i, e) in entries.iter().enumerate() {
        body += &section(i, e);
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cohort rollout report</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>cohort rollout report</h1><p>Generated {} from the admin API at {}. Times are UTC.</p></header>
{body}
<footer><p>How to read it: a check compares the canary with the baseline on the hash- and cookie-assigned requests since its step began. Errors: each side's rate with its Wilson interval; the gate fails when the Newcombe interval of the difference lies wholly above <code>max_error_increase</code>, passes when it lies wholly at or below it, and is inconclusive otherwise or under <code>min_requests</code> a side. Latency: the quantile of each side from the histogram buckets; it fails above <code>max_latency_ratio</code> × baseline + <code>latency_slack_ms</code>. A check fails if any gate fails and passes if all pass. Hover a mark for its numbers.</p></footer>
</body>
</html>
"#,
        escape(&humantime::format_rfc3339_seconds(now).to_string()),
        escape(source),
    )
}

/// One rollout: its heading, the gates, the four charts and the two tables.
fn section(i: usize, e: &ServiceEntry) -> String {
    let mut s = String::new();
    let state = e.state.as_str();
    let _ = write!(
        s,
        r#"<section id="rollout-{i}"><h2>{} <span class="id">rollout {}</span> <span class="state {state}">{}</span></h2>"#,
        escape(&e.service),
        escape(&e.id),
        state.replace('_', " ")
    );
    let _ = write!(
        s,
        r#"<p class="facts"><b>{}</b> (canary) against <b>{}</b> (baseline): canary now at <b>{}%</b>{}; {} check(s) shown, {} event(s).</p>"#,
        escape(&e.canary),
        escape(&e.baseline),
        num(e.percent),
        match e.state {
            Phase::Running | Phase::Paused => format!(", step {}", e.step + 1),
            _ => String::new(),
        },
        e.checks.len(),
        e.history.len()
    );
    if let Some(g) = &e.gates {
        let _ = write!(
            s,
            r#"<p class="gates">Gates: max_error_increase {}, confidence {}, min_requests {}, latency p{} ≤ {} × baseline + {} ms.</p>"#,
            signed_pct(g.max_error_increase),
            num(g.confidence),
            g.min_requests,
            num(g.latency_quantile * 100.0),
            num(g.max_latency_ratio),
            num(g.latency_slack_ms)
        );
    }
    if let Some(last) = e.history.last() {
        let _ = write!(
            s,
            r#"<p class="last-event"><span class="event-kind">{}</span> at {}: {}</p>"#,
            last.event.as_str().replace('_', " "),
            chart::clock(last.at as f64),
            escape(&last.why)
        );
    }
    if e.checks.is_empty() && e.last_check.is_none() && e.history.is_empty() {
        s += "<p>Nothing recorded yet.</p></section>";
        return s;
    }
    s += &charts::share(i, e);
    s += &charts::error_rates(i, e);
    s += &charts::difference(i, e);
    s += &charts::latency(i, e);
    s += &tables::checks(e);
    s += &tables::events(e);
    s += "</section>\n";
    s
}

/// The checks a report draws: `checks` when the server sent them, else the last one.
fn checks_of(e: &ServiceEntry) -> Vec<&CheckReport> {
    if e.checks.is_empty() {
        e.last_check.iter().collect()
    } else {
        e.checks.iter().collect()
    }
}

/// One line with a check's numbers (the engine's own summary when the gates are known).
fn check_tip(c: &CheckReport, gates: Option<&Gates>) -> String {
    let head = format!(
        "{} check at step {} ({}%): {}",
        chart::clock(c.at as f64),
        c.step + 1,
        num(c.percent),
        c.result
    );
    match gates {
        Some(g) => format!("{head}: {}", c.summary(g)),
        None => head,
    }
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c => out.push(c),
        }
    }
    out
}

/// A number without needless digits: `25`, `0.99`, `1.25`.
fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// A rate (0–1) as a percentage with three decimals: `2.013%`.
fn pct(v: f64) -> String {
    format!("{:.3}%", v * 100.0)
}

/// A signed rate difference as a percentage: `+0.500%`.
fn signed_pct(v: f64) -> String {
    format!("{:+.3}%", v * 100.0)
}

/// Seconds as milliseconds with one decimal, or `-`.
fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |s| format!("{:.1} ms", s * 1000.0))
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:0 16px 32px;color:#212529;background:#fff}
h1{font-size:1.5rem;margin:20px 0 4px}h2{font-size:1.25rem;margin:28px 0 6px;border-top:2px solid #dee2e6;padding-top:16px}
header p,footer p,.facts,.gates,.last-event{margin:4px 0;font-size:.9rem}footer{margin-top:32px;color:#495057}
.id{font-weight:normal;color:#495057}.state{font-size:.85rem;padding:2px 8px;border-radius:10px;color:#fff;vertical-align:middle}
.state.running{background:#1971c2}.state.paused{background:#e67700}.state.promoted{background:#2b8a3e}.state.rolled_back{background:#c92a2a}
.event-kind{font-weight:bold}
figure{margin:14px 0}figcaption{font-size:.9rem;font-weight:600;margin-bottom:2px}
.legend{font-size:.8rem;color:#495057;margin-left:8px;font-weight:normal}.legend i{display:inline-block;width:14px;height:3px;margin:0 4px 3px 10px;vertical-align:middle}
.legend i.canary{background:#e8590c}.legend i.baseline{background:#1c7ed6}.legend i.limit{background:#862e9c}.legend i.pass{background:#2b8a3e;height:8px;width:8px;border-radius:4px}.legend i.fail{background:#c92a2a;height:8px;width:8px;border-radius:4px}.legend i.inconclusive{background:#adb5bd;height:8px;width:8px;border-radius:4px}
svg.chart{width:100%;height:auto;display:block}
svg .grid{stroke:#e9ecef;stroke-width:1}svg .frame{fill:none;stroke:#ced4da}
svg .tick{font-size:11px;fill:#495057}svg .ref{font-size:11px;fill:#862e9c}svg .ev{font-size:11px;fill:#212529;font-weight:600}
svg polyline{fill:none;stroke-width:2}svg .share{stroke:#212529}
svg polyline.canary{stroke:#e8590c}svg polyline.baseline{stroke:#1c7ed6}svg polyline.limit{stroke:#862e9c;stroke-dasharray:6 4}
svg polygon.canary{fill:#e8590c;opacity:.18}svg polygon.baseline{fill:#1c7ed6;opacity:.18}
svg line.limit{stroke:#862e9c;stroke-dasharray:6 4;stroke-width:1.5}svg line.zero{stroke:#868e96;stroke-width:1}
svg circle.pass{fill:#2b8a3e}svg circle.fail{fill:#c92a2a}svg circle.inconclusive{fill:#adb5bd}
svg circle.event{fill:#fff;stroke:#212529;stroke-width:2}
svg g.pass line{stroke:#2b8a3e;stroke-width:2}svg g.fail line{stroke:#c92a2a;stroke-width:2}svg g.inconclusive line{stroke:#adb5bd;stroke-width:2}
table{border-collapse:collapse;font-size:.78rem;width:100%;margin:6px 0}th,td{border-bottom:1px solid #e9ecef;padding:3px 5px;text-align:right;white-space:nowrap;vertical-align:top}td small{color:#868e96}
th{background:#f8f9fa;position:sticky;top:0}td.why{text-align:left;white-space:normal}th.why{text-align:left}
td.pass{color:#2b8a3e;font-weight:600}td.fail{color:#c92a2a;font-weight:600}td.inconclusive{color:#868e96}
details{margin:10px 0}summary{cursor:pointer;font-weight:600;font-size:.9rem}.scroll{max-height:420px;overflow:auto}
";

#[cfg(test)]
mod tests;
