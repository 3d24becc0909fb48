//! The rollout state machine (SPEC "States"): pure. Inputs are the service's rollout
//! config, the state, the time (unix seconds) and a check's readings; outputs are the new
//! state and the transitions ([`Event`]s) with a `why` that carries the numbers. No
//! clock, no I/O: the caller runs checks every `check_secs`, persists the state after
//! every call that returns [`Outcome::changed`], and acts on the events (log, webhook,
//! metrics, new weights).
//!
//! Rules, in the order a check applies them:
//! 1. Promoted and rolled back are final: a check changes nothing.
//! 2. The window takes the reading; the gates judge it; the report is recorded.
//! 3. A failed check adds one to `consecutive_failures`, any other resets it; at
//!    `failure_limit` the rollout rolls back, running, held or paused alike.
//! 4. Paused: nothing else (the step and its clock are held).
//! 5. A passed check once the step has run `step_secs` (pauses excluded) advances: to the
//!    next step with a larger percent, or after the last to `promoted`.
//! 6. An inconclusive check once the step has run `max_step_secs` applies
//!    `on_inconclusive`: rollback, advance (as 5), or hold (once; the step then still
//!    advances on a pass and still rolls back on failures). A failed check below the
//!    limit waits for the next one.
//!
//! Steps changed under the same `id` (decided here; SPEC is silent): the current percent
//! is authoritative and stays, so no user moves and no share is skipped unjudged; the
//! step keeps its clock, window and failures; the rollout continues at the first new
//! step above it (or promotes after it, when none is). The index is re-derived.
//! A changed canary or baseline under the same `id` restarts the step's window and clock
//! at the current percent (counts of another pair judge nothing).

use super::check::{evaluate, Availability, CheckReport};
use super::normal::z_for;
use super::state::{Event, EventKind, Phase, RolloutState, STATE_VERSION};
use super::verdict::Verdict;
use super::window::{Snapshot, Window};
use crate::config::{OnInconclusive, RolloutConfig};
use std::collections::VecDeque;

/// An operator's request (`POST /rollout/<action>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    /// To 100% and `promoted` now.
    Promote,
    /// Roll back now.
    Abort,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }

    /// `pause`, `resume`, `promote` or `abort`.
    pub fn parse(s: &str) -> Option<Action> {
        [
            Action::Pause,
            Action::Resume,
            Action::Promote,
            Action::Abort,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// An action that cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("rollout {id:?} is already {}: a new rollout needs a new id", .phase.as_str())]
    Final { id: String, phase: Phase },
}

/// The new state and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: RolloutState,
    /// Transitions, in order (empty: no transition).
    pub events: Vec<Event>,
    /// The check's findings, when a check ran.
    pub report: Option<CheckReport>,
}

impl Outcome {
    /// Whether the state differs from the one given (persist it if so).
    pub fn changed(&self, before: &RolloutState) -> bool {
        self.state != *before
    }
}

/// What one check reads.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckInput {
    /// Unix seconds.
    pub now: u64,
    /// Cumulative counters of every instance (one entry for a single process).
    pub counters: Snapshot,
    /// Whether the canary had a healthy backend during the last `check_secs`.
    pub availability: Availability,
}

/// One service's rollout rules: its config, `z` and the histogram bounds, computed once.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: RolloutConfig,
    z: f64,
    bounds: Vec<f64>,
}

impl Engine {
    /// An engine for a validated `[service.rollout]`; the histogram bounds are
    /// [`crate::metrics::duration_buckets`].
    pub fn new(cfg: RolloutConfig) -> Engine {
        Engine::with_bounds(cfg, crate::metrics::duration_buckets())
    }

    /// An engine whose windows' histograms have these finite bucket bounds.
    pub fn with_bounds(cfg: RolloutConfig, bounds: Vec<f64>) -> Engine {
        let z = z_for(cfg.gates.confidence);
        Engine { cfg, z, bounds }
    }

    pub fn config(&self) -> &RolloutConfig {
        &self.cfg
    }

    /// A new rollout at the first step, its window beginning at `counters`.
    pub fn start(&self, now: u64, counters: &Snapshot, why: String) -> Outcome {
        let (phase, percent) = match self.cfg.steps.first() {
            Some(&p) => (Phase::Running, p),
            None => (Phase::Promoted, 100.0),
        };
        let mut state = RolloutState {
            version: STATE_VERSION,
            id: self.cfg.id.clone(),
            canary: self.cfg.canary.name.clone(),
            baseline: self.cfg.baseline.name.clone(),
            steps: self.cfg.steps.clone(),
            phase,
            step: 0,
            percent,
            step_started_at: now,
            paused_at: None,
            paused_secs: 0,
            held: false,
            consecutive_failures: 0,
            window: Window::begin(counters),
            last_check: None,
            checks: VecDeque::new(),
            history: VecDeque::new(),
        };
        let event = Event {
            at: now,
            event: EventKind::Started,
            step: 0,
            percent,
            why: format!(
                "{why}: {} against {} at {percent}% of their users (steps {})",
                self.cfg.canary.name,
                self.cfg.baseline.name,
                steps_text(&self.cfg.steps)
            ),
        };
        state.record(event.clone());
        Outcome {
            state,
            events: vec![event],
            report: None,
        }
    }

    /// The state to run with after a start, restart or reload, given what was persisted:
    /// the same `id` continues (a restart resumes the same step, never starts over or
    /// skips one); another `id`, or none, starts at the first step.
    pub fn resume(
        &self,
        persisted: Option<&RolloutState>,
        now: u64,
        counters: &Snapshot,
    ) -> Outcome {
        let Some(old) = persisted else {
            return self.start(now, counters, format!("rollout {:?} started", self.cfg.id));
        };
        if old.id != self.cfg.id {
            return self.start(
                now,
                counters,
                format!(
                    "rollout {:?} started (new id; {:?} was {})",
                    self.cfg.id,
                    old.id,
                    old.phase.as_str()
                ),
            );
        }
        let mut state = old.clone();
        let mut events = Vec::new();
        if state.phase.is_final() {
            return Outcome {
                state,
                events,
                report: None,
            };
        }
        let pair_changed =
            state.canary != self.cfg.canary.name || state.baseline != self.cfg.baseline.name;
        if pair_changed {
            let why = format!(
                "canary/baseline changed from {}/{} to {}/{} under the same id: the step at {}% starts its window and clock again",
                state.canary, state.baseline, self.cfg.canary.name, self.cfg.baseline.name, state.percent
            );
            state.canary = self.cfg.canary.name.clone();
            state.baseline = self.cfg.baseline.name.clone();
            self.restart_step(&mut state, now, counters);
            events.push(self.event(&state, now, EventKind::Reconfigured, why));
        }
        if state.steps != self.cfg.steps {
            let next = self.cfg.steps.iter().find(|&&p| p > state.percent);
            let why = format!(
                "steps changed from {} to {} under the same id: staying at {}% (no user moves); next {}",
                steps_text(&state.steps),
                steps_text(&self.cfg.steps),
                state.percent,
                next.map_or("promotion".to_string(), |p| format!("{p}%"))
            );
            state.steps = self.cfg.steps.clone();
            state.step = step_index(&state.steps, state.percent);
            events.push(self.event(&state, now, EventKind::Reconfigured, why));
        }
        for e in &events {
            state.record(e.clone());
        }
        Outcome {
            state,
            events,
            report: None,
        }
    }

    /// One check at `input.now` (run every `check_secs`).
    pub fn check(&self, state: &RolloutState, input: &CheckInput) -> Outcome {
        let mut s = state.clone();
        if s.phase.is_final() {
            return Outcome {
                state: s,
                events: Vec::new(),
                report: None,
            };
        }
        let now = input.now;
        s.window.observe(&input.counters);
        let totals = s.window.totals();
        let (result, errors, latency, availability) = evaluate(
            &self.cfg.gates,
            self.z,
            &self.bounds,
            &totals,
            input.availability,
        );
        let report = CheckReport {
            at: now,
            result,
            step: s.step,
            percent: s.percent,
            errors,
            latency,
            availability,
        };
        s.record_check(report.clone());
        let summary = report.summary(&self.cfg.gates);
        let mut events = Vec::new();
        if result == Verdict::Fail {
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        } else {
            s.consecutive_failures = 0;
        }
        let active = s.active_secs(now);
        let at = format!("step {} ({}%)", s.step + 1, s.percent);
        if result == Verdict::Fail && s.consecutive_failures >= self.cfg.failure_limit {
            let why = format!(
                "{} failed check(s) in a row (failure_limit {}) at {at}{}: {summary}",
                s.consecutive_failures,
                self.cfg.failure_limit,
                if s.phase == Phase::Paused {
                    " while paused"
                } else {
                    ""
                }
            );
            events.push(self.roll_back(&mut s, now, why));
        } else if s.phase == Phase::Paused {
            // Held by the operator: recorded only.
        } else if result == Verdict::Pass && active >= self.cfg.step_secs {
            let why = format!(
                "{at} passed after {active} s (step_secs {}): {summary}",
                self.cfg.step_secs
            );
            events.push(self.advance(&mut s, now, input, why));
        } else if result == Verdict::Inconclusive && active >= self.cfg.max_step_secs && !s.held {
            let why = format!(
                "{at} not passed after {active} s (max_step_secs {}), on_inconclusive = {}: {summary}",
                self.cfg.max_step_secs,
                self.cfg.on_inconclusive.as_str()
            );
            events.push(match self.cfg.on_inconclusive {
                OnInconclusive::Rollback => self.roll_back(&mut s, now, why),
                OnInconclusive::Advance => self.advance(&mut s, now, input, why),
                OnInconclusive::Hold => {
                    s.held = true;
                    let e = self.event(&s, now, EventKind::Held, why);
                    s.record(e.clone());
                    e
                }
            });
        }
        Outcome {
            state: s,
            events,
            report: Some(report),
        }
    }

    /// An operator's action at `now`. Pausing a paused rollout or resuming a running one
    /// changes nothing (no event); any action on a promoted or rolled-back one is refused.
    pub fn act(
        &self,
        state: &RolloutState,
        action: Action,
        now: u64,
    ) -> Result<Outcome, ActionError> {
        let mut s = state.clone();
        if s.phase.is_final() {
            return Err(ActionError::Final {
                id: s.id,
                phase: s.phase,
            });
        }
        let at = format!("step {} ({}%)", s.step + 1, s.percent);
        let event = match (action, s.phase) {
            (Action::Pause, Phase::Running) => {
                s.phase = Phase::Paused;
                s.paused_at = Some(now);
                let e = self.event(
                    &s,
                    now,
                    EventKind::Paused,
                    format!("paused by the operator at {at}"),
                );
                s.record(e.clone());
                Some(e)
            }
            (Action::Resume, Phase::Paused) => {
                let paused = s.paused_at.map_or(0, |p| now.saturating_sub(p));
                s.paused_secs = s.paused_secs.saturating_add(paused);
                s.paused_at = None;
                s.phase = Phase::Running;
                let why = format!("resumed by the operator at {at} after {paused} s paused");
                let e = self.event(&s, now, EventKind::Resumed, why);
                s.record(e.clone());
                Some(e)
            }
            (Action::Pause, _) | (Action::Resume, _) => None,
            (Action::Promote, _) => {
                Some(self.promote(&mut s, now, format!("promoted by the operator at {at}")))
            }
            (Action::Abort, _) => {
                Some(self.roll_back(&mut s, now, format!("aborted by the operator at {at}")))
            }
        };
        Ok(Outcome {
            state: s,
            events: event.into_iter().collect(),
            report: None,
        })
    }

    fn event(&self, s: &RolloutState, now: u64, kind: EventKind, why: String) -> Event {
        Event {
            at: now,
            event: kind,
            step: s.step,
            percent: s.percent,
            why,
        }
    }

    fn advance(&self, s: &mut RolloutState, now: u64, input: &CheckInput, why: String) -> Event {
        match self.cfg.steps.iter().position(|&p| p > s.percent) {
            None => self.promote(s, now, why),
            Some(i) => {
                let from = s.percent;
                s.step = i;
                s.percent = self.cfg.steps[i];
                self.restart_step(s, now, &input.counters);
                let why = format!("{why}; {from}% -> {}%", s.percent);
                let e = self.event(s, now, EventKind::Advanced, why);
                s.record(e.clone());
                e
            }
        }
    }

    fn promote(&self, s: &mut RolloutState, now: u64, why: String) -> Event {
        s.phase = Phase::Promoted;
        s.percent = 100.0;
        s.paused_at = None;
        s.held = false;
        let e = self.event(
            s,
            now,
            EventKind::Promoted,
            format!("{why}; {} now has 100%", self.cfg.canary.name),
        );
        s.record(e.clone());
        e
    }

    fn roll_back(&self, s: &mut RolloutState, now: u64, why: String) -> Event {
        s.phase = Phase::RolledBack;
        s.percent = 0.0;
        s.paused_at = None;
        s.held = false;
        let e = self.event(
            s,
            now,
            EventKind::RolledBack,
            format!(
                "{why}; {} now has 0% and rules pinned to it are suspended",
                self.cfg.canary.name
            ),
        );
        s.record(e.clone());
        e
    }

    /// A fresh clock, window and failure count at the current percent.
    fn restart_step(&self, s: &mut RolloutState, now: u64, counters: &Snapshot) {
        s.step_started_at = now;
        s.paused_secs = 0;
        if s.paused_at.is_some() {
            s.paused_at = Some(now);
        }
        s.held = false;
        s.consecutive_failures = 0;
        s.window = Window::begin(counters);
    }
}

/// The position of `percent` among `steps`: its index, or when it is not one of them the
/// index of the first larger step (where it would be inserted).
pub fn step_index(steps: &[f64], percent: f64) -> usize {
    steps.iter().filter(|&&p| p < percent).count()
}

fn steps_text(steps: &[f64]) -> String {
    let parts: Vec<String> = steps.iter().map(|p| format!("{p}%")).collect();
    format!("[{}]", parts.join(", "))
}
