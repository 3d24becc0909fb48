//! Runs the routing decision of the criterion bench `decide/*` N times, for counting
//! instructions with callgrind (repeatable on a noisy machine, unlike time):
//! `scripts/callgrind-decide.sh` runs it twice and divides the difference.
//!
//! Usage: `decide_count N raw|map` (`raw`: the HTTP/1.1 fast path's header list; `map`: a
//! `HeaderMap`, as the Pingora path and `explain` see a request).

use cohort::config::Config;
use cohort::routing::{RequestView, RoutingTable};
use std::hint::black_box;

#[path = "../benches/support/decision.rs"]
mod decision;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let raw_view = args.next().as_deref() != Some("map");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n{}",
        decision::SERVICE
    );
    let table = RoutingTable::build(Config::parse(&text).expect("config")).expect("table");
    let headers = decision::realistic_headers("user-123456");
    let uri: http::Uri = "/v1/orders?page=2".parse().expect("uri");
    let peer = Some("203.0.113.9".parse().expect("ip"));
    let raw = decision::raw_head(&headers);
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    req.parse(&raw).expect("parse");
    let (target, list) = (req.path.expect("target"), &*req.headers);
    for _ in 0..n {
        let view = if raw_view {
            RequestView::raw(black_box(list), target, peer)
        } else {
            RequestView::new(black_box(&headers), &uri, peer)
        };
        let svc = table.router.match_service(&view).expect("service");
        black_box(table.router.decide(svc, &view));
    }
}
