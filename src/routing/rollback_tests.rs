//! The router under a rollout's effective weights: hashing follows them; rolled back, a
//! rule pinning to the canary gives the baseline with reason `rollback`, while
//! `force_header` still reaches the canary.

use super::router::{Reason, Router};
use super::RequestView;
use crate::config::Config;
use crate::rollout::Effective;
use http::{HeaderMap, HeaderValue, Uri};

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:18080"]
[[service]]
name = "api"
key = ["header:x-user-id"]
force_header = "x-force"
force_from = ["127.0.0.0/8"]
[[service.rule]]
name = "staff"
header = { name = "x-staff", present = true }
variant = "canary"
[[service.variant]]
name = "stable"
weight = 50
backends = ["127.0.0.1:1"]
[[service.variant]]
name = "canary"
weight = 50
backends = ["127.0.0.1:2"]
[service.rollout]
id = "v2"
canary = "canary"
baseline = "stable"
steps = [10, 50]
"#;

fn decide(router: &Router, headers: &[(&'static str, &'static str)]) -> (usize, Reason) {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, HeaderValue::from_static(v));
    }
    let uri = Uri::from_static("/");
    let view = RequestView::new(&map, &uri, Some([127, 0, 0, 1].into()));
    let d = router.decide(0, &view);
    (d.variant, d.reason)
}

#[test]
fn hashing_follows_the_effective_weights_and_rollback_suspends_rules_only() {
    let router = Router::new(&Config::parse(CONFIG).unwrap());
    let s = &router.services[0];
    // Before any state is applied: the first step (10%), not the configured 50%.
    assert_eq!(s.rollout.as_ref().unwrap().load().weights, [90.0, 10.0]);
    s.set_effective(Effective {
        weights: vec![0.0, 100.0],
        suspended: None,
    });
    assert_eq!(decide(&router, &[("x-user-id", "u1")]), (1, Reason::Hash));
    assert_eq!(decide(&router, &[("x-staff", "1")]), (1, Reason::Rule(0)));
    s.set_effective(Effective {
        weights: vec![100.0, 0.0],
        suspended: Some((1, 0)),
    });
    assert_eq!(decide(&router, &[("x-user-id", "u1")]), (0, Reason::Hash));
    assert_eq!(decide(&router, &[("x-staff", "1")]), (0, Reason::Rollback));
    assert_eq!(s.reason_str(Reason::Rollback), "rollback");
    assert_eq!(
        decide(&router, &[("x-force", "canary"), ("x-staff", "1")]),
        (1, Reason::Forced)
    );
}
