//! What the outside sees of a rollout, in SPEC's shapes: one service's entry of
//! `GET /rollout`, and the JSON posted to `webhook` on a transition (with the
//! human-readable `text` a Slack incoming webhook shows). Pure: state in, JSON out.
//!
//! Beyond SPEC's fields (which keep their names), an entry may carry `gates` (the
//! thresholds in force) and `checks` (the recent checks, oldest first, at most
//! [`super::state::CHECKS_LIMIT`]; asked for with `GET /rollout?checks=1`, for
//! `cohort rollout report`).

use super::check::CheckReport;
use super::state::{Event, EventKind, Phase, RolloutState};
use crate::config::Gates;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One entry of `GET /rollout`'s `services`.
#[derive(Debug, Serialize)]
pub struct ServiceStatus<'a> {
    pub service: &'a str,
    pub id: &'a str,
    pub state: Phase,
    pub step: usize,
    pub percent: f64,
    pub step_started_at: u64,
    pub canary: &'a str,
    pub baseline: &'a str,
    pub last_check: Option<&'a CheckReport>,
    pub history: &'a VecDeque<Event>,
    /// The gates of the config in force, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gates: Option<&'a Gates>,
    /// The recent checks, oldest first, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<&'a VecDeque<CheckReport>>,
}

impl<'a> ServiceStatus<'a> {
    /// With the gates in force.
    pub fn with_gates(self, gates: &'a Gates) -> ServiceStatus<'a> {
        ServiceStatus {
            gates: Some(gates),
            ..self
        }
    }

    /// With the recent checks.
    pub fn with_checks(self, checks: &'a VecDeque<CheckReport>) -> ServiceStatus<'a> {
        ServiceStatus {
            checks: Some(checks),
            ..self
        }
    }
}

/// An entry of `GET /rollout` as a client reads it back (`cohort rollout report`): the
/// fields of [`ServiceStatus`], owned; the optional ones empty when absent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServiceEntry {
    pub service: String,
    pub id: String,
    pub state: Phase,
    pub step: usize,
    pub percent: f64,
    pub step_started_at: u64,
    pub canary: String,
    pub baseline: String,
    pub last_check: Option<CheckReport>,
    #[serde(default)]
    pub history: Vec<Event>,
    #[serde(default)]
    pub gates: Option<Gates>,
    #[serde(default)]
    pub checks: Vec<CheckReport>,
}

/// The `GET /rollout` entry of `service` in `state`.
pub fn status<'a>(service: &'a str, state: &'a RolloutState) -> ServiceStatus<'a> {
    ServiceStatus {
        service,
        id: &state.id,
        state: state.phase,
        step: state.step,
        percent: state.percent,
        step_started_at: state.step_started_at,
        canary: &state.canary,
        baseline: &state.baseline,
        last_check: state.last_check.as_ref(),
        history: &state.history,
        gates: None,
        checks: None,
    }
}

/// The webhook's JSON body for one transition.
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    /// One line for humans (Slack shows it).
    pub text: String,
    pub service: &'a str,
    pub id: &'a str,
    pub event: EventKind,
    pub state: Phase,
    pub step: usize,
    pub percent: f64,
    pub at: u64,
    pub why: &'a str,
}

/// The body posted for `event` of `service`'s rollout, now in `state`.
pub fn webhook_body<'a>(
    service: &'a str,
    state: &'a RolloutState,
    event: &'a Event,
) -> WebhookBody<'a> {
    WebhookBody {
        text: format!(
            "cohort: {service} rollout {} {} ({}% canary): {}",
            state.id,
            event.event.as_str().replace('_', " "),
            event.percent,
            event.why
        ),
        service,
        id: &state.id,
        event: event.event,
        state: state.phase,
        step: event.step,
        percent: event.percent,
        at: event.at,
        why: &event.why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::tests::{engine, snap};
    use crate::rollout::{Availability, CheckInput};

    #[test]
    fn the_status_entry_has_spec_fields() {
        let e = engine(|_| {});
        let s = e.resume(None, 100, &snap(0, 0, 0, 0)).state;
        let input = CheckInput {
            now: 110,
            counters: snap(1000, 50, 1000, 0),
            availability: Availability::Available,
        };
        let s = e.check(&s, &input).state;
        let v = serde_json::to_value(status("api", &s)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "service",
            "id",
            "state",
            "step",
            "percent",
            "step_started_at",
            "canary",
            "baseline",
            "last_check",
            "history",
        ] {
            assert!(keys.contains(&k), "{k} missing in {v}");
        }
        assert_eq!(v["state"], "running");
        assert_eq!(v["percent"], 1.0);
        let c = &v["last_check"];
        assert_eq!(c["at"], 110);
        assert_eq!(c["result"], "fail");
        assert_eq!(c["errors"]["canary"]["n"], 1000);
        assert_eq!(c["errors"]["canary"]["e"], 50);
        assert_eq!(c["errors"]["baseline"]["e"], 0);
        assert!(c["errors"]["lower"].is_f64() && c["errors"]["upper"].is_f64());
        assert_eq!(c["errors"]["result"], "fail");
        assert!(c["latency"].get("canary_s").is_some() && c["latency"].get("baseline_s").is_some());
        assert_eq!(c["availability"]["result"], "pass");
        let h = &v["history"][0];
        assert_eq!(
            (h["at"].as_u64(), h["event"].as_str()),
            (Some(100), Some("started"))
        );
        assert!(h["why"].as_str().unwrap().contains("canary against stable"));
        assert_eq!(h["step"], 0);
    }

    #[test]
    fn gates_and_checks_are_added_on_request_and_read_back() {
        let e = engine(|_| {});
        let s = e.resume(None, 100, &snap(0, 0, 0, 0)).state;
        let input = CheckInput {
            now: 110,
            counters: snap(1000, 0, 1000, 0),
            availability: Availability::Available,
        };
        let s = e.check(&s, &input).state;
        let plain = serde_json::to_value(status("api", &s)).unwrap();
        assert!(plain.get("gates").is_none() && plain.get("checks").is_none());
        let gates = e.config().gates;
        let full =
            serde_json::to_value(status("api", &s).with_gates(&gates).with_checks(&s.checks))
                .unwrap();
        assert_eq!(full["gates"]["max_error_increase"], 0.005);
        assert_eq!(full["gates"]["min_requests"], 100);
        assert_eq!(full["checks"].as_array().unwrap().len(), 1);
        assert_eq!(full["checks"][0]["at"], 110);
        // SPEC's fields are unchanged beside them.
        for k in ["service", "id", "state", "last_check", "history"] {
            assert_eq!(full[k], plain[k], "{k}");
        }
        let back: ServiceEntry = serde_json::from_value(full).unwrap();
        assert_eq!(back.gates, Some(gates));
        assert_eq!(back.checks, Vec::from(s.checks.clone()));
        assert_eq!(back.last_check, s.last_check);
        assert_eq!(back.history, Vec::from(s.history.clone()));
    }

    #[test]
    fn the_webhook_body_has_a_text_for_humans() {
        let e = engine(|_| {});
        let s = e.resume(None, 100, &snap(0, 0, 0, 0)).state;
        let out = e.act(&s, crate::rollout::Action::Abort, 120).unwrap();
        let body = webhook_body("api", &out.state, &out.events[0]);
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["event"], "rolled_back");
        assert_eq!(v["state"], "rolled_back");
        assert_eq!(v["percent"], 0.0);
        let text = v["text"].as_str().unwrap();
        assert!(
            text.starts_with("cohort: api rollout v2 rolled back (0% canary): aborted by the operator at step 1 (1%)"),
            "{text}"
        );
    }
}
