#![allow(clippy::unwrap_used)]
//! The real `cohort` binary's commands (SPEC "Command line"): `check` (summary, every
//! error with its field path, DNS resolution), `explain` (agreement with the live proxy
//! and with the normative function), `simulate` (shares and transition matrices),
//! `demo`, and exit codes 0 / 1 / 2.

mod common;
use common::*;

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// helpers

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `cohort check -c FILE [extra...]`.
fn check(path: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["check", "-c", path_str(path)];
    args.extend_from_slice(extra);
    cohort_cmd(&args)
}

/// The error lines of a failed `check` (everything after the `FILE: invalid config`
/// header), trimmed.
fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .skip_while(|l| !l.ends_with(": invalid config"))
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `cohort explain -c FILE <args> --json`, which must succeed.
fn explain_json(config: &Path, args: &[&str]) -> Value {
    explain_json_text(config, args).0
}

/// Like [`explain_json`], also returning the printed text.
fn explain_json_text(config: &Path, args: &[&str]) -> (Value, String) {
    let mut all = vec!["explain", "-c", path_str(config), "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = cohort_cmd(&all);
    assert_eq!(code, 0, "explain {args:?} failed: {err}");
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("explain {args:?}: not JSON ({e}): {out}"));
    (v, out)
}

/// The number printed for `"object": { ... "field": N ... }`, parsed with the standard
/// library's correctly rounded `f64::from_str` (serde_json's default float parser may be
/// off by one unit in the last place, which an exact golden comparison cannot afford).
fn raw_number(json_text: &str, object: &str, field: &str) -> f64 {
    let start = json_text
        .find(&format!("\"{object}\":"))
        .unwrap_or_else(|| panic!("no {object} in {json_text}"));
    let body = &json_text[start..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    let at = body
        .find(&format!("\"{field}\":"))
        .unwrap_or_else(|| panic!("no {object}.{field} in {json_text}"));
    let num: String = body[at + field.len() + 3..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("{object}.{field} = {num:?} is not a number"))
}

fn s(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v}"))
        .to_string()
}

const GOLDEN_WEIGHTS: [(&str, f64); 2] = [("stable", 95.0), ("canary", 5.0)];

/// A one-service config with the given salt and variants (backends on loopback).
fn sim_config(salt: &str, variants: &[(&str, f64)]) -> String {
    let mut t = format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\nsalt = \"{salt}\"\n"
    );
    for (i, (name, w)) in variants.iter().enumerate() {
        t += &format!(
            "\n[[service.variant]]\nname = \"{name}\"\nweight = {w}\nbackends = [\"127.0.0.1:{}\"]\n",
            8000 + i
        );
    }
    t
}

/// One row of `cohort simulate`'s share table.
#[derive(Debug)]
struct ShareRow {
    expected: f64,
    simulated: f64,
    users: u64,
}

fn parse_shares(out: &str, service: &str) -> BTreeMap<String, ShareRow> {
    let mut lines = out.lines();
    lines
        .find(|l| l.starts_with(&format!("service {service}:")))
        .unwrap_or_else(|| panic!("no share table for {service} in:\n{out}"));
    let header = lines.next().unwrap_or("");
    assert!(header.starts_with("variant"), "header row: {header:?}");
    let mut rows = BTreeMap::new();
    for l in lines.take_while(|l| !l.trim().is_empty()) {
        let t: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(t.len(), 5, "share row {l:?}");
        let pct = |x: &str| {
            x.trim_end_matches('%')
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("percentage {x:?} in {l:?}"))
        };
        rows.insert(
            t[0].to_string(),
            ShareRow {
                expected: pct(t[2]),
                simulated: pct(t[3]),
                users: t[4].parse().expect("user count"),
            },
        );
    }
    rows
}

/// `cohort simulate --against`'s transition matrix for one service.
#[derive(Debug, PartialEq)]
struct Matrix {
    moved: u64,
    users: u64,
    to: Vec<String>,
    /// (from, counts in `to` order)
    rows: Vec<(String, Vec<u64>)>,
}

impl Matrix {
    fn cell(&self, from: &str, to: &str) -> u64 {
        let j = self
            .to
            .iter()
            .position(|t| t == to)
            .unwrap_or_else(|| panic!("no column {to} in {self:?}"));
        self.rows
            .iter()
            .find(|(f, _)| f == from)
            .unwrap_or_else(|| panic!("no row {from} in {self:?}"))
            .1[j]
    }
}

fn parse_matrix(out: &str, service: &str) -> Matrix {
    let mut lines = out.lines();
    let first = lines
        .find(|l| l.starts_with(&format!("service {service}:")))
        .unwrap_or_else(|| panic!("no matrix for {service} in:\n{out}"));
    // service NAME: M of N users move (P%)
    let t: Vec<&str> = first.split_whitespace().collect();
    assert!(
        t.len() >= 7 && t[3] == "of" && t[5] == "users" && t[6] == "move",
        "first line {first:?}"
    );
    let moved: u64 = t[2].parse().expect("moved count");
    let users: u64 = t[4].parse().expect("user count");
    let header = lines.next().unwrap_or("");
    let to: Vec<String> = header
        .strip_prefix("from \\ to")
        .unwrap_or_else(|| panic!("header row {header:?}"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let rows = lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let mut t = l.split_whitespace();
            let from = t.next().expect("row name").to_string();
            let counts: Vec<u64> = t.map(|c| c.parse().expect("count")).collect();
            assert_eq!(counts.len(), to.len(), "row {l:?}");
            (from, counts)
        })
        .collect();
    Matrix {
        moved,
        users,
        to,
        rows,
    }
}

/// Runs `simulate -c A --against B --users N` and returns the matrix of service `api`,
/// after checking it cell by cell against the normative function over `user-0..N-1`.
fn transition(
    (salt_a, va): (&str, &[(&str, f64)]),
    (salt_b, vb): (&str, &[(&str, f64)]),
    users: u64,
) -> Matrix {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write(dir.path(), "a.toml", &sim_config(salt_a, va));
    let b = write(dir.path(), "b.toml", &sim_config(salt_b, vb));
    let n = users.to_string();
    let (code, out, err) = cohort_cmd(&[
        "simulate",
        "-c",
        path_str(&a),
        "--against",
        path_str(&b),
        "--users",
        &n,
    ]);
    assert_eq!(code, 0, "simulate --against failed: {err}");
    let m = parse_matrix(&out, "api");
    assert_eq!(m.users, users);
    let names = |v: &[(&str, f64)]| v.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
    assert_eq!(m.to, names(vb), "columns are FILE2's variants");
    assert_eq!(
        m.rows.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
        names(va),
        "rows are FILE's variants"
    );
    // The synthetic users are user-0 .. user-(N-1), each hashed with its config's own
    // salt and weights: recompute the whole matrix.
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for i in 0..users {
        let k = format!("user-{i}");
        let from = expected_variant(salt_a, va, &k);
        let to = expected_variant(salt_b, vb, &k);
        *want.entry((from, to)).or_default() += 1;
    }
    let mut moved = 0;
    for (from, _) in va {
        for (to, _) in vb {
            let w = want
                .get(&(from.to_string(), to.to_string()))
                .copied()
                .unwrap_or(0);
            assert_eq!(m.cell(from, to), w, "cell {from} -> {to}:\n{out}");
            if from != to {
                moved += w;
            }
        }
    }
    assert_eq!(m.moved, moved, "moved count in the first line:\n{out}");
    m
}

// ---------------------------------------------------------------------------------------
// check

#[test]
fn check_accepts_every_shipped_config() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&conf)
        .expect("read conf/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        if path.file_name().is_some_and(|n| n == "demo.toml") {
            continue; // @PLACEHOLDERS@, rendered by `cohort demo`
        }
        let (code, out, err) = check(&path, &[]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        let last = out.lines().last().unwrap_or("");
        assert_eq!(last, format!("{}: ok", path.display()), "{out}");
        // The summary lists every variant (with its share) and every rule of the file.
        let text = std::fs::read_to_string(&path).expect("read conf file");
        let count = |needle: &str| text.lines().filter(|l| l.trim() == needle).count();
        let variants = out.lines().filter(|l| l.starts_with("  variant ")).count();
        let rules = out.lines().filter(|l| l.starts_with("  rule    ")).count();
        assert_eq!(variants, count("[[service.variant]]"), "{out}");
        assert_eq!(rules, count("[[service.rule]]"), "{out}");
        assert!(
            out.lines()
                .filter(|l| l.starts_with("  variant "))
                .all(|l| l.contains("share") && l.contains('%')),
            "{out}"
        );
        checked.push(path);
    }
    assert!(
        checked.len() >= 2,
        "expected cohort.toml and region.toml at least, checked {checked:?}"
    );
}

#[test]
fn check_summary_shows_shares_rules_and_ok_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{}\n[[service.rule]]\nname = \"staff\"\nclient_cidr = [\"10.0.0.0/8\"]\nvariant = \"canary\"\n",
        sim_config("api", &[("stable", 95.0), ("canary", 5.0)])
    );
    let p = write(dir.path(), "ok.toml", &text);
    let (code, out, err) = check(&p, &[]);
    assert_eq!(code, 0, "{err}");
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
            .to_string()
    };
    let stable = line("variant stable");
    assert!(
        stable.contains("weight 95") && stable.contains("95.000%"),
        "{stable}"
    );
    let canary = line("variant canary");
    assert!(
        canary.contains("weight 5") && canary.contains("5.000%"),
        "{canary}"
    );
    let rule = line("rule    staff");
    assert!(
        rule.contains("client in 10.0.0.0/8") && rule.ends_with("-> canary"),
        "{rule}"
    );
    assert_eq!(
        out.lines().last(),
        Some(format!("{}: ok", p.display()).as_str())
    );
    assert!(
        err.trim().is_empty(),
        "nothing on stderr for a valid file: {err}"
    );
}

#[test]
fn check_summary_shows_the_rollout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{}\n[service.rollout]\nid = \"v2.4.0\"\ncanary = \"canary\"\nbaseline = \"stable\"\nsteps = [1, 10]\non_inconclusive = \"hold\"\n",
        sim_config("api", &[("stable", 95.0), ("canary", 5.0)])
    );
    let p = write(dir.path(), "rollout.toml", &text);
    let (code, out, err) = check(&p, &[]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("  rollout "))
        .unwrap_or_else(|| panic!("no rollout line in:\n{out}"));
    assert!(
        line.contains("v2.4.0")
            && line.contains("canary against stable, steps 1% 10% then promoted")
            && line.contains("max 1800 s then hold")
            && !line.contains("not yet active"),
        "{line}"
    );
    // simulate splits by the configured weights and says that a live rollout does not.
    let (code, out, err) = cohort_cmd(&["simulate", "-c", path_str(&p)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("note: service api has a [service.rollout] (id v2.4.0): simulate splits canary and stable by their configured weights"),
        "{out}"
    );
    let (code, out, _) = cohort_cmd(&["simulate", "-c", path_str(&p), "--against", path_str(&p)]);
    assert_eq!(code, 0);
    assert_eq!(
        out.matches("note: service api has a [service.rollout]")
            .count(),
        1,
        "{out}"
    );
}

/// The reference file every invalid case mutates: valid on its own.
fn base_config(server: &str, service: &str, variants: &str, rules: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:8080"]
admin = "127.0.0.1:9090"
{server}

[[service]]
name = "api"
key = ["header:x-user-id", "cookie:session"]
{service}
{variants}
{rules}"#
    )
}

const VARIANTS: &str = r#"
[[service.variant]]
name = "stable"
weight = 95
backends = ["127.0.0.1:8000"]

[[service.variant]]
name = "canary"
weight = 5
backends = ["127.0.0.1:8001"]
"#;

fn variants(stable: &str, canary: &str) -> String {
    format!(
        "\n[[service.variant]]\nname = \"stable\"\n{stable}\n\n[[service.variant]]\nname = \"canary\"\n{canary}\n"
    )
}

const BACKEND0: &str = "backends = [\"127.0.0.1:8000\"]";
const BACKEND1: &str = "backends = [\"127.0.0.1:8001\"]";

fn rule(body: &str) -> String {
    format!("\n[[service.rule]]\nname = \"r\"\n{body}\n")
}

/// 1-based number of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
        + 1
}

struct Case {
    name: &'static str,
    text: String,
    /// (prefix of the error line: field path or `line L:C: path`, fragment of the message)
    expect: Vec<(String, &'static str)>,
}

fn case(name: &'static str, text: String, expect: &[(&str, &'static str)]) -> Case {
    Case {
        name,
        text,
        expect: expect.iter().map(|(p, m)| (p.to_string(), *m)).collect(),
    }
}

fn invalid_cases() -> Vec<Case> {
    let mut cases = Vec::new();

    let text = base_config(
        "",
        "",
        &variants(
            &format!("wieght = 95\n{BACKEND0}"),
            &format!("weight = 5\n{BACKEND1}"),
        ),
        "",
    );
    let l = line_of(&text, "wieght");
    cases.push(Case {
        name: "unknown field in a variant",
        expect: vec![(
            format!("line {l}:1: service[0].variant[0]"),
            "unknown field `wieght`",
        )],
        text,
    });

    cases.push(case(
        "negative weight",
        base_config(
            "",
            "",
            &variants(
                &format!("weight = 95\n{BACKEND0}"),
                &format!("weight = -1\n{BACKEND1}"),
            ),
            "",
        ),
        &[(
            "service[0].variant[1].weight",
            "must be finite and >= 0 (got -1)",
        )],
    ));

    cases.push(case(
        "NaN weight",
        base_config(
            "",
            "",
            &variants(
                &format!("weight = nan\n{BACKEND0}"),
                &format!("weight = 5\n{BACKEND1}"),
            ),
            "",
        ),
        &[("service[0].variant[0].weight", "must be finite and >= 0")],
    ));

    cases.push(case(
        "infinite weight",
        base_config(
            "",
            "",
            &variants(
                &format!("weight = inf\n{BACKEND0}"),
                &format!("weight = 5\n{BACKEND1}"),
            ),
            "",
        ),
        &[("service[0].variant[0].weight", "must be finite and >= 0")],
    ));

    cases.push(case(
        "all-zero weights",
        base_config(
            "",
            "",
            &variants(
                &format!("weight = 0\n{BACKEND0}"),
                &format!("weight = 0.0\n{BACKEND1}"),
            ),
            "",
        ),
        &[(
            "service[0].variant",
            "the sum of the variant weights must be positive",
        )],
    ));

    cases.push(case(
        "unknown variant in a rule's variant",
        base_config(
            "",
            "",
            VARIANTS,
            &rule("key_in = [\"a\"]\nvariant = \"canry\""),
        ),
        &[("service[0].rule[0].variant", "unknown variant \"canry\"")],
    ));

    cases.push(case(
        "unknown variant in a rule's weights",
        base_config(
            "",
            "",
            VARIANTS,
            &rule("key_in = [\"a\"]\nweights = { stable = 50, ghost = 50 }"),
        ),
        &[(
            "service[0].rule[0].weights.ghost",
            "unknown variant \"ghost\"",
        )],
    ));

    cases.push(case(
        "unknown variant in fallback",
        base_config("", "fallback = \"old\"", VARIANTS, ""),
        &[("service[0].fallback", "unknown variant \"old\"")],
    ));

    cases.push(case(
        "duplicate service names",
        format!(
            "{}\n[[service]]\nname = \"api\"\nkey = [\"header:x\"]\n{VARIANTS}",
            base_config("", "", VARIANTS, "")
        ),
        &[("service[1].name", "duplicate service name \"api\"")],
    ));

    cases.push(case(
        "duplicate variant names",
        format!(
            "{}\n[[service.variant]]\nname = \"canary\"\nweight = 1\n{BACKEND1}\n",
            base_config("", "", VARIANTS, "")
        ),
        &[(
            "service[0].variant[2].name",
            "duplicate variant name \"canary\"",
        )],
    ));

    cases.push(case(
        "bad CIDR in server.trusted_proxies",
        base_config(
            "trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]",
            "",
            VARIANTS,
            "",
        ),
        &[(
            "server.trusted_proxies[1]",
            "\"10.0.0.0/33\" is not a CIDR or IP address",
        )],
    ));

    for (field, max) in [
        ("keepalive_timeout_secs", 3_600),
        ("client_header_timeout_secs", 3_600),
        ("client_write_timeout_secs", 86_400),
    ] {
        for secs in [0, max + 1] {
            let path = format!("server.{field}");
            let message: &'static str = match max {
                3_600 => "must be 1 to 3600 seconds",
                _ => "must be 1 to 86400 seconds",
            };
            cases.push(Case {
                name: "server timeout out of range",
                text: base_config(&format!("{field} = {secs}"), "", VARIANTS, ""),
                expect: vec![(path, message)],
            });
        }
    }

    for (line, field, message) in [
        ("max_fails = 0", "max_fails", "must be between 1 and 100"),
        ("max_fails = 101", "max_fails", "must be between 1 and 100"),
        (
            "fail_timeout_secs = 0",
            "fail_timeout_secs",
            "must be between 1 and 3600",
        ),
        (
            "fail_timeout_secs = 3601",
            "fail_timeout_secs",
            "must be between 1 and 3600",
        ),
    ] {
        cases.push(Case {
            name: "passive ejection setting out of range",
            text: base_config(
                "",
                "",
                &variants(
                    &format!("weight = 95\n{line}\n{BACKEND0}"),
                    &format!("weight = 5\n{BACKEND1}"),
                ),
                "",
            ),
            expect: vec![(format!("service[0].variant[0].{field}"), message)],
        });
    }

    cases.push(case(
        "bad CIDR in a rule's client_cidr",
        base_config(
            "",
            "",
            VARIANTS,
            &rule("client_cidr = [\"ten.0.0.0/8\"]\nvariant = \"canary\""),
        ),
        &[(
            "service[0].rule[0].client_cidr[0]",
            "is not a CIDR or IP address",
        )],
    ));

    cases.push(case(
        "a CIDR with host bits set names the network it would mean",
        base_config(
            "",
            "",
            VARIANTS,
            &rule("client_cidr = [\"10.0.0.0/8\", \"10.20.5.7/16\"]\nvariant = \"canary\""),
        ),
        &[(
            "service[0].rule[0].client_cidr[1]",
            "\"10.20.5.7/16\" has host bits set: the network is 10.20.0.0/16; write that, or 10.20.5.7/32 for the one address",
        )],
    ));

    cases.push(case(
        "bad CIDR in force_from",
        base_config(
            "",
            "force_header = \"x-cohort-force\"\nforce_from = [\"127.0.0.0/8\", \"::1/129\"]",
            VARIANTS,
            "",
        ),
        &[("service[0].force_from[1]", "is not a CIDR or IP address")],
    ));

    cases.push(case(
        "rule with both variant and weights",
        base_config(
            "",
            "",
            VARIANTS,
            &rule("key_in = [\"a\"]\nvariant = \"canary\"\nweights = { canary = 1 }"),
        ),
        &[("service[0].rule[0]", "has both `variant` and `weights`")],
    ));

    cases.push(case(
        "rule with neither variant nor weights",
        base_config("", "", VARIANTS, &rule("key_in = [\"a\"]")),
        &[(
            "service[0].rule[0]",
            "needs exactly one of `variant` or `weights`",
        )],
    ));

    let text = base_config("", "", VARIANTS, "").replace("weight = 5\n", "weight 5\n");
    let l = line_of(&text, "weight 5");
    cases.push(Case {
        name: "TOML syntax error",
        // `weight 5`: the parser wants `=` (or a dotted key) where `5` is, column 8.
        expect: vec![(format!("line {l}:8: "), "expected `.`, `=`")],
        text,
    });

    let text = base_config("", "", VARIANTS, "").replace("weight = 5\n", "weight = \"5\"\n");
    let l = line_of(&text, "weight = \"5\"");
    cases.push(Case {
        name: "TOML type error",
        expect: vec![(
            format!("line {l}:10: service[0].variant[1].weight"),
            "invalid type",
        )],
        text,
    });

    // A `key_in` array this large is read by the loader itself, not by `toml`
    // (src/config/lift.rs); the positions of errors after it and in it are unchanged.
    let big_list = |bad: &str| -> String {
        let keys: String = (0..600)
            .map(|k| {
                if k == 300 {
                    format!("  {bad}, # é ]\n")
                } else {
                    format!("  \"user-{k}\", # é ]\n")
                }
            })
            .collect();
        format!("key_in = [\n{keys}]")
    };
    let text = base_config(
        "",
        "",
        VARIANTS,
        &rule(&format!("{}\nvariant = 1", big_list("\"ü\""))),
    );
    let l = line_of(&text, "variant = 1");
    cases.push(Case {
        name: "TOML type error after a large key_in",
        expect: vec![(
            format!("line {l}:11: service[0].rule[0].variant"),
            "invalid type",
        )],
        text,
    });

    let text = base_config(
        "",
        "",
        VARIANTS,
        &rule(&format!("{}\nvariant = \"canary\"", big_list("\"ü\\q\""))),
    );
    let l = line_of(&text, "\\q");
    cases.push(Case {
        name: "invalid escape in a large key_in",
        // toml points just past the escape letter: `  "ü\q` is 6 characters.
        expect: vec![(format!("line {l}:7: "), "escape sequence")],
        text,
    });

    cases.push(case(
        "backend without a port",
        base_config("", "", VARIANTS, "").replace("127.0.0.1:8001", "127.0.0.1"),
        &[("service[0].variant[1].backends[0]", "expected host:port")],
    ));

    cases.push(case(
        "unknown balance",
        base_config(
            "",
            "",
            &variants(
                &format!("weight = 95\n{BACKEND0}\nbalance = \"least_conn\""),
                &format!("weight = 5\n{BACKEND1}"),
            ),
            "",
        ),
        &[(
            "service[0].variant[0].balance",
            "\"least_conn\": expected round_robin, random or consistent",
        )],
    ));

    cases.push(case(
        "key source with an empty header name",
        base_config("", "", VARIANTS, "")
            .replace("\"header:x-user-id\", \"cookie:session\"", "\"header:\""),
        &[("service[0].key[0]", "is not a valid header name")],
    ));

    cases.push(case(
        "key source of an unknown kind",
        base_config("", "", VARIANTS, "").replace("\"cookie:session\"", "\"foo:bar\""),
        &[(
            "service[0].key[1]",
            "\"foo:bar\": expected header:NAME, cookie:NAME, query:NAME or ip",
        )],
    ));

    cases.push(case(
        "force_header without force_from",
        base_config("", "force_header = \"x-cohort-force\"", VARIANTS, ""),
        &[("service[0].force_from", "required with force_header")],
    ));

    cases.push(case(
        "force_from without force_header",
        base_config("", "force_from = [\"127.0.0.0/8\"]", VARIANTS, ""),
        &[("service[0].force_from", "given without force_header")],
    ));

    let rollout = |body: &str| {
        base_config("", "", VARIANTS, "")
            + &format!("\n[service.rollout]\nid = \"v2\"\ncanary = \"canary\"\nbaseline = \"stable\"\n{body}\n")
    };
    cases.push(case(
        "rollout steps not increasing",
        rollout("steps = [1, 5, 5]"),
        &[(
            "service[0].rollout.steps[2]",
            "must be greater than the step before",
        )],
    ));
    cases.push(case(
        "rollout canary is not a variant",
        rollout("").replace(
            "canary = \"canary\"\nbaseline",
            "canary = \"canry\"\nbaseline",
        ),
        &[("service[0].rollout.canary", "unknown variant \"canry\"")],
    ));
    cases.push(case(
        "rollout baseline is the canary",
        rollout("").replace("baseline = \"stable\"", "baseline = \"canary\""),
        &[("service[0].rollout.baseline", "must differ from canary")],
    ));
    cases.push(case(
        "rollout checks less often than a step lasts",
        rollout("step_secs = 10\ncheck_secs = 30"),
        &[("service[0].rollout.check_secs", "must be <= step_secs")],
    ));
    cases.push(case(
        "rollout gates out of range",
        rollout("[service.rollout.gates]\nconfidence = 1.5\nmin_requests = 0"),
        &[
            ("service[0].rollout.gates.confidence", "must be in (0, 1)"),
            ("service[0].rollout.gates.min_requests", "must be >= 1"),
        ],
    ));
    cases.push(case(
        "rollout on_inconclusive unknown",
        rollout("on_inconclusive = \"retry\""),
        &[(
            "service[0].rollout.on_inconclusive",
            "\"retry\": expected rollback, advance or hold",
        )],
    ));

    cases
}

#[test]
fn check_rejects_each_kind_of_invalid_file_with_its_field_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The unmutated reference is valid, so each failure below is the mutation's.
    let base = write(dir.path(), "base.toml", &base_config("", "", VARIANTS, ""));
    let (code, _, err) = check(&base, &[]);
    assert_eq!(code, 0, "the base config must be valid: {err}");

    let mut failures = Vec::new();
    for (i, c) in invalid_cases().into_iter().enumerate() {
        let p = write(dir.path(), &format!("case{i}.toml"), &c.text);
        let (code, out, err) = check(&p, &[]);
        let lines = error_lines(&err);
        let mut problems = Vec::new();
        if code != 1 {
            problems.push(format!("exit code {code}, want 1"));
        }
        if out.contains(": ok") {
            problems.push("stdout says ok".to_string());
        }
        if !err.contains(&format!("{}: invalid config", p.display())) {
            problems.push("no `FILE: invalid config` header".to_string());
        }
        for (prefix, msg) in &c.expect {
            if !lines
                .iter()
                .any(|l| l.starts_with(prefix.as_str()) && l.contains(msg))
            {
                problems.push(format!("no line `{prefix}...{msg}`"));
            }
        }
        if lines.len() != c.expect.len() {
            problems.push(format!(
                "{} error line(s), want exactly {}",
                lines.len(),
                c.expect.len()
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "case {:?}: {}\n--- stderr:\n{err}--- file:\n{}",
                c.name,
                problems.join("; "),
                c.text
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn check_lists_every_error_of_a_file_at_once() {
    let text = r#"[server]
listen = ["127.0.0.1:8080"]
trusted_proxies = ["10.0.0.0/33"]

[[service]]
name = "api"
key = ["header:", "foo:bar"]
fallback = "nope"
force_header = "x-force"

[[service.variant]]
name = "stable"
weight = -1
backends = ["127.0.0.1"]
balance = "least_conn"

[[service.variant]]
name = "stable"
weight = nan
backends = ["127.0.0.1:8000"]

[[service.rule]]
name = "r1"
client_cidr = ["bogus"]
variant = "x"

[[service.rule]]
name = "r2"
key_in = ["a"]
weights = { ghost = 1 }

[[service.rule]]
name = "r3"
key_in = ["a"]
variant = "stable"
weights = { stable = 1 }

[[service.rule]]
name = "r4"
key_in = ["a"]

[[service]]
name = "api"
force_from = ["1.2.3.4/99"]

[[service.variant]]
name = "a"
weight = 0
backends = ["127.0.0.1:8000"]
"#;
    let want = [
        "server.trusted_proxies[0]: \"10.0.0.0/33\" is not a CIDR",
        "service[0].key[0]: \"\" is not a valid header name",
        "service[0].key[1]: \"foo:bar\": expected header:NAME",
        "service[0].force_from: required with force_header",
        "service[0].variant[0].weight: must be finite and >= 0 (got -1)",
        "service[0].variant[0].backends[0]: \"127.0.0.1\": expected host:port",
        "service[0].variant[0].balance: \"least_conn\"",
        "service[0].variant[1].name: duplicate variant name \"stable\"",
        "service[0].variant[1].weight: must be finite and >= 0 (got NaN)",
        "service[0].fallback: unknown variant \"nope\"",
        "service[0].rule[0].client_cidr[0]: \"bogus\" is not a CIDR",
        "service[0].rule[0].variant: unknown variant \"x\"",
        "service[0].rule[1].weights.ghost: unknown variant \"ghost\"",
        "service[0].rule[2]: has both `variant` and `weights`",
        "service[0].rule[3]: needs exactly one of `variant` or `weights`",
        "service[1].name: duplicate service name \"api\"",
        "service[1].force_from[0]: \"1.2.3.4/99\" is not a CIDR",
        "service[1].force_from: given without force_header",
        "service[1].variant: the sum of the variant weights must be positive",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "many.toml", text);
    let (code, out, err) = check(&p, &[]);
    assert_eq!(code, 1, "{out}{err}");
    let lines = error_lines(&err);
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|w| !lines.iter().any(|l| l.starts_with(w)))
        .collect();
    assert!(missing.is_empty(), "missing {missing:#?}\nin:\n{err}");
    assert_eq!(lines.len(), want.len(), "one line per error:\n{err}");
    // Every line names a field path.
    for l in &lines {
        assert!(
            l.starts_with("server.") || l.starts_with("service["),
            "line without a field path: {l:?}"
        );
    }
}

#[test]
fn syntax_errors_are_reported_on_one_prefixed_line() {
    // `threads = = 2` makes the TOML parser answer "invalid string\nexpected `\"`, `'`":
    // the second half is printed on a line of its own, without `line L:C:`.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = base_config("threads = = 2", "", VARIANTS, "");
    let l = line_of(&text, "threads = = 2");
    let p = write(dir.path(), "syntax.toml", &text);
    let (code, _, err) = check(&p, &[]);
    assert_eq!(code, 1);
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "one error, one line:\n{err}");
    assert!(lines[0].starts_with(&format!("line {l}:11: ")), "{err}");
}

#[test]
fn check_resolves_dns_names_warns_on_unresolvable_ones_and_fails_only_with_strict_dns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(
        dir.path(),
        "localhost.toml",
        &base_config("", "", VARIANTS, "").replace("127.0.0.1:8000", "localhost:8080"),
    );
    let (code, out, err) = check(&good, &["--strict-dns"]);
    assert_eq!(code, 0, "localhost:8080 resolves: {err}");
    assert!(out.ends_with(&format!("{}: ok\n", good.display())), "{out}");
    assert!(!err.contains("warning"), "{err}");

    let bad = write(
        dir.path(),
        "nxdomain.toml",
        &base_config("", "", VARIANTS, "").replace("127.0.0.1:8000", "no-such-host.invalid:80"),
    );
    // Without --strict-dns: valid, with a warning naming the field path and the name
    // (`cohort run` starts with that backend down).
    let (code, out, err) = check(&bad, &[]);
    assert_eq!(code, 0, "an unresolvable backend is a warning: {err}");
    assert!(out.ends_with(&format!("{}: ok\n", bad.display())), "{out}");
    assert!(
        err.lines().any(|l| {
            l.starts_with(
            "warning: service[0].variant[0].backends[0]: cannot resolve \"no-such-host.invalid:80\""
        )
        }),
        "{err}"
    );

    let (code, out, err) = check(&bad, &["--strict-dns"]);
    assert_eq!(code, 1, "--strict-dns fails: {out}");
    assert!(!out.contains(": ok"), "{out}");
    let lines = error_lines(&err);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("service[0].variant[0].backends[0]:")
                && l.contains("no-such-host.invalid")),
        "{err}"
    );

    // The hosts-file override answers first.
    let hosts = write(dir.path(), "hosts", "127.0.0.1 no-such-host.invalid\n");
    let out = std::process::Command::new(bin())
        .args(["check", "-c", path_str(&bad), "--strict-dns"])
        .env("COHORT_HOSTS_FILE", &hosts)
        .output()
        .expect("run cohort");
    assert_eq!(
        out.status.code(),
        Some(0),
        "COHORT_HOSTS_FILE lists the name: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, out, err) = check(&bad, &["--no-resolve"]);
    assert_eq!(code, 0, "--no-resolve skips DNS: {err}");
    assert!(out.ends_with(&format!("{}: ok\n", bad.display())), "{out}");
    assert!(!err.contains("warning"), "{err}");

    let (code, _, _) = check(&bad, &["--no-resolve", "--strict-dns"]);
    assert_eq!(code, 2, "the two flags contradict each other: usage error");
}

// ---------------------------------------------------------------------------------------
// explain

fn three_variant_config(stable: &EchoBackend, beta: &EchoBackend, canary: &EchoBackend) -> String {
    format!(
        r#"
[server]
listen = ["@LISTEN@"]
admin = "@ADMIN@"
threads = 2

[[service]]
name = "api"
key = ["header:x-user-id", "cookie:session"]
expose_header = "x-cohort-variant"

[[service.variant]]
name = "stable"
weight = 80
backends = ["{}"]

[[service.variant]]
name = "beta"
weight = 10
backends = ["{}"]

[[service.variant]]
name = "canary"
weight = 10
backends = ["{}"]

[[service.rule]]
name = "beta-opt-in"
cookie = {{ name = "beta", equals = "1" }}
variant = "beta"

[[service.rule]]
name = "partners"
key_in = ["partner-acme", "partner-globex"]
variant = "canary"

[[service.rule]]
name = "eu"
header = {{ name = "x-country", in = ["DE", "FR"] }}
weights = {{ stable = 50, canary = 50 }}
"#,
        stable.addr, beta.addr, canary.addr
    )
}

/// One probe: request headers (name, value), and what the proxy did with it.
struct Probe {
    key: String,
    headers: Vec<(String, String)>,
    variant: String,
    reason: String,
}

fn probe(cl: &mut Client, key: &str, extra: &[(&str, &str)]) -> Probe {
    let mut headers = vec![("x-user-id".to_string(), key.to_string())];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = cl.get("/", &h);
    assert_eq!(r.status, 200, "{key}: {}", r.text());
    let variant = r.backend();
    assert_eq!(
        r.header("x-cohort-variant"),
        Some(variant.as_str()),
        "{key}"
    );
    Probe {
        key: key.to_string(),
        headers,
        variant,
        reason: r.upstream_header("x-cohort-reason").unwrap_or_default(),
    }
}

/// `cohort explain` for the same request the proxy saw (from 127.0.0.1, path /).
fn explain_probe(config: &Path, p: &Probe) -> Value {
    let mut args: Vec<String> = vec![
        "--ip".into(),
        "127.0.0.1".into(),
        "--path".into(),
        "/".into(),
    ];
    for (k, v) in &p.headers {
        if k == "cookie" {
            args.push("--cookie".into());
            args.push(v.clone());
        } else {
            args.push("--header".into());
            args.push(format!("{k}: {v}"));
        }
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    explain_json(config, &a)
}

#[test]
fn explain_agrees_with_the_live_proxy() {
    let (st, be, ca) = (backend("stable"), backend("beta"), backend("canary"));
    let px = Cohort::start(&three_variant_config(&st, &be, &ca));
    let weights = [("stable", 80.0), ("beta", 10.0), ("canary", 10.0)];
    let eu_weights = [("stable", 50.0), ("beta", 0.0), ("canary", 50.0)];

    // Hash path: 300 keys through the proxy, every one checked against the normative
    // function; every 5th also through `cohort explain`.
    let hashed = parallel(
        300,
        4,
        |cl, i| probe(cl, &format!("user-{i}"), &[]),
        px.addr,
    );
    let mut seen = BTreeMap::<String, usize>::new();
    for p in &hashed {
        let want = expected_variant("api", &weights, &p.key);
        assert_eq!(p.variant, want, "proxy, key {}", p.key);
        assert_eq!(p.reason, "hash", "proxy, key {}", p.key);
        *seen.entry(p.variant.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "all three variants served: {seen:?}");

    let mut cl = px.client();
    let mut rule_probes = Vec::new();
    // The cookie rule pins to beta, whatever the hash says; it runs before key_in.
    for i in 0..8 {
        rule_probes.push((
            probe(&mut cl, &format!("user-{i}"), &[("cookie", "beta=1")]),
            "beta".to_string(),
            "rule:beta-opt-in",
        ));
    }
    rule_probes.push((
        probe(&mut cl, "partner-acme", &[("cookie", "beta=1")]),
        "beta".to_string(),
        "rule:beta-opt-in",
    ));
    // A cookie that does not match the rule changes nothing.
    rule_probes.push((
        probe(&mut cl, "user-3", &[("cookie", "beta=0")]),
        expected_variant("api", &weights, "user-3"),
        "hash",
    ));
    // key_in pins partners to canary.
    for k in ["partner-acme", "partner-globex"] {
        rule_probes.push((
            probe(&mut cl, k, &[]),
            "canary".to_string(),
            "rule:partners",
        ));
    }
    // The header rule re-splits its users 50/50 over stable and canary by hash.
    let mut eu_seen = BTreeMap::<String, usize>::new();
    for i in 0..40 {
        let key = format!("eu-{i}");
        let country = if i % 2 == 0 { "DE" } else { "FR" };
        let want = expected_variant("api", &eu_weights, &key);
        *eu_seen.entry(want.clone()).or_default() += 1;
        rule_probes.push((
            probe(&mut cl, &key, &[("x-country", country)]),
            want,
            "rule:eu",
        ));
    }
    assert_eq!(
        eu_seen.keys().collect::<Vec<_>>(),
        ["canary", "stable"],
        "the eu split uses both of its variants and never beta: {eu_seen:?}"
    );
    // A header value outside the rule's list is hashed normally.
    rule_probes.push((
        probe(&mut cl, "user-5", &[("x-country", "US")]),
        expected_variant("api", &weights, "user-5"),
        "hash",
    ));

    for (p, want, reason) in &rule_probes {
        assert_eq!(&p.variant, want, "proxy, {:?}", p.headers);
        assert_eq!(p.reason, *reason, "proxy, {:?}", p.headers);
    }

    // `cohort explain` on the very file the proxy runs gives the same answers.
    let explained = hashed
        .iter()
        .step_by(5)
        .chain(rule_probes.iter().step_by(2).map(|(p, _, _)| p));
    let mut n = 0;
    for p in explained {
        let e = explain_probe(&px.config_path, p);
        assert_eq!(s(&e, "service"), "api");
        assert_eq!(
            s(&e, "variant"),
            p.variant,
            "explain vs proxy, {:?}",
            p.headers
        );
        assert_eq!(
            s(&e, "reason"),
            p.reason,
            "explain vs proxy, {:?}",
            p.headers
        );
        match p.reason.strip_prefix("rule:") {
            Some(rule) => assert_eq!(e["rule"], rule, "{:?}", p.headers),
            None => assert!(e["rule"].is_null(), "{e}"),
        }
        assert_eq!(s(&e, "key"), p.key, "{e}");
        assert_eq!(s(&e, "key_source"), "header:x-user-id", "{e}");
        assert_eq!(e["new_cookie"], false, "{e}");
        if p.reason == "hash" || p.reason == "rule:eu" {
            // The winner has the highest score.
            let scores = e["scores"].as_object().expect("scores");
            assert_eq!(scores.len(), 3, "{e}");
            let best = scores
                .iter()
                .filter_map(|(v, sc)| sc.as_f64().map(|sc| (v, sc)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(v, _)| v.clone());
            assert_eq!(best.as_deref(), Some(p.variant.as_str()), "{e}");
        }
        if p.reason == "rule:eu" {
            assert!(
                e["scores"]["beta"].is_null(),
                "beta has weight 0 in the eu rule: {e}"
            );
        }
        n += 1;
    }
    assert!(n >= 80, "explained {n} requests");
}

#[test]
fn explain_reproduces_the_spec_golden_vector_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        "golden.toml",
        &sim_config("api", &GOLDEN_WEIGHTS),
    );
    for args in [
        &["--key", "user-27"][..],
        &["--header", "x-user-id: user-27"][..],
        &["--service", "api", "--header", "x-user-id:   user-27  "][..],
    ] {
        let (e, text) = explain_json_text(&p, args);
        assert_eq!(s(&e, "service"), "api", "{args:?}");
        assert_eq!(s(&e, "variant"), "canary", "{args:?}");
        assert_eq!(s(&e, "reason"), "hash", "{args:?}");
        assert!(e["rule"].is_null(), "{e}");
        assert_eq!(s(&e, "key_source"), "header:x-user-id", "{args:?}");
        assert_eq!(s(&e, "key"), "user-27", "{args:?}");
        assert_eq!(e["new_cookie"], false, "{e}");
        let u = |v: &str| raw_number(&text, "u", v);
        let spec = |x: &str| x.parse::<f64>().expect("a float");
        assert_eq!(u("stable"), spec("0.025422852471970014"), "{e}");
        assert_eq!(u("canary"), spec("0.95364607490434206"), "{e}");
        // score = w / -ln(u), in binary64 exactly as written.
        let score = |v: &str| raw_number(&text, "scores", v);
        assert_eq!(score("stable"), 95.0 / -spec("0.025422852471970014").ln());
        assert_eq!(score("canary"), 5.0 / -spec("0.95364607490434206").ln());
    }
    // The other golden rows at 95/5 too.
    for (key, want) in [
        ("user-1", "stable"),
        ("user-154", "canary"),
        ("alice", "stable"),
        ("203.0.113.7", "stable"),
    ] {
        let e = explain_json(&p, &["--key", key]);
        assert_eq!(s(&e, "variant"), want, "{key}");
    }
}

#[test]
fn explain_picks_the_service_the_proxy_would() {
    let config = r#"
[server]
listen = ["127.0.0.1:8080"]

[[service]]
name = "any"
key = ["header:x-user-id"]
[[service.variant]]
name = "stable"
weight = 1
backends = ["127.0.0.1:8000"]

[[service]]
name = "v2-exact"
hosts = ["api.example.com"]
path_prefix = "/v2"
key = ["header:x-user-id"]
[[service.variant]]
name = "stable"
weight = 1
backends = ["127.0.0.1:8000"]

[[service]]
name = "v2-wild"
hosts = ["*.example.com"]
path_prefix = "/v2"
key = ["header:x-user-id"]
[[service.variant]]
name = "stable"
weight = 1
backends = ["127.0.0.1:8000"]

[[service]]
name = "v2-deep"
path_prefix = "/v2/admin"
key = ["header:x-user-id"]
[[service.variant]]
name = "stable"
weight = 1
backends = ["127.0.0.1:8000"]

[[service]]
name = "web"
hosts = ["www.example.org"]
key = ["cookie:sid"]
assign_cookie = "cid"
[[service.variant]]
name = "stable"
weight = 1
backends = ["127.0.0.1:8000"]
[[service.variant]]
name = "canary"
weight = 1
backends = ["127.0.0.1:8001"]
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "hosts.toml", config);
    for (host, path, want) in [
        ("api.example.com", "/v2/users", "v2-exact"), // exact host beats wildcard on a tie
        ("API.Example.COM:8443", "/v2", "v2-exact"),  // case-insensitive, port ignored
        ("eu.example.com", "/v2/users", "v2-wild"),
        ("other.org", "/v2/users", "any"), // longest prefix among matching hosts
        ("api.example.com", "/v2/admin/x", "v2-deep"), // longer prefix beats exact host
        ("api.example.com", "/v1/users?x=1", "any"),
        ("www.example.org", "/", "web"),
        ("www.example.org", "/v2/admin", "v2-deep"),
    ] {
        let e = explain_json(&p, &["--host", host, "--path", path, "--key", "k"]);
        assert_eq!(s(&e, "service"), want, "--host {host} --path {path}");
    }
    // --service selects by name, whatever the host and path say.
    let e = explain_json(
        &p,
        &[
            "--service",
            "web",
            "--host",
            "api.example.com",
            "--path",
            "/v2",
            "--key",
            "k",
        ],
    );
    assert_eq!(s(&e, "service"), "web");
    // An unknown service is an error (exit 1) that names it.
    let (code, out, err) =
        cohort_cmd(&["explain", "-c", path_str(&p), "--service", "nope", "--json"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("nope"), "{err}");
    assert!(out.trim().is_empty(), "{out}");

    // Without an any-host service, a host that no service lists matches nothing: the
    // proxy answers 404, and explain says so with exit 1.
    let only_hosts = config.replacen(
        "name = \"any\"\n",
        "name = \"any\"\nhosts = [\"any.example.net\"]\n",
        1,
    );
    let p = write(dir.path(), "only-hosts.toml", &only_hosts);
    let e = explain_json(&p, &["--host", "any.example.net", "--key", "k"]);
    assert_eq!(s(&e, "service"), "any");
    let (code, out, err) = cohort_cmd(&[
        "explain",
        "-c",
        path_str(&p),
        "--host",
        "elsewhere.net",
        "--path",
        "/v1",
        "--key",
        "k",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("404"), "{err}");
}

#[test]
fn explain_places_the_key_and_mints_cookies_like_the_service_would() {
    let config = r#"
[server]
listen = ["127.0.0.1:8080"]

[[service]]
name = "web"
key = ["cookie:sid", "query:uid"]
assign_cookie = "cid"
salt = "web-salt"
[[service.variant]]
name = "stable"
weight = 70
backends = ["127.0.0.1:8000"]
[[service.variant]]
name = "canary"
weight = 30
backends = ["127.0.0.1:8001"]
"#;
    let weights = [("stable", 70.0), ("canary", 30.0)];
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "web.toml", config);

    // --key goes into the first key source, the cookie `sid`.
    for i in 0..10 {
        let key = format!("visitor-{i}");
        let e = explain_json(&p, &["--key", &key]);
        assert_eq!(s(&e, "reason"), "hash", "{e}");
        assert_eq!(s(&e, "key_source"), "cookie:sid", "{e}");
        assert_eq!(s(&e, "key"), key, "{e}");
        assert_eq!(e["new_cookie"], false, "{e}");
        assert_eq!(
            s(&e, "variant"),
            expected_variant("web-salt", &weights, &key)
        );
        // ... exactly as if the cookie had been sent.
        let sent = explain_json(&p, &["--cookie", &format!("sid={key}")]);
        assert_eq!(sent, e, "--key vs --cookie sid=");
    }

    // No key at all: a fresh anonymous id is minted in `cid` and hashed at once.
    let e = explain_json(&p, &[]);
    assert_eq!(s(&e, "reason"), "cookie", "{e}");
    assert_eq!(e["new_cookie"], true, "{e}");
    assert_eq!(s(&e, "key_source"), "cookie:cid", "{e}");
    let id = s(&e, "key");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "minted id {id:?}"
    );
    assert_eq!(
        s(&e, "variant"),
        expected_variant("web-salt", &weights, &id)
    );
    assert_eq!(e["scores"].as_object().map(|m| m.len()), Some(2), "{e}");

    // Coming back with that cookie: same variant, reason cookie, nothing minted.
    let back = explain_json(&p, &["--cookie", &format!("cid={id}")]);
    assert_eq!(s(&back, "variant"), s(&e, "variant"));
    assert_eq!(s(&back, "reason"), "cookie", "{back}");
    assert_eq!(back["new_cookie"], false, "{back}");
    assert_eq!(s(&back, "key"), id);

    // The query source is used when the cookie is absent, percent-decoded.
    let q = explain_json(&p, &["--path", "/x?uid=a%20b"]);
    assert_eq!(s(&q, "key_source"), "query:uid", "{q}");
    assert_eq!(s(&q, "key"), "a b", "{q}");
    assert_eq!(s(&q, "reason"), "hash", "{q}");
}

// ---------------------------------------------------------------------------------------
// simulate

#[test]
fn simulate_shares_match_the_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "s.toml", &sim_config("api", &GOLDEN_WEIGHTS));
    let (code, out, err) = cohort_cmd(&["simulate", "-c", path_str(&p), "--users", "20000"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("service api: 20000 synthetic users"),
        "{out}"
    );
    let rows = parse_shares(&out, "api");
    assert_eq!(rows.len(), 2, "{out}");
    // user-0 .. user-19999 with the config's salt and weights.
    let mut canary = 0;
    for i in 0..20_000 {
        if expected_variant("api", &GOLDEN_WEIGHTS, &format!("user-{i}")) == "canary" {
            canary += 1;
        }
    }
    for (name, w) in GOLDEN_WEIGHTS {
        let r = &rows[name];
        assert_eq!(r.expected, w, "{name}: {out}");
        assert!(
            (r.simulated - w).abs() <= 1.0,
            "{name}: simulated {}% vs {w}%",
            r.simulated
        );
        let want_users = if name == "canary" {
            canary
        } else {
            20_000 - canary
        };
        assert_eq!(r.users, want_users, "{name}: {out}");
        assert!(
            (r.simulated - r.users as f64 / 200.0).abs() < 0.001,
            "{name}: percentage vs count: {out}"
        );
    }

    // Three variants, weights that do not sum to 100.
    let three = [("stable", 6.0), ("beta", 3.0), ("canary", 1.0)];
    let p = write(dir.path(), "t.toml", &sim_config("api", &three));
    let (code, out, err) = cohort_cmd(&["simulate", "-c", path_str(&p), "--users", "20000"]);
    assert_eq!(code, 0, "{err}");
    let rows = parse_shares(&out, "api");
    for (name, w) in three {
        let r = &rows[name];
        assert!((r.expected - w * 10.0).abs() < 0.001, "{name}: {out}");
        assert!((r.simulated - w * 10.0).abs() <= 1.0, "{name}: {out}");
    }
    assert_eq!(rows.values().map(|r| r.users).sum::<u64>(), 20_000);
}

#[test]
fn simulate_against_a_two_variant_ramp_only_moves_users_into_canary() {
    let m = transition(
        ("api", &[("stable", 99.0), ("canary", 1.0)]),
        ("api", &[("stable", 95.0), ("canary", 5.0)]),
        20_000,
    );
    assert_eq!(
        m.cell("canary", "stable"),
        0,
        "nobody leaves the canary: {m:?}"
    );
    assert_eq!(m.moved, m.cell("stable", "canary"), "{m:?}");
    assert!(m.moved > 0, "raising canary moves someone in: {m:?}");
    // About 4% of the users move (5% - 1%).
    let pct = m.moved as f64 / m.users as f64 * 100.0;
    assert!((pct - 4.0).abs() <= 1.0, "{pct}% moved");

    // And the way back only moves users out of canary.
    let back = transition(
        ("api", &[("stable", 95.0), ("canary", 5.0)]),
        ("api", &[("stable", 99.0), ("canary", 1.0)]),
        20_000,
    );
    assert_eq!(back.cell("stable", "canary"), 0, "{back:?}");
    assert_eq!(
        back.moved, m.moved,
        "the ramp-down undoes the ramp-up exactly"
    );
}

#[test]
fn simulate_against_changing_one_of_three_weights_moves_nobody_between_the_others() {
    let m = transition(
        ("api", &[("stable", 80.0), ("beta", 10.0), ("canary", 1.0)]),
        ("api", &[("stable", 80.0), ("beta", 10.0), ("canary", 10.0)]),
        20_000,
    );
    for (from, to) in [
        ("stable", "beta"),
        ("beta", "stable"),
        ("canary", "stable"),
        ("canary", "beta"),
    ] {
        assert_eq!(m.cell(from, to), 0, "{from} -> {to}: {m:?}");
    }
    assert!(
        m.cell("stable", "canary") > 0 && m.cell("beta", "canary") > 0,
        "{m:?}"
    );
    assert_eq!(
        m.moved,
        m.cell("stable", "canary") + m.cell("beta", "canary"),
        "{m:?}"
    );
}

#[test]
fn simulate_against_a_new_salt_or_a_renamed_variant_reshuffles_users() {
    let half = [("a", 1.0), ("b", 1.0)];
    let salted = transition(("api", &half), ("api-2", &half), 20_000);
    let pct = salted.moved as f64 / salted.users as f64 * 100.0;
    assert!(
        (40.0..=60.0).contains(&pct),
        "a new salt moves about half of a 50/50 service, got {pct}%"
    );
    assert!(
        salted.cell("a", "b") > 0 && salted.cell("b", "a") > 0,
        "{salted:?}"
    );

    // Same salt and weights, variant b renamed to c: c has a new seed, so users of the
    // untouched variant a move too (and not every former b user lands in c).
    let renamed = transition(("api", &half), ("api", &[("a", 1.0), ("c", 1.0)]), 20_000);
    let a_to_c = renamed.cell("a", "c");
    assert!(
        a_to_c > renamed.users / 10,
        "renaming reshuffles users of the other variant: {renamed:?}"
    );
    assert!(renamed.cell("b", "a") > 0, "{renamed:?}");
    // Every former b user changes variant name.
    let b_users = renamed.cell("b", "a") + renamed.cell("b", "c");
    assert_eq!(renamed.moved, a_to_c + b_users, "{renamed:?}");

    // An unchanged config moves nobody.
    let same = transition(("api", &half), ("api", &half), 5_000);
    assert_eq!(same.moved, 0, "{same:?}");
}

// ---------------------------------------------------------------------------------------
// demo

/// A `cohort demo` child process; killed on drop.
struct Demo {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

fn start_demo(listen: SocketAddr, admin: SocketAddr, extra: &[&str]) -> Demo {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
    let err = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
    let child = Command::new(bin())
        .args([
            "demo",
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn cohort demo");
    let mut demo = Demo { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = demo.child.try_wait() {
            panic!("cohort demo exited early with {status}: {}", demo.stderr());
        }
        if TcpStream::connect(listen).is_ok() && TcpStream::connect(admin).is_ok() {
            return demo;
        }
        assert!(
            Instant::now() < deadline,
            "cohort demo did not start: {}",
            demo.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the demo has printed `needle` (at most `secs`); returns its stdout.
fn wait_stdout(demo: &Demo, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = demo.stdout();
        if out.contains(needle) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} from the demo:\n{out}\n{}",
            demo.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The demo's transition lines (`>> HH:MM:SS EVENT -> P%: why`).
fn transitions(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix(">> "))
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_string())
        .collect()
}

#[test]
fn demo_serves_the_embedded_config() {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Slow steps: the rollout stays at its first step, the configured 90/10 split.
    let demo = start_demo(listen, admin, &["--step-secs", "3600"]);
    let weights = [("stable", 90.0), ("canary", 10.0)];

    let out = demo.stdout();
    let curls: Vec<&str> = out.lines().filter(|l| l.contains("curl ")).collect();
    assert!(curls.len() >= 5, "curl lines on stdout:\n{out}");
    assert!(
        out.contains(&format!("http://{listen}")),
        "the curl lines use the chosen address:\n{out}"
    );

    let mut cl = Client::new(listen);
    // Sticky: the same x-user-id gets the same variant every time, the normative one.
    for key in ["alice", "bob", "user-1", "user-154"] {
        let want = expected_variant("api", &weights, key);
        for _ in 0..3 {
            let r = cl.get("/", &[("x-user-id", key)]);
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.backend(), want, "{key}");
            assert_eq!(r.header("x-cohort-variant"), Some(want.as_str()), "{key}");
            assert_eq!(
                r.upstream_header("x-cohort-reason").as_deref(),
                Some("hash")
            );
        }
    }
    // user-27, which the demo advertises as a canary user.
    let r = cl.get("/", &[("x-user-id", "user-27")]);
    assert_eq!(r.backend(), expected_variant("api", &weights, "user-27"));
    assert_eq!(
        r.backend(),
        "canary",
        "the demo's curl line promises canary"
    );

    // A stable user opting in with cookie beta=1 goes to canary by rule.
    let stable_user = (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| expected_variant("api", &weights, k) == "stable")
        .expect("a stable user");
    let r = cl.get("/", &[("x-user-id", &stable_user), ("cookie", "beta=1")]);
    assert_eq!(r.backend(), "canary");
    assert_eq!(
        r.upstream_header("x-cohort-reason").as_deref(),
        Some("rule:beta-opt-in")
    );
    // Partners by key.
    let r = cl.get("/", &[("x-user-id", "partner-acme")]);
    assert_eq!(r.backend(), "canary");
    assert_eq!(
        r.upstream_header("x-cohort-reason").as_deref(),
        Some("rule:partners")
    );

    // No key: a sticky anonymous cookie.
    let r = cl.get("/", &[]);
    assert_eq!(r.status, 200);
    let set = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {:?}", r.headers))
        .to_string();
    let id = set
        .strip_prefix("cohort_id=")
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("Set-Cookie {set:?}"))
        .to_string();
    assert!(!id.is_empty(), "{set}");
    assert_eq!(
        r.upstream_header("x-cohort-reason").as_deref(),
        Some("cookie")
    );
    let first = r.backend();
    assert_eq!(first, expected_variant("api", &weights, &id));
    let again = cl.get("/", &[("cookie", &format!("cohort_id={id}"))]);
    assert_eq!(
        again.backend(),
        first,
        "the cookie makes the visitor sticky"
    );
    assert!(
        again.header("set-cookie").is_none(),
        "no new cookie once it is sent"
    );

    // Forcing from loopback, and the force header never reaches the backend.
    let r = cl.get(
        "/",
        &[("x-user-id", &stable_user), ("x-cohort-force", "canary")],
    );
    assert_eq!(r.backend(), "canary");
    assert_eq!(
        r.upstream_header("x-cohort-reason").as_deref(),
        Some("forced")
    );
    assert_eq!(
        r.upstream_header("x-cohort-force"),
        None,
        "force header stripped"
    );

    // The admin API, and the rollout still at its first step.
    let h = Client::new(admin).get("/healthz", &[]);
    assert_eq!(h.status, 200, "{}", h.text());
    let r = Client::new(admin).get("/rollout", &[]).json();
    assert_eq!(r["services"][0]["percent"], 10.0, "{r:#}");
    assert!(out.contains("rollout \"demo\": a healthy canary"), "{out}");
    drop(demo);
}

#[test]
fn demo_walks_a_healthy_canary_to_promoted_and_prints_every_step() {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let demo = start_demo(listen, admin, &["--step-secs", "1"]);
    let out = wait_stdout(&demo, "The canary passed every step", 120);
    let t = transitions(&out);
    let kinds: Vec<&str> = t
        .iter()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "STARTED -> 10%",
            "ADVANCED -> 25%",
            "ADVANCED -> 50%",
            "PROMOTED -> 100%"
        ],
        "{out}"
    );
    assert!(t[1].contains("passed after"), "{}", t[1]);
    // Each check is printed with its numbers.
    assert!(
        out.lines()
            .any(|l| l.contains(" check at 10%: pass: errors pass: canary ")),
        "{out}"
    );
    let r = Client::new(admin).get("/rollout", &[]).json();
    assert_eq!(r["services"][0]["state"], "promoted", "{r:#}");
    let mut cl = Client::new(listen);
    for i in 0..20 {
        let u = format!("visitor-{i}");
        assert_eq!(cl.get("/", &[("x-user-id", &u)]).backend(), "canary");
    }
    assert!(out.contains("cohort rollout report --admin"), "{out}");
}

#[test]
fn demo_with_a_bad_canary_rolls_it_back_and_says_why() {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let demo = start_demo(listen, admin, &["--bad-canary", "--step-secs", "1"]);
    let out = wait_stdout(&demo, "The canary was rolled back", 120);
    assert!(
        out.contains("a bad canary (it answers 20% of requests with 500)"),
        "{out}"
    );
    let t = transitions(&out);
    assert_eq!(t.len(), 2, "{out}");
    assert!(t[0].starts_with("STARTED -> 10%"), "{out}");
    assert!(
        t[1].starts_with("ROLLED_BACK -> 0%")
            && t[1].contains("failed check(s) in a row")
            && t[1].contains("errors fail: canary "),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(" check at 10%: fail: errors fail")),
        "{out}"
    );
    let r = Client::new(admin).get("/rollout", &[]).json();
    assert_eq!(r["services"][0]["state"], "rolled_back", "{r:#}");
    // A user pinned to the canary by the opt-in rule now gets stable, reason rollback.
    let got = Client::new(listen).get("/", &[("x-user-id", "alice"), ("cookie", "beta=1")]);
    assert_eq!(got.backend(), "stable");
    assert_eq!(
        got.upstream_header("x-cohort-reason").as_deref(),
        Some("rollback")
    );
}

// ---------------------------------------------------------------------------------------
// exit codes and help

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    for args in [
        &["check"][..],
        &["bogus"][..],
        &[][..],
        &["explain", "--service", "api"][..],
        &["check", "-c", "x.toml", "--bogus-flag"][..],
        &["simulate", "-c", "x.toml", "--users", "many"][..],
        &["explain", "-c", "x.toml", "--ip", "not-an-ip"][..],
        &["demo", "--listen", "nowhere"][..],
    ] {
        let (code, out, err) = cohort_cmd(args);
        assert_eq!(code, 2, "cohort {args:?}: {out}{err}");
        assert!(!err.trim().is_empty(), "cohort {args:?} says why on stderr");
    }

    let (code, out, _) = cohort_cmd(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["run", "check", "explain", "simulate", "demo"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(sub)),
            "--help lists {sub}:\n{out}"
        );
    }
    let (code, out, _) = cohort_cmd(&["explain", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--service",
        "--key",
        "--header",
        "--cookie",
        "--ip",
        "--host",
        "--path",
        "--json",
    ] {
        assert!(out.contains(flag), "explain --help mentions {flag}:\n{out}");
    }
    let (code, out, _) = cohort_cmd(&["check", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--no-resolve"), "{out}");
    let (code, out, _) = cohort_cmd(&["simulate", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--against") && out.contains("--users"),
        "{out}"
    );
}

#[test]
fn bad_input_exits_1_not_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    let (code, _, err) = check(&missing, &[]);
    assert_eq!(code, 1, "an unreadable file is invalid input: {err}");
    assert!(err.contains("missing.toml"), "{err}");

    let p = write(dir.path(), "ok.toml", &sim_config("api", &GOLDEN_WEIGHTS));
    for args in [
        &["--header", "no colon here"][..],
        &["--cookie", "novalue"][..],
        &["--service", "nope"][..],
    ] {
        let mut all = vec!["explain", "-c", path_str(&p)];
        all.extend_from_slice(args);
        let (code, out, err) = cohort_cmd(&all);
        assert_eq!(code, 1, "explain {args:?}: {out}{err}");
    }
    let (code, _, err) = cohort_cmd(&[
        "simulate",
        "-c",
        path_str(&p),
        "--against",
        path_str(&missing),
    ]);
    assert_eq!(code, 1, "{err}");
}
