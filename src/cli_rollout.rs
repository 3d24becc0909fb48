//! `cohort rollout status|pause|resume|promote|abort|report`: the rollout calls of the
//! admin API from the command line. `status` prints, per rollout, the state, the step,
//! the shares and the last check's numbers in one screen; the actions print the new
//! state; `report` writes one self-contained HTML page of the recent checks
//! ([`crate::rollout_report`]). Every call sends `Authorization: Bearer
//! $COHORT_ADMIN_TOKEN` when that variable is set (an admin listener off loopback asks
//! it for `GET /rollout` too).

use crate::rollout::view::ServiceEntry;
use clap::ValueEnum;
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RolloutCommand {
    Status,
    Pause,
    Resume,
    Promote,
    Abort,
    /// An HTML page of the rollouts' checks and transitions (`--out FILE`, else stdout).
    Report,
}

impl RolloutCommand {
    fn action(self) -> Option<&'static str> {
        match self {
            RolloutCommand::Status | RolloutCommand::Report => None,
            RolloutCommand::Pause => Some("pause"),
            RolloutCommand::Resume => Some("resume"),
            RolloutCommand::Promote => Some("promote"),
            RolloutCommand::Abort => Some("abort"),
        }
    }
}

/// Runs the command against the admin API at `admin`; the exit code (0 ok, 1 refused or
/// unreachable, 2 `--out` with another command than `report`).
pub fn run(
    cmd: RolloutCommand,
    admin: SocketAddr,
    service: Option<&str>,
    out: Option<&Path>,
) -> i32 {
    if out.is_some() && cmd != RolloutCommand::Report {
        eprintln!("--out: only `cohort rollout report` writes a file");
        return 2;
    }
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let token = std::env::var("COHORT_ADMIN_TOKEN").ok();
    let authorized = |req: ureq::Request| match &token {
        Some(t) => req.set("authorization", &format!("Bearer {t}")),
        None => req,
    };
    let sent = match (cmd, cmd.action()) {
        (RolloutCommand::Report, _) => {
            authorized(agent.get(&format!("http://{admin}/rollout?checks=1"))).call()
        }
        (_, None) => authorized(agent.get(&format!("http://{admin}/rollout"))).call(),
        (_, Some(action)) => {
            let mut url = format!("http://{admin}/rollout/{action}");
            if let Some(s) = service {
                url.push_str("?service=");
                url.extend(form_urlencoded::byte_serialize(s.as_bytes()));
            }
            authorized(agent.post(&url)).call()
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
    if cmd == RolloutCommand::Report {
        return report(&body, admin, service, out);
    }
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

/// `GET /rollout?checks=1` as the report reads it.
#[derive(Deserialize)]
struct Answer {
    services: Vec<ServiceEntry>,
}

/// Writes the report of `body` (the answer of `GET /rollout?checks=1`) to `out` or stdout.
fn report(body: &str, admin: SocketAddr, service: Option<&str>, out: Option<&Path>) -> i32 {
    let answer: Answer = match serde_json::from_str(body) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("unexpected answer from {admin}: {e}");
            return 1;
        }
    };
    let entries: Vec<ServiceEntry> = answer
        .services
        .into_iter()
        .filter(|s| service.is_none_or(|want| s.service == want))
        .collect();
    let page =
        crate::rollout_report::render(&entries, std::time::SystemTime::now(), &admin.to_string());
    let checks: usize = entries.iter().map(|e| e.checks.len()).sum();
    match out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &page) {
                eprintln!("{}: {e}", path.display());
                return 1;
            }
            eprintln!(
                "wrote {} ({} rollout(s), {checks} check(s))",
                path.display(),
                entries.len()
            );
        }
        None => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(page.as_bytes());
        }
    }
    0
}

/// Unix seconds as UTC time, with how long ago: `2026-11-29T02:52:09Z (12 s ago)`.
fn when(at: &Value) -> String {
    let Some(secs) = at.as_u64() else {
        return "-".to_string();
    };
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    let ago = std::time::SystemTime::now()
        .duration_since(t)
        .map_or(String::new(), |d| format!(" ({} s ago)", d.as_secs()));
    format!("{}{ago}", humantime::format_rfc3339_seconds(t))
}

fn cmd_name(cmd: RolloutCommand) -> &'static str {
    match cmd {
        RolloutCommand::Report => "report",
        _ => cmd.action().unwrap_or("status"),
    }
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
            when(&c["at"]),
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
            when(&last["at"]),
            last["why"].as_str().unwrap_or("")
        );
    }
    out
}
