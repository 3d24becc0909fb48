//! The rollout webhook: one JSON POST per transition, on its own thread with a short
//! timeout, so a slow or failing receiver is logged and never blocks the rollout.

use std::time::Duration;

/// How long one post may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Posts `body` (serialized now) to `url` in the background.
pub fn post(url: &str, body: &impl serde::Serialize) {
    let json = match serde_json::to_string(body) {
        Ok(j) => j,
        Err(e) => {
            log::error!("rollout webhook body: {e}");
            return;
        }
    };
    let url = url.to_string();
    let spawned = std::thread::Builder::new()
        .name("rollout-webhook".into())
        .spawn(move || {
            let agent = ureq::AgentBuilder::new().timeout(TIMEOUT).build();
            let sent = agent
                .post(&url)
                .set("content-type", "application/json")
                .send_string(&json);
            if let Err(e) = sent {
                log::warn!("rollout webhook {url}: {e}");
            }
        });
    if let Err(e) = spawned {
        log::warn!("rollout webhook: cannot start a thread: {e}");
    }
}
