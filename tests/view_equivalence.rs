#![allow(clippy::unwrap_used)]
//! The two ways routing reads a request agree on every decision: a `HeaderMap` (the
//! Pingora path, `explain`) and the fast path's raw header list (`RequestView::raw`,
//! which compares names 8 bytes at a time). Requests are generated with names in random
//! case, repeated headers, absent headers, empty values and ports.

use cohort::config::Config;
use cohort::routing::{Decision, RequestView, Router};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use proptest::prelude::*;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
trusted_proxies = ["10.0.0.0/8"]

[[service]]
name = "api"
hosts = ["api.example.com", "*.api.example.com"]
path_prefix = "/v1"
key = ["header:x-user-id", "cookie:session", "query:uid", "ip"]
force_header = "x-force-variant"
force_from = ["10.0.0.0/8", "192.0.2.0/24"]

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
client_cidr = ["192.0.2.0/24"]
variant = "canary"

[[service.rule]]
name = "beta-opt-in"
cookie = { name = "beta", equals = "1" }
variant = "beta"

[[service.rule]]
name = "eu"
header = { name = "CloudFront-Viewer-Country", in = ["DE", "FR"] }
weights = { stable = 50, canary = 50, beta = 0 }

[[service.rule]]
name = "mobile"
header = { name = "x-client", prefix = "mobile-" }
variant = "canary"

[[service.rule]]
name = "partners"
key_in = ["partner-acme", "partner-globex"]
variant = "canary"

[[service]]
name = "web"
key = ["cookie:sid"]
assign_cookie = "sid"

[[service.variant]]
name = "stable"
weight = 90
backends = ["127.0.0.1:9011"]

[[service.variant]]
name = "canary"
weight = 10
backends = ["127.0.0.1:9012"]

[[service.rule]]
name = "internal"
header = { name = "x-internal", present = true }
variant = "canary"
"#;

/// Header names with candidate values; the generator picks names, cases and values.
const POOL: [(&str, &[&str]); 10] = [
    (
        "host",
        &[
            "api.example.com",
            "API.Example.com:8443",
            "eu.api.example.com",
            "other.example",
            "",
        ],
    ),
    (
        "x-user-id",
        &["user-1", " user-2 ", "partner-acme", "", "  "],
    ),
    (
        "cookie",
        &[
            "session=s1; beta=1",
            "beta=0",
            "sid=abc",
            "session=\"q\"",
            "x=1;session=",
        ],
    ),
    (
        "x-forwarded-for",
        &[
            "198.51.100.7",
            "10.1.1.1, 203.0.113.5",
            "garbage, 10.2.2.2",
            "192.0.2.9",
        ],
    ),
    ("cloudfront-viewer-country", &["DE", "US", " FR", ""]),
    ("x-client", &["mobile-ios", "web", "Mobile-x"]),
    ("x-force-variant", &["beta", "canary", "nope"]),
    ("x-internal", &["", "1"]),
    ("accept", &["*/*"]),
    ("user-agent", &["curl/8"]),
];

const TARGETS: [&str; 5] = [
    "/v1/orders",
    "/v1/x?uid=q%20u&b=2",
    "/",
    "/v2?uid=z",
    "/v1?uid=",
];
const PEERS: [&str; 4] = ["203.0.113.9", "10.0.0.2", "192.0.2.44", "::ffff:10.9.9.9"];

/// A header name in a case chosen by the bits of `mask`.
fn cased(name: &str, mask: u32) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 32) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// What must agree. A minted cookie id is random, and so is the variant it hashes to;
/// both are compared only by presence (as is the pool key of key-less requests).
fn comparable(d: &Decision) -> impl PartialEq + std::fmt::Debug {
    let variant = d.new_cookie.is_none().then_some(d.variant);
    (
        variant,
        d.reason,
        d.key_from,
        d.weights_rule,
        d.new_cookie.is_some(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn raw_and_map_views_decide_alike(
        picks in proptest::collection::vec((0..POOL.len(), 0..5usize, any::<u32>()), 0..9),
        target in 0..TARGETS.len(),
        peer in 0..PEERS.len(),
    ) {
        let router = Router::new(&Config::parse(CONFIG).unwrap());
        let owned: Vec<(String, &str)> = picks
            .iter()
            .map(|&(n, v, mask)| {
                let (name, values) = POOL[n];
                (cased(name, mask), values[v % values.len()])
            })
            .collect();
        let raw: Vec<httparse::Header> = owned
            .iter()
            .map(|(n, v)| httparse::Header { name: n, value: v.as_bytes() })
            .collect();
        let mut map = HeaderMap::new();
        for (n, v) in &owned {
            map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let uri: Uri = TARGETS[target].parse().unwrap();
        let peer = Some(PEERS[peer].parse().unwrap());
        let views = [
            RequestView::new(&map, &uri, peer),
            RequestView::raw(&raw, TARGETS[target], peer),
        ];
        let outcomes: Vec<_> = views
            .iter()
            .map(|v| {
                router
                    .match_service(v)
                    .map(|s| (s, comparable(&router.decide(s, v)), router.client_ip(v)))
            })
            .collect();
        prop_assert_eq!(&outcomes[0], &outcomes[1], "map vs raw for {:?}", owned);
    }
}
