#![allow(clippy::unwrap_used)]
//! Backends named by DNS are re-resolved every `resolve_interval_secs`: a changed answer
//! rebuilds the pools (same config version), an unchanged one changes nothing.

mod common;
use cohort::config::{Config, FieldError, VariantConfig};
use cohort::routing::RoutingTable;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;

fn table(backend: &str) -> RoutingTable {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{backend}\"]\n"
    );
    RoutingTable::build(Config::parse(&text).unwrap()).unwrap()
}

#[test]
fn a_changed_dns_answer_is_detected_and_an_unchanged_one_is_not() {
    let t = table("localhost:8080");
    assert!(t.uses_dns());
    let same = |v: &VariantConfig, p: &str| cohort::upstream::resolve(v, p);
    assert!(!t.addresses_changed(same), "same answer: no rebuild");
    let moved = |_: &VariantConfig, _: &str| -> Result<Vec<SocketAddr>, Vec<FieldError>> {
        Ok(vec!["127.0.0.9:8080".parse().unwrap()])
    };
    assert!(t.addresses_changed(moved), "ECS task IPs changed: rebuild");
    let failing = |_: &VariantConfig, p: &str| -> Result<Vec<SocketAddr>, Vec<FieldError>> {
        Err(vec![FieldError {
            path: p.to_string(),
            message: "SERVFAIL".into(),
        }])
    };
    assert!(
        !t.addresses_changed(failing),
        "a failed lookup keeps the current addresses"
    );
    assert!(
        !table("127.0.0.1:8080").uses_dns(),
        "IP literals are never re-resolved"
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
