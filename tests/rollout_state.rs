#![allow(clippy::unwrap_used)]
//! Who writes the rollout state file, and what it keeps (one instance): during a binary
//! upgrade only one process checks and writes (the old one stops at SIGQUIT, the new one
//! reads the file once it has the sockets); the state of a `[service.rollout]` that
//! leaves the config is dropped.

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

fn config(stable: &EchoBackend, canary: &EchoBackend, rollout: bool) -> String {
    let section = if rollout {
        "[service.rollout]\nid = \"v2\"\ncanary = \"canary\"\nbaseline = \"stable\"\nsteps = [20, 50]\nstep_secs = 3600\ncheck_secs = 1\nmax_step_secs = 3600\n"
    } else {
        ""
    };
    format!(
        r#"
[server]
listen = ["@LISTEN@"]
admin = "@ADMIN@"
threads = 2
drain_delay_secs = 3
rollout_state = "@DIR@/rollout.json"

[[service]]
name = "api"
key = ["header:x-user-id"]

[[service.variant]]
name = "stable"
weight = 50
backends = ["{}"]

[[service.variant]]
name = "canary"
weight = 50
backends = ["{}"]

{section}"#,
        stable.addr, canary.addr
    )
}

fn rollout(px: &Cohort) -> Value {
    px.admin_client().get("/rollout", &[]).json()
}

fn state_file(px: &Cohort) -> Value {
    serde_json::from_slice(&std::fs::read(px.dir.path().join("rollout.json")).unwrap()).unwrap()
}

/// Kills a process by pid when dropped (the upgraded process is not our child).
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

const CHECKED: &str = "rollout api check at step";

#[test]
fn during_an_upgrade_only_one_process_checks_and_writes() {
    let (s, c) = (backend("stable"), backend("canary"));
    let mut old = Cohort::start(&config(&s, &c, true));
    wait_until(
        20,
        "two checks on the old process",
        || (old.stderr().matches(CHECKED).count() >= 2).then_some(()),
        || old.stderr(),
    );
    let before = rollout(&old)["services"][0].clone();
    let log = old.dir.path().join("upgrade.log");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/upgrade.sh");
    let out = std::process::Command::new(script)
        .args(["-c", old.config_path.to_str().unwrap(), "--bin", bin()])
        .args(["--timeout", "30", "--log", log.to_str().unwrap()])
        .output()
        .unwrap();
    let new_pid: Option<u32> = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    let _guard = KillOnDrop(new_pid);
    let new_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "upgrade.sh failed: {}\nnew: {}\nold: {}",
        String::from_utf8_lossy(&out.stderr),
        new_log(),
        old.stderr()
    );
    assert_eq!(old.wait_exit(Duration::from_secs(5)), Some(0));
    // The old process drained for drain_delay_secs (3 checks' worth) after SIGQUIT and
    // ran none of them.
    let old_log = old.stderr();
    let (_, after_quit) = old_log
        .split_once("SIGQUIT")
        .expect("the old process got SIGQUIT");
    assert!(
        !after_quit.contains(CHECKED),
        "the old process checked after SIGQUIT:\n{old_log}"
    );
    // The new one resumed the same step from the file, and checks.
    let now = rollout(&old)["services"][0].clone();
    for k in [
        "id",
        "state",
        "step",
        "percent",
        "step_started_at",
        "history",
    ] {
        assert_eq!(now[k], before[k], "{k}: {now:#}");
    }
    wait_until(
        20,
        "a check on the new process",
        || new_log().contains(CHECKED).then_some(()),
        new_log,
    );
    assert_eq!(
        state_file(&old)["services"]["api"]["step_started_at"],
        before["step_started_at"]
    );
}

#[test]
fn the_state_of_a_removed_rollout_is_dropped_and_a_new_section_starts_over() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, true));
    assert_eq!(state_file(&px)["services"]["api"]["id"], "v2");
    let series = "cohort_rollout_percent{service=\"api\"}";
    assert!(px.metrics().contains(series), "{}", px.metrics());
    px.rewrite(&config(&s, &c, false));
    assert_eq!(px.post_reload().0, 200);
    assert_eq!(state_file(&px)["services"], serde_json::json!({}));
    // Its series go with it: a dashboard does not keep showing the last step.
    let m = px.metrics();
    assert!(!m.contains(series), "{m}");
    assert!(!m.contains("cohort_rollout_state{service=\"api\""), "{m}");
    assert_eq!(rollout(&px)["services"], serde_json::json!([]));
    assert!(
        px.stderr().contains("its state is dropped"),
        "{}",
        px.stderr()
    );
    // Back with the same id: nothing was kept, so it starts at the first step.
    px.rewrite(&config(&s, &c, true));
    assert_eq!(px.post_reload().0, 200);
    let r = rollout(&px)["services"][0].clone();
    assert_eq!(
        (r["state"].as_str(), r["step"].as_u64()),
        (Some("running"), Some(0))
    );
    let events: Vec<&str> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["started"], "{r:#}");
}
