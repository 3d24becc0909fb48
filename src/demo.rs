//! `cohort demo`: two in-process HTTP backends (stable, canary) and the proxy on
//! localhost with an embedded config, plus curl lines to paste, and a progressive
//! rollout of the canary driven by simulated users ([`rollout`]): it walks to promoted,
//! or with `--bad-canary` (the canary answers errors) rolls back. The [`EchoBackend`] is
//! also what the integration tests use as a real upstream: it answers every request with
//! JSON naming itself and echoing the request line and headers it received.

mod rollout;

use crate::config::{Config, ConfigError};
use crate::options::RunOptions;
use crate::routing::RoutingTable;
use crate::server;
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// The embedded demo config (`conf/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../conf/demo.toml");

/// Largest request head the echo backend reads.
const MAX_HEAD: usize = 64 * 1024;

/// A tiny HTTP/1.1 server on a background thread (one thread per connection, keep-alive).
/// `GET /healthz` answers 200, or 503 after [`EchoBackend::set_healthy`]`(false)`.
pub struct EchoBackend {
    pub name: String,
    pub addr: SocketAddr,
    flags: Arc<Flags>,
}

#[derive(Default)]
struct Flags {
    unhealthy: AtomicBool,
    stopped: AtomicBool,
    /// Of every 1000 requests (not `/healthz`), this many answer 500, evenly spread.
    error_permille: std::sync::atomic::AtomicU64,
    /// Added to every answer (not `/healthz`), in milliseconds.
    delay_ms: std::sync::atomic::AtomicU64,
    /// Requests answered (not `/healthz`), for spreading the errors.
    served: std::sync::atomic::AtomicU64,
}

impl EchoBackend {
    /// Binds `bind` (use port 0 for an ephemeral port) and serves until [`Self::stop`].
    pub fn spawn(name: &str, bind: &str) -> std::io::Result<EchoBackend> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let owned = name.to_string();
        let flags = Arc::new(Flags::default());
        let f = flags.clone();
        thread::Builder::new()
            .name(format!("echo-{name}"))
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    if f.stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let (n, f) = (owned.clone(), f.clone());
                    let _ = thread::Builder::new().spawn(move || serve(stream, &n, addr, &f));
                }
            })?;
        Ok(EchoBackend {
            name: name.to_string(),
            addr,
            flags,
        })
    }

    /// Makes `GET /healthz` answer 503 (false) or 200 (true); other paths keep working.
    pub fn set_healthy(&self, healthy: bool) {
        self.flags.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// Makes this fraction (0–1) of requests other than `/healthz` answer 500, evenly
    /// spread (deterministic: 0.25 is every fourth request).
    pub fn set_error_rate(&self, rate: f64) {
        let permille = (rate.clamp(0.0, 1.0) * 1000.0).round() as u64;
        self.flags.error_permille.store(permille, Ordering::SeqCst);
    }

    /// Delays every answer but `/healthz` by `ms` milliseconds.
    pub fn set_delay_ms(&self, ms: u64) {
        self.flags.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Stops accepting and closes open connections at their next request. Returns once
    /// the port refuses connections (at most 2 s), so a caller never races the accept
    /// loop still holding the listener.
    pub fn stop(&self) {
        self.flags.stopped.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        // Each connect wakes the accept loop, which drops the listener once it sees the
        // flag; a refused connect shows it is gone.
        while TcpStream::connect(self.addr).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

fn serve(stream: TcpStream, name: &str, addr: SocketAddr, flags: &Flags) {
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = write_half;
    loop {
        let Some((line, headers)) = read_head(&mut reader) else {
            return;
        };
        if flags.stopped.load(Ordering::SeqCst) {
            return;
        }
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0);
        if std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink()).is_err() {
            return;
        }
        let close = headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("");
        let target = parts.next().unwrap_or("");
        // `?sleep_ms=N` delays the answer (tests use it for slow upstreams).
        if let Some(ms) = query_param(target, "sleep_ms").and_then(|v| v.parse::<u64>().ok()) {
            thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
        }
        let mut hmap = Map::new();
        for (k, v) in &headers {
            let joined = match hmap.get(k) {
                Some(Value::String(prev)) => format!("{prev}, {v}"),
                _ => v.clone(),
            };
            hmap.insert(k.clone(), Value::String(joined));
        }
        let status = if target == "/healthz" {
            if flags.unhealthy.load(Ordering::SeqCst) {
                "503 Service Unavailable"
            } else {
                "200 OK"
            }
        } else {
            let delay = flags.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                thread::sleep(std::time::Duration::from_millis(delay.min(60_000)));
            }
            let p = flags.error_permille.load(Ordering::SeqCst);
            let n = flags.served.fetch_add(1, Ordering::SeqCst);
            if (n + 1) * p / 1000 > n * p / 1000 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            }
        };
        let body = json!({
            "backend": name,
            "addr": addr.to_string(),
            "method": method,
            "target": target,
            "headers": hmap,
        })
        .to_string()
            + "\n";
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-backend: {name}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if writer.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, q) = target.split_once('?')?;
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Reads a request line and headers (names lower-cased); `None` on EOF or garbage.
fn read_head(r: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    let mut total = 0;
    loop {
        line.clear();
        total += r.read_line(&mut line).ok()?;
        if line.is_empty() {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let request_line = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).ok()?;
        total += n;
        if n == 0 || total > MAX_HEAD {
            return None;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            return Some((request_line, headers));
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
}

/// What `cohort demo` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoOptions {
    /// The canary answers [`BAD_CANARY_ERRORS`] of its requests with 500: it rolls back.
    pub bad_canary: bool,
    /// The rollout's `step_secs` (`check_secs` is a fifth of it, at least 1 s).
    pub step_secs: u64,
}

impl Default for DemoOptions {
    fn default() -> DemoOptions {
        DemoOptions {
            bad_canary: false,
            step_secs: 10,
        }
    }
}

/// The bad canary's error rate.
pub const BAD_CANARY_ERRORS: f64 = 0.2;

/// Renders the demo config for the chosen addresses, rollout pace and state file.
pub fn demo_config(
    listen: &str,
    admin: &str,
    stable: SocketAddr,
    canary: SocketAddr,
    opts: &DemoOptions,
    state_file: &str,
) -> String {
    let step = opts.step_secs.max(1);
    let text = DEMO_CONFIG
        .replace("@LISTEN@", listen)
        .replace("@ADMIN@", admin)
        .replace("@STABLE@", &stable.to_string())
        .replace("@CANARY@", &canary.to_string());
    let state = toml::Value::String(state_file.to_string());
    let marked = [
        ("#@STATE@", format!("rollout_state = {state}")),
        ("#@STEP_SECS@", format!("step_secs = {step}")),
        (
            "#@CHECK_SECS@",
            format!("check_secs = {}", (step / 5).max(1)),
        ),
        (
            "#@MAX_STEP_SECS@",
            format!("max_step_secs = {}", step.saturating_mul(30)),
        ),
    ];
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let set = marked.iter().find(|(m, _)| line.contains(m));
        out += set.map_or(line, |(_, l)| l.as_str());
        out.push('\n');
    }
    out
}

/// Runs the demo until interrupted.
pub fn run(listen: &str, admin: &str, opts: &DemoOptions) -> Result<(), ConfigError> {
    let io_err = |e: std::io::Error| ConfigError::Io {
        path: "demo backend".to_string(),
        source: e,
    };
    let stable = EchoBackend::spawn("stable", "127.0.0.1:0").map_err(io_err)?;
    let canary = EchoBackend::spawn("canary", "127.0.0.1:0").map_err(io_err)?;
    if opts.bad_canary {
        canary.set_error_rate(BAD_CANARY_ERRORS);
    }
    // A fresh rollout every run: the state file is this demo's own, emptied at start.
    let port = listen.rsplit(':').next().unwrap_or("0");
    let state_file = std::env::temp_dir().join(format!("cohort-demo-{port}.rollout.json"));
    let _ = std::fs::remove_file(&state_file);
    let text = demo_config(
        listen,
        admin,
        stable.addr,
        canary.addr,
        opts,
        &state_file.display().to_string(),
    );
    let config = Config::parse(&text)?;
    let table = RoutingTable::build(config)?;
    println!(
        "{}",
        instructions(listen, admin, stable.addr, canary.addr, opts)
    );
    let stop = Arc::new(AtomicBool::new(false));
    rollout::traffic(listen.to_string(), stop.clone());
    rollout::watch(admin.to_string(), listen.to_string(), stop);
    server::run_table(table, &RunOptions::default(), None)
}

fn instructions(
    listen: &str,
    admin: &str,
    stable: SocketAddr,
    canary: SocketAddr,
    opts: &DemoOptions,
) -> String {
    let p = format!("http://{listen}");
    let canary_is = if opts.bad_canary {
        format!(
            "a bad canary (it answers {}% of requests with 500): watch it roll back",
            BAD_CANARY_ERRORS * 100.0
        )
    } else {
        "a healthy canary: watch it walk to promoted (try --bad-canary to see a rollback)"
            .to_string()
    };
    let step = opts.step_secs.max(1);
    format!(
        "cohort demo: proxy on {p}, admin on http://{admin}\n\
         backends: stable on {stable}, canary on {canary} (each answers with JSON naming itself)\n\
         service \"api\": 90% stable / 10% canary, keyed on x-user-id, then cookie session, then ?uid=\n\
         rollout \"demo\": {canary_is}.\n\
         \x20 Steps 10% -> 25% -> 50% -> promoted, at least {step} s each; simulated users send\n\
         \x20 a few hundred requests a second; every check and transition is printed below.\n\
         \x20 Users only ever move into the canary, so a canary user stays one.\n\
         \n\
         Try (Ctrl-C to stop):\n\
         \x20 # the same user always lands on the same variant:\n\
         \x20 for i in 1 2 3; do curl -s -H 'x-user-id: alice' {p}/ | grep -o '\"backend\":\"[a-z]*\"'; done\n\
         \x20 # 20 users, about the current step's share on canary:\n\
         \x20 for i in $(seq 1 20); do curl -s -o /dev/null -D - -H \"x-user-id: user-$i\" {p}/ | grep -i '^x-cohort-variant'; done | sort | uniq -c\n\
         \x20 # user-27 is a canary user (SPEC golden vector):\n\
         \x20 curl -si -H 'x-user-id: user-27' {p}/ | grep -i x-cohort-variant\n\
         \x20 # opt in to the beta with a cookie (rule beta-opt-in):\n\
         \x20 curl -si -H 'x-user-id: alice' -b 'beta=1' {p}/ | grep -i x-cohort-variant\n\
         \x20 # a trusted partner key (rule partners):\n\
         \x20 curl -si -H 'x-user-id: partner-acme' {p}/ | grep -i x-cohort-variant\n\
         \x20 # an anonymous visitor gets a sticky cookie:\n\
         \x20 curl -si {p}/ | grep -i set-cookie\n\
         \x20 # force a variant from loopback (QA):\n\
         \x20 curl -si -H 'x-cohort-force: canary' {p}/ | grep -i x-cohort-variant\n\
         \x20 # what the backend saw (x-cohort-variant, x-cohort-reason, x-forwarded-for):\n\
         \x20 curl -s -H 'x-user-id: bob' {p}/\n\
         \x20 # status and health:\n\
         \x20 curl -s http://{admin}/status; curl -s http://{admin}/healthz\n\
         \x20 # the rollout (or: cohort rollout status --admin {admin}):\n\
         \x20 curl -s http://{admin}/rollout\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_demo_config_carries_the_pace_and_its_own_state_file() {
        let opts = DemoOptions {
            bad_canary: false,
            step_secs: 4,
        };
        let text = demo_config(
            "127.0.0.1:1",
            "127.0.0.1:2",
            addr(3),
            addr(4),
            &opts,
            "/x/y \"z\".json",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.server.rollout_state(), "/x/y \"z\".json");
        let r = c.services[0].rollout.as_ref().unwrap();
        assert_eq!((r.step_secs, r.check_secs, r.max_step_secs), (4, 1, 120));
        assert_eq!(r.steps, [10.0, 25.0, 50.0]);
        // The first step is the configured split.
        let w: Vec<f64> = c.services[0].variants.iter().map(|v| v.weight).collect();
        assert_eq!(w, [90.0, 10.0]);
        let slow = DemoOptions {
            step_secs: 3600,
            ..opts
        };
        let text = demo_config("127.0.0.1:1", "127.0.0.1:2", addr(3), addr(4), &slow, "/s");
        let r = Config::parse(&text).unwrap().services[0]
            .rollout
            .clone()
            .unwrap();
        assert_eq!(
            (r.step_secs, r.check_secs, r.max_step_secs),
            (3600, 720, 108_000)
        );
    }

    #[test]
    fn the_embedded_file_parses_with_only_its_addresses_filled_in() {
        let text = DEMO_CONFIG
            .replace("@LISTEN@", "127.0.0.1:1")
            .replace("@ADMIN@", "127.0.0.1:2")
            .replace("@STABLE@", "127.0.0.1:3")
            .replace("@CANARY@", "127.0.0.1:4");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.services[0].rollout.as_ref().unwrap().step_secs, 10);
    }
}
