//! The page from states the engine produced: the numbers of every check are in it, every
//! name is escaped, and nothing in it points outside the page.

use super::render;
use crate::rollout::tests::{engine, snap};
use crate::rollout::view::{self, ServiceEntry};
use crate::rollout::{Availability, CheckInput, RolloutState};
use std::time::{Duration, UNIX_EPOCH};

const T0: u64 = 1_700_000_000;

/// A rollout that passes step 1, then fails twice at step 2 and rolls back.
fn rolled_back() -> (RolloutState, crate::config::Gates) {
    let e = engine(|c| c.id = "v<2>".to_string());
    let mut s = e.resume(None, T0, &snap(0, 0, 0, 0)).state;
    for (dt, counters) in [
        (10, snap(50, 0, 500, 1)),
        (60, snap(2_000, 0, 10_000, 10)),
        (70, snap(2_400, 40, 11_000, 11)),
        (80, snap(2_600, 100, 12_000, 12)),
    ] {
        let input = CheckInput {
            now: T0 + dt,
            counters,
            availability: Availability::Available,
        };
        s = e.check(&s, &input).state;
    }
    (s, e.config().gates)
}

/// The entry as `GET /rollout?checks=1` serves it, read back as the report reads it.
fn entry(service: &str, s: &RolloutState, gates: &crate::config::Gates) -> ServiceEntry {
    let v = serde_json::to_value(
        view::status(service, s)
            .with_gates(gates)
            .with_checks(&s.checks),
    )
    .unwrap();
    serde_json::from_value(v).unwrap()
}

#[test]
fn the_page_carries_every_check_and_event_with_their_numbers() {
    let (s, gates) = rolled_back();
    assert_eq!(s.phase, crate::rollout::Phase::RolledBack, "{s:#?}");
    assert_eq!(s.checks.len(), 4);
    let e = entry("api", &s, &gates);
    assert_eq!(e.checks.len(), 4);
    assert_eq!(e.gates, Some(gates));
    let page = render(
        &[e],
        UNIX_EPOCH + Duration::from_secs(T0 + 90),
        "127.0.0.1:9090",
    );
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains("rolled back"), "state badge");
    // Four charts, each an inline SVG.
    assert_eq!(page.matches("<svg class=\"chart\"").count(), 4);
    // The failing check's numbers: 100 errors in the 600 canary requests of its window
    // (the step began at 2,000 requests and no error), and its verdicts.
    assert!(
        page.contains("100/600 = 16.667%"),
        "canary errors of the last check"
    );
    assert!(page.contains("<td class=\"fail\">fail</td>"));
    assert!(page.contains("<td class=\"pass\">pass</td>"));
    assert!(page.contains("class=\"inconclusive\""));
    // The event table has the rollback's why, escaped, and the id is escaped.
    assert!(page.contains("failed check(s) in a row"));
    assert!(page.contains("rollout v&lt;2&gt;") && !page.contains("v<2>"));
    // The gates line.
    assert!(page.contains("max_error_increase +0.500%"), "{page}");
}

#[test]
fn the_page_is_self_contained() {
    let (s, gates) = rolled_back();
    let page = render(&[entry("a\"pi<script>", &s, &gates)], UNIX_EPOCH, "x");
    for banned in [
        "http://", "https://", "<script", "<link", "<img", "@import", "url(http", "src=",
    ] {
        assert!(!page.contains(banned), "{banned} in the page");
    }
    assert!(page.contains("a&quot;pi&lt;script&gt;"));
    assert!(page.contains("Content-Security-Policy\" content=\"default-src 'none'"));
}

#[test]
fn an_answer_without_checks_or_gates_still_renders() {
    let e = engine(|_| {});
    let s = e.resume(None, T0, &snap(0, 0, 0, 0)).state;
    // An older server: no `gates`, no `checks`.
    let v = serde_json::to_value(view::status("api", &s)).unwrap();
    let entry: ServiceEntry = serde_json::from_value(v).unwrap();
    assert!(entry.gates.is_none() && entry.checks.is_empty());
    let page = render(&[entry], UNIX_EPOCH, "x");
    assert!(page.contains("started"), "{page}");
    let none = render(&[], UNIX_EPOCH, "x");
    assert!(none.contains("No rollout"), "{none}");
}
