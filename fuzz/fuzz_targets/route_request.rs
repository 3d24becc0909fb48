//! Arbitrary request bytes (headers, cookies, query, X-Forwarded-For, peer address)
//! through service matching and the full decision, against a config that uses every key
//! source and rule kind: never a panic, always a declared variant.
#![no_main]

use cohort::config::Config;
use cohort::routing::{RequestView, Router};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::LazyLock;

const CONFIG: &str = r#"
[server]
trusted_proxies = ["10.0.0.0/8", "::1/128"]
[[service]]
name = "api"
hosts = ["api.example.com", "*.example.org"]
path_prefix = "/api"
key = ["header:x-user-id", "cookie:session", "query:uid", "ip"]
force_header = "x-force"
force_from = ["10.1.0.0/16"]
[[service.variant]]
name = "stable"
weight = 70
backends = ["127.0.0.1:1"]
[[service.variant]]
name = "canary"
weight = 20
backends = ["127.0.0.1:2"]
[[service.variant]]
name = "beta"
weight = 10
backends = ["127.0.0.1:3"]
[[service.rule]]
name = "staff"
client_cidr = ["10.20.0.0/16", "2001:db8::/32"]
variant = "canary"
[[service.rule]]
name = "opt-in"
cookie = { name = "beta", prefix = "1" }
variant = "beta"
[[service.rule]]
name = "eu"
header = { name = "x-country", in = ["DE", "FR"] }
weights = { stable = 50, canary = 50 }
[[service.rule]]
name = "mobile"
query = { name = "client", present = true }
variant = "beta"
[[service.rule]]
name = "partners"
key_in = ["partner-acme"]
variant = "canary"
[[service]]
name = "web"
assign_cookie = "cid"
key = ["ip"]
[[service.variant]]
name = "stable"
weight = 1
backends = ["127.0.0.1:4"]
"#;

static ROUTER: LazyLock<Router> =
    LazyLock::new(|| Router::new(&Config::parse(CONFIG).expect("fuzz config")));

const NAMES: [&str; 8] = [
    "x-user-id",
    "cookie",
    "x-forwarded-for",
    "host",
    "x-force",
    "x-country",
    "x-user-id",
    "cookie",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 18 {
        return;
    }
    let (head, rest) = data.split_at(18);
    let peer = match head[0] % 3 {
        0 => None,
        1 => Some(IpAddr::from([head[1], head[2], head[3], head[4]])),
        _ => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&head[2..18]);
            Some(IpAddr::from(b))
        }
    };
    let mut parts = rest.split(|&b| b == 0xff);
    let uri = parts
        .next()
        .and_then(|u| Uri::try_from(u).ok())
        .unwrap_or_else(|| Uri::from_static("/api/x"));
    let mut headers = HeaderMap::new();
    for (i, value) in parts.enumerate() {
        let name = HeaderName::from_static(NAMES[(i + head[1] as usize) % NAMES.len()]);
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let view = RequestView::new(&headers, &uri, peer);
    if let Some(svc) = ROUTER.match_service(&view) {
        let d = ROUTER.decide(svc, &view);
        assert!(d.variant < ROUTER.services[svc].cfg.variants.len());
        let _ = ROUTER.services[svc].reason_str(d.reason);
    }
    let _ = ROUTER.client_ip(&view);
});
