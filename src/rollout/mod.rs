//! Progressive rollout with automated analysis (SPEC): the engine, as pure code.
//!
//! ```text
//! [service.rollout] ──validate──▶ RolloutConfig ──▶ Engine (z, histogram bounds)
//!                                                     │
//! persisted RolloutState ──Engine::resume──▶ RolloutState ──shares::effective──▶ weights
//!                                                     │                          (router)
//! every check_secs: CheckInput {now, counters, availability}
//!         ──Engine::check──▶ window ─▶ gates ─▶ verdict ─▶ Outcome {state, events, report}
//! operator: Engine::act(pause | resume | promote | abort) ──▶ Outcome
//! ```
//!
//! - [`normal`]: Φ⁻¹ for `z`; [`error_gate`]: Wilson and Newcombe; [`quantile`]: the
//!   Prometheus `histogram_quantile`; [`latency_gate`]; [`check`]: the gates combined.
//! - [`window`]: cumulative counters → the requests since the step began, per instance.
//! - [`engine`]: the state machine; [`state`]: what it persists; [`shares`]: the weights
//!   it implies; [`view`]: `GET /rollout` and webhook JSON; [`store`]: the state file
//!   (the module's only I/O, kept apart).
//!
//! Pure: [`crate::rollouts`] wires it into a running instance (routing, loop, admin).

pub mod check;
pub mod engine;
pub mod error_gate;
pub mod latency_gate;
pub mod normal;
pub mod quantile;
pub mod shares;
pub mod state;
pub mod store;
pub mod verdict;
pub mod view;
pub mod window;

pub use check::{Availability, CheckReport};
pub use engine::{Action, ActionError, CheckInput, Engine, Outcome};
pub use shares::Effective;
pub use state::{Event, EventKind, Phase, RolloutState};
pub use verdict::Verdict;
pub use window::{Counters, SideCounters, Snapshot, Window};

#[cfg(test)]
pub(crate) mod tests;
