#![allow(clippy::unwrap_used)]
//! Backends named by DNS. They are re-resolved every `resolve_interval_secs`: a changed
//! answer rebuilds the pools (same config version), an unchanged one changes nothing. A
//! name that does not resolve is no start-up or reload error: only that backend is down
//! (the variant's fallback serves its users), `/status` and `cohort_backend_up` say so,
//! and the name is retried until it resolves. `COHORT_HOSTS_FILE` is the resolver
//! override the tests control.

mod common;
use cohort::config::Config;
use cohort::routing::table::Scope;
use cohort::routing::RoutingTable;
use cohort::upstream::{Resolver, HOSTS_FILE_ENV};
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// A name no resolver answers (RFC 6761 reserves `.invalid`) unless the test's hosts file
/// lists it.
const NAME: &str = "canary.cohort-test.invalid";

fn table(backend: &str) -> RoutingTable {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{backend}\"]\n"
    );
    RoutingTable::build(Config::parse(&text).unwrap()).unwrap()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Writes a hosts file whole (temp file + rename), as config management would.
fn write_hosts(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// stable (an address) and canary (`canary_backend`) at 50/50 by `x-user-id`, falling
/// back to stable.
fn config(stable: &EchoBackend, canary_backend: &str, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n{server_extra}\n\
         [[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\nfallback = \"stable\"\nexpose_header = \"x-cohort-variant\"\n\
         [[service.variant]]\nname = \"stable\"\nweight = 50\nbackends = [\"{}\"]\n\
         [[service.variant]]\nname = \"canary\"\nweight = 50\nbackends = [\"{canary_backend}\"]\n",
        stable.addr
    )
}

/// Users (keys) assigned to `variant` at 50/50.
fn users_of(variant: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|k| expected_variant("api", &[("stable", 50.0), ("canary", 50.0)], k) == variant)
        .take(n)
        .collect()
}

/// Whether every user is answered 200 by `backend`, as variant `variant` for `reason`.
fn served(px: &Cohort, users: &[String], backend: &str, variant: &str, reason: &str) -> bool {
    let mut cl = px.client();
    users.iter().all(|u| {
        let r = cl.get("/", &[("x-user-id", u)]);
        r.status == 200
            && r.backend() == backend
            && r.header("x-cohort-variant") == Some(variant)
            && r.upstream_header("x-cohort-reason").as_deref() == Some(reason)
    })
}

#[test]
fn a_changed_dns_answer_is_detected_and_an_unchanged_one_is_not() {
    let t = table("localhost:8080");
    assert!(t.uses_dns());
    let session = Resolver::default().session();
    assert!(
        t.re_resolve(Scope::All, |b| session.lookup(b)).is_none(),
        "same answer: no rebuild"
    );
    let moved = t
        .re_resolve(Scope::All, |_| Ok(vec!["127.0.0.9:8080".parse().unwrap()]))
        .expect("ECS task IPs changed: rebuild");
    assert_eq!(moved[0][0][0].addrs(), ["127.0.0.9:8080".parse().unwrap()]);
    assert!(
        t.re_resolve(Scope::Unresolved, |_| Ok(vec!["127.0.0.9:8080"
            .parse()
            .unwrap()]))
            .is_none(),
        "with resolve_interval_secs = 0 names that resolve are not looked up again"
    );
    assert!(
        t.re_resolve(Scope::All, |_| Err("SERVFAIL".into()))
            .is_none(),
        "a failed lookup of a name that resolved keeps its addresses"
    );
    assert!(
        !table("127.0.0.1:8080").uses_dns(),
        "IP literals are never re-resolved"
    );
}

#[test]
fn a_name_that_does_not_resolve_is_a_down_backend_and_is_retried() {
    let hosts = tempfile::tempdir().unwrap();
    let resolver = Resolver::with_hosts_file(hosts.path().join("hosts"));
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[service]]\nname = \"api\"\nfallback = \"stable\"\n\
         [[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:7001\"]\n\
         [[service.variant]]\nname = \"canary\"\nweight = 1\nbackends = [\"127.0.0.1:7002\", \"{NAME}:8000\"]\n"
    );
    let t = RoutingTable::build_with(Config::parse(&text).unwrap(), &resolver).unwrap();
    let un: Vec<_> = t.unresolved().collect();
    assert_eq!(un.len(), 1, "only the name is down");
    assert_eq!(un[0].path, "service[0].variant[1].backends[1]");
    assert_eq!(un[0].name, format!("{NAME}:8000"));
    let e = un[0].error().unwrap();
    assert!(
        e.starts_with(&format!("cannot resolve \"{NAME}:8000\"")),
        "{e}"
    );
    assert!(
        e.contains(HOSTS_FILE_ENV),
        "the missing hosts file is named: {e}"
    );
    assert_eq!(
        t.pools[0][1].addrs,
        ["127.0.0.1:7002".parse::<SocketAddr>().unwrap()],
        "the variant's other backend serves"
    );

    // Retried alone: a failing retry changes nothing, an answer rebuilds.
    assert!(t
        .re_resolve(Scope::Unresolved, |_| Err("NXDOMAIN".into()))
        .is_none());
    std::fs::write(hosts.path().join("hosts"), format!("10.1.2.3 {NAME}\n")).unwrap();
    let session = resolver.session();
    let lookups = t
        .re_resolve(Scope::Unresolved, |b| session.lookup(b))
        .expect("the name resolves now");
    let t2 = RoutingTable::build_resolved((*t.config).clone(), lookups).unwrap();
    assert_eq!(t2.unresolved().count(), 0);
    assert_eq!(
        t2.pools[0][1].addrs,
        [
            "127.0.0.1:7002".parse::<SocketAddr>().unwrap(),
            "10.1.2.3:8000".parse().unwrap()
        ]
    );

    // A reload whose lookup of a known name fails keeps the name's addresses.
    std::fs::write(hosts.path().join("hosts"), "").unwrap();
    let t3 = t2.build_replacing((*t.config).clone(), &resolver).unwrap();
    assert_eq!(t3.pools[0][1].addrs, t2.pools[0][1].addrs);
    assert_eq!(t3.unresolved().count(), 0);
    let fresh = RoutingTable::build_with((*t.config).clone(), &resolver).unwrap();
    assert_eq!(fresh.unresolved().count(), 1, "no known addresses: down");

    // A variant whose only backend does not resolve has no backend: its users fall back.
    let only = text.replace("\"127.0.0.1:7002\", ", "");
    let t = RoutingTable::build_with(Config::parse(&only).unwrap(), &Resolver::default()).unwrap();
    assert!(t.pools[0][1].select(7, None).is_none());
    assert_eq!(
        t.fallback_backend(0, 1, 7),
        Some((0, "127.0.0.1:7001".parse().unwrap()))
    );
}

#[test]
fn a_canary_name_that_does_not_resolve_leaves_stable_serving_and_canary_users_on_the_fallback() {
    let s = backend("stable");
    let px = Cohort::start(&config(&s, &format!("{NAME}:8000"), ""));
    assert!(
        served(&px, &users_of("stable", 5), "stable", "stable", "hash"),
        "stable users are served"
    );
    assert!(
        served(&px, &users_of("canary", 5), "stable", "stable", "fallback"),
        "canary users go to the fallback"
    );
    let st = px.status();
    let b = &st["services"][0]["variants"][1]["backends"][0];
    assert_eq!(b["addr"], format!("{NAME}:8000"));
    assert_eq!(b["healthy"], false);
    let e = b["error"].as_str().unwrap();
    assert!(
        e.starts_with(&format!("cannot resolve \"{NAME}:8000\"")),
        "{e}"
    );
    assert_eq!(
        st["services"][0]["variants"][0]["backends"][0]["healthy"],
        true
    );
    let m = px.metrics();
    assert!(
        m.contains(&format!(
            "cohort_backend_up{{backend=\"{NAME}:8000\",service=\"api\",variant=\"canary\"}} 0"
        )),
        "{m}"
    );
    let log = px.stderr();
    assert!(
        log.contains(&format!(
            "service[0].variant[1].backends[0]: cannot resolve \"{NAME}:8000\""
        )),
        "{log}"
    );
}

#[test]
fn a_name_that_starts_resolving_later_takes_its_users_back() {
    let (s, c) = (backend("stable"), backend("canary"));
    let hosts_dir = tempfile::tempdir().unwrap();
    let hosts = hosts_dir.path().join("hosts");
    write_hosts(&hosts, "# the canary's name is not registered yet\n");
    let name = format!("{NAME}:{}", c.addr.port());
    let px = Cohort::start_with_env(
        &config(&s, &name, "resolve_interval_secs = 1"),
        &[(HOSTS_FILE_ENV, hosts.to_str().unwrap())],
    );
    let canary_users = users_of("canary", 5);
    assert!(served(&px, &canary_users, "stable", "stable", "fallback"));

    // Retries that fail again log nothing new: one warning per state change.
    let warning = format!("service[0].variant[1].backends[0]: cannot resolve {name:?}");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(px.stderr().matches(&warning).count(), 1, "{}", px.stderr());

    write_hosts(&hosts, &format!("127.0.0.1 {NAME}\n"));
    assert!(
        wait_until(Duration::from_secs(20), || served(
            &px,
            &canary_users,
            "canary",
            "canary",
            "hash"
        )),
        "canary users reach the canary once its name resolves: {}",
        px.stderr()
    );
    let st = px.status();
    let b = &st["services"][0]["variants"][1]["backends"][0];
    assert_eq!(b["addr"], c.addr.to_string());
    assert_eq!(b["healthy"], true);
    assert!(b.get("error").is_none(), "{b}");
    let m = px.metrics();
    assert!(
        m.contains(&format!(
            "cohort_backend_up{{backend=\"{}\",service=\"api\",variant=\"canary\"}} 1",
            c.addr
        )),
        "{m}"
    );
    assert!(!m.contains(&format!("backend=\"{name}\"")), "{m}");
    assert!(
        served(&px, &users_of("stable", 5), "stable", "stable", "hash"),
        "stable untouched"
    );
    let log = px.stderr();
    assert_eq!(log.matches(&warning).count(), 1, "{log}");
    assert!(
        log.contains(&format!(
            "service[0].variant[1].backends[0]: {name:?} resolves now"
        )),
        "{log}"
    );
}

#[test]
fn with_resolve_interval_off_the_process_starts_and_says_the_name_is_still_retried() {
    // `resolve_interval_secs = 0` stops re-resolving names that resolved, not the retry of
    // names that never did (every 30 s): the name is still down at first, the process up.
    let s = backend("stable");
    let px = Cohort::start(&config(
        &s,
        &format!("{NAME}:8000"),
        "resolve_interval_secs = 0",
    ));
    assert!(served(
        &px,
        &users_of("canary", 3),
        "stable",
        "stable",
        "fallback"
    ));
    assert!(px.stderr().contains("retried every 30s"), "{}", px.stderr());
}

#[test]
fn a_reload_with_a_name_that_does_not_resolve_is_applied_with_a_warning() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c.addr.to_string(), ""));
    let canary_users = users_of("canary", 5);
    assert!(served(&px, &canary_users, "canary", "canary", "hash"));
    px.rewrite(&config(&s, &format!("{NAME}:8000"), ""));
    let (code, body) = px.post_reload();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "applied", "{body}");
    let w = body["warnings"][0].as_str().unwrap();
    assert!(
        w.starts_with(&format!(
            "service[0].variant[1].backends[0]: cannot resolve \"{NAME}:8000\""
        )),
        "{body}"
    );
    assert!(served(&px, &canary_users, "stable", "stable", "fallback"));
    assert_eq!(
        px.status()["services"][0]["variants"][1]["backends"][0]["healthy"],
        false
    );

    // Invalid syntax is still a config error.
    px.rewrite(&config(&s, NAME, ""));
    let (code, body) = px.post_reload();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("service[0].variant[1].backends[0]: "),
        "{body}"
    );
}

#[test]
fn periodic_re_resolution_with_an_unchanged_answer_keeps_serving_the_same_table() {
    let b = backend("stable");
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\nresolve_interval_secs = 1\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"localhost:{}\"]\n",
        b.addr.port()
    );
    let px = Cohort::start(&cfg);
    let loaded = px.status()["loaded_at"].clone();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        px.status()["loaded_at"],
        loaded,
        "no rebuild when DNS did not change"
    );
    let r = px.client().get("/", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!px.stderr().contains("backend DNS changed"));
}
