//! The rollout calls of the admin API: `GET /rollout`,
//! `POST /rollout/pause|resume|promote|abort?service=S`, and the fleet's
//! `POST /fleet/sync` (a follower's report, answered by the decider), as status codes and
//! JSON.

use super::fleet::Report;
use super::ActError;
use crate::rollout::{view, Action};
use crate::state::State;
use http::StatusCode;
use serde_json::{json, Value};
use std::net::IpAddr;

/// `GET /rollout`: every rollout of the serving config, in SPEC's shape, with the gates in
/// force, and this process's part in the fleet (`fleet`); `?checks=1` adds each
/// rollout's recent checks (for `cohort rollout report`).
pub fn status(state: &State, query: Option<&str>) -> Value {
    let with_checks = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .any(|(k, v)| k == "checks" && matches!(v.as_ref(), "1" | "true" | "yes"));
    let table = state.table();
    let services: Vec<Value> = state
        .rollouts
        .current(&table)
        .iter()
        .map(|(name, s)| {
            let gates = table
                .router
                .service_by_name(name)
                .and_then(|i| table.router.services.get(i))
                .and_then(|svc| svc.cfg.rollout.as_ref())
                .map(|c| &c.gates);
            let mut entry = view::status(name, s);
            if let Some(g) = gates {
                entry = entry.with_gates(g);
            }
            if with_checks {
                entry = entry.with_checks(&s.checks);
            }
            serde_json::to_value(entry).unwrap_or(Value::Null)
        })
        .collect();
    json!({ "services": services, "fleet": state.rollouts.fleet_status() })
}

/// `POST /fleet/sync` (already authorized): a follower at `peer` reports its counters;
/// the decider answers the rollout states. 404 on any other process.
pub fn sync(state: &State, peer: Option<IpAddr>, body: &[u8]) -> (StatusCode, Value) {
    let report: Report = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("not a fleet report: {e}") }),
            )
        }
    };
    let Some(peer) = peer else {
        return (
            StatusCode::BAD_REQUEST,
            json!({ "error": "the reporting instance's address is unknown" }),
        );
    };
    match state.rollouts.receive(|| state.table(), peer, report) {
        Some(answer) => (
            StatusCode::OK,
            serde_json::to_value(answer).unwrap_or(Value::Null),
        ),
        None => (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("this instance is not the fleet's decider (it is {})", state.rollouts.role().as_str()) }),
        ),
    }
}

/// `POST /rollout/<action>?service=S` (already authorized).
pub fn act(state: &State, action: &str, query: Option<&str>) -> (StatusCode, Value) {
    let Some(action) = Action::parse(action) else {
        return (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("unknown rollout action {action:?} (pause, resume, promote, abort)") }),
        );
    };
    let service = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.into_owned());
    let table = state.table();
    let service = match service {
        Some(s) => s,
        None => {
            let all = state.rollouts.current(&table);
            match all.as_slice() {
                [(only, _)] => only.clone(),
                _ => {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({ "error": "service: required (?service=NAME) unless exactly one service has a rollout" }),
                    )
                }
            }
        }
    };
    match state.rollouts.act(|| state.table(), &service, action) {
        Ok(s) => (
            StatusCode::OK,
            serde_json::to_value(view::status(&service, &s)).unwrap_or(Value::Null),
        ),
        Err(e @ ActError::NoRollout(_)) => {
            (StatusCode::NOT_FOUND, json!({ "error": e.to_string() }))
        }
        Err(e @ (ActError::Refused(_) | ActError::Follower(_) | ActError::NotDeciding)) => {
            (StatusCode::CONFLICT, json!({ "error": e.to_string() }))
        }
    }
}
