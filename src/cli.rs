//! The command line (SPEC "Command line"): `run`, `check`, `explain`, `simulate`, `demo`.
//! Exit codes: 0 ok, 1 invalid config or input, 2 usage error (clap).

use crate::config::{
    Config, ConfigError, KeySource, MatchOp, Matcher, RuleAction, RuleConfig, ServiceConfig,
};
use crate::explain::{self, ExplainInput};
use crate::options::RunOptions;
use crate::routing::{Router, RoutingTable};
use crate::server;
use crate::simulate;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// cohort: a sticky canary-release load balancer. Pins every user to one variant of a
/// service by weighted rendezvous hashing of a key taken from the request.
#[derive(Debug, Parser)]
#[command(name = "cohort", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: proxy on server.listen, admin API on server.admin.
    Run {
        /// Config file (TOML).
        #[arg(
            short,
            long,
            value_name = "FILE",
            required_unless_present = "config_url",
            conflicts_with = "config_url"
        )]
        config: Option<PathBuf>,
        /// Fleet config source: an http(s) URL polled with If-None-Match.
        #[arg(long, value_name = "URL")]
        config_url: Option<String>,
        /// Poll interval of --config-url, and of a fleet follower's sync with the decider
        /// ([server.fleet]), in seconds.
        #[arg(long, value_name = "N", default_value_t = 10)]
        config_poll_secs: u64,
        /// Where --config-url keeps its last good copy (default /tmp/cohort-config-<hash>.toml).
        #[arg(long, value_name = "FILE")]
        config_cache: Option<PathBuf>,
        /// Listen address; replaces server.listen (repeatable).
        #[arg(long, value_name = "ADDR")]
        listen: Vec<SocketAddr>,
        /// Admin API address; replaces server.admin.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// Take the listening sockets over from a running instance (graceful upgrade).
        #[arg(long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(long)]
        daemon: bool,
    },
    /// Validate a config; print a summary, or every error with its field path.
    Check {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Do not resolve backend DNS names.
        #[arg(long, conflicts_with = "strict_dns")]
        no_resolve: bool,
        /// Fail (exit 1) when a backend name does not resolve; without it that is a
        /// warning, as `run` starts with that backend down.
        #[arg(long)]
        strict_dns: bool,
    },
    /// Which variant a request would get, and why.
    Explain {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Service name (default: matched by --host and --path like the proxy does).
        #[arg(long, value_name = "S")]
        service: Option<String>,
        /// Cohort key, placed where the service's key chain looks first.
        #[arg(long, value_name = "K")]
        key: Option<String>,
        /// Request header 'Name: value' (repeatable).
        #[arg(long, value_name = "'N: v'")]
        header: Vec<String>,
        /// Request cookie 'name=value' (repeatable).
        #[arg(long, value_name = "'n=v'")]
        cookie: Vec<String>,
        /// Client (TCP peer) address.
        #[arg(long, value_name = "A")]
        ip: Option<IpAddr>,
        /// Host header.
        #[arg(long, value_name = "H")]
        host: Option<String>,
        /// Request path (may include a query string).
        #[arg(long, value_name = "P")]
        path: Option<String>,
        /// Print JSON (same shape as GET /explain).
        #[arg(long)]
        json: bool,
    },
    /// Share per variant over N synthetic users; with --against, who would move where.
    Simulate {
        /// Config file (TOML): the config in force (the "from" side with --against).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// A second config: print the transition matrix if it replaced the first.
        #[arg(long, value_name = "FILE2")]
        against: Option<PathBuf>,
        /// Number of synthetic users.
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        users: u64,
        /// Replay recorded requests instead of synthetic users: a JSON-lines file as
        /// server.sample_log writes it. Needs --against.
        #[arg(
            long,
            value_name = "SAMPLES",
            requires = "against",
            conflicts_with = "users"
        )]
        samples: Option<PathBuf>,
    },
    /// Probe a running instance: exit 0 if GET /readyz on its admin API answers 200
    /// (for container HEALTHCHECKs in images without curl).
    Health {
        /// Admin API address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        /// Give up after this long.
        #[arg(long, value_name = "N", default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// A running instance's progressive rollouts: status, an operator action, or an
    /// HTML report of the checks.
    Rollout {
        #[arg(value_enum)]
        command: crate::cli_rollout::RolloutCommand,
        /// Admin API address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        /// The service (needed for an action when several services have a rollout).
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// `report` only: write the page to FILE instead of stdout.
        #[arg(long, value_name = "FILE.html")]
        out: Option<PathBuf>,
    },
    /// Start two demo backends and the proxy on localhost; print curl lines to try, and
    /// watch a rollout of the canary driven by simulated users.
    Demo {
        /// Proxy address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        /// The canary answers 20% of its requests with 500: watch the rollout roll back.
        #[arg(long)]
        bad_canary: bool,
        /// The rollout's minimum seconds per step (checks every fifth of it).
        #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        step_secs: u64,
    },
}

/// Runs a parsed command; returns the process exit code.
pub fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Run {
            config,
            config_url,
            config_poll_secs,
            config_cache,
            listen,
            admin,
            upgrade,
            daemon,
        } => report(server::run(RunOptions {
            config: config.unwrap_or_default(),
            config_url,
            config_poll: std::time::Duration::from_secs(config_poll_secs.max(1)),
            config_cache,
            listen,
            admin,
            upgrade,
            daemon,
        })),
        Command::Check {
            config,
            no_resolve,
            strict_dns,
        } => check(&config, no_resolve, strict_dns),
        Command::Explain {
            config,
            service,
            key,
            header,
            cookie,
            ip,
            host,
            path,
            json,
        } => {
            let input = ExplainInput {
                service,
                key,
                headers: header,
                cookies: cookie,
                ip,
                host,
                path,
            };
            explain_cmd(&config, &input, json)
        }
        Command::Simulate {
            config,
            against,
            users,
            samples,
        } => match (against, samples) {
            (Some(b), Some(s)) => replay_cmd(&config, &b, &s),
            (against, _) => simulate_cmd(&config, against.as_deref(), users),
        },
        Command::Health { admin, timeout_ms } => health(admin, timeout_ms),
        Command::Rollout {
            command,
            admin,
            service,
            out,
        } => crate::cli_rollout::run(command, admin, service.as_deref(), out.as_deref()),
        Command::Demo {
            listen,
            admin,
            bad_canary,
            step_secs,
        } => report(crate::demo::run(
            &listen.to_string(),
            &admin.to_string(),
            &crate::demo::DemoOptions {
                bad_canary,
                step_secs,
            },
        )),
    }
}

/// Writes to stdout, ignoring a closed pipe (`cohort check ... | head`).
fn out(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(s.as_bytes());
}

fn report(r: Result<(), ConfigError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            for line in e.lines() {
                eprintln!("error: {line}");
            }
            1
        }
    }
}

/// Prints every error of an invalid config under its file name; returns exit code 1.
fn invalid(path: &std::path::Path, e: &ConfigError) -> i32 {
    eprintln!("{}: invalid config", path.display());
    for line in e.lines() {
        eprintln!("  {line}");
    }
    1
}

fn load(path: &std::path::Path) -> Result<Config, i32> {
    Config::load(path).map_err(|e| invalid(path, &e))
}

fn check(path: &std::path::Path, no_resolve: bool, strict_dns: bool) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let summary = summary(&config);
    for w in config.warnings() {
        eprintln!("warning: {w}");
    }
    if !no_resolve {
        let table = match RoutingTable::build(config) {
            Ok(t) => t,
            Err(e) => return invalid(path, &e),
        };
        let unresolved: Vec<crate::config::FieldError> = table
            .unresolved()
            .map(|l| crate::config::FieldError {
                path: l.path.clone(),
                message: l.error().unwrap_or_default().to_string(),
            })
            .collect();
        if strict_dns && !unresolved.is_empty() {
            return invalid(path, &ConfigError::Invalid(unresolved));
        }
        for e in &unresolved {
            eprintln!(
                "warning: {e} (cohort run starts with this backend down and retries the name; --strict-dns makes this an error)"
            );
        }
    }
    out(&summary);
    out(&format!("{}: ok\n", path.display()));
    0
}

/// The one-screen summary `cohort check` prints.
pub fn summary(c: &Config) -> String {
    let s = &c.server;
    let mut out = format!(
        "version {}\nlisten  {}\nadmin   {}\nthreads {}\npid_file {}\nupgrade_sock {}\n",
        c.version,
        s.listen
            .iter()
            .map(|a| match s.proxy_protocol.contains(a) {
                true => format!("{a} (PROXY protocol)"),
                false => a.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        s.admin.map_or("off".to_string(), |a| a.to_string()),
        s.threads,
        s.pid_file(),
        s.upgrade_sock()
    );
    for svc in &c.services {
        out += &service_summary(svc);
    }
    out
}

fn service_summary(s: &ServiceConfig) -> String {
    let hosts = if s.hosts.is_empty() {
        "any host".to_string()
    } else {
        s.hosts
            .iter()
            .map(|h| match h {
                crate::config::HostPattern::Exact(e) => e.clone(),
                crate::config::HostPattern::Wildcard(w) => format!("*{w}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut chain: Vec<String> = s
        .keys
        .iter()
        .filter(|k| **k != KeySource::Ip)
        .map(|k| k.to_string())
        .collect();
    let has_ip = s.keys.contains(&KeySource::Ip);
    match (&s.assign_cookie, has_ip) {
        (Some(c), true) => chain.push(format!("cookie:{c} (assigned; ip is never reached)")),
        (Some(c), false) => chain.push(format!("cookie:{c} (assigned)")),
        (None, true) => chain.push("ip".to_string()),
        (None, false) => {}
    }
    let mut out = format!(
        "\nservice {} ({hosts}, prefix {})\n  key     {}\n  salt    {}\n",
        s.name,
        s.path_prefix,
        if chain.is_empty() {
            "(none: every request goes to the first variant)".to_string()
        } else {
            chain.join(" > ")
        },
        s.salt
    );
    let total: f64 = s.variants.iter().map(|v| v.weight).sum();
    for (i, v) in s.variants.iter().enumerate() {
        out += &format!(
            "  variant {:<12} weight {:<6} share {:>7.3}%  {} backend(s), {}{}\n",
            v.name,
            v.weight,
            crate::admin::share_percent(v.weight, total),
            v.backends.len(),
            v.balance.as_str(),
            if s.fallback == Some(i) {
                "  (fallback)"
            } else {
                ""
            }
        );
    }
    for r in &s.rules {
        let action = match &r.action {
            RuleAction::Variant(v) => format!("-> {}", s.variants[*v].name),
            RuleAction::Weights(w) => {
                let parts: Vec<String> = s
                    .variants
                    .iter()
                    .zip(w)
                    .filter(|(_, w)| **w > 0.0)
                    .map(|(v, w)| format!("{}={w}", v.name))
                    .collect();
                format!("-> split {}", parts.join(" "))
            }
        };
        out += &format!("  rule    {:<12} {} {action}\n", r.name, conditions(r));
    }
    if let Some(r) = &s.rollout {
        out += &rollout_summary(r);
    }
    out
}

/// A note per service with a `[service.rollout]` in `configs`: simulate splits by the
/// configured weights, while a running, promoted or rolled-back rollout serves others.
fn rollout_notes(configs: &[&Config]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut notes = String::new();
    for c in configs {
        for s in &c.services {
            if let Some(r) = s.rollout.as_ref().filter(|_| seen.insert(s.name.clone())) {
                notes += &format!(
                    "note: service {} has a [service.rollout] (id {}): simulate splits {} and {} by their configured weights, \
                     while a live rollout serves the share of its step (100% canary once promoted, 0% once rolled back; \
                     see `cohort rollout status`). To simulate what is served, use a copy of the config with those weights and no rollout.\n",
                    s.name, r.id, r.canary.name, r.baseline.name
                );
            }
        }
    }
    notes
}

/// The `rollout` line of a service in the `check` summary.
fn rollout_summary(r: &crate::config::RolloutConfig) -> String {
    let steps: Vec<String> = r.steps.iter().map(|p| format!("{p}%")).collect();
    let g = &r.gates;
    format!(
        "  rollout {:<12} {} against {}, steps {} then promoted; step {} s, check {} s, max {} s then {}; \
         {} failed check(s) roll back; errors +{} at {}, p{} x{} +{} ms, min {} requests\n",
        r.id,
        r.canary.name,
        r.baseline.name,
        steps.join(" "),
        r.step_secs,
        r.check_secs,
        r.max_step_secs,
        r.on_inconclusive.as_str(),
        r.failure_limit,
        g.max_error_increase,
        g.confidence,
        g.latency_quantile * 100.0,
        g.max_latency_ratio,
        g.latency_slack_ms,
        g.min_requests,
    )
}

/// `GET /readyz` on the admin API: 0 on 200, 1 otherwise.
fn health(admin: SocketAddr, timeout_ms: u64) -> i32 {
    let timeout = std::time::Duration::from_millis(timeout_ms.max(1));
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    match agent.get(&format!("http://{admin}/readyz")).call() {
        Ok(r) if r.status() == 200 => {
            out("ready\n");
            0
        }
        Ok(r) => {
            eprintln!("not ready: HTTP/1.1 {} {}", r.status(), r.status_text());
            1
        }
        Err(ureq::Error::Status(code, r)) => {
            let status = r.status_text().to_string();
            let why = r.into_string().unwrap_or_default();
            eprintln!("not ready: HTTP/1.1 {code} {status}: {}", why.trim());
            1
        }
        Err(e) => {
            eprintln!("cannot reach {admin}: {e}");
            1
        }
    }
}

pub(crate) fn conditions(r: &RuleConfig) -> String {
    fn op<N: std::fmt::Display>(kind: &str, m: &Matcher<N>) -> String {
        let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let o = match &m.op {
            MatchOp::Equals(v) => format!("= {:?}", show(v)),
            MatchOp::In(list) => format!(
                "in [{}]",
                list.iter().map(|v| show(v)).collect::<Vec<_>>().join(", ")
            ),
            MatchOp::Present(true) => "present".to_string(),
            MatchOp::Present(false) => "absent".to_string(),
            MatchOp::Prefix(p) => format!("starts with {:?}", show(p)),
        };
        format!("{kind} {} {o}", m.name)
    }
    let mut parts = Vec::new();
    if !r.client_cidr.is_empty() {
        let nets: Vec<String> = r.client_cidr.iter().map(|n| n.to_string()).collect();
        parts.push(format!("client in {}", nets.join(", ")));
    }
    if let Some(m) = &r.header {
        parts.push(op("header", m));
    }
    if let Some(m) = &r.cookie {
        parts.push(op("cookie", m));
    }
    if let Some(m) = &r.query {
        parts.push(op("query", m));
    }
    if let Some(k) = &r.key_in {
        parts.push(format!("key in list of {}", k.len()));
    }
    parts.join(" and ")
}

fn explain_cmd(path: &std::path::Path, input: &ExplainInput, json: bool) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let router = Router::new(&config);
    match explain::explain(&router, input) {
        Ok(e) if json => {
            out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&e.to_json()).unwrap_or_default()
            ));
            0
        }
        Ok(e) => {
            out(&e.to_text());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                explain::ExplainError::NoService { .. } => eprintln!(
                    "hint: give the request's --host H and --path P as the proxy would see them, or name the service with --service S; services in {}:\n{}",
                    path.display(),
                    explain::service_list(&router)
                ),
                explain::ExplainError::UnknownService(_) => eprintln!(
                    "hint: services in {}:\n{}",
                    path.display(),
                    explain::service_list(&router)
                ),
                explain::ExplainError::Input(_) => {}
            }
            1
        }
    }
}

fn simulate_cmd(path: &std::path::Path, against: Option<&std::path::Path>, users: u64) -> i32 {
    let a = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match against {
        None => {
            for s in &a.services {
                out(&format!(
                    "{}\n",
                    simulate::shares_text(&s.name, &simulate::shares(s, users), users)
                ));
            }
            out(&rollout_notes(&[&a]));
        }
        Some(p) => {
            let b = match load(p) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rules = simulate::rules::rule_changes(&a, &b, users);
            let (mut rule_matrices, mut cautions) = (false, false);
            for t in simulate::transitions(&a, &b, users) {
                let r = rules.iter().find(|r| r.service == t.service);
                out(&format!("{}\n", simulate::transition_text_with(&t, r)));
                if let Some(r) = r.filter(|r| !r.is_empty()) {
                    out(&simulate::rules::changes_text(r));
                    rule_matrices |= !r.rules.is_empty();
                    cautions |= !r.cautions.is_empty();
                }
            }
            if rule_matrices {
                out(&format!(
                    "note: who matches a rule depends on the client address, headers, cookies or query, which synthetic users do not carry; each rule's matrix takes all {users} synthetic users as matching it (or the keys its key_in lists) and reaching it.\n"
                ));
            }
            if rule_matrices || cautions {
                out(&format!(
                    "For the exact blast radius of your traffic, record samples (server.sample_log) and run: cohort simulate -c {} --against {} --samples FILE\n",
                    path.display(),
                    p.display()
                ));
            }
            out(&rollout_notes(&[&a, &b]));
            for s in &a.services {
                if !b.services.iter().any(|x| x.name == s.name) {
                    out(&format!(
                        "service {}: absent from {}\n",
                        s.name,
                        p.display()
                    ));
                }
            }
        }
    }
    0
}

fn replay_cmd(path: &std::path::Path, against: &std::path::Path, samples: &std::path::Path) -> i32 {
    let (a, b) = match (load(path), load(against)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let file = match std::fs::File::open(samples) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", samples.display());
            return 1;
        }
    };
    match simulate::replay::replay(&a, &b, std::io::BufReader::new(file)) {
        Ok(r) => {
            out(&r.text(&samples.display().to_string()));
            0
        }
        Err(e) => {
            eprintln!("error: {}: {e}", samples.display());
            1
        }
    }
}
