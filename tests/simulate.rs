#![allow(clippy::unwrap_used)]
//! The blast radius with rules (`cohort simulate --against`): rule changes on synthetic
//! users, the replay of request samples (`--samples`), and samples written by a running
//! proxy (`server.sample_log`) on both carriers, replayed end to end. Also the `explain`
//! hint and the help texts of issue 17.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const EU_SPLIT: &str = "\n[[service.rule]]\nname = \"eu\"\nheader = { name = \"x-country\", in = [\"DE\", \"FR\"] }\nweights = { canary = 50, stable = 50 }\n";
const EU_PIN: &str = "\n[[service.rule]]\nname = \"eu\"\nheader = { name = \"x-country\", in = [\"DE\", \"FR\"] }\nvariant = \"canary\"\n";

/// One service `api` keyed on `x-user-id`, stable 95 / canary 5, then `rules`.
fn config(server: &str, stable: &str, canary: &str, rules: &str) -> String {
    format!(
        "[server]\n{server}\n\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\nexpose_header = \"x-cohort-variant\"\n\n\
         [[service.variant]]\nname = \"stable\"\nweight = 95\nbackends = [\"{stable}\"]\n\n\
         [[service.variant]]\nname = \"canary\"\nweight = 5\nbackends = [\"{canary}\"]\n{rules}"
    )
}

fn offline(rules: &str) -> String {
    config(
        "listen = [\"127.0.0.1:8080\"]",
        "127.0.0.1:8001",
        "127.0.0.1:8002",
        rules,
    )
}

/// A `from \ to` table following the line that starts with `title`: (from, to) → count,
/// without the empty cells.
fn table_after(out: &str, title: &str) -> BTreeMap<(String, String), u64> {
    let mut lines = out.lines().skip_while(|l| !l.starts_with(title));
    assert!(lines.next().is_some(), "no {title:?} in:\n{out}");
    let mut lines = lines.skip_while(|l| !l.starts_with("from \\ to"));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no table after {title:?}:\n{out}"));
    let to: Vec<&str> = header["from \\ to".len()..].split_whitespace().collect();
    let mut cells = BTreeMap::new();
    for l in lines.take_while(|l| !l.trim().is_empty() && !l.starts_with("moves by")) {
        let mut t = l.split_whitespace();
        let from = t.next().unwrap().to_string();
        for (j, c) in t.enumerate() {
            let n = c.parse::<u64>().unwrap();
            if n > 0 {
                cells.insert((from.clone(), to[j].to_string()), n);
            }
        }
    }
    cells
}

fn cell(t: &BTreeMap<(String, String), u64>, from: &str, to: &str) -> u64 {
    t.get(&(from.to_string(), to.to_string()))
        .copied()
        .unwrap_or(0)
}

fn simulate(args: &[&str]) -> String {
    let mut all = vec!["simulate"];
    all.extend_from_slice(args);
    let (code, out, err) = cohort_cmd(&all);
    assert_eq!(code, 0, "cohort {all:?}: {err}");
    out
}

// ---------------------------------------------------------------------------------------
// synthetic users

#[test]
fn a_rule_changed_from_a_split_to_a_pin_never_prints_that_nobody_moves() {
    // The repro: the weights are untouched, the rule goes 50/50 -> canary.
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "old.toml", &offline(EU_SPLIT));
    let b = write(dir.path(), "new.toml", &offline(EU_PIN));
    let out = simulate(&["-c", s(&a), "--against", s(&b)]);
    assert!(!out.contains("0 of 100000 users move"), "{out}");
    let head = out.lines().next().unwrap();
    assert!(
        head.starts_with("service api: rule changes move the users they match (rule eu"),
        "{head}"
    );
    // The rule's matrix: every synthetic user taken as matching it, 50/50 before.
    let title = "service api, rule eu (changed): ";
    let m = table_after(&out, title);
    let half = [("stable", 50.0), ("canary", 50.0)];
    let stable_half = (0..100_000)
        .filter(|i| expected_variant("api", &half, &format!("user-{i}")) == "stable")
        .count() as u64;
    assert_eq!(cell(&m, "stable", "canary"), stable_half, "{out}");
    assert_eq!(cell(&m, "canary", "canary"), 100_000 - stable_half, "{out}");
    assert_eq!(
        cell(&m, "canary", "stable") + cell(&m, "stable", "stable"),
        0
    );
    let line = out.lines().find(|l| l.starts_with(title)).unwrap();
    assert!(
        line.contains(&format!("{stable_half} of 100000 synthetic users")),
        "{line}"
    );
    assert!(
        out.contains("--samples"),
        "points to the exact replay: {out}"
    );
}

#[test]
fn removing_a_rule_never_prints_that_nobody_moves() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "old.toml", &offline(EU_PIN));
    let b = write(dir.path(), "new.toml", &offline(""));
    let out = simulate(&["-c", s(&a), "--against", s(&b), "--users", "20000"]);
    assert!(!out.contains("0 of 20000 users move"), "{out}");
    let m = table_after(&out, "service api, rule eu (removed): ");
    // Its users were all on canary; the 95/5 split keeps those it picks for canary.
    let stay = (0..20_000)
        .filter(|i| {
            expected_variant(
                "api",
                &[("stable", 95.0), ("canary", 5.0)],
                &format!("user-{i}"),
            ) == "canary"
        })
        .count() as u64;
    assert_eq!(cell(&m, "canary", "canary"), stay, "{out}");
    assert_eq!(cell(&m, "canary", "stable"), 20_000 - stay, "{out}");

    // And adding it back is the mirror image.
    let out = simulate(&["-c", s(&b), "--against", s(&a), "--users", "20000"]);
    let m = table_after(&out, "service api, rule eu (added): ");
    assert_eq!(cell(&m, "stable", "canary"), 20_000 - stay, "{out}");

    // An unchanged rule is not reported, and the old headline stays.
    let out = simulate(&["-c", s(&a), "--against", s(&a), "--users", "1000"]);
    assert!(
        out.starts_with("service api: 0 of 1000 users move"),
        "{out}"
    );
    assert!(!out.contains("rule eu"), "{out}");
}

// ---------------------------------------------------------------------------------------
// replaying samples

/// A hand-written sample: user, country (or not sent), and a header nobody reads.
fn sample_line(user: &str, country: Option<&str>) -> String {
    let c = country.map_or("null".to_string(), |c| format!("\"{c}\""));
    format!(
        "{{\"host\":\"api.example.com\",\"path\":\"/v1/x\",\"ip\":\"203.0.113.9\",\"headers\":{{\"x-user-id\":\"{user}\",\"x-country\":{c}}},\"cookies\":{{}},\"query\":{{}}}}"
    )
}

#[test]
fn replaying_samples_gives_the_exact_transitions_of_those_requests() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "old.toml", &offline(EU_SPLIT));
    let b = write(dir.path(), "new.toml", &offline(EU_PIN));
    let mut text = String::new();
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut want_moves = 0;
    for i in 0..300 {
        let user = format!("u{i}");
        // Every third request is from Germany; the others reach the hash split.
        let de = i % 3 == 0;
        text += &sample_line(&user, de.then_some("DE"));
        text.push('\n');
        let from = if de {
            expected_variant("api", &[("stable", 50.0), ("canary", 50.0)], &user)
        } else {
            expected_variant("api", &[("stable", 95.0), ("canary", 5.0)], &user)
        };
        let to = if de {
            "canary".to_string()
        } else {
            from.clone()
        };
        if from != to {
            want_moves += 1;
        }
        *want.entry((from, to)).or_default() += 1;
    }
    let samples = write(dir.path(), "samples.jsonl", &text);
    let out = simulate(&["-c", s(&a), "--against", s(&b), "--samples", s(&samples)]);
    assert!(out.starts_with("replay of 300 request samples"), "{out}");
    let title = format!("service api: {want_moves} of 300 requests move");
    assert!(out.contains(&title), "{out}");
    let m = table_after(&out, &title);
    assert_eq!(m, want, "{out}");
    let moves = out
        .lines()
        .find(|l| l.trim_start().starts_with("rule:eu -> rule:eu"))
        .unwrap_or_else(|| panic!("moves by reason: {out}"));
    assert!(
        moves.trim_end().ends_with(&want_moves.to_string()),
        "{moves}"
    );
    assert!(!out.contains("warning"), "every field was recorded: {out}");

    // A rule FILE2 reads that the samples did not record is named.
    let c = write(
        dir.path(),
        "beta.toml",
        &offline("\n[[service.rule]]\nname = \"beta\"\ncookie = { name = \"beta\", equals = \"1\" }\nvariant = \"canary\"\n"),
    );
    let out = simulate(&["-c", s(&a), "--against", s(&c), "--samples", s(&samples)]);
    assert!(
        out.contains("warning: 300 of 300 samples did not record cookie:beta (read by FILE2)"),
        "{out}"
    );
}

#[test]
fn a_bad_sample_line_is_an_error_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", &offline(""));
    let text = format!("{}\n\n{{\"path\": 7}}\n", sample_line("u1", None));
    let samples = write(dir.path(), "bad.jsonl", &text);
    let (code, out, err) = cohort_cmd(&[
        "simulate",
        "-c",
        s(&a),
        "--against",
        s(&a),
        "--samples",
        s(&samples),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("bad.jsonl: line 3:"), "{err}");
    // --samples needs --against (a usage error).
    let (code, _, err) = cohort_cmd(&["simulate", "-c", s(&a), "--samples", s(&samples)]);
    assert_eq!(code, 2, "{err}");
}

// ---------------------------------------------------------------------------------------
// samples written by the proxy, replayed

/// Polls until `path` holds at least `n` lines (the writer flushes every 200 ms).
fn wait_lines(path: &Path, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{n} samples never arrived: {} so far",
            text.lines().count()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn proxy_samples_replay(carrier: &[(&str, &str)]) {
    let (stable, canary) = (backend("stable"), backend("canary"));
    let server = "listen = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nsample_log = \"@DIR@/samples.jsonl\"\nsample_log_rate = 1";
    let (sa, ca) = (stable.addr.to_string(), canary.addr.to_string());
    let proxy = Cohort::start_with_env(&config(server, &sa, &ca, EU_SPLIT), carrier);
    let mut client = proxy.client();
    let mut served: Vec<(String, bool, String)> = Vec::new();
    for i in 0..120 {
        let user = format!("u{i}");
        let de = i % 2 == 0;
        let mut headers = vec![
            ("x-user-id", user.as_str()),
            ("authorization", "Bearer s3cr3t"),
        ];
        if de {
            headers.push(("x-country", "DE"));
        }
        let r = client.get(&format!("/v1/items?token=t0k3n&n={i}"), &headers);
        assert_eq!(r.status, 200, "{}", r.text());
        let variant = r.header("x-cohort-variant").unwrap().to_string();
        assert_eq!(r.backend(), variant);
        served.push((user, de, variant));
    }
    let path = proxy.dir.path().join("samples.jsonl");
    let text = wait_lines(&path, 120);
    assert_eq!(
        text.lines().count(),
        120,
        "one sample per request at rate 1"
    );
    for secret in ["s3cr3t", "authorization", "t0k3n", "token"] {
        assert!(
            !text.contains(secret),
            "{secret} must not be recorded:\n{text}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "samples are readable by their owner only");
    }

    // Replay against the config that served them (nobody moves; every recorded
    // decision agrees), then against the rule pinned to canary.
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "old.toml", &config("", &sa, &ca, EU_SPLIT));
    let new = write(dir.path(), "new.toml", &config("", &sa, &ca, EU_PIN));
    let out = simulate(&["-c", s(&old), "--against", s(&old), "--samples", s(&path)]);
    assert!(out.contains("service api: 0 of 120 requests move"), "{out}");
    assert!(!out.contains("note:") && !out.contains("warning"), "{out}");

    let out = simulate(&["-c", s(&old), "--against", s(&new), "--samples", s(&path)]);
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (_, de, variant) in &served {
        let to = if *de { "canary" } else { variant.as_str() };
        *want.entry((variant.clone(), to.to_string())).or_default() += 1;
    }
    let moved: u64 = want
        .iter()
        .filter(|((f, t), _)| f != t)
        .map(|(_, n)| n)
        .sum();
    assert!(moved > 5, "some German stable users exist: {want:?}");
    let title = format!("service api: {moved} of 120 requests move");
    assert!(out.contains(&title), "{out}");
    assert_eq!(table_after(&out, &title), want, "{out}");
    // One request per user here, so as many users as requests move.
    assert!(
        out.contains(&format!(
            "users (distinct cohort keys under FILE): {moved} of 120 move"
        )),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("rule:eu -> rule:eu")
                && l.trim_end().ends_with(&moved.to_string())),
        "{out}"
    );
}

#[test]
fn samples_written_by_the_http1_engine_replay_exactly() {
    proxy_samples_replay(ENGINE);
}

#[test]
fn samples_written_by_the_pingora_carrier_replay_exactly() {
    proxy_samples_replay(PINGORA);
}

// ---------------------------------------------------------------------------------------
// explain hint and help texts

#[test]
fn explain_without_a_matching_service_suggests_host_path_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let text = offline("").replace(
        "name = \"api\"\n",
        "name = \"api\"\nhosts = [\"api.example.com\"]\n",
    );
    let p = write(dir.path(), "c.toml", &text);
    let (code, _, err) = cohort_cmd(&["explain", "-c", s(&p), "--key", "u1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no service matches host \"\" and path \"/\""),
        "{err}"
    );
    assert!(err.contains("--host") && err.contains("--service"), "{err}");
    assert!(
        err.contains("api") && err.contains("api.example.com"),
        "lists the services: {err}"
    );
    let (code, out, err) = cohort_cmd(&[
        "explain",
        "-c",
        s(&p),
        "--key",
        "u1",
        "--host",
        "api.example.com",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("service  api"), "{out}");
}

#[test]
fn every_flag_has_help_text() {
    for sub in ["run", "check", "explain", "simulate", "health", "demo"] {
        let (code, out, _) = cohort_cmd(&[sub, "--help"]);
        assert_eq!(code, 0);
        for line in out.lines().filter(|l| l.trim_start().starts_with('-')) {
            let l = line.trim();
            // `-c, --config <FILE>  Config file ...`: the flag, two spaces, then help.
            let help = l.split_once("  ").map(|(_, h)| h.trim()).unwrap_or("");
            assert!(!help.is_empty(), "cohort {sub}: {l:?} has no help text");
        }
    }
}

#[test]
fn check_names_bad_sample_log_settings_by_field_path() {
    let dir = tempfile::tempdir().unwrap();
    for (server, path, says) in [
        (
            "sample_log = \"stdout\"",
            "server.sample_log",
            "must be a file path",
        ),
        (
            "sample_log = \"/tmp/s.jsonl\"\nsample_log_rate = 0",
            "server.sample_log_rate",
            "(0, 1]",
        ),
        (
            "sample_log = \"/tmp/s.jsonl\"\nsample_log_rate = 1.5",
            "server.sample_log_rate",
            "(0, 1]",
        ),
        (
            "sample_log_rate = \"all\"",
            "server.sample_log_rate",
            "number",
        ),
    ] {
        let p = write(
            dir.path(),
            "c.toml",
            &config(server, "127.0.0.1:1", "127.0.0.1:2", ""),
        );
        let (code, out, err) = cohort_cmd(&["check", "-c", s(&p), "--no-resolve"]);
        assert_eq!(code, 1, "{server}: {out}{err}");
        let line = err
            .lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("{server}: no {path} in {err}"));
        assert!(line.contains(says), "{server}: {line}");
    }
    let ok = config(
        "sample_log = \"@x\"\nsample_log_rate = 1",
        "127.0.0.1:1",
        "127.0.0.1:2",
        "",
    );
    let p = write(dir.path(), "ok.toml", &ok);
    let (code, _, err) = cohort_cmd(&["check", "-c", s(&p), "--no-resolve"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn narrowing_a_rule_never_prints_that_nobody_moves() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "old.toml", &offline(EU_PIN));
    let b = write(
        dir.path(),
        "new.toml",
        &offline(&EU_PIN.replace("[\"DE\", \"FR\"]", "[\"DE\"]")),
    );
    let out = simulate(&["-c", s(&a), "--against", s(&b), "--users", "5000"]);
    assert!(!out.contains("0 of 5000 users move"), "{out}");
    assert!(
        out.starts_with("service api: rule changes move the users they match (rule eu: below)"),
        "{out}"
    );
    let m = table_after(
        &out,
        "service api, rule eu (changed, users only its old conditions match): ",
    );
    let stay = (0..5_000)
        .filter(|i| {
            expected_variant(
                "api",
                &[("stable", 95.0), ("canary", 5.0)],
                &format!("user-{i}"),
            ) == "canary"
        })
        .count() as u64;
    assert_eq!(cell(&m, "canary", "stable"), 5_000 - stay, "{out}");
}
