//! The state machine's transitions, table-driven: every transition, including failures
//! while paused or held, driven through [`Engine`] with synthetic counters. Plus resume
//! (restart, new id, changed steps) and the gates end to end through a check.

use super::check::Availability;
use super::engine::{Action, ActionError, CheckInput, Engine};
use super::state::{EventKind, Phase, RolloutState};
use super::window::{Counters, SideCounters, Snapshot};
use crate::config::{Gates, OnInconclusive, RolloutConfig, VariantRef};

pub(crate) const BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];
const T0: u64 = 1_700_000_000;

/// A test engine: steps [1, 5, 25], step 60 s, check 10 s, max step 300 s, 2 failures
/// roll back, min_requests 100, median latency; `edit` changes it.
pub(crate) fn engine(edit: impl FnOnce(&mut RolloutConfig)) -> Engine {
    let mut cfg = RolloutConfig {
        id: "v2".to_string(),
        canary: VariantRef {
            index: 1,
            name: "canary".to_string(),
        },
        baseline: VariantRef {
            index: 0,
            name: "stable".to_string(),
        },
        steps: vec![1.0, 5.0, 25.0],
        step_secs: 60,
        check_secs: 10,
        max_step_secs: 300,
        on_inconclusive: OnInconclusive::Rollback,
        failure_limit: 2,
        webhook: None,
        gates: Gates {
            min_requests: 100,
            latency_quantile: 0.5,
            ..Gates::default()
        },
    };
    edit(&mut cfg);
    Engine::with_bounds(cfg, BOUNDS.to_vec())
}

/// One instance's cumulative counters; canary requests all in `canary_bucket`, the
/// baseline's in the first bucket.
fn side(n: u64, e: u64, bucket: usize) -> SideCounters {
    let mut per = [0u64; 4];
    per[bucket] = n;
    SideCounters {
        requests: n,
        errors: e,
        buckets: super::quantile::cumulative(&per),
    }
}

pub(crate) fn snap(cn: u64, ce: u64, bn: u64, be: u64) -> Snapshot {
    let c = Counters {
        canary: side(cn, ce, 0),
        baseline: side(bn, be, 0),
    };
    [("self".to_string(), c)].into_iter().collect()
}

/// What a scripted check sees.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// 10 000 more clean requests a side, canary available: the window passes.
    P,
    /// The canary had no healthy backend all along: fails (availability).
    F,
    /// No new requests, canary available: inconclusive unless the step already had traffic.
    I,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Check(Seen, u64),
    Act(Action, u64),
}
use Op::{Act, Check};
use Seen::{F, I, P};

/// Drives an engine from a fresh start at T0; ops at T0 + t.
struct Sim {
    engine: Engine,
    state: RolloutState,
    requests: u64,
    events: Vec<EventKind>,
}

impl Sim {
    fn new(engine: Engine) -> Sim {
        let state = engine.resume(None, T0, &snap(0, 0, 0, 0)).state;
        Sim {
            engine,
            state,
            requests: 0,
            events: Vec::new(),
        }
    }

    fn run(&mut self, op: Op) {
        let out = match op {
            Check(seen, t) => {
                if let P = seen {
                    self.requests += 10_000;
                }
                let input = CheckInput {
                    now: T0 + t,
                    counters: snap(self.requests, 0, self.requests, 0),
                    availability: match seen {
                        F => Availability::Unavailable,
                        _ => Availability::Available,
                    },
                };
                let out = self.engine.check(&self.state, &input);
                assert_eq!(
                    out.report.is_some(),
                    !self.state.phase.is_final(),
                    "a report iff judged"
                );
                out
            }
            Act(a, t) => self
                .engine
                .act(&self.state, a, T0 + t)
                .expect("action applies"),
        };
        for e in &out.events {
            assert!(!e.why.is_empty());
        }
        self.events.extend(out.events.iter().map(|e| e.event));
        self.state = out.state;
    }
}

struct Row {
    name: &'static str,
    edit: fn(&mut RolloutConfig),
    ops: &'static [Op],
    phase: Phase,
    percent: f64,
    events: &'static [EventKind],
}

fn keep(_: &mut RolloutConfig) {}
fn advance(c: &mut RolloutConfig) {
    c.on_inconclusive = OnInconclusive::Advance;
}
fn hold(c: &mut RolloutConfig) {
    c.on_inconclusive = OnInconclusive::Hold;
}
fn one_step_advance(c: &mut RolloutConfig) {
    c.steps = vec![10.0];
    c.on_inconclusive = OnInconclusive::Advance;
}
fn limit_three(c: &mut RolloutConfig) {
    c.failure_limit = 3;
}

use EventKind::{Advanced, Held, Paused, Promoted, Resumed, RolledBack};
use Phase::{Paused as IsPaused, Promoted as IsPromoted, RolledBack as IsRolledBack, Running};

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "a pass before step_secs does not advance",
            edit: keep,
            ops: &[Check(P, 10), Check(P, 50)],
            phase: Running,
            percent: 1.0,
            events: &[],
        },
        Row {
            name: "a pass once step_secs ran advances",
            edit: keep,
            ops: &[Check(P, 10), Check(P, 60)],
            phase: Running,
            percent: 5.0,
            events: &[Advanced],
        },
        Row {
            name: "an inconclusive check at step_secs does not advance",
            edit: keep,
            ops: &[Check(I, 60), Check(I, 120)],
            phase: Running,
            percent: 1.0,
            events: &[],
        },
        Row {
            name: "every step passing walks to promoted",
            edit: keep,
            ops: &[Check(P, 60), Check(P, 120), Check(P, 180)],
            phase: IsPromoted,
            percent: 100.0,
            events: &[Advanced, Advanced, Promoted],
        },
        Row {
            name: "each step needs its own step_secs",
            edit: keep,
            ops: &[Check(P, 60), Check(P, 110), Check(P, 120)],
            phase: Running,
            percent: 25.0,
            events: &[Advanced, Advanced],
        },
        Row {
            name: "one failed check does not roll back",
            edit: keep,
            ops: &[Check(F, 10)],
            phase: Running,
            percent: 1.0,
            events: &[],
        },
        Row {
            name: "failure_limit failed checks in a row roll back",
            edit: keep,
            ops: &[Check(F, 10), Check(F, 20)],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[RolledBack],
        },
        Row {
            name: "a check that does not fail breaks the row",
            edit: keep,
            ops: &[Check(F, 10), Check(I, 20), Check(F, 30)],
            phase: Running,
            percent: 1.0,
            events: &[],
        },
        Row {
            name: "a passing check breaks the row too",
            edit: limit_three,
            ops: &[
                Check(F, 10),
                Check(F, 20),
                Check(P, 30),
                Check(F, 40),
                Check(F, 50),
            ],
            phase: Running,
            percent: 1.0,
            events: &[],
        },
        Row {
            name: "failures roll back at a later step too",
            edit: keep,
            ops: &[Check(P, 60), Check(F, 70), Check(F, 80)],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[Advanced, RolledBack],
        },
        Row {
            name: "failures while paused count",
            edit: keep,
            ops: &[Act(Action::Pause, 5), Check(F, 10), Check(F, 20)],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[Paused, RolledBack],
        },
        Row {
            name: "a row of failures spans a pause",
            edit: keep,
            ops: &[Check(F, 10), Act(Action::Pause, 15), Check(F, 20)],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[Paused, RolledBack],
        },
        Row {
            name: "paused never advances",
            edit: keep,
            ops: &[Act(Action::Pause, 5), Check(P, 60), Check(P, 120)],
            phase: IsPaused,
            percent: 1.0,
            events: &[Paused],
        },
        Row {
            name: "paused never applies max_step_secs",
            edit: keep,
            ops: &[Act(Action::Pause, 5), Check(I, 1000)],
            phase: IsPaused,
            percent: 1.0,
            events: &[Paused],
        },
        Row {
            name: "resumed, the step advances on the next pass",
            edit: keep,
            ops: &[
                Act(Action::Pause, 50),
                Check(P, 60),
                Act(Action::Resume, 70),
                Check(P, 80),
            ],
            phase: Running,
            percent: 5.0,
            events: &[Paused, Resumed, Advanced],
        },
        Row {
            name: "time paused does not count toward step_secs",
            edit: keep,
            ops: &[
                Act(Action::Pause, 10),
                Act(Action::Resume, 110),
                Check(P, 150),
                Check(P, 160),
            ],
            phase: Running,
            percent: 5.0,
            events: &[Paused, Resumed, Advanced],
        },
        Row {
            name: "time paused does not count toward max_step_secs",
            edit: keep,
            ops: &[
                Act(Action::Pause, 10),
                Act(Action::Resume, 110),
                Check(I, 300),
                Check(I, 400),
            ],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[Paused, Resumed, RolledBack],
        },
        Row {
            name: "pausing twice and resuming a running rollout change nothing",
            edit: keep,
            ops: &[
                Act(Action::Resume, 1),
                Act(Action::Pause, 2),
                Act(Action::Pause, 3),
            ],
            phase: IsPaused,
            percent: 1.0,
            events: &[Paused],
        },
        Row {
            name: "inconclusive before max_step_secs waits",
            edit: keep,
            ops: &[Check(I, 290)],
            phase: Running,
            percent: 1.0,
            events: &[],
        },
        Row {
            name: "max_step_secs with on_inconclusive = rollback rolls back",
            edit: keep,
            ops: &[Check(I, 290), Check(I, 300)],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[RolledBack],
        },
        Row {
            name: "max_step_secs with on_inconclusive = advance advances",
            edit: advance,
            ops: &[Check(I, 300)],
            phase: Running,
            percent: 5.0,
            events: &[Advanced],
        },
        Row {
            name: "on_inconclusive = advance after the last step promotes",
            edit: one_step_advance,
            ops: &[Check(I, 300)],
            phase: IsPromoted,
            percent: 100.0,
            events: &[Promoted],
        },
        Row {
            name: "a failed check at max_step_secs waits for the next check",
            edit: advance,
            ops: &[Check(F, 300)],
            phase: Running,
            percent: 1.0,
            events: &[],
        },
        Row {
            name: "after a failed check, an inconclusive one applies on_inconclusive",
            edit: advance,
            ops: &[Check(F, 300), Check(I, 310)],
            phase: Running,
            percent: 5.0,
            events: &[Advanced],
        },
        Row {
            name: "max_step_secs with on_inconclusive = hold holds once",
            edit: hold,
            ops: &[Check(I, 300), Check(I, 310), Check(I, 900)],
            phase: Running,
            percent: 1.0,
            events: &[Held],
        },
        Row {
            name: "a held step still advances on a pass",
            edit: hold,
            ops: &[Check(I, 300), Check(P, 310)],
            phase: Running,
            percent: 5.0,
            events: &[Held, Advanced],
        },
        Row {
            name: "failures while held count",
            edit: hold,
            ops: &[Check(I, 300), Check(F, 310), Check(F, 320)],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[Held, RolledBack],
        },
        Row {
            name: "the next step starts unheld and holds on its own max_step_secs",
            edit: hold,
            ops: &[Check(I, 300), Check(P, 310), Check(I, 600), Check(I, 610)],
            phase: Running,
            percent: 5.0,
            events: &[Held, Advanced, Held],
        },
        Row {
            name: "a held step can be paused, and failures still count",
            edit: hold,
            ops: &[
                Check(I, 300),
                Act(Action::Pause, 305),
                Check(F, 310),
                Check(F, 320),
            ],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[Held, Paused, RolledBack],
        },
        Row {
            name: "promote while running",
            edit: keep,
            ops: &[Check(P, 60), Act(Action::Promote, 70)],
            phase: IsPromoted,
            percent: 100.0,
            events: &[Advanced, Promoted],
        },
        Row {
            name: "promote while paused",
            edit: keep,
            ops: &[Act(Action::Pause, 5), Act(Action::Promote, 6)],
            phase: IsPromoted,
            percent: 100.0,
            events: &[Paused, Promoted],
        },
        Row {
            name: "abort while running",
            edit: keep,
            ops: &[Act(Action::Abort, 5)],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[RolledBack],
        },
        Row {
            name: "abort while paused",
            edit: keep,
            ops: &[Act(Action::Pause, 5), Act(Action::Abort, 6)],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[Paused, RolledBack],
        },
        Row {
            name: "a rolled-back rollout is never judged again",
            edit: keep,
            ops: &[
                Act(Action::Abort, 5),
                Check(P, 60),
                Check(F, 70),
                Check(F, 80),
            ],
            phase: IsRolledBack,
            percent: 0.0,
            events: &[RolledBack],
        },
        Row {
            name: "a promoted rollout is never judged again",
            edit: keep,
            ops: &[Act(Action::Promote, 5), Check(F, 60), Check(F, 70)],
            phase: IsPromoted,
            percent: 100.0,
            events: &[Promoted],
        },
    ]
}

#[test]
fn every_transition() {
    let mut failures = Vec::new();
    for row in rows() {
        let mut sim = Sim::new(engine(row.edit));
        for &op in row.ops {
            sim.run(op);
        }
        let got = (sim.state.phase, sim.state.percent, sim.events.as_slice());
        if got != (row.phase, row.percent, row.events) {
            failures.push(format!(
                "{}: got {got:?}, want {:?}",
                row.name,
                (row.phase, row.percent, row.events)
            ));
        }
        // The history holds the start and exactly these transitions.
        let history: Vec<EventKind> = sim.state.history.iter().skip(1).map(|e| e.event).collect();
        if history != row.events {
            failures.push(format!("{}: history {history:?}", row.name));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn actions_on_a_final_rollout_are_refused() {
    for final_op in [Action::Promote, Action::Abort] {
        let mut sim = Sim::new(engine(keep));
        sim.run(Act(final_op, 1));
        for a in [
            Action::Pause,
            Action::Resume,
            Action::Promote,
            Action::Abort,
        ] {
            let err = sim.engine.act(&sim.state, a, T0 + 2).unwrap_err();
            assert!(matches!(err, ActionError::Final { .. }), "{a:?}");
            assert!(
                err.to_string().contains("a new rollout needs a new id"),
                "{err}"
            );
        }
    }
}

#[test]
fn an_advance_restarts_the_clock_window_and_failure_count() {
    let mut sim = Sim::new(engine(limit_three));
    sim.run(Check(F, 10));
    sim.run(Check(P, 60));
    assert_eq!(sim.state.consecutive_failures, 0);
    sim.run(Check(P, 70));
    let s = &sim.state;
    assert_eq!((s.step, s.percent, s.step_started_at), (1, 5.0, T0 + 60));
    // The window began at the advance: it holds the 10 000 requests since, not 20 000.
    assert_eq!(s.last_check.as_ref().unwrap().errors.canary.n, 10_000);
}

#[test]
fn error_rate_5_percent_against_0_rolls_back_with_the_numbers_in_why() {
    let e = engine(keep);
    let mut s = e.resume(None, T0, &snap(0, 0, 0, 0)).state;
    for (i, t) in [10u64, 20].into_iter().enumerate() {
        let n = 1000 * (i as u64 + 1);
        let input = CheckInput {
            now: T0 + t,
            counters: snap(n, n / 20, n, 0),
            availability: Availability::Available,
        };
        let out = e.check(&s, &input);
        let r = out.report.clone().unwrap();
        assert_eq!(r.errors.result, super::Verdict::Fail, "{r:?}");
        s = out.state;
        if i == 1 {
            assert_eq!(s.phase, Phase::RolledBack);
            let why = &out.events[0].why;
            assert!(
                why.contains("2 failed check(s) in a row (failure_limit 2) at step 1 (1%)"),
                "{why}"
            );
            assert!(
                why.contains("canary 5.000% (100/2000), baseline 0.000% (0/2000), difference in [+3.839%, +6.411%] vs max +0.500%"),
                "{why}"
            );
        }
    }
}

#[test]
fn a_slower_canary_fails_the_latency_gate() {
    let e = engine(keep);
    let s = e.resume(None, T0, &snap(0, 0, 0, 0)).state;
    let slow = Counters {
        canary: side(1000, 0, 2),
        baseline: side(1000, 0, 0),
    };
    let input = CheckInput {
        now: T0 + 10,
        counters: [("self".to_string(), slow)].into_iter().collect(),
        availability: Availability::Available,
    };
    let out = e.check(&s, &input);
    let r = out.report.unwrap();
    assert_eq!(
        (r.result, r.latency.result, r.errors.result),
        (
            super::Verdict::Fail,
            super::Verdict::Fail,
            super::Verdict::Inconclusive
        )
    );
    assert_eq!(out.state.consecutive_failures, 1);
}

#[test]
fn low_traffic_is_inconclusive_and_never_rolls_back_before_max_step_secs() {
    let e = engine(keep);
    let mut s = e.resume(None, T0, &snap(0, 0, 0, 0)).state;
    // One error in a handful of canary requests: 20% against 0%, but too few to judge.
    for t in (10..300).step_by(10) {
        let n = t / 10;
        let input = CheckInput {
            now: T0 + t,
            counters: snap(n, 1, 20 * n, 0),
            availability: Availability::Available,
        };
        let out = e.check(&s, &input);
        assert_eq!(out.report.unwrap().result, super::Verdict::Inconclusive);
        assert!(out.events.is_empty());
        s = out.state;
    }
    assert_eq!((s.phase, s.percent), (Phase::Running, 1.0));
}

mod resume;
