//! The demo's rollout, made visible: simulated users sending requests through the proxy
//! (so the gates have traffic to judge), and a watcher that prints every check and
//! transition from `GET /rollout` as it happens, then what to try once the rollout is
//! promoted or rolled back.

use crate::rollout::view::ServiceEntry;
use crate::rollout::{CheckReport, Event, Phase};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Simulated users: keys `demo-user-0` .. `demo-user-{USERS - 1}`, taken in turn.
const USERS: u64 = 5_000;
/// Sending threads, each pausing [`PAUSE`] after every answer (a few hundred requests a
/// second at most on loopback: enough for the demo's `min_requests` within seconds).
const SENDERS: u64 = 2;
const PAUSE: Duration = Duration::from_millis(3);
/// How often the watcher asks `GET /rollout`.
const POLL: Duration = Duration::from_millis(300);

/// Sends requests of the simulated users to the proxy at `listen` until `stop` is set.
pub fn traffic(listen: String, stop: Arc<AtomicBool>) {
    for t in 0..SENDERS {
        let (listen, stop) = (listen.clone(), stop.clone());
        let _ = thread::Builder::new()
            .name(format!("demo-users-{t}"))
            .spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                let url = format!("http://{listen}/");
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let user = format!("demo-user-{}", i % USERS);
                    let answer = match agent.get(&url).set("x-user-id", &user).call() {
                        Ok(r) | Err(ureq::Error::Status(_, r)) => Some(r),
                        Err(_) => None,
                    };
                    match answer {
                        // Read the body so the connection is kept for the next request.
                        Some(r) => drop(r.into_string()),
                        None => thread::sleep(Duration::from_millis(200)),
                    }
                    i += SENDERS;
                    thread::sleep(PAUSE);
                }
            });
    }
}

#[derive(Deserialize)]
struct Answer {
    services: Vec<ServiceEntry>,
}

/// Prints the rollout's new checks and events every [`POLL`] until it is final, then
/// sets `stop` (the simulated users rest) and prints what to try next.
pub fn watch(admin: String, listen: String, stop: Arc<AtomicBool>) {
    let _ = thread::Builder::new()
        .name("demo-watch".to_string())
        .spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(5))
                .build();
            let url = format!("http://{admin}/rollout?checks=1");
            let mut seen = Seen::default();
            loop {
                thread::sleep(POLL);
                let Some(r) = agent
                    .get(&url)
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok())
                    .and_then(|body| serde_json::from_str::<Answer>(&body).ok())
                    .and_then(|a| a.services.into_iter().next())
                else {
                    continue;
                };
                for line in seen.news(&r) {
                    println!("{line}");
                }
                if r.state.is_final() {
                    stop.store(true, Ordering::Relaxed);
                    println!("{}", epilogue(&r, &admin, &listen));
                    return;
                }
            }
        });
}

/// What the watcher printed so far.
#[derive(Default)]
struct Seen {
    /// Time of the last check printed.
    check_at: Option<u64>,
    /// Events printed (the history only grows in a demo's lifetime).
    events: usize,
}

impl Seen {
    /// Lines for the checks and events not printed yet, checks first (a check's events
    /// carry its time).
    fn news(&mut self, r: &ServiceEntry) -> Vec<String> {
        let mut out = Vec::new();
        let last = self.check_at;
        for c in r.checks.iter().filter(|c| last.is_none_or(|at| c.at > at)) {
            out.push(check_line(c, r));
            self.check_at = Some(c.at);
        }
        for e in r.history.iter().skip(self.events) {
            out.push(event_line(e));
        }
        self.events = r.history.len();
        out
    }
}

fn clock(at: u64) -> String {
    let s = at % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `  12:00:05 check at 10%: pass: errors pass: canary 0.000% (0/201), ...`
fn check_line(c: &CheckReport, r: &ServiceEntry) -> String {
    let numbers = r
        .gates
        .map_or(String::new(), |g| format!(": {}", c.summary(&g)));
    format!(
        "  {} check at {}%: {}{numbers}",
        clock(c.at),
        c.percent,
        c.result
    )
}

/// `>> 12:00:10 ADVANCED -> 25%: step 1 (10%) passed after 10 s ...`
fn event_line(e: &Event) -> String {
    format!(
        ">> {} {} -> {}%: {}",
        clock(e.at),
        e.event.as_str().to_uppercase(),
        e.percent,
        e.why
    )
}

/// What to look at once the rollout is final.
fn epilogue(r: &ServiceEntry, admin: &str, listen: &str) -> String {
    let tail = format!(
        "  cohort rollout status --admin {admin}\n  \
         cohort rollout report --admin {admin} --out rollout.html   # the checks as a page\n"
    );
    match r.state {
        Phase::Promoted => format!(
            "\nThe canary passed every step and now serves everyone. To finish a real release, \
             move stable to the new version, then set canary's weight back to 0 (docs/rollout.md). Try:\n\
             \x20 curl -si -H 'x-user-id: alice' http://{listen}/ | grep -i x-cohort-variant   # canary\n{tail}"
        ),
        _ => format!(
            "\nThe canary was rolled back: every user is on stable again, and users pinned to the \
             canary by a rule get stable with reason `rollback`. Try:\n\
             \x20 curl -s -b 'beta=1' -H 'x-user-id: alice' http://{listen}/   # \"x-cohort-reason\":\"rollback\"\n\
             \x20 curl -si -H 'x-cohort-force: canary' http://{listen}/ | head -1   # forcing still reaches it\n{tail}"
        ),
    }
}
