#![allow(clippy::unwrap_used)]
// A global allocator can only be written with `unsafe`; the library itself has none.
#![allow(unsafe_code)]
//! The routing decision allocates nothing: service match, client IP, key extraction
//! (header, cookie, ip), four rules and hashing, counted with a counting global
//! allocator over many requests, read from a `HeaderMap` (the Pingora path) and from a
//! raw header list with upper-case names (the HTTP/1.1 fast path).

use cohort::config::Config;
use cohort::routing::{RequestView, RoutingTable};
use http::{HeaderMap, HeaderValue, Uri};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
trusted_proxies = ["10.0.0.0/8"]
[[service]]
name = "api"
hosts = ["api.example.com", "*.example.org"]
key = ["header:x-user-id", "cookie:session", "ip"]
force_header = "x-force"
force_from = ["10.1.0.0/16"]
[[service.variant]]
name = "stable"
weight = 80
backends = ["127.0.0.1:9001"]
[[service.variant]]
name = "canary"
weight = 15
backends = ["127.0.0.1:9002"]
[[service.variant]]
name = "beta"
weight = 5
backends = ["127.0.0.1:9003"]
[[service.rule]]
name = "staff"
client_cidr = ["10.20.0.0/16"]
variant = "canary"
[[service.rule]]
name = "opt-in"
cookie = { name = "beta", equals = "1" }
variant = "beta"
[[service.rule]]
name = "eu"
header = { name = "cloudfront-viewer-country", in = ["DE", "FR"] }
weights = { stable = 50, canary = 50 }
[[service.rule]]
name = "partners"
key_in = ["partner-acme"]
variant = "canary"
"#;

#[test]
fn the_routing_decision_allocates_nothing() {
    let table = RoutingTable::build(Config::parse(CONFIG).unwrap()).unwrap();
    let uri: Uri = "/v1/orders?page=2".parse().unwrap();
    let mut requests = Vec::new();
    for i in 0..200 {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.example.com"));
        h.insert(
            "cookie",
            HeaderValue::from_static("theme=dark; session=s-1; beta=0"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        match i % 5 {
            0 => {
                h.insert(
                    "x-user-id",
                    HeaderValue::from_str(&format!("user-{i}")).unwrap(),
                );
            }
            1 => {
                h.insert("cloudfront-viewer-country", HeaderValue::from_static("DE"));
                h.insert(
                    "x-user-id",
                    HeaderValue::from_str(&format!("u{i}")).unwrap(),
                );
            }
            2 => {
                h.insert("x-user-id", HeaderValue::from_static("partner-acme"));
            }
            3 => {
                h.remove("cookie"); // falls through to the ip key
            }
            _ => {
                h.insert("cookie", HeaderValue::from_static("beta=1; session=x"));
            }
        }
        requests.push(h);
    }
    let peers = ["203.0.113.9", "10.20.1.1", "10.9.9.9"].map(|p| Some(p.parse().unwrap()));
    let decide = |h: &HeaderMap, peer| {
        let view = RequestView::new(h, &uri, peer);
        let svc = table.router.match_service(&view).unwrap();
        std::hint::black_box(table.router.decide(svc, &view));
    };
    // The same requests as the HTTP/1.1 fast path sees them: httparse's header lists.
    let owned: Vec<Vec<(String, Vec<u8>)>> = requests
        .iter()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.as_str().to_ascii_uppercase(), v.as_bytes().to_vec()))
                .collect()
        })
        .collect();
    let raw: Vec<Vec<httparse::Header>> = owned
        .iter()
        .map(|list| {
            list.iter()
                .map(|(name, value)| httparse::Header { name, value })
                .collect()
        })
        .collect();
    let decide_raw = |list: &[httparse::Header], peer| {
        let view = RequestView::raw(list, "/v1/orders?page=2", peer);
        let svc = table.router.match_service(&view).unwrap();
        std::hint::black_box(table.router.decide(svc, &view));
    };
    decide(&requests[0], peers[0]); // warm up (thread-locals)
    decide_raw(&raw[0], peers[0]);
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for (i, h) in requests.iter().enumerate() {
        decide(h, peers[i % peers.len()]);
    }
    let over_maps = ALLOCS.swap(0, Ordering::SeqCst);
    for (i, list) in raw.iter().enumerate() {
        decide_raw(list, peers[i % peers.len()]);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let over_raw = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(
        (over_maps, over_raw),
        (0, 0),
        "allocations in 200 routing decisions over a HeaderMap and over a raw header list"
    );
}
