#![allow(clippy::unwrap_used)]
//! The deployment files (`deploy/`, `.dockerignore`, `docs/deploy-*.md`) agree with each
//! other, with `deploy/cohort.toml` and with the real binary's command line. CI has no
//! Docker engine and no systemd to start units under, so these checks stand in for
//! building the image and starting the services: ports, health checks, stop timeouts,
//! limits, privileges, and every `cohort ...` command line the files and guides contain.

mod common;
use common::free_port;

use serde_json::Value as Json;
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// helpers

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn json(rel: &str) -> Json {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs the binary under test; (exit code, stdout, stderr).
fn cohort(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .output()
        .expect("run cohort");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the deploy files must agree on, read from `deploy/cohort.toml`.
struct Deploy {
    listen_port: u16,
    admin_port: u16,
    /// `drain_delay_secs + shutdown_timeout_secs`: the least time a stop must allow.
    drain_plus_shutdown: u64,
    admin_token_env: String,
    pid_file: String,
    upgrade_sock: String,
}

fn deploy() -> Deploy {
    let cfg: toml::Value = toml::from_str(&read("deploy/cohort.toml")).unwrap();
    let server = &cfg["server"];
    let port = |s: &str| s.parse::<SocketAddr>().unwrap().port();
    let listen = server["listen"].as_array().unwrap();
    assert_eq!(listen.len(), 1, "the deploy files assume one listener");
    let secs = |k: &str| u64::try_from(server[k].as_integer().unwrap()).unwrap();
    let text = |k: &str| server[k].as_str().unwrap().to_string();
    Deploy {
        listen_port: port(listen[0].as_str().unwrap()),
        admin_port: port(server["admin"].as_str().unwrap()),
        drain_plus_shutdown: secs("drain_delay_secs") + secs("shutdown_timeout_secs"),
        admin_token_env: text("admin_token_env"),
        pid_file: text("pid_file"),
        upgrade_sock: text("upgrade_sock"),
    }
}

/// A user that is not root: not `root`/`0`, with or without a group.
fn non_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or("");
    !name.is_empty() && name != "root" && name != "0"
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// command lines: every `cohort ...` in the files must be one the binary accepts

/// `cohort --help` and `cohort <sub> --help`, asked once each.
#[derive(Default)]
struct Cli {
    help: HashMap<String, String>,
}

impl Cli {
    fn help(&mut self, sub: &str) -> &str {
        self.help.entry(sub.to_string()).or_insert_with(|| {
            let args: Vec<&str> = if sub.is_empty() {
                vec!["--help"]
            } else {
                vec![sub, "--help"]
            };
            let (code, out, err) = cohort(&args);
            assert_eq!(code, 0, "cohort {sub} --help: {err}");
            out
        })
    }

    /// The subcommands `cohort --help` lists under "Commands:".
    fn subcommands(&mut self) -> BTreeSet<String> {
        self.help("")
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|s| *s != "help")
            .map(str::to_string)
            .collect()
    }
}

/// `flag` appears in `help` as a whole option name (`-c,`, `--admin <ADDR>`, ...).
fn help_lists(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
    })
}

fn is_cohort_program(word: &str) -> bool {
    word == "cohort" || word.ends_with("/cohort")
}

/// Checks one command line (program first). Returns the `cohort` subcommand it runs, if
/// it runs `cohort`; records a problem for an unknown subcommand or flag.
fn check_command(
    words: &[String],
    origin: &str,
    cli: &mut Cli,
    problems: &mut Vec<String>,
) -> Option<String> {
    let program = words.first()?;
    if program.ends_with("upgrade.sh") {
        let usage = read("scripts/upgrade.sh");
        let usage = usage.lines().find(|l| l.starts_with("# Usage:")).unwrap();
        for w in words[1..]
            .iter()
            .filter(|w| w.starts_with('-') && *w != "--")
        {
            if !help_lists(usage, w) {
                problems.push(format!(
                    "{origin}: upgrade.sh has no option {w}: {}",
                    words.join(" ")
                ));
            }
        }
        return None;
    }
    if !is_cohort_program(program) {
        return None;
    }
    let mut rest = &words[1..];
    // Global options before the subcommand.
    loop {
        match rest.first().map(String::as_str) {
            Some("--log-format") => rest = &rest[rest.len().min(2)..],
            Some(f) if f.starts_with("--log-format=") => rest = &rest[1..],
            Some("--version" | "-V" | "--help" | "-h") => return None,
            _ => break,
        }
    }
    // A bare `cohort` (the user, the image name) is not an invocation.
    let sub = rest.first()?.clone();
    if !cli.subcommands().contains(&sub) {
        problems.push(format!(
            "{origin}: `cohort {sub}` is not a subcommand of this binary ({:?}): {}",
            cli.subcommands(),
            words.join(" ")
        ));
        return Some(sub);
    }
    let help = cli.help(&sub).to_string();
    for w in rest[1..]
        .iter()
        .filter(|w| w.starts_with('-') && w.len() > 1)
    {
        let flag = w.split('=').next().unwrap();
        if !help_lists(&help, flag) && !help_lists(cli.help(""), flag) {
            problems.push(format!(
                "{origin}: `cohort {sub}` has no option {flag}: {}",
                words.join(" ")
            ));
        }
    }
    Some(sub)
}

/// A small shell lexer: words (quotes removed) and command separators (newline, `;`,
/// `&&`, `||`, `|`, `&`, `$(`, parentheses). `#` at the start of a word starts a comment.
fn shell_commands(text: &str) -> Vec<Vec<String>> {
    let text = text.replace("\\\n", " ");
    let mut commands = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    fn end_word(word: &mut String, in_word: &mut bool, commands: &mut [Vec<String>]) {
        if *in_word {
            commands.last_mut().unwrap().push(std::mem::take(word));
            *in_word = false;
        }
    }
    while let Some(c) = chars.next() {
        let separator = match c {
            '\'' => {
                in_word = true;
                word.extend(chars.by_ref().take_while(|&d| d != '\''));
                false
            }
            '"' => {
                in_word = true;
                while let Some(d) = chars.next() {
                    match d {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        _ => word.push(d),
                    }
                }
                false
            }
            '#' if !in_word => {
                chars.by_ref().take_while(|&d| d != '\n').for_each(drop);
                true
            }
            '\n' | ';' | '(' | ')' => true,
            '&' | '|' => {
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                true
            }
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                true
            }
            c if c.is_whitespace() => {
                end_word(&mut word, &mut in_word, &mut commands);
                false
            }
            c => {
                in_word = true;
                word.push(c);
                false
            }
        };
        if separator {
            end_word(&mut word, &mut in_word, &mut commands);
            commands.push(Vec::new());
        }
    }
    end_word(&mut word, &mut in_word, &mut commands);
    commands
        .into_iter()
        .map(|c| strip_prefixes(&c).to_vec())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Drops what runs a command rather than being it: `sudo [-u USER]`, `env`, `exec`,
/// `VAR=value` assignments, and the shell keywords `do`/`then`/`else`.
fn strip_prefixes(words: &[String]) -> &[String] {
    let mut i = 0;
    while let Some(w) = words.get(i) {
        let assignment = w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        match w.as_str() {
            "sudo" => {
                i += 1;
                while let Some(opt) = words.get(i).filter(|o| o.starts_with('-')) {
                    i += if matches!(opt.as_str(), "-u" | "-g" | "-C") {
                        2
                    } else {
                        1
                    };
                }
            }
            "env" | "exec" | "time" | "nohup" | "do" | "then" | "else" => i += 1,
            _ if assignment => i += 1,
            _ => break,
        }
    }
    &words[i.min(words.len())..]
}

/// Shell code in a Markdown file: fenced blocks in a shell language (or none), and inline
/// code spans (which may wrap across lines).
fn markdown_shell(md: &str) -> Vec<String> {
    let mut snippets = Vec::new();
    let mut prose = String::new();
    let mut block: Option<(String, String)> = None;
    for line in md.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut block, fence) {
            (None, Some(lang)) => block = Some((lang.trim().to_string(), String::new())),
            (Some((lang, body)), Some(_)) => {
                if matches!(lang.as_str(), "" | "sh" | "bash" | "shell" | "console") {
                    snippets.push(std::mem::take(body));
                }
                block = None;
            }
            (Some((_, body)), None) => {
                body.push_str(line.trim_start().trim_start_matches("$ "));
                body.push('\n');
            }
            (None, None) => {
                prose.push_str(line);
                prose.push(' ');
            }
        }
    }
    assert!(block.is_none(), "unclosed code fence");
    snippets.extend(prose.split('`').skip(1).step_by(2).map(str::to_string));
    snippets
}

// ---------------------------------------------------------------------------------------
// JSON, the ECS task definition, the service and the NLB target group

#[test]
fn every_json_file_under_deploy_parses() {
    let mut files = Vec::new();
    files_under(&root().join("deploy"), "json", &mut files);
    assert!(files.len() >= 3, "expected the ECS files, found {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        serde_json::from_str::<Json>(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[test]
fn task_definition_matches_the_config_and_stops_gracefully() {
    let d = deploy();
    let td = json("deploy/ecs/task-definition.json");
    assert_eq!(td["family"], "cohort");
    assert_eq!(td["networkMode"], "awsvpc");
    assert_eq!(
        td["requiresCompatibilities"],
        serde_json::json!(["FARGATE"])
    );
    let containers = td["containerDefinitions"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["name"], "cohort");
    assert_eq!(c["essential"], true);

    let mut ports: Vec<u64> = c["portMappings"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|m| assert_eq!(m["protocol"], "tcp"))
        .map(|m| m["containerPort"].as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    let mut expected = vec![u64::from(d.listen_port), u64::from(d.admin_port)];
    expected.sort_unstable();
    assert_eq!(
        ports, expected,
        "portMappings = server.listen + server.admin"
    );

    let hc = c["healthCheck"]["command"].as_array().unwrap();
    let admin = format!("127.0.0.1:{}", d.admin_port);
    assert_eq!(
        hc.iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
        ["CMD", "cohort", "health", "--admin", admin.as_str()]
    );

    let stop = c["stopTimeout"].as_u64().unwrap();
    assert!(
        stop >= d.drain_plus_shutdown,
        "stopTimeout {stop} < drain_delay_secs + shutdown_timeout_secs {}",
        d.drain_plus_shutdown
    );
    let nofile = c["ulimits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "nofile")
        .expect("a nofile ulimit");
    assert!(nofile["softLimit"].as_u64().unwrap() >= 65536);
    assert!(nofile["hardLimit"].as_u64().unwrap() >= 65536);
    assert!(non_root(c["user"].as_str().unwrap()), "user {}", c["user"]);
    assert_eq!(c["linuxParameters"]["initProcessEnabled"], false);
    assert_eq!(c["logConfiguration"]["logDriver"], "awslogs");
    assert_eq!(
        c["command"],
        serde_json::json!(["run", "-c", "/etc/cohort/cohort.toml"])
    );

    // The admin token arrives as a secret under the name the config reads.
    assert!(
        c["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == d.admin_token_env.as_str()),
        "secrets must provide {}",
        d.admin_token_env
    );
    // The config comes from a declared volume, read-only, where the command reads it.
    let mount = c["mountPoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["containerPath"] == "/etc/cohort")
        .expect("a mount at /etc/cohort");
    assert_eq!(mount["readOnly"], true);
    assert!(td["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == mount["sourceVolume"] && v["efsVolumeConfiguration"].is_object()));
}

#[test]
fn target_group_checks_readyz_on_the_admin_port() {
    let d = deploy();
    let tg = json("deploy/ecs/nlb-target-group.json");
    assert_eq!(tg["Protocol"], "TCP");
    assert_eq!(tg["Port"].as_u64(), Some(u64::from(d.listen_port)));
    assert_eq!(tg["TargetType"], "ip");
    assert_eq!(tg["HealthCheckProtocol"], "HTTP");
    assert_eq!(tg["HealthCheckPort"], d.admin_port.to_string().as_str());
    assert_eq!(tg["HealthCheckPath"], "/readyz");
    assert_eq!(tg["HealthCheckIntervalSeconds"], 10);
    assert_eq!(tg["HealthyThresholdCount"], 2);
    assert_eq!(tg["UnhealthyThresholdCount"], 2);
    assert!(
        tg["HealthCheckTimeoutSeconds"].as_u64().unwrap()
            < tg["HealthCheckIntervalSeconds"].as_u64().unwrap()
    );
}

#[test]
fn service_sends_the_nlb_to_the_proxy_port_and_rolls_back_failed_deploys() {
    let d = deploy();
    let td = json("deploy/ecs/task-definition.json");
    let svc = json("deploy/ecs/service.json");
    let tg = json("deploy/ecs/nlb-target-group.json");
    assert_eq!(svc["launchType"], "FARGATE");
    assert_eq!(svc["taskDefinition"], td["family"]);
    assert_eq!(svc["desiredCount"], 3);
    let lbs = svc["loadBalancers"].as_array().unwrap();
    assert_eq!(lbs.len(), 1);
    assert_eq!(
        lbs[0]["containerName"],
        td["containerDefinitions"][0]["name"]
    );
    assert_eq!(
        lbs[0]["containerPort"].as_u64(),
        Some(u64::from(d.listen_port))
    );
    assert!(lbs[0]["targetGroupArn"]
        .as_str()
        .unwrap()
        .contains(":targetgroup/"));

    let dc = &svc["deploymentConfiguration"];
    assert_eq!(dc["minimumHealthyPercent"], 100);
    assert_eq!(dc["maximumPercent"], 200);
    assert_eq!(dc["deploymentCircuitBreaker"]["enable"], true);
    assert_eq!(dc["deploymentCircuitBreaker"]["rollback"], true);
    let vpc = &svc["networkConfiguration"]["awsvpcConfiguration"];
    assert!(!vpc["subnets"].as_array().unwrap().is_empty());
    assert!(!vpc["securityGroups"].as_array().unwrap().is_empty());

    // A new task must get the time the NLB needs to see it healthy.
    let to_healthy = tg["HealthCheckIntervalSeconds"].as_u64().unwrap()
        * tg["HealthyThresholdCount"].as_u64().unwrap();
    assert!(svc["healthCheckGracePeriodSeconds"].as_u64().unwrap() >= to_healthy);
}

// ---------------------------------------------------------------------------------------
// systemd units

/// The `[Service]` settings of a unit file: (key, value) in order; repeated keys repeat.
fn service_section(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.replace("\\\n", " ").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[Service]" {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {line}"));
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn unit_files() -> Vec<PathBuf> {
    let mut units = Vec::new();
    files_under(&root().join("deploy/systemd"), "service", &mut units);
    units.sort();
    assert!(
        units.len() >= 2,
        "cohort.service and cohort-upgradable.service: {units:?}"
    );
    units
}

#[test]
fn systemd_units_reload_drain_and_run_sandboxed() {
    let d = deploy();
    for path in unit_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let settings = service_section(&std::fs::read_to_string(&path).unwrap());
        let all = |k: &str| -> Vec<&str> {
            settings
                .iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let one = |k: &str| -> &str {
            let v = all(k);
            assert_eq!(v.len(), 1, "{name}: exactly one {k}=, found {v:?}");
            v[0]
        };
        let seconds = |k: &str| -> u64 {
            one(k)
                .trim_end_matches('s')
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {k}"))
        };

        assert!(
            one("ExecStart").starts_with("/usr/local/bin/cohort run ")
                && one("ExecStart").ends_with(" -c /etc/cohort/cohort.toml"),
            "{name}: ExecStart {}",
            one("ExecStart")
        );
        assert_eq!(
            one("ExecStartPre"),
            "/usr/local/bin/cohort check -c /etc/cohort/cohort.toml",
            "{name}: validate before starting"
        );
        assert!(!all("ExecReload").is_empty(), "{name}: ExecReload");
        assert_eq!(one("KillSignal"), "SIGTERM", "{name}");
        let stop = seconds("TimeoutStopSec");
        assert!(
            stop >= d.drain_plus_shutdown,
            "{name}: TimeoutStopSec {stop} < drain_delay_secs + shutdown_timeout_secs {}",
            d.drain_plus_shutdown
        );
        assert_eq!(one("Restart"), "on-failure", "{name}");
        assert_eq!(one("NoNewPrivileges"), "yes", "{name}");
        assert_eq!(one("ProtectSystem"), "strict", "{name}");
        assert_eq!(one("ProtectHome"), "yes", "{name}");
        assert!(
            one("LimitNOFILE").parse::<u64>().unwrap() >= 65536,
            "{name}: LimitNOFILE"
        );
        assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE", "{name}");
        assert_eq!(
            one("CapabilityBoundingSet"),
            "CAP_NET_BIND_SERVICE",
            "{name}"
        );
        assert!(non_root(one("User")), "{name}: User={}", one("User"));
        assert_eq!(one("Environment"), "RUST_LOG=info", "{name}");
        assert_eq!(one("EnvironmentFile"), "-/etc/cohort/env", "{name}");

        // upgrade_sock and pid_file live in the RuntimeDirectory, which the sandbox
        // leaves writable (ProtectSystem=strict makes /tmp, their default, read-only).
        let run_dir = format!("/run/{}/", one("RuntimeDirectory"));
        assert_eq!(one("RuntimeDirectoryPreserve"), "yes", "{name}");
        assert!(d.pid_file.starts_with(&run_dir) && d.upgrade_sock.starts_with(&run_dir));
        let writable: Vec<&str> = one("ReadWritePaths").split_whitespace().collect();
        assert!(
            writable.contains(&run_dir.trim_end_matches('/')),
            "{name}: ReadWritePaths"
        );
        assert_eq!(one("PrivateTmp"), "no", "{name}");

        match one("Type") {
            "simple" => {
                let reload = all("ExecReload");
                assert_eq!(
                    reload.last().copied(),
                    Some("/bin/kill -HUP $MAINPID"),
                    "{name}: systemctl reload = SIGHUP"
                );
            }
            "forking" => {
                // MAINPID follows the PID file cohort rewrites on a hand-over; the new
                // process must be started by ExecReload (inside the unit's cgroup), or
                // systemd refuses it as the main PID.
                assert_eq!(
                    one("PIDFile"),
                    d.pid_file,
                    "{name}: PIDFile = server.pid_file"
                );
                assert!(one("ExecStart").contains(" --daemon "), "{name}: --daemon");
                let reload = one("ExecReload");
                let words: Vec<&str> = reload.split_whitespace().collect();
                assert!(
                    words[0].ends_with("/upgrade.sh"),
                    "{name}: ExecReload {reload}"
                );
                assert!(
                    reload.contains(" -c /etc/cohort/cohort.toml"),
                    "{name}: {reload}"
                );
                assert!(
                    reload.contains(" --bin /usr/local/bin/cohort"),
                    "{name}: {reload}"
                );
                let log = words.iter().skip_while(|w| **w != "--log").nth(1);
                assert!(
                    log.is_some_and(|l| writable.iter().any(|w| l.starts_with(w))),
                    "{name}: upgrade.sh --log must be writable under the sandbox: {reload}"
                );
            }
            other => panic!("{name}: Type={other}"),
        }
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("note: systemd-analyze not found; skipping `systemd-analyze verify`");
        return;
    }
    let units = unit_files();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The units name where the guides install the programs; on this machine they are not
    // installed, which verify reports. Anything else (unknown keys, bad values) fails.
    let installed = [
        "/usr/local/bin/cohort",
        "/usr/local/libexec/cohort/upgrade.sh",
    ];
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !installed.iter().any(|p| {
                !Path::new(p).exists()
                    && l.ends_with(&format!(
                        "Command {p} is not executable: No such file or directory"
                    ))
            })
        })
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify:\n{}",
        complaints.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// the Dockerfile and .dockerignore

/// Dockerfile instructions (continuation lines joined, comments dropped):
/// (INSTRUCTION, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            cur.push_str(part);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (ins, args) = cur
            .split_once(char::is_whitespace)
            .unwrap_or((cur.as_str(), ""));
        out.push((ins.to_uppercase(), args.trim().to_string()));
        cur.clear();
    }
    out
}

fn json_words(args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("exec-form JSON array expected: {args}: {e}"))
}

#[test]
fn dockerfile_builds_like_the_readme_and_runs_unprivileged() {
    let d = deploy();
    let ins = dockerfile();
    let froms: Vec<usize> = (0..ins.len()).filter(|&i| ins[i].0 == "FROM").collect();
    assert_eq!(froms.len(), 2, "a builder stage and a runtime stage");
    assert_eq!(ins[froms[0]].1, "rust:1-bookworm AS build");
    assert_eq!(ins[froms[1]].1, "debian:bookworm-slim");
    let (build, runtime) = ins.split_at(froms[1]);

    // The build step is exactly the command scripts/demo.sh (the README's set-up) runs.
    let build_cmd = "cargo build --release --locked";
    let cargo: Vec<&str> = build
        .iter()
        .filter(|(i, a)| i == "RUN" && a.contains("cargo"))
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(cargo, [build_cmd]);
    assert!(
        read("scripts/demo.sh")
            .lines()
            .any(|l| l.trim() == build_cmd),
        "scripts/demo.sh must build with `{build_cmd}` too"
    );
    let build_deps = build
        .iter()
        .find(|(i, a)| i == "RUN" && a.contains("apt-get"))
        .unwrap();
    for pkg in ["cmake", "libssl-dev", "pkg-config"] {
        assert!(
            build_deps.1.split_whitespace().any(|w| w == pkg),
            "builder installs {pkg}"
        );
    }

    let get = |name: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let run = get("RUN").join(" ");
    let words: Vec<&str> = run.split_whitespace().collect();
    let install = words.iter().skip_while(|w| **w != "install").skip(1);
    let packages: Vec<&str> = install
        .take_while(|w| **w != "&&")
        .filter(|w| !w.starts_with('-'))
        .copied()
        .collect();
    assert_eq!(packages, ["libssl3", "ca-certificates"], "runtime packages");
    // The image's user is the task definition's uid.
    let td = json("deploy/ecs/task-definition.json");
    let uid = td["containerDefinitions"][0]["user"].as_str().unwrap();
    assert!(
        run.contains(&format!("--uid {uid} ")),
        "useradd --uid {uid}"
    );

    assert!(get("COPY").contains(&"--from=build /src/target/release/cohort /usr/local/bin/cohort"));
    let user = get("USER");
    assert_eq!(user.len(), 1);
    assert!(non_root(user[0]), "USER {}", user[0]);
    assert_eq!(get("STOPSIGNAL"), ["SIGTERM"]);
    let mut exposed: Vec<&str> = get("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .collect();
    exposed.sort_unstable();
    let mut ports = [d.listen_port.to_string(), d.admin_port.to_string()];
    ports.sort();
    assert_eq!(
        exposed,
        ports.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let hc = get("HEALTHCHECK");
    assert_eq!(hc.len(), 1);
    let (options, cmd) = hc[0].split_once("CMD ").expect("HEALTHCHECK ... CMD [...]");
    for opt in ["--interval=", "--timeout=", "--retries="] {
        assert!(options.contains(opt), "HEALTHCHECK {opt}");
    }
    let admin = format!("127.0.0.1:{}", d.admin_port);
    assert_eq!(
        json_words(cmd),
        ["cohort", "health", "--admin", admin.as_str()]
    );
    assert_eq!(
        get("ENTRYPOINT")
            .iter()
            .map(|a| json_words(a))
            .collect::<Vec<_>>(),
        [["cohort"]]
    );
    assert_eq!(
        get("CMD").iter().map(|a| json_words(a)).collect::<Vec<_>>(),
        [["run", "-c", "/etc/cohort/cohort.toml"]]
    );
}

/// Every `docker run` that starts the proxy (`run` is the image's CMD, so a line that
/// names no other subcommand runs it) gives the drain its time: Docker's default is
/// SIGKILL 10 s after SIGTERM.
#[test]
fn docker_run_examples_allow_the_drain() {
    let d = deploy();
    let mut seen = 0;
    for rel in [
        "deploy/Dockerfile",
        "docs/deploy-ecs.md",
        "docs/deploy-ec2.md",
        "README.md",
    ] {
        let text = read(rel).replace("\\\n", " ");
        for line in text.lines().filter(|l| l.contains("docker run ")) {
            let after = line.split("cohort:0.1.0").nth(1).unwrap_or("").trim();
            if !(after.is_empty() || after.starts_with("run")) {
                continue;
            }
            seen += 1;
            let words: Vec<&str> = line.split_whitespace().collect();
            let stop = words
                .iter()
                .position(|w| *w == "--stop-timeout")
                .and_then(|i| words.get(i + 1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{rel}: no --stop-timeout in {line:?}"));
            assert!(
                stop >= d.drain_plus_shutdown,
                "{rel}: --stop-timeout {stop} < drain_delay_secs + shutdown_timeout_secs {}",
                d.drain_plus_shutdown
            );
        }
    }
    assert!(
        seen >= 2,
        "the Dockerfile and the ECS guide show how to run the image"
    );
}

#[test]
fn dockerignore_keeps_what_the_build_needs() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_string())
        .collect();
    for excluded in ["target", ".git"] {
        assert!(
            patterns.iter().any(|p| p == excluded),
            ".dockerignore must exclude {excluded}"
        );
    }
    // Cargo.toml declares the benches; `cohort demo` embeds conf/demo.toml.
    for needed in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
        "benches",
        "conf",
    ] {
        assert!(
            !patterns
                .iter()
                .any(|p| p == needed || p == "*" || needed.starts_with(&format!("{p}/"))),
            ".dockerignore must not exclude {needed}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// the config, and every command line against the real binary

#[test]
fn example_config_passes_cohort_check() {
    let d = deploy();
    let (code, out, err) = cohort(&["check", "-c", "deploy/cohort.toml", "--no-resolve"]);
    assert_eq!(code, 0, "cohort check deploy/cohort.toml:\n{err}");
    // scripts/upgrade.sh reads these two lines of the summary.
    assert!(
        out.lines().any(|l| l == format!("pid_file {}", d.pid_file)),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == format!("upgrade_sock {}", d.upgrade_sock)),
        "{out}"
    );
}

#[test]
fn health_checks_use_a_subcommand_the_binary_has() {
    let mut cli = Cli::default();
    assert!(
        cli.subcommands().contains("health"),
        "the Dockerfile HEALTHCHECK and the ECS healthCheck run `cohort health`; \
         `cohort --help` lists {:?}",
        cli.subcommands()
    );
    assert!(help_lists(cli.help("health"), "--admin"));
}

#[test]
fn every_cohort_command_line_in_the_deploy_files_is_accepted_by_the_binary() {
    let mut cli = Cli::default();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();

    for path in unit_files() {
        let origin = path.file_name().unwrap().to_string_lossy().into_owned();
        for (key, value) in service_section(&std::fs::read_to_string(&path).unwrap()) {
            if key.starts_with("Exec") {
                let words: Vec<String> = value.split_whitespace().map(str::to_string).collect();
                used.extend(check_command(&words, &origin, &mut cli, &mut problems));
            }
        }
    }

    let td = json("deploy/ecs/task-definition.json");
    let c = &td["containerDefinitions"][0];
    let strings = |v: &Json| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let health = strings(&c["healthCheck"]["command"]);
    assert_eq!(health[0], "CMD");
    used.extend(check_command(
        &health[1..],
        "task-definition.json healthCheck",
        &mut cli,
        &mut problems,
    ));
    let mut run = vec!["cohort".to_string()];
    run.extend(strings(&c["command"]));
    used.extend(check_command(
        &run,
        "task-definition.json command",
        &mut cli,
        &mut problems,
    ));

    for (ins, args) in dockerfile() {
        let words = match ins.as_str() {
            "HEALTHCHECK" => json_words(args.split_once("CMD ").unwrap().1),
            "CMD" => {
                let mut w = vec!["cohort".to_string()];
                w.extend(json_words(&args));
                w
            }
            _ => continue,
        };
        used.extend(check_command(
            &words,
            &format!("Dockerfile {ins}"),
            &mut cli,
            &mut problems,
        ));
    }

    let mut in_docs = BTreeSet::new();
    for doc in ["docs/deploy-ecs.md", "docs/deploy-ec2.md"] {
        for snippet in markdown_shell(&read(doc)) {
            for words in shell_commands(&snippet) {
                in_docs.extend(check_command(&words, doc, &mut cli, &mut problems));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The parser found what the guides are about (so an empty pass means something).
    for sub in ["check", "simulate", "health", "run"] {
        assert!(
            in_docs.contains(sub),
            "the guides show `cohort {sub}`: found {in_docs:?}"
        );
    }
    assert!(used.contains("health") && used.contains("run") && used.contains("check"));
}

// ---------------------------------------------------------------------------------------
// `cohort run --daemon`, which cohort-upgradable.service (Type=forking) starts

/// Exists and is not a zombie (a daemon's parent may never reap it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn readyz(admin: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = String::new();
    s.read_to_string(&mut head).ok()?;
    head.lines().next().map(str::to_string)
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn daemon_mode_serves_writes_its_pid_file_and_drains_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_port(), free_port());
    let pid_file = dir.path().join("cohort.pid");
    let config = dir.path().join("cohort.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{listen}\"]\nadmin = \"127.0.0.1:{admin}\"\n\
             drain_delay_secs = 0\nshutdown_timeout_secs = 15\n\
             pid_file = \"{}\"\nupgrade_sock = \"{}\"\n\n\
             [[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n\
             [[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:{}\"]\n",
            pid_file.display(),
            dir.path().join("cohort.sock").display(),
            free_port()
        ),
    )
    .unwrap();
    // The panic is a race: start several times.
    for attempt in 0..5 {
        let _ = std::fs::remove_file(&pid_file);
        // The daemon keeps the stderr it was started with: collect it to spot panics.
        let log = dir.path().join(format!("daemon-{attempt}.log"));
        let status = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(["run", "--daemon", "-c"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "attempt {attempt}: the parent exits 0 once forked"
        );
        let pid: u32 = wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        })
        .expect("the daemon writes its pid file");
        let ready = wait_for(Duration::from_secs(5), || {
            readyz(admin)
                .filter(|l| l.starts_with("HTTP/1.1 200"))
                .or_else(|| (!alive(pid)).then(|| "died".to_string()))
        });
        assert_eq!(
            ready.as_deref().map(|l| l.starts_with("HTTP/1.1 200")),
            Some(true),
            "attempt {attempt}: daemon {pid} serves /readyz (alive: {})",
            alive(pid)
        );
        // Idle and drain_delay_secs = 0: SIGTERM must exit at once, not after the 15 s
        // shutdown timeout.
        let sent = Instant::now();
        assert!(Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        let exited = wait_for(Duration::from_secs(20), || (!alive(pid)).then_some(()));
        assert!(
            exited.is_some(),
            "attempt {attempt}: daemon {pid} did not exit"
        );
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "attempt {attempt}: an idle daemon took {:?} to exit after SIGTERM",
            sent.elapsed()
        );
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(
            !log.contains("panicked"),
            "attempt {attempt}: the daemon panicked:\n{log}"
        );
    }
}
