#![allow(clippy::unwrap_used)]
//! End-to-end routing through the real binary with real backends on 127.0.0.1:
//! stickiness, shares, golden agreement, key chain, rules, cookies, forcing, headers.

mod common;
use common::*;

fn two_variant_config(
    stable: &EchoBackend,
    canary: &EchoBackend,
    sw: f64,
    cw: f64,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = ["@LISTEN@"]
admin = "@ADMIN@"
threads = 2
{extra_server}

[[service]]
name = "api"
key = ["header:x-user-id", "cookie:session", "query:uid", "ip"]
expose_header = "x-cohort-variant"
{extra}

[[service.variant]]
name = "stable"
weight = {sw}
backends = ["{s}"]

[[service.variant]]
name = "canary"
weight = {cw}
backends = ["{c}"]
"#,
        s = stable.addr,
        c = canary.addr,
        extra_server = "",
    )
}

#[test]
fn users_are_sticky_and_match_the_normative_function() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&two_variant_config(&s, &c, 90.0, 10.0, ""));
    let seen = parallel(
        300,
        4,
        |cl, i| {
            let key = format!("user-{i}");
            let vs: Vec<String> = (0..3)
                .map(|_| cl.get("/", &[("x-user-id", &key)]).backend())
                .collect();
            (key, vs)
        },
        px.addr,
    );
    for (key, vs) in seen {
        let want = expected_variant("api", &[("stable", 90.0), ("canary", 10.0)], &key);
        assert!(
            vs.iter().all(|v| *v == want),
            "{key}: got {vs:?}, want {want}"
        );
    }
}

#[test]
fn spec_golden_vectors_hold_end_to_end() {
    let (s, c) = (backend("stable"), backend("canary"));
    let table = [
        ("user-1", "stable", "stable"),
        ("user-27", "canary", "stable"),
        ("user-154", "canary", "canary"),
        ("alice", "stable", "stable"),
        ("203.0.113.7", "stable", "stable"),
    ];
    for (weights, col) in [((95.0, 5.0), 1), ((99.0, 1.0), 2)] {
        let px = Cohort::start(&two_variant_config(&s, &c, weights.0, weights.1, ""));
        let mut cl = px.client();
        for row in table {
            let want = if col == 1 { row.1 } else { row.2 };
            let r = cl.get("/", &[("x-user-id", row.0)]);
            assert_eq!(r.status, 200);
            assert_eq!(r.backend(), want, "{} at {weights:?}", row.0);
            assert_eq!(r.header("x-cohort-variant"), Some(want));
        }
    }
}

fn share_test(variants: &[(&str, f64)], n: usize) {
    let backends: Vec<EchoBackend> = variants.iter().map(|(name, _)| backend(name)).collect();
    let mut cfg = String::from(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\n\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n",
    );
    for ((name, w), b) in variants.iter().zip(&backends) {
        cfg += &format!(
            "\n[[service.variant]]\nname = \"{name}\"\nweight = {w}\nbackends = [\"{}\"]\n",
            b.addr
        );
    }
    let px = Cohort::start(&cfg);
    let got = parallel(
        n,
        4,
        |cl, i| cl.get("/", &[("x-user-id", &format!("k{i}"))]).backend(),
        px.addr,
    );
    let total: f64 = variants.iter().map(|(_, w)| w).sum();
    for (name, w) in variants {
        let count = got.iter().filter(|b| b == name).count();
        let share = count as f64 / n as f64 * 100.0;
        let want = w / total * 100.0;
        assert!(
            (share - want).abs() <= 1.5,
            "{name}: {share:.2}% vs {want:.2}% ({count}/{n})"
        );
    }
    // and every single request agrees with the normative function
    for (i, b) in got.iter().enumerate() {
        assert_eq!(
            *b,
            expected_variant("api", variants, &format!("k{i}")),
            "key k{i}"
        );
    }
}

#[test]
fn shares_90_10_within_1_5_points_over_20000_keys() {
    share_test(&[("stable", 90.0), ("canary", 10.0)], 20_000);
}

#[test]
fn shares_70_20_10_within_1_5_points_over_20000_keys() {
    share_test(
        &[("stable", 70.0), ("canary", 20.0), ("beta", 10.0)],
        20_000,
    );
}

#[test]
fn key_chain_is_header_then_cookie_then_query_then_ip() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&two_variant_config(&s, &c, 50.0, 50.0, ""));
    let mut cl = px.client();
    let v = |k: &str| expected_variant("api", &[("stable", 50.0), ("canary", 50.0)], k);
    // Find keys a and b on different variants so each source is observable.
    let (a, b) = (0..)
        .map(|i| (format!("a{i}"), format!("b{i}")))
        .find(|(a, b)| v(a) != v(b))
        .unwrap();
    let r = cl.get(
        "/",
        &[("x-user-id", &a), ("cookie", &format!("session={b}"))],
    );
    assert_eq!(r.backend(), v(&a), "header beats cookie");
    assert_eq!(
        r.upstream_header("x-cohort-reason").as_deref(),
        Some("hash")
    );
    let r = cl.get(
        &format!("/?uid={a}"),
        &[("cookie", &format!("session={b}"))],
    );
    assert_eq!(r.backend(), v(&b), "cookie beats query");
    let r = cl.get(&format!("/?uid={a}"), &[("x-user-id", "   ")]);
    assert_eq!(r.backend(), v(&a), "blank header is absent; query used");
    let r = cl.get("/x?uid=%61%62", &[]);
    assert_eq!(r.backend(), v("ab"), "query value is percent-decoded");
    let r = cl.get("/", &[]);
    assert_eq!(r.backend(), v("127.0.0.1"), "ip is the last resort");
    assert_eq!(
        r.upstream_header("x-cohort-reason").as_deref(),
        Some("hash")
    );
}

#[test]
fn no_key_goes_to_first_positive_variant() {
    let (s, c, b) = (backend("zero"), backend("canary"), backend("stable"));
    let cfg = format!(
        r#"
[server]
listen = ["@LISTEN@"]
admin = "@ADMIN@"
threads = 1
[[service]]
name = "api"
key = ["header:x-user-id"]
[[service.variant]]
name = "zero"
weight = 0
backends = ["{}"]
[[service.variant]]
name = "canary"
weight = 1
backends = ["{}"]
[[service.variant]]
name = "stable"
weight = 99
backends = ["{}"]
"#,
        s.addr, c.addr, b.addr
    );
    let px = Cohort::start(&cfg);
    let r = px.client().get("/", &[]);
    assert_eq!(r.backend(), "canary");
    assert_eq!(
        r.upstream_header("x-cohort-reason").as_deref(),
        Some("no_key")
    );
}

#[test]
fn client_cohort_headers_are_replaced_and_forwarding_headers_set() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&two_variant_config(&s, &c, 100.0, 0.0, ""));
    let r = px.client().get(
        "/p?q=1",
        &[
            ("x-user-id", "u1"),
            ("x-cohort-variant", "canary"),
            ("X-Cohort-Reason", "forced"),
            ("x-cohort-anything", "1"),
            ("x-forwarded-for", "198.51.100.1"),
        ],
    );
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["backend"], "stable");
    assert_eq!(j["target"], "/p?q=1");
    assert_eq!(
        r.upstream_header("x-cohort-variant").as_deref(),
        Some("stable")
    );
    assert_eq!(
        r.upstream_header("x-cohort-reason").as_deref(),
        Some("hash")
    );
    assert_eq!(r.upstream_header("x-cohort-anything"), None);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("198.51.100.1, 127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(r.header("x-cohort-variant"), Some("stable"));
}

/// Every request reaches the backend with one `X-Request-Id`: the client's, else an
/// ALB's `X-Amzn-Trace-Id`, else a new random one; `traceparent` passes untouched.
#[test]
fn every_request_carries_one_request_id_to_the_backend() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&two_variant_config(&s, &c, 100.0, 0.0, ""));
    let mut cl = px.client();
    let id = |cl: &mut Client, headers: &[(&str, &str)]| {
        let r = cl.get("/", headers);
        assert_eq!(r.status, 200);
        (r.upstream_header("x-request-id").expect("an id"), r)
    };
    let (a, _) = id(&mut cl, &[]);
    let (b, _) = id(&mut cl, &[]);
    assert_eq!(a.len(), 32, "{a}");
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_ne!(a, b, "a new id per request");
    let (mine, _) = id(&mut cl, &[("X-Request-Id", "req-42.abc")]);
    assert_eq!(mine, "req-42.abc", "the client's id passes, and only it");
    let trace = "Root=1-67891233-abcdef012345678912345678";
    let (adopted, r) = id(&mut cl, &[("x-amzn-trace-id", trace)]);
    assert_eq!(adopted, trace, "an ALB's trace id is adopted");
    assert_eq!(r.upstream_header("x-amzn-trace-id").as_deref(), Some(trace));
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (_, r) = id(&mut cl, &[("traceparent", tp)]);
    assert_eq!(r.upstream_header("traceparent").as_deref(), Some(tp));
    let (replaced, _) = id(&mut cl, &[("x-request-id", "not usable")]);
    assert_eq!(
        replaced.len(),
        32,
        "an unusable id is replaced, not doubled: {replaced}"
    );
}

#[test]
fn anonymous_users_get_a_sticky_cookie() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = two_variant_config(
        &s,
        &c,
        50.0,
        50.0,
        "assign_cookie = \"cohort_id\"\ncookie_max_age_secs = 3600",
    )
    .replace("\"query:uid\", \"ip\"", "\"query:uid\"");
    let px = Cohort::start(&cfg);
    let mut cl = px.client();
    let mut variants = std::collections::HashSet::new();
    for _ in 0..40 {
        let r = cl.get("/", &[]);
        let set = r.header("set-cookie").expect("a new id is set").to_string();
        let (pair, attrs) = set.split_once("; ").unwrap();
        assert_eq!(attrs, "Path=/; Max-Age=3600; HttpOnly; SameSite=Lax");
        let id = pair.strip_prefix("cohort_id=").unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let first = r.backend();
        assert_eq!(
            first,
            expected_variant("api", &[("stable", 50.0), ("canary", 50.0)], id)
        );
        assert_eq!(
            r.upstream_header("x-cohort-reason").as_deref(),
            Some("cookie")
        );
        variants.insert(first.clone());
        for _ in 0..3 {
            let again = cl.get("/", &[("cookie", &format!("other=1; cohort_id={id}"))]);
            assert_eq!(again.backend(), first);
            assert_eq!(
                again.header("set-cookie"),
                None,
                "no new cookie when one is sent"
            );
            assert_eq!(
                again.upstream_header("x-cohort-reason").as_deref(),
                Some("cookie")
            );
        }
    }
    assert_eq!(
        variants.len(),
        2,
        "40 random ids land on both 50/50 variants"
    );
    let keyed = cl.get("/", &[("x-user-id", "alice")]);
    assert_eq!(
        keyed.header("set-cookie"),
        None,
        "never for a request that has a key"
    );
}

#[test]
fn force_header_honoured_only_from_force_from_and_always_stripped() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = two_variant_config(
        &s,
        &c,
        100.0,
        0.0,
        "force_header = \"x-force\"\nforce_from = [\"192.0.2.0/24\"]",
    )
    .replace(
        "threads = 2",
        "threads = 2\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let px = Cohort::start(&cfg);
    let mut cl = px.client();
    let r = cl.get(
        "/",
        &[("x-force", "canary"), ("x-forwarded-for", "192.0.2.10")],
    );
    assert_eq!(r.backend(), "canary");
    assert_eq!(
        r.upstream_header("x-cohort-reason").as_deref(),
        Some("forced")
    );
    assert_eq!(
        r.upstream_header("x-force"),
        None,
        "stripped before proxying"
    );
    let r = cl.get(
        "/",
        &[("x-force", "canary"), ("x-forwarded-for", "203.0.113.5")],
    );
    assert_eq!(r.backend(), "stable", "untrusted client cannot force");
    assert_eq!(
        r.upstream_header("x-force"),
        None,
        "stripped even when not honoured"
    );
    let r = cl.get(
        "/",
        &[
            ("x-force", "nonexistent"),
            ("x-forwarded-for", "192.0.2.10"),
        ],
    );
    assert_eq!(r.backend(), "stable", "unknown variant names are ignored");
}

#[test]
fn consistent_balance_keeps_a_key_on_its_backend() {
    let pool: Vec<EchoBackend> = (0..4).map(|i| backend(&format!("b{i}"))).collect();
    let list: Vec<String> = pool.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbalance = \"consistent\"\nbackends = [{}]\n",
        list.join(", ")
    );
    let px = Cohort::start(&cfg);
    let mut cl = px.client();
    let mut used = std::collections::HashSet::new();
    for i in 0..100 {
        let key = format!("user-{i}");
        let first = cl.get("/", &[("x-user-id", &key)]).backend();
        for _ in 0..4 {
            assert_eq!(
                cl.get("/", &[("x-user-id", &key)]).backend(),
                first,
                "{key}"
            );
        }
        used.insert(first);
    }
    assert_eq!(used.len(), 4, "100 keys spread over all 4 backends");
}

#[test]
fn connect_failure_retries_once_on_another_backend_of_the_variant() {
    let good = backend("stable");
    let dead = closed_addr();
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{dead}\", \"{}\"]\n",
        good.addr
    );
    let px = Cohort::start(&cfg);
    let mut cl = px.client();
    for i in 0..20 {
        let r = cl.get("/", &[("x-user-id", &format!("u{i}"))]);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.backend(), "stable");
    }
}

#[test]
fn dead_only_backend_gives_502_then_is_ejected_with_503_and_retry_after() {
    let dead = closed_addr();
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{dead}\"]\n"
    );
    let px = Cohort::start(&cfg);
    let r = px.client().get("/", &[]);
    assert_eq!(r.status, 502);
    assert!(r.text().contains("bad gateway"), "{}", r.text());
    // passively ejected for 10 s: no healthy backend, no fallback
    let r = px.client().get("/", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("no healthy backend"), "{}", r.text());
}

#[test]
fn two_instances_agree_on_every_key() {
    let (s, c, b) = (backend("stable"), backend("canary"), backend("beta"));
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 80\nbackends = [\"{}\"]\n[[service.variant]]\nname = \"canary\"\nweight = 15\nbackends = [\"{}\"]\n[[service.variant]]\nname = \"beta\"\nweight = 5\nbackends = [\"{}\"]\n",
        s.addr, c.addr, b.addr
    );
    let (p1, p2) = (Cohort::start(&cfg), Cohort::start(&cfg));
    let one = parallel(
        2000,
        2,
        |cl, i| cl.get("/", &[("x-user-id", &format!("id-{i}"))]).backend(),
        p1.addr,
    );
    let two = parallel(
        2000,
        2,
        |cl, i| cl.get("/", &[("x-user-id", &format!("id-{i}"))]).backend(),
        p2.addr,
    );
    let differ = one.iter().zip(&two).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "instances disagree on {differ} of 2000 keys");
    assert!(one.iter().any(|v| v == "beta") && one.iter().any(|v| v == "canary"));
}

#[test]
fn admin_healthz_answers_200() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&two_variant_config(&s, &c, 1.0, 1.0, ""));
    let mut a = px.admin_client();
    assert_eq!(a.get("/healthz", &[]).status, 200);
    assert_eq!(a.get("/nope", &[]).status, 404);
}
