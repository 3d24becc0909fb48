//! A rollout's state: what is persisted (across reloads and restarts), served in
//! `GET /rollout` and changed only by [`super::engine::Engine`]. Plain data.

use super::check::CheckReport;
use super::window::Window;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The persisted format's version; a file of another version is refused, not guessed at.
pub const STATE_VERSION: u32 = 1;
/// Transitions kept in `history` (the oldest are dropped).
pub const HISTORY_LIMIT: usize = 200;
/// Checks kept in `checks` (for the report; the oldest are dropped).
pub const CHECKS_LIMIT: usize = 500;

/// SPEC's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// At a step, judged at every check.
    Running,
    /// Holding the step and its share by operator request; checks are still recorded and
    /// failures still count toward `failure_limit`.
    Paused,
    /// The canary has 100%; never judged again.
    Promoted,
    /// The canary gets no hashed users and rules pinned to it are suspended.
    RolledBack,
}

impl Phase {
    /// The `state` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// Every phase, for `cohort_rollout_state{state}` (one series each).
    pub const ALL: [Phase; 4] = [
        Phase::Running,
        Phase::Paused,
        Phase::Promoted,
        Phase::RolledBack,
    ];

    /// Promoted and rolled back are final: no check or action changes them.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack)
    }
}

/// What happened (`history[].event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A rollout began at its first step (a new `id`, or none before).
    Started,
    /// To the next step.
    Advanced,
    Promoted,
    RolledBack,
    Paused,
    Resumed,
    /// `max_step_secs` passed with `on_inconclusive = "hold"`: the step stays.
    Held,
    /// The same `id` came back with other steps, canary or baseline.
    Reconfigured,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Advanced => "advanced",
            EventKind::Promoted => "promoted",
            EventKind::RolledBack => "rolled_back",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Held => "held",
            EventKind::Reconfigured => "reconfigured",
        }
    }
}

/// One transition: logged, kept in `history`, posted to the webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub at: u64,
    pub event: EventKind,
    /// Step and canary percent *after* the transition (a rollback shows 0, a promotion 100).
    pub step: usize,
    pub percent: f64,
    /// Human-readable, with the numbers behind it.
    pub why: String,
}

/// One service's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// [`STATE_VERSION`].
    pub version: u32,
    pub id: String,
    /// Variant names the rollout was started (or last reconfigured) with.
    pub canary: String,
    pub baseline: String,
    /// The steps it was started (or last reconfigured) with, to notice a change.
    pub steps: Vec<f64>,
    pub phase: Phase,
    /// 0-based position among `steps`; the percent below is authoritative (see
    /// [`super::engine`] on steps changed under a running rollout).
    pub step: usize,
    /// The canary's share (%) of the users it and the baseline split: the step's while
    /// running or paused, 100 when promoted, 0 when rolled back.
    pub percent: f64,
    /// Unix seconds when the current step began.
    pub step_started_at: u64,
    /// Set while paused: when the pause began.
    pub paused_at: Option<u64>,
    /// Seconds of the current step spent paused (excluded from `step_secs` and
    /// `max_step_secs`; a pause holds the step's clock).
    pub paused_secs: u64,
    /// `max_step_secs` passed with `on_inconclusive = "hold"`.
    pub held: bool,
    /// Failed checks in a row.
    pub consecutive_failures: u32,
    /// The current step's window.
    pub window: Window,
    pub last_check: Option<CheckReport>,
    /// Recent checks, oldest first (at most [`CHECKS_LIMIT`]).
    pub checks: VecDeque<CheckReport>,
    /// Transitions, oldest first (at most [`HISTORY_LIMIT`]).
    pub history: VecDeque<Event>,
}

impl RolloutState {
    /// Seconds the current step has been running at `now`, pauses excluded.
    pub fn active_secs(&self, now: u64) -> u64 {
        let paused_now = self.paused_at.map_or(0, |p| now.saturating_sub(p));
        now.saturating_sub(self.step_started_at)
            .saturating_sub(self.paused_secs)
            .saturating_sub(paused_now)
    }

    pub(super) fn record(&mut self, event: Event) {
        if self.history.len() >= HISTORY_LIMIT {
            self.history.pop_front();
        }
        self.history.push_back(event);
    }

    pub(super) fn record_check(&mut self, report: CheckReport) {
        if self.checks.len() >= CHECKS_LIMIT {
            self.checks.pop_front();
        }
        self.checks.push_back(report.clone());
        self.last_check = Some(report);
    }
}
