#![allow(clippy::unwrap_used)]
//! End-to-end rules and service matching through the real binary with real backends on
//! 127.0.0.1: every rule kind, AND of conditions, rule order, `weights` rules, region
//! cohorts (conf/region.toml), independence of services, host/prefix matching, 404, and
//! client-sent cohort headers.

mod common;
use common::*;

use std::collections::{HashMap, HashSet};

/// `[server]` with a trusted 127.0.0.1 so `X-Forwarded-For` sets the client IP.
const SERVER: &str = r#"
[server]
listen = ["@LISTEN@"]
admin = "@ADMIN@"
threads = 2
trusted_proxies = ["127.0.0.1/32"]
"#;

/// A service at `path_prefix = "/{name}/"` with stable 100 / canary 0 and one rule named
/// `{name}` pinning to canary under `conditions`: anything on canary came from the rule.
fn pinned_service(name: &str, s: &EchoBackend, c: &EchoBackend, conditions: &str) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
path_prefix = "/{name}/"
key = ["header:x-user-id", "cookie:session", "ip"]

[[service.variant]]
name = "stable"
weight = 100
backends = ["{s}"]

[[service.variant]]
name = "canary"
weight = 0
backends = ["{c}"]

[[service.rule]]
name = "{name}"
{conditions}
variant = "canary"
"#,
        s = s.addr,
        c = c.addr,
    )
}

/// (variant served as named by the backend, upstream `x-cohort-reason`); also checks the
/// request succeeded and the upstream `x-cohort-variant` names the serving variant.
fn served(r: &Response) -> (String, String) {
    assert_eq!(r.status, 200, "status {}: {}", r.status, r.text());
    let backend = r.backend();
    assert_eq!(
        r.upstream_header("x-cohort-variant").as_deref(),
        Some(backend.as_str()),
        "upstream x-cohort-variant names the serving variant"
    );
    let reason = r.upstream_header("x-cohort-reason").unwrap_or_default();
    (backend, reason)
}

/// Asserts the request is pinned by rule `rule` (canary, `rule:<rule>`), or, with `None`,
/// that no rule matched (stable by hash).
fn expect_rule(cl: &mut Client, path: &str, headers: &[(&str, &str)], rule: Option<&str>) {
    let got = served(&cl.get(path, headers));
    let want = match rule {
        Some(name) => ("canary".to_string(), format!("rule:{name}")),
        None => ("stable".to_string(), "hash".to_string()),
    };
    assert_eq!(got, want, "GET {path} with {headers:?}");
}

#[test]
fn client_cidr_rule_pins_exactly_the_client_ips_inside_it() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = format!(
        "{SERVER}{}",
        pinned_service(
            "cidr",
            &s,
            &c,
            r#"client_cidr = ["10.0.0.0/8", "2001:db8::/32"]"#
        )
    );
    let px = Cohort::start(&cfg);
    let mut cl = px.client();
    let p = "/cidr/x";
    for ip in [
        "10.1.2.3",
        "10.255.255.254",
        "2001:db8::5",
        "203.0.113.9, 10.9.9.9",
    ] {
        expect_rule(&mut cl, p, &[("x-forwarded-for", ip)], Some("cidr"));
    }
    for ip in [
        "192.0.2.1",
        "11.0.0.1",
        "2001:db9::5",
        // the rightmost untrusted address is the client, not the leftmost
        "10.1.2.3, 203.0.113.9",
    ] {
        expect_rule(&mut cl, p, &[("x-forwarded-for", ip)], None);
    }
    // no X-Forwarded-For: the client is the (trusted) peer 127.0.0.1, outside the CIDRs
    expect_rule(&mut cl, p, &[], None);
    // a key does not change what the CIDR decides
    expect_rule(
        &mut cl,
        p,
        &[("x-user-id", "u1"), ("x-forwarded-for", "10.0.0.1")],
        Some("cidr"),
    );
    expect_rule(
        &mut cl,
        p,
        &[("x-user-id", "u1"), ("x-forwarded-for", "198.51.100.1")],
        None,
    );
}

#[test]
fn header_rules_pin_with_equals_in_present_absent_and_prefix() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = [
        SERVER.to_string(),
        pinned_service(
            "h-eq",
            &s,
            &c,
            r#"header = { name = "x-team", equals = "eng" }"#,
        ),
        pinned_service(
            "h-in",
            &s,
            &c,
            r#"header = { name = "x-country", in = ["DE", "FR"] }"#,
        ),
        pinned_service(
            "h-present",
            &s,
            &c,
            r#"header = { name = "x-beta", present = true }"#,
        ),
        pinned_service(
            "h-absent",
            &s,
            &c,
            r#"header = { name = "x-legacy", present = false }"#,
        ),
        pinned_service(
            "h-prefix",
            &s,
            &c,
            r#"header = { name = "x-client", prefix = "mobile/" }"#,
        ),
    ]
    .concat();
    let px = Cohort::start(&cfg);
    let mut cl = px.client();

    let p = "/h-eq/x";
    expect_rule(&mut cl, p, &[("x-team", "eng")], Some("h-eq"));
    expect_rule(&mut cl, p, &[("X-Team", "eng")], Some("h-eq"));
    expect_rule(&mut cl, p, &[("x-team", "engineering")], None);
    expect_rule(&mut cl, p, &[("x-team", "en")], None);
    expect_rule(&mut cl, p, &[("x-other", "eng")], None);
    expect_rule(&mut cl, p, &[], None);

    let p = "/h-in/x";
    expect_rule(&mut cl, p, &[("x-country", "DE")], Some("h-in"));
    expect_rule(&mut cl, p, &[("x-country", "FR")], Some("h-in"));
    expect_rule(&mut cl, p, &[("x-country", "US")], None);
    expect_rule(&mut cl, p, &[("x-country", "DEU")], None);
    expect_rule(&mut cl, p, &[], None);

    let p = "/h-present/x";
    expect_rule(&mut cl, p, &[("x-beta", "1")], Some("h-present"));
    expect_rule(&mut cl, p, &[("x-beta", "no")], Some("h-present"));
    expect_rule(&mut cl, p, &[("x-betas", "1")], None);
    expect_rule(&mut cl, p, &[], None);

    let p = "/h-absent/x";
    expect_rule(&mut cl, p, &[], Some("h-absent"));
    expect_rule(&mut cl, p, &[("x-user-id", "u7")], Some("h-absent"));
    expect_rule(&mut cl, p, &[("x-legacy", "1")], None);
    expect_rule(&mut cl, p, &[("X-Legacy", "0")], None);

    let p = "/h-prefix/x";
    expect_rule(
        &mut cl,
        p,
        &[("x-client", "mobile/ios-17")],
        Some("h-prefix"),
    );
    expect_rule(&mut cl, p, &[("x-client", "mobile/")], Some("h-prefix"));
    expect_rule(&mut cl, p, &[("x-client", "mobile")], None);
    expect_rule(&mut cl, p, &[("x-client", "desktop/mobile/")], None);
    expect_rule(&mut cl, p, &[], None);
}

#[test]
fn cookie_and_query_rules_pin_and_query_values_are_percent_decoded() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = [
        SERVER.to_string(),
        pinned_service(
            "c-eq",
            &s,
            &c,
            r#"cookie = { name = "beta", equals = "1" }"#,
        ),
        pinned_service(
            "q-eq",
            &s,
            &c,
            r#"query = { name = "opt", equals = "in out" }"#,
        ),
        pinned_service(
            "q-prefix",
            &s,
            &c,
            r#"query = { name = "ref", prefix = "partner/" }"#,
        ),
    ]
    .concat();
    let px = Cohort::start(&cfg);
    let mut cl = px.client();

    let p = "/c-eq/x";
    expect_rule(&mut cl, p, &[("cookie", "beta=1")], Some("c-eq"));
    expect_rule(&mut cl, p, &[("cookie", "a=b; beta=1; z=9")], Some("c-eq"));
    expect_rule(&mut cl, p, &[("cookie", "beta=0")], None);
    expect_rule(&mut cl, p, &[("cookie", "beta=10")], None);
    expect_rule(&mut cl, p, &[("cookie", "xbeta=1")], None);
    expect_rule(&mut cl, p, &[("beta", "1")], None);
    expect_rule(&mut cl, p, &[], None);

    expect_rule(&mut cl, "/c-eq/x?beta=1", &[], None);

    expect_rule(&mut cl, "/q-eq/x?opt=in%20out", &[], Some("q-eq"));
    expect_rule(
        &mut cl,
        "/q-eq/x?a=1&opt=%69n%20%6Fut&b=2",
        &[],
        Some("q-eq"),
    );
    expect_rule(&mut cl, "/q-eq/x?opt=in", &[], None);
    expect_rule(&mut cl, "/q-eq/x?opt=in%20outs", &[], None);
    expect_rule(&mut cl, "/q-eq/x?xopt=in%20out", &[], None);
    expect_rule(&mut cl, "/q-eq/x", &[("opt", "in out")], None);

    // the decoded value is matched: "%2F" is "/", "%70" is "p"
    expect_rule(
        &mut cl,
        "/q-prefix/x?ref=partner%2Facme",
        &[],
        Some("q-prefix"),
    );
    expect_rule(&mut cl, "/q-prefix/x?ref=%70artner/", &[], Some("q-prefix"));
    expect_rule(&mut cl, "/q-prefix/x?ref=partner/x", &[], Some("q-prefix"));
    expect_rule(&mut cl, "/q-prefix/x?ref=partner", &[], None);
    expect_rule(&mut cl, "/q-prefix/x?ref=partner%2Dacme", &[], None);
    expect_rule(&mut cl, "/q-prefix/x?ref=other/partner/", &[], None);
    expect_rule(&mut cl, "/q-prefix/x", &[], None);
}

#[test]
fn key_in_rule_pins_listed_keys_found_by_the_key_chain() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = format!(
        "{SERVER}{}",
        pinned_service(
            "partners",
            &s,
            &c,
            r#"key_in = ["partner-acme", "partner-globex", "198.51.100.7"]"#
        )
    );
    let px = Cohort::start(&cfg);
    let mut cl = px.client();
    let p = "/partners/x";
    // key from the header source
    expect_rule(
        &mut cl,
        p,
        &[("x-user-id", "partner-acme")],
        Some("partners"),
    );
    expect_rule(
        &mut cl,
        p,
        &[("x-user-id", "partner-globex")],
        Some("partners"),
    );
    // key from the cookie source
    expect_rule(
        &mut cl,
        p,
        &[("cookie", "session=partner-globex")],
        Some("partners"),
    );
    expect_rule(
        &mut cl,
        p,
        &[("cookie", "theme=dark; session=partner-acme")],
        Some("partners"),
    );
    // key from the ip source (no header, no cookie)
    expect_rule(
        &mut cl,
        p,
        &[("x-forwarded-for", "198.51.100.7")],
        Some("partners"),
    );
    // keys not in the list
    for key in [
        "partner-acme-2",
        "partner",
        "acme",
        "PARTNER-ACME",
        "user-1",
    ] {
        expect_rule(&mut cl, p, &[("x-user-id", key)], None);
        expect_rule(&mut cl, p, &[("cookie", &format!("session={key}"))], None);
    }
    // only the key the chain picks counts: the header wins over a listed cookie / ip
    expect_rule(
        &mut cl,
        p,
        &[("x-user-id", "user-1"), ("cookie", "session=partner-acme")],
        None,
    );
    expect_rule(
        &mut cl,
        p,
        &[
            ("cookie", "session=user-2"),
            ("x-forwarded-for", "198.51.100.7"),
        ],
        None,
    );
    // a listed value in another header or cookie is not the key
    expect_rule(
        &mut cl,
        p,
        &[
            ("x-partner", "partner-acme"),
            ("cookie", "other=partner-acme"),
        ],
        None,
    );
}

#[test]
fn conditions_of_one_rule_are_anded() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = format!(
        "{SERVER}{}",
        pinned_service(
            "both",
            &s,
            &c,
            "header = { name = \"x-team\", equals = \"eng\" }\nclient_cidr = [\"10.0.0.0/8\"]\ncookie = { name = \"beta\", present = true }"
        )
    );
    let px = Cohort::start(&cfg);
    let mut cl = px.client();
    let p = "/both/x";
    let (team, inside, outside, beta) = (
        ("x-team", "eng"),
        ("x-forwarded-for", "10.2.3.4"),
        ("x-forwarded-for", "192.0.2.4"),
        ("cookie", "beta=yes"),
    );
    expect_rule(&mut cl, p, &[team, inside, beta], Some("both"));
    expect_rule(&mut cl, p, &[team, inside], None);
    expect_rule(&mut cl, p, &[team, beta], None);
    expect_rule(&mut cl, p, &[inside, beta], None);
    expect_rule(&mut cl, p, &[team, outside, beta], None);
    expect_rule(&mut cl, p, &[("x-team", "ops"), inside, beta], None);
    expect_rule(&mut cl, p, &[team], None);
    expect_rule(&mut cl, p, &[inside], None);
    expect_rule(&mut cl, p, &[beta], None);
}

fn ordered_rules_config(
    s: &EchoBackend,
    a: &EchoBackend,
    b: &EchoBackend,
    hdr_first: bool,
) -> String {
    let hdr = "[[service.rule]]\nname = \"by-header\"\nheader = { name = \"x-alpha\", present = true }\nvariant = \"alpha\"\n";
    let ck = "[[service.rule]]\nname = \"by-cookie\"\ncookie = { name = \"beta\", equals = \"1\" }\nvariant = \"beta\"\n";
    let rules = if hdr_first {
        format!("{hdr}\n{ck}")
    } else {
        format!("{ck}\n{hdr}")
    };
    format!(
        r#"{SERVER}
[[service]]
name = "api"
key = ["header:x-user-id"]

[[service.variant]]
name = "stable"
weight = 100
backends = ["{}"]

[[service.variant]]
name = "alpha"
weight = 0
backends = ["{}"]

[[service.variant]]
name = "beta"
weight = 0
backends = ["{}"]

{rules}"#,
        s.addr, a.addr, b.addr
    )
}

#[test]
fn the_first_matching_rule_in_config_order_decides() {
    let (s, a, b) = (backend("stable"), backend("alpha"), backend("beta"));
    let hdr_first = Cohort::start(&ordered_rules_config(&s, &a, &b, true));
    let ck_first = Cohort::start(&ordered_rules_config(&s, &a, &b, false));
    let both: &[(&str, &str)] = &[("x-user-id", "u1"), ("x-alpha", "1"), ("cookie", "beta=1")];
    let only_hdr: &[(&str, &str)] = &[("x-user-id", "u1"), ("x-alpha", "1")];
    let only_ck: &[(&str, &str)] = &[("x-user-id", "u1"), ("cookie", "beta=1")];
    let neither: &[(&str, &str)] = &[("x-user-id", "u1")];
    let pair = |v: &str, r: &str| (v.to_string(), r.to_string());
    for (px, both_want) in [
        (&hdr_first, pair("alpha", "rule:by-header")),
        (&ck_first, pair("beta", "rule:by-cookie")),
    ] {
        let mut cl = px.client();
        for _ in 0..3 {
            assert_eq!(served(&cl.get("/", both)), both_want);
        }
        assert_eq!(
            served(&cl.get("/", only_hdr)),
            pair("alpha", "rule:by-header")
        );
        assert_eq!(
            served(&cl.get("/", only_ck)),
            pair("beta", "rule:by-cookie")
        );
        assert_eq!(served(&cl.get("/", neither)), pair("stable", "hash"));
    }
}

#[test]
fn weights_rule_resplits_matching_users_with_its_own_weights() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = format!(
        r#"{SERVER}
[[service]]
name = "api"
key = ["header:x-user-id"]

[[service.variant]]
name = "stable"
weight = 99
backends = ["{}"]

[[service.variant]]
name = "canary"
weight = 1
backends = ["{}"]

[[service.rule]]
name = "eu"
header = {{ name = "cloudfront-viewer-country", in = ["DE", "FR", "NL"] }}
weights = {{ canary = 50, stable = 50 }}

[[service.rule]]
name = "apac"
header = {{ name = "cloudfront-viewer-country", equals = "JP" }}
weights = {{ canary = 30, stable = 70 }}
"#,
        s.addr, c.addr
    );
    let px = Cohort::start(&cfg);
    let n = 400;
    // users 0..n from DE (rule eu), then the same keys from JP (rule apac), then from US
    let countries = ["DE", "JP", "US"];
    let got = parallel(
        3 * n,
        4,
        move |cl, i| {
            let key = format!("user-{}", i % n);
            served(&cl.get(
                "/",
                &[
                    ("x-user-id", &key),
                    ("cloudfront-viewer-country", countries[i / n]),
                ],
            ))
        },
        px.addr,
    );
    let groups: [(&[(&str, f64)], &str); 3] = [
        (&[("stable", 50.0), ("canary", 50.0)], "rule:eu"),
        (&[("stable", 70.0), ("canary", 30.0)], "rule:apac"),
        (&[("stable", 99.0), ("canary", 1.0)], "hash"),
    ];
    let global = groups[2].0;
    let mut canary = [0usize; 3];
    let mut differs = [0usize; 3];
    for (i, (variant, reason)) in got.iter().enumerate() {
        let key = format!("user-{}", i % n);
        let (g, country) = (i / n, countries[i / n]);
        let (weights, want_reason) = groups[g];
        let want = expected_variant("api", weights, &key);
        assert_eq!(*variant, want, "{key} from {country}");
        assert_eq!(reason, want_reason, "{key} from {country}");
        canary[g] += usize::from(variant == "canary");
        differs[g] += usize::from(want != expected_variant("api", global, &key));
    }
    assert!(
        (160..=240).contains(&canary[0]),
        "about 50% of the DE users on canary: {}/{n}",
        canary[0]
    );
    assert!(
        (80..=160).contains(&canary[1]),
        "about 30% of the JP users on canary: {}/{n}",
        canary[1]
    );
    assert!(
        differs[0] > 100 && differs[1] > 50,
        "the rules' weights matter for many keys: {differs:?}"
    );
}

/// conf/region.toml with its addresses replaced by `@LISTEN@`, `@ADMIN@` and the backends.
fn region_config(s: &EchoBackend, c: &EchoBackend) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/region.toml");
    let text = std::fs::read_to_string(path).expect("read conf/region.toml");
    let mut out = text;
    for (from, to) in [
        ("\"0.0.0.0:8080\"", "\"@LISTEN@\"".to_string()),
        ("\"127.0.0.1:9090\"", "\"@ADMIN@\"".to_string()),
        ("\"10.0.1.10:8000\"", format!("\"{}\"", s.addr)),
        ("\"10.0.2.10:8000\"", format!("\"{}\"", c.addr)),
    ] {
        assert!(out.contains(from), "conf/region.toml mentions {from}");
        out = out.replace(from, &to);
    }
    out
}

const COUNTRIES: [&str; 30] = [
    "US", "GB", "DE", "FR", "NL", "JP", "CN", "IN", "BR", "CA", "AU", "ES", "IT", "SE", "NO", "DK",
    "FI", "PL", "CZ", "AT", "CH", "BE", "IE", "PT", "MX", "AR", "ZA", "KR", "SG", "NZ",
];

#[test]
fn region_toml_checkout_pins_each_whole_country_to_one_variant() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&region_config(&s, &c));
    let per_country = 20;
    let got = parallel(
        COUNTRIES.len() * per_country,
        4,
        move |cl, i| {
            let country = COUNTRIES[i / per_country];
            let user = format!("user-{i}");
            served(&cl.get(
                &format!("/checkout/cart?n={i}"),
                &[("cloudfront-viewer-country", country), ("x-user-id", &user)],
            ))
        },
        px.addr,
    );
    let mut by_country: HashMap<&str, HashSet<String>> = HashMap::new();
    for (i, (variant, reason)) in got.iter().enumerate() {
        let country = COUNTRIES[i / per_country];
        assert_eq!(reason, "hash", "{country}");
        by_country
            .entry(country)
            .or_default()
            .insert(variant.clone());
    }
    for country in COUNTRIES {
        let seen = &by_country[country];
        let want = expected_variant("checkout", &[("stable", 80.0), ("canary", 20.0)], country);
        assert_eq!(
            seen,
            &HashSet::from([want.clone()]),
            "all {per_country} users from {country} on {want}"
        );
    }
    let variants: HashSet<&String> = by_country.values().flatten().collect();
    assert_eq!(
        variants.len(),
        2,
        "30 countries at 80/20 are not all on one variant: {by_country:?}"
    );
    // the api service's `eu` rule does not apply to checkout; no country, no key
    let mut cl = px.client();
    let r = cl.get("/checkout/x", &[("x-user-id", "user-1")]);
    assert_eq!(served(&r), ("stable".to_string(), "no_key".to_string()));
}

#[test]
fn region_toml_api_resplits_eu_users_50_50_and_others_95_5() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&region_config(&s, &c));
    let eu = ["DE", "FR", "NL"];
    let other = ["US", "GB", "JP", "BR", ""];
    let n = 600;
    let got = parallel(
        n,
        4,
        move |cl, i| {
            let user = format!("u-{i}");
            let country = if i % 2 == 0 {
                eu[i / 2 % eu.len()]
            } else {
                other[i / 2 % other.len()]
            };
            let mut headers = vec![("x-user-id", user.as_str())];
            if !country.is_empty() {
                headers.push(("cloudfront-viewer-country", country));
            }
            served(&cl.get(&format!("/api/orders/{i}"), &headers))
        },
        px.addr,
    );
    let split = [("stable", 50.0), ("canary", 50.0)];
    let global = [("stable", 95.0), ("canary", 5.0)];
    let mut eu_variants: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut eu_canary = 0;
    for (i, (variant, reason)) in got.iter().enumerate() {
        let user = format!("u-{i}");
        if i % 2 == 0 {
            let country = eu[i / 2 % eu.len()];
            assert_eq!(
                *variant,
                expected_variant("api", &split, &user),
                "{user} from {country}"
            );
            assert_eq!(reason, "rule:eu", "{user} from {country}");
            eu_variants
                .entry(country)
                .or_default()
                .insert(variant.clone());
            eu_canary += usize::from(variant == "canary");
        } else {
            assert_eq!(
                *variant,
                expected_variant("api", &global, &user),
                "{user} from {:?}",
                other[i / 2 % other.len()]
            );
            assert_eq!(reason, "hash", "{user}");
        }
    }
    // users, not countries, are split: each EU country has users on both variants
    for country in eu {
        assert_eq!(eu_variants[country].len(), 2, "{country}: {eu_variants:?}");
    }
    assert!(
        (105..=195).contains(&eu_canary),
        "about half of 300 EU users on canary: {eu_canary}"
    );
}

fn two_variant_service(
    name: &str,
    salt: Option<&str>,
    canary_name: &str,
    s: &EchoBackend,
    c: &EchoBackend,
) -> String {
    let salt = salt.map_or(String::new(), |v| format!("salt = \"{v}\"\n"));
    format!(
        r#"
[[service]]
name = "{name}"
path_prefix = "/{name}/"
key = ["header:x-user-id"]
{salt}
[[service.variant]]
name = "stable"
weight = 50
backends = ["{}"]

[[service.variant]]
name = "{canary_name}"
weight = 50
backends = ["{}"]
"#,
        s.addr, c.addr
    )
}

#[test]
fn services_assign_independently_unless_salt_and_variants_are_shared() {
    let (s, c) = (backend("stable"), backend("canary"));
    let c2 = backend("canary2");
    let cfg = [
        SERVER.to_string(),
        two_variant_service("one", None, "canary", &s, &c),
        two_variant_service("two", None, "canary", &s, &c),
        two_variant_service("same-a", Some("shared"), "canary", &s, &c),
        two_variant_service("same-b", Some("shared"), "canary", &s, &c),
        two_variant_service("renamed", Some("shared"), "canary2", &s, &c2),
    ]
    .concat();
    let px = Cohort::start(&cfg);
    let services = ["one", "two", "same-a", "same-b", "renamed"];
    let n = 2000;
    let got: Vec<Vec<String>> = parallel(
        n,
        4,
        move |cl, i| {
            let key = format!("k{i}");
            services
                .iter()
                .map(|svc| {
                    let (variant, reason) =
                        served(&cl.get(&format!("/{svc}/x"), &[("x-user-id", &key)]));
                    assert_eq!(reason, "hash");
                    variant
                })
                .collect()
        },
        px.addr,
    );
    let default = [("stable", 50.0), ("canary", 50.0)];
    let renamed = [("stable", 50.0), ("canary2", 50.0)];
    let (mut same_default, mut same_shared, mut moved) = (0, 0, 0);
    for (i, v) in got.iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(v[0], expected_variant("one", &default, &key), "one {key}");
        assert_eq!(v[1], expected_variant("two", &default, &key), "two {key}");
        assert_eq!(v[2], expected_variant("shared", &default, &key), "{key}");
        assert_eq!(v[3], expected_variant("shared", &default, &key), "{key}");
        assert_eq!(v[4], expected_variant("shared", &renamed, &key), "{key}");
        same_default += usize::from(v[0] == v[1]);
        same_shared += usize::from(v[2] == v[3]);
        moved += usize::from((v[2] == "stable") != (v[4] == "stable"));
    }
    let frac = same_default as f64 / n as f64;
    assert!(
        (0.40..=0.60).contains(&frac),
        "default salts: {same_default}/{n} users in the same variant in both services"
    );
    assert_eq!(same_shared, n, "same salt, names and weights: all agree");
    assert!(
        moved >= n / 5,
        "renaming canary -> canary2 moves many users: {moved}/{n}"
    );
}

/// Services that each answer with their own backend name, to observe service selection.
/// Declared in the reverse of their precedence, so config order cannot explain a result.
fn hosts_config(b: &HashMap<&str, EchoBackend>) -> String {
    let svc = |name: &str, hosts: Option<&str>, prefix: &str| {
        let hosts = hosts.map_or(String::new(), |h| format!("hosts = {h}\n"));
        format!(
            "\n[[service]]\nname = \"{name}\"\n{hosts}path_prefix = \"{prefix}\"\n\n[[service.variant]]\nname = \"v\"\nweight = 1\nbackends = [\"{}\"]\n",
            b[name].addr
        )
    };
    [
        SERVER.to_string(),
        svc("any-x", None, "/x"),
        svc("wild-x", Some(r#"["*.example.com"]"#), "/x"),
        svc(
            "exact-x",
            Some(r#"["other.test", "API.example.com"]"#),
            "/x",
        ),
        svc("any-long", None, "/x/long"),
        svc("exact-root", Some(r#"["www.example.org"]"#), "/"),
    ]
    .concat()
}

const HOST_SERVICES: [&str; 5] = ["any-x", "wild-x", "exact-x", "any-long", "exact-root"];

#[test]
fn exact_host_beats_wildcard_beats_any_host_and_longer_prefix_beats_all() {
    let b: HashMap<&str, EchoBackend> = HOST_SERVICES.iter().map(|n| (*n, backend(n))).collect();
    let px = Cohort::start(&hosts_config(&b));
    let mut cl = px.client();
    let cases = [
        // equal prefix: exact > wildcard > any-host
        ("api.example.com", "/x", "exact-x"),
        ("api.example.com", "/x/a?q=1", "exact-x"),
        ("other.test", "/x", "exact-x"),
        ("web.example.com", "/x/a", "wild-x"),
        ("nothing.test", "/x/a", "any-x"),
        // case and port are ignored
        ("API.EXAMPLE.COM", "/x", "exact-x"),
        ("Api.Example.Com:8080", "/x", "exact-x"),
        ("api.example.com:1", "/x", "exact-x"),
        ("WEB.Example.COM:443", "/x", "wild-x"),
        // the wildcard covers every subdomain depth, but not the bare domain
        ("a.example.com", "/x", "wild-x"),
        ("a.b.example.com", "/x", "wild-x"),
        ("example.com", "/x", "any-x"),
        ("badexample.com", "/x", "any-x"),
        ("a.example.com.evil.test", "/x", "any-x"),
        // a longer prefix beats a more specific host; plain byte prefixes
        ("api.example.com", "/x/long", "any-long"),
        ("api.example.com", "/x/long/er", "any-long"),
        ("a.example.com", "/x/longer", "any-long"),
        ("api.example.com", "/x/lon", "exact-x"),
        ("api.example.com", "/xyz", "exact-x"),
        // "/" of an exact host loses to a longer any-host prefix, wins elsewhere
        ("www.example.org", "/x/1", "any-x"),
        ("www.example.org", "/y", "exact-root"),
        ("WWW.EXAMPLE.ORG:80", "/", "exact-root"),
    ];
    for (host, path, want) in cases {
        let r = cl.get(path, &[("host", host)]);
        assert_eq!(r.status, 200, "Host {host} {path}: {}", r.text());
        assert_eq!(r.backend(), want, "Host {host} {path}");
    }
}

#[test]
fn a_request_no_service_matches_gets_404_no_service() {
    let b: HashMap<&str, EchoBackend> = HOST_SERVICES.iter().map(|n| (*n, backend(n))).collect();
    let px = Cohort::start(&hosts_config(&b));
    let mut cl = px.client();
    // no host-less service covers "/" or "/y"; these hosts match no service there
    for (host, path) in [
        ("nothing.test", "/"),
        ("nothing.test", "/y/z?q=1"),
        ("api.example.com", "/"),
        ("example.org", "/y"),
        ("www.example.org.evil", "/"),
        ("a.b.example.com", "/X"),
    ] {
        let r = cl.get(path, &[("host", host)]);
        assert_eq!(r.status, 404, "Host {host} {path}: {}", r.text());
        let body = r.text();
        assert!(body.contains("no service"), "body {body:?}");
        assert!(body.len() < 200, "short body: {body:?}");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("text/plain")),
            "plain text: {:?}",
            r.headers
        );
        assert_eq!(r.header("x-cohort-variant"), None);
    }
    // the connection stays usable and matching requests still route
    let r = cl.get("/x", &[("host", "nothing.test")]);
    assert_eq!(r.backend(), "any-x");
}

#[test]
fn client_sent_cohort_headers_do_not_steer_rules_and_are_replaced() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = format!(
        "{SERVER}{}",
        pinned_service("staff", &s, &c, r#"client_cidr = ["10.0.0.0/8"]"#)
    );
    let px = Cohort::start(&cfg);
    let mut cl = px.client();
    let p = "/staff/x";
    for i in 0..20 {
        let user = format!("user-{i}");
        // an outsider claiming to be staff-pinned stays on the hash decision
        let r = cl.get(
            p,
            &[
                ("x-user-id", &user),
                ("x-forwarded-for", "203.0.113.5"),
                ("x-cohort-reason", "rule:staff"),
                ("X-Cohort-Variant", "canary"),
            ],
        );
        assert_eq!(
            served(&r),
            ("stable".to_string(), "hash".to_string()),
            "{user}"
        );
        assert_eq!(
            r.upstream_header("x-cohort-reason").as_deref(),
            Some("hash")
        );
        assert_eq!(
            r.upstream_header("x-cohort-variant").as_deref(),
            Some("stable")
        );
        // staff claiming otherwise is still pinned by the rule
        let r = cl.get(
            p,
            &[
                ("x-user-id", &user),
                ("x-forwarded-for", "10.7.7.7"),
                ("x-cohort-reason", "hash"),
                ("x-cohort-variant", "stable"),
            ],
        );
        assert_eq!(
            served(&r),
            ("canary".to_string(), "rule:staff".to_string()),
            "{user}"
        );
        assert_eq!(
            r.upstream_header("x-cohort-reason").as_deref(),
            Some("rule:staff")
        );
    }
}
