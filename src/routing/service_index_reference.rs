//! The linear service matcher the [`super::service_index::ServiceIndex`] replaced, kept as
//! the reference it is proven against: SPEC "Service matching" read literally, one
//! service at a time.

use super::compare::eq_lower;
use super::request::RequestView;
use super::router::Router;
use crate::config::{Config, HostPattern};
use proptest::prelude::*;

/// Among services whose `hosts` match (case-insensitive, port ignored; no `hosts` = any
/// host), the longest `path_prefix` wins; on a tie exact host > wildcard > any host; then
/// config order.
fn match_service_linear(router: &Router, req: &RequestView<'_>) -> Option<usize> {
    let host = req.host().unwrap_or_default();
    let path = req.path();
    let mut best: Option<(usize, (usize, u8))> = None;
    for (i, s) in router.services.iter().enumerate() {
        if !path.starts_with(s.cfg.path_prefix.as_bytes()) {
            continue;
        }
        let Some(rank) = host_rank(&s.cfg.hosts, host) else {
            continue;
        };
        let score = (s.cfg.path_prefix.len(), rank);
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// 2 = exact host, 1 = wildcard, 0 = service without `hosts`; `None` = no match.
fn host_rank(patterns: &[HostPattern], host: &[u8]) -> Option<u8> {
    if patterns.is_empty() {
        return Some(0);
    }
    let mut rank = None;
    for p in patterns {
        match p {
            HostPattern::Exact(h) if eq_lower(host, h.as_bytes()) => return Some(2),
            HostPattern::Wildcard(suffix)
                if host.len() > suffix.len()
                    && eq_lower(&host[host.len() - suffix.len()..], suffix.as_bytes()) =>
            {
                rank = Some(1)
            }
            _ => {}
        }
    }
    rank
}

/// Host patterns that nest and overlap, so exact, wildcard and any-host services compete.
const PATTERNS: &[&str] = &[
    "a.com",
    "b.a.com",
    "x.b.a.com",
    "*.a.com",
    "*.b.a.com",
    "*.com",
    "api.example.com",
    "*.example.com",
    "Api.Example.com",
    "a.co",
];
const PREFIXES: &[&str] = &["/", "/v1", "/v1/", "/v1/orders", "/v2", "/api", "/V1"];
/// Request hosts: the patterns' names in other cases, with ports, near misses, none.
const HOSTS: &[&str] = &[
    "a.com",
    "A.COM",
    "b.a.com",
    "B.a.Com:8080",
    "x.b.a.com",
    "y.b.a.com",
    "zz.x.b.a.com",
    ".a.com",
    "a.com.",
    "aa.com",
    "com",
    ".com",
    "api.example.com",
    "API.EXAMPLE.COM:443",
    "other.example.com",
    "example.com",
    "a.co",
    "",
    "[::1]:80",
    "127.0.0.1",
];
const PATHS: &[&str] = &[
    "/",
    "/v1",
    "/v1/orders/7",
    "/v1x",
    "/V1/orders",
    "/v2/",
    "/api",
    "/apix",
    "/other",
];

fn config(services: &[(Vec<usize>, usize)]) -> Config {
    let mut text = String::from("[server]\nlisten = [\"127.0.0.1:8080\"]\n");
    for (i, (hosts, prefix)) in services.iter().enumerate() {
        text.push_str(&format!("[[service]]\nname = \"s{i}\"\n"));
        if *hosts != [usize::MAX] {
            let list: Vec<String> = hosts
                .iter()
                .map(|&h| format!("{:?}", PATTERNS[h]))
                .collect();
            text.push_str(&format!("hosts = [{}]\n", list.join(", ")));
        }
        text.push_str(&format!(
            "path_prefix = {:?}\nkey = [\"ip\"]\n[[service.variant]]\nname = \"v\"\nweight = 1\nbackends = [\"127.0.0.1:1\"]\n",
            PREFIXES[*prefix]
        ));
    }
    Config::parse(&text).expect("generated config is valid")
}

/// A service: its host patterns (`[usize::MAX]` = no `hosts`) and its prefix.
fn service() -> impl Strategy<Value = (Vec<usize>, usize)> {
    let hosts = prop_oneof![
        1 => Just(vec![usize::MAX]),
        4 => prop::collection::vec(0..PATTERNS.len(), 1..4),
    ];
    (hosts, 0..PREFIXES.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn indexed_matching_agrees_with_the_linear_reference(
        services in prop::collection::vec(service(), 1..12),
        requests in prop::collection::vec((0..HOSTS.len(), 0..PATHS.len(), any::<bool>()), 1..20),
    ) {
        let router = Router::new(&config(&services));
        for (h, p, authority) in requests {
            let mut headers = http::HeaderMap::new();
            let uri: http::Uri = if authority {
                // HTTP/2 style: the host comes from the URI authority.
                match HOSTS[h] {
                    "" => PATHS[p].parse().expect("path"),
                    host => format!("http://{host}{}", PATHS[p]).parse().expect("uri"),
                }
            } else {
                if !HOSTS[h].is_empty() {
                    headers.insert("host", HOSTS[h].parse().expect("host"));
                }
                PATHS[p].parse().expect("path")
            };
            let view = RequestView::new(&headers, &uri, None);
            prop_assert_eq!(
                router.match_service(&view),
                match_service_linear(&router, &view),
                "host {:?} path {:?}", HOSTS[h], PATHS[p]
            );
        }
    }
}

#[test]
fn the_reference_itself_follows_the_spec_tie_order() {
    // Same prefix: exact beats wildcard beats any host; a longer prefix beats them all.
    let router = Router::new(&config(&[
        (vec![usize::MAX], 0),
        (vec![3], 0),
        (vec![0], 0),
        (vec![usize::MAX], 1),
    ]));
    let uri: http::Uri = "/".parse().expect("uri");
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "A.com:80".parse().expect("host"));
    let view = RequestView::new(&headers, &uri, None);
    assert_eq!(match_service_linear(&router, &view), Some(2));
    assert_eq!(router.match_service(&view), Some(2));
    headers.insert("host", "q.a.com".parse().expect("host"));
    let view = RequestView::new(&headers, &uri, None);
    assert_eq!(match_service_linear(&router, &view), Some(1));
    let v1: http::Uri = "/v1/x".parse().expect("uri");
    let view = RequestView::new(&headers, &v1, None);
    assert_eq!(match_service_linear(&router, &view), Some(3));
    assert_eq!(router.match_service(&view), Some(3));
}
