//! Resume: after a restart or reload the same `id` continues, a new one starts over, and
//! changed steps or a changed pair are handled as `docs/rollout.md` says.

use super::*;

fn advanced_twice() -> (Engine, RolloutState) {
    let mut sim = Sim::new(engine(keep));
    sim.run(Check(P, 60));
    sim.run(Check(P, 120));
    sim.run(Check(F, 130));
    (sim.engine, sim.state)
}

#[test]
fn nothing_persisted_starts_at_the_first_step() {
    let e = engine(keep);
    let out = e.resume(None, T0, &snap(5, 0, 5, 0));
    let s = &out.state;
    assert_eq!(
        (s.phase, s.step, s.percent, s.step_started_at),
        (Phase::Running, 0, 1.0, T0)
    );
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].event, EventKind::Started);
    assert!(
        out.events[0]
            .why
            .contains("canary against stable at 1% of their users (steps [1%, 5%, 25%])"),
        "{}",
        out.events[0].why
    );
}

#[test]
fn the_same_id_resumes_the_same_step_after_a_restart() {
    let (e, s) = advanced_twice();
    // Through the persisted form, then a restart whose counters are back at 0.
    let back: RolloutState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    let out = e.resume(Some(&back), T0 + 1000, &snap(0, 0, 0, 0));
    assert_eq!(
        out.state, s,
        "nothing changes: same step, clock, window and failures"
    );
    assert!(out.events.is_empty());
    assert_eq!(
        (
            out.state.step,
            out.state.percent,
            out.state.consecutive_failures
        ),
        (2, 25.0, 1)
    );
    // The next check counts the new process's requests in the same window.
    let input = CheckInput {
        now: T0 + 1010,
        counters: snap(10_000, 0, 10_000, 0),
        availability: Availability::Available,
    };
    let next = e.check(&out.state, &input);
    assert_eq!(next.state.phase, Phase::Promoted);
}

#[test]
fn a_new_id_starts_over() {
    let (_, s) = advanced_twice();
    let e2 = engine(|c| c.id = "v3".to_string());
    let out = e2.resume(Some(&s), T0 + 1000, &snap(0, 0, 0, 0));
    let n = &out.state;
    assert_eq!(
        (
            n.id.as_str(),
            n.phase,
            n.step,
            n.percent,
            n.consecutive_failures
        ),
        ("v3", Phase::Running, 0, 1.0, 0)
    );
    assert_eq!(n.history.len(), 1);
    assert!(
        out.events[0].why.contains("new id; \"v2\" was running"),
        "{}",
        out.events[0].why
    );
}

#[test]
fn a_final_rollout_stays_final_under_the_same_id() {
    let mut sim = Sim::new(engine(keep));
    sim.run(Act(Action::Abort, 5));
    let out = engine(|c| c.steps = vec![2.0]).resume(Some(&sim.state), T0 + 50, &snap(0, 0, 0, 0));
    assert_eq!(out.state, sim.state);
    assert!(out.events.is_empty());
}

#[test]
fn changed_steps_keep_the_current_percent_and_its_step() {
    let (_, s) = advanced_twice(); // at 25%, one failure
                                   // 25 is still a step: same step, renumbered; clock, window and failures kept.
    let out =
        engine(|c| c.steps = vec![2.0, 25.0, 60.0]).resume(Some(&s), T0 + 200, &snap(0, 0, 0, 0));
    let n = &out.state;
    assert_eq!(
        (n.step, n.percent, n.step_started_at, n.consecutive_failures),
        (1, 25.0, s.step_started_at, 1)
    );
    assert_eq!(n.window, s.window);
    assert_eq!(out.events[0].event, EventKind::Reconfigured);
    assert!(
        out.events[0]
            .why
            .contains("staying at 25% (no user moves); next 60%"),
        "{}",
        out.events[0].why
    );
    // Resuming again with the same config changes nothing more.
    let again =
        engine(|c| c.steps = vec![2.0, 25.0, 60.0]).resume(Some(n), T0 + 210, &snap(0, 0, 0, 0));
    assert!(again.events.is_empty());
}

#[test]
fn changed_steps_without_the_current_percent_continue_to_the_next_larger() {
    let (_, s) = advanced_twice(); // at 25%
    let e = engine(|c| c.steps = vec![10.0, 40.0, 80.0]);
    let n = e.resume(Some(&s), T0 + 200, &snap(0, 0, 0, 0)).state;
    assert_eq!(
        (n.step, n.percent),
        (1, 25.0),
        "stays at 25%, positioned before 40%"
    );
    let input = CheckInput {
        now: T0 + 210,
        counters: snap(50_000, 0, 50_000, 0),
        availability: Availability::Available,
    };
    let out = e.check(&n, &input);
    assert_eq!((out.state.step, out.state.percent), (1, 40.0));
}

#[test]
fn changed_steps_all_below_the_current_percent_promote_after_it_passes() {
    let (_, s) = advanced_twice(); // at 25%
    let e = engine(|c| c.steps = vec![1.0, 5.0]);
    let n = e.resume(Some(&s), T0 + 200, &snap(0, 0, 0, 0));
    assert!(
        n.events[0].why.contains("next promotion"),
        "{}",
        n.events[0].why
    );
    assert_eq!((n.state.step, n.state.percent), (2, 25.0));
    let input = CheckInput {
        now: T0 + 210,
        counters: snap(50_000, 0, 50_000, 0),
        availability: Availability::Available,
    };
    assert_eq!(e.check(&n.state, &input).state.phase, Phase::Promoted);
}

#[test]
fn a_changed_canary_under_the_same_id_restarts_the_step_window() {
    let (_, s) = advanced_twice();
    let e = engine(|c| {
        c.canary = VariantRef {
            index: 2,
            name: "canary2".to_string(),
        }
    });
    let out = e.resume(Some(&s), T0 + 200, &snap(7, 0, 7, 0));
    let n = &out.state;
    assert_eq!(
        (
            n.percent,
            n.step_started_at,
            n.consecutive_failures,
            n.canary.as_str()
        ),
        (25.0, T0 + 200, 0, "canary2")
    );
    assert_eq!(n.window.totals().canary.requests, 0);
    assert_eq!(out.events[0].event, EventKind::Reconfigured);
}

#[test]
fn history_is_bounded() {
    let mut sim = Sim::new(engine(keep));
    for i in 0..(crate::rollout::state::HISTORY_LIMIT as u64 + 10) {
        sim.run(Act(Action::Pause, 2 * i + 1));
        sim.run(Act(Action::Resume, 2 * i + 2));
    }
    assert_eq!(
        sim.state.history.len(),
        crate::rollout::state::HISTORY_LIMIT
    );
    assert_eq!(sim.state.history.back().unwrap().event, EventKind::Resumed);
}

#[test]
fn effective_weights_follow_the_state() {
    use crate::rollout::shares::effective;
    let conf = [95.0, 5.0];
    let mut sim = Sim::new(engine(keep));
    let cfg = sim.engine.config().clone();
    assert_eq!(effective(&conf, &cfg, &sim.state).weights, [99.0, 1.0]);
    sim.run(Check(P, 60));
    assert_eq!(effective(&conf, &cfg, &sim.state).weights, [95.0, 5.0]);
    sim.run(Act(Action::Pause, 61));
    assert_eq!(
        effective(&conf, &cfg, &sim.state).weights,
        [95.0, 5.0],
        "paused holds the share"
    );
    let promoted = sim
        .engine
        .act(&sim.state, Action::Promote, 62)
        .unwrap()
        .state;
    let p = effective(&conf, &cfg, &promoted);
    assert_eq!((p.weights, p.suspended), (vec![0.0, 100.0], None));
    let rolled = sim.engine.act(&sim.state, Action::Abort, 62).unwrap().state;
    let r = effective(&conf, &cfg, &rolled);
    assert_eq!(
        (r.weights.clone(), r.suspended),
        (vec![100.0, 0.0], Some((1, 0)))
    );
    assert_eq!(r.redirect(1), Some(0));
}
