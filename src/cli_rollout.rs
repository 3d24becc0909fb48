//! `cohort rollout status|pause|resume|promote|abort`: the rollout calls of the admin API
//! from the command line. `status` prints, per rollout, the state, the step, the shares
//! and the last check's numbers in one screen; the actions print the new state. POSTs
//! send `Authorization: Bearer $COHORT_ADMIN_TOKEN` when that variable is set.

use clap::ValueEnum;
use serde_json::Value;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RolloutCommand {
    Status,
    Pause,
    Resume,
    Promote,
    Abort,
}

impl RolloutCommand {
    fn action(self) -> Option<&'static str> {
        match self {
            RolloutCommand::Status => None,
            RolloutCommand::Pause => Some("pause"),
            RolloutCommand::Resume => Some("resume"),
            RolloutCommand::Promote => Some("promote"),
            RolloutCommand::Abort => Some("abort"),
        }
    }
}

/// Runs the command against the admin API at `admin`; the exit code (0 ok, 1 refused or
/// unreachable).
pub fn run(cmd: RolloutCommand, admin: SocketAddr, service: Option<&str>) -> i32 {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let sent = match cmd.action() {
        None => agent.get(&format!("http://{admin}/rollout")).call(),
        Some(action) => {
            let mut url = format!("http://{admin}/rollout/{action}");
            if let Some(s) = service {
                url.push_str("?service=");
                url.extend(form_urlencoded::byte_serialize(s.as_bytes()));
            }
            let mut req = agent.post(&url);
            if let Ok(token) = std::env::var("COHORT_ADMIN_TOKEN") {
                req = req.set("authorization", &format!("Bearer {token}"));
            }
            req.call()
        }
    };
    let body = match sent {
        Ok(r) => r.into_string().unwrap_or_default(),
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            let why = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            eprintln!("rollout {}: HTTP {code}: {}", cmd_name(cmd), why.trim());
            return 1;
        }
        Err(e) => {
            eprintln!("cannot reach {admin}: {e}");
            return 1;
        }
    };
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        eprintln!("unexpected answer from {admin}: {body}");
        return 1;
    };
    if cmd.action().is_none() {
        print!("{}", fleet_line(&v["fleet"]));
    }
    let rollouts: Vec<Value> = match cmd.action() {
        None => v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| service.is_none_or(|want| s["service"] == want))
            .cloned()
            .collect(),
        Some(_) => vec![v],
    };
    if rollouts.is_empty() {
        println!("no rollout");
    }
    for r in &rollouts {
        print!("{}", screen(r));
    }
    0
}

fn cmd_name(cmd: RolloutCommand) -> &'static str {
    cmd.action().unwrap_or("status")
}

/// The process's part in a fleet, one line (nothing for a single instance).
pub fn fleet_line(f: &Value) -> String {
    match f["role"].as_str() {
        Some("decider") => {
            let n = f["followers"].as_array().map_or(0, Vec::len);
            format!("fleet: decider, {n} follower(s) reporting\n")
        }
        Some("follower") => {
            let decider = f["decider"].as_str().unwrap_or("-");
            match f["error"].as_str() {
                Some(e) => format!("fleet: follower of {decider}, which does not answer: {e}\n"),
                None => format!(
                    "fleet: follower of {decider}, last synced at {}\n",
                    f["synced_at"]
                ),
            }
        }
        _ => String::new(),
    }
}

/// One rollout as text: state, step, shares, last check.
pub fn screen(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    let percent = r["percent"].as_f64().unwrap_or(0.0);
    let step = r["step"].as_u64().unwrap_or(0) + 1;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  rollout {}  {}  step {step}  canary {} {percent}% / baseline {} {}%",
        s("service"),
        s("id"),
        s("state"),
        s("canary"),
        s("baseline"),
        100.0 - percent
    );
    let c = &r["last_check"];
    if c.is_null() {
        let _ = writeln!(out, "  no check yet");
    } else {
        let e = &c["errors"];
        let side = |k: &str| {
            let (n, err) = (
                e[k]["n"].as_u64().unwrap_or(0),
                e[k]["e"].as_u64().unwrap_or(0),
            );
            format!("{err}/{n}")
        };
        let ms = |v: &Value| {
            v.as_f64()
                .map_or("-".into(), |s| format!("{:.1} ms", s * 1e3))
        };
        let l = &c["latency"];
        let _ = writeln!(
            out,
            "  last check at {}: {}\n  errors {}: canary {}, baseline {}, difference in [{:+.3}%, {:+.3}%]\n  latency {}: canary {}, baseline {}, limit {}\n  availability {}",
            c["at"],
            c["result"].as_str().unwrap_or("-"),
            e["result"].as_str().unwrap_or("-"),
            side("canary"),
            side("baseline"),
            e["lower"].as_f64().unwrap_or(0.0) * 100.0,
            e["upper"].as_f64().unwrap_or(0.0) * 100.0,
            l["result"].as_str().unwrap_or("-"),
            ms(&l["canary_s"]),
            ms(&l["baseline_s"]),
            ms(&l["limit_s"]),
            c["availability"]["result"].as_str().unwrap_or("-"),
        );
    }
    if let Some(last) = r["history"].as_array().and_then(|h| h.last()) {
        let _ = writeln!(
            out,
            "  last event: {} at {}: {}",
            last["event"].as_str().unwrap_or("-"),
            last["at"],
            last["why"].as_str().unwrap_or("")
        );
    }
    out
}
