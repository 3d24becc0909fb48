//! A follower's side of the fleet ([`super::fleet`]): every poll interval it sends the
//! decider its counters (`POST /fleet/sync`) and routes with the states it answers. Once
//! at start, before serving, so a restarted follower serves the fleet's step from its
//! first request. While the decider does not answer, the follower keeps the states it
//! has (the last step it got), says so once in the log and in `GET /rollout`, and tries
//! again at the next interval.

use super::fleet::{Answer, Link, Role};
use crate::state::State;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// The longest one sync may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The follower's background service.
pub struct FollowTask {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for FollowTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Role::Follower(link) = self.state.rollouts.role() else {
            return;
        };
        let mut tick = tokio::time::interval(link.every);
        tick.tick().await; // the first tick is immediate: the start-up sync just ran
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let state = self.state.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || sync(&state)).await {
                        log::error!("rollout sync task failed: {e}");
                    }
                }
            }
        }
    }
}

/// One exchange with the decider (blocking): the report out, the states in. Does
/// nothing unless this process is a follower.
pub fn sync(state: &State) {
    let Role::Follower(link) = state.rollouts.role() else {
        return;
    };
    match exchange(state, link) {
        Ok(answer) => state.rollouts.adopt(|| state.table(), answer),
        Err(e) => {
            if link.failed(e.clone()) {
                log::warn!(
                    "rollout: the fleet's decider does not answer ({e}); keeping the current steps until it does"
                );
            }
        }
    }
}

fn exchange(state: &State, link: &Link) -> Result<Answer, String> {
    let table = state.table();
    let report = link.report(&table);
    let url = format!("http://{}/fleet/sync", link.decider);
    let agent = ureq::AgentBuilder::new()
        .timeout(TIMEOUT.min(link.every.max(Duration::from_secs(1))))
        .build();
    let mut req = agent.post(&url);
    if let Some(token) = table.config.server.admin_token() {
        req = req.set("authorization", &format!("Bearer {token}"));
    }
    let body = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    let resp = req
        .set("content-type", "application/json")
        .send_string(&body)
        .map_err(|e| match e {
            ureq::Error::Status(code, r) => {
                let text = r.into_string().unwrap_or_default();
                format!("{url}: HTTP {code}: {}", text.trim())
            }
            other => format!("{url}: {other}"),
        })?;
    let text = resp
        .into_string()
        .map_err(|e| format!("{url}: reading the answer: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{url}: not a rollout answer: {e}"))
}
