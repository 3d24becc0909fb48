//! `cohort simulate -c FILE --against FILE2 --samples SAMPLES`: every recorded request
//! ([`crate::sample`]) is rebuilt and routed through both configs by the proxy's own
//! [`Router::match_service`] and [`Router::decide`], so the result is exact for that
//! request mix: rules, keys, cookies, forced variants and service matching included.
//! Only health is left out (no `fallback`): it depends on the backends at the time.

use crate::config::Config;
use crate::routing::Router;
use crate::sample::{Fields, Sample};
use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use xxhash_rust::xxh3::xxh3_64;

/// Where one request goes under one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `None`: no service matches (404).
    pub service: Option<String>,
    pub variant: String,
    /// The SPEC `reason` (`hash`, `rule:NAME`, `cookie`, `forced`, `no_key`).
    pub reason: String,
    /// A hash of the user's cohort key under this config (`None`: no key).
    pub user: Option<u64>,
}

/// Label of a request that matches no service.
pub const NO_SERVICE: &str = "(404)";

/// One service's replay: requests by (variant under FILE, destination under FILE2).
#[derive(Debug, Clone, Default)]
pub struct ServiceReplay {
    pub service: String,
    /// Row labels: the service's variants in FILE (plus [`NO_SERVICE`]).
    pub from: Vec<String>,
    /// Column labels: the service's variants in FILE2, then `other-service/variant` or
    /// [`NO_SERVICE`] for requests FILE2 sends elsewhere.
    pub to: Vec<String>,
    pub counts: BTreeMap<(String, String), u64>,
    /// Moved requests by (reason under FILE, reason under FILE2).
    pub moves_by_reason: BTreeMap<(String, String), u64>,
    pub requests: u64,
    pub moved: u64,
    /// Distinct cohort keys (under FILE) of the requests, and of those that move.
    pub users: HashSet<u64>,
    pub moved_users: HashSet<u64>,
}

impl ServiceReplay {
    pub fn cell(&self, from: &str, to: &str) -> u64 {
        self.counts
            .get(&(from.to_string(), to.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// The whole replay.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub samples: u64,
    /// Per service, in FILE's order (then services only FILE2 matches).
    pub services: Vec<ServiceReplay>,
    /// Samples whose recorded decision differs from FILE's.
    pub disagree: u64,
    /// Samples that recorded a decision.
    pub recorded: u64,
    /// Fields FILE or FILE2 reads that samples did not record: field → samples.
    pub unrecorded: BTreeMap<String, u64>,
}

/// A bad line of a samples file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Routes one sample through `router`.
fn route(
    router: &Router,
    sample: &Sample,
    minted: &mut Option<(String, String)>,
) -> Result<Outcome, String> {
    let mut req = sample.rebuild()?;
    if let Some((name, id)) = minted.as_ref() {
        req.add_cookie(name, id);
    }
    let view = req.view();
    let Some(svc) = router.match_service(&view) else {
        return Ok(Outcome {
            service: None,
            variant: NO_SERVICE.to_string(),
            reason: NO_SERVICE.to_string(),
            user: None,
        });
    };
    let s = &router.services[svc];
    let d = router.decide(svc, &view);
    // A request with no key gets a fresh id; the other side must hash the same one.
    if let (Some(id), Some(name), None) = (&d.new_cookie, &s.cfg.assign_cookie, minted.as_ref()) {
        *minted = Some((name.clone(), id.as_str().to_string()));
    }
    let user = match &d.new_cookie {
        Some(id) => Some(xxh3_64(id.as_str().as_bytes())),
        None => s
            .find_key(&view, router.client_ip(&view))
            .map(|(k, _)| xxh3_64(k.as_bytes())),
    };
    Ok(Outcome {
        service: Some(s.cfg.name.clone()),
        variant: s.variant_name(d.variant).to_string(),
        reason: s.reason_str(d.reason).to_string(),
        user,
    })
}

/// Replays the samples read from `input` (one JSON object per line; blank lines and
/// lines starting with `#` are skipped) through `a` and `b`. The first bad line stops it.
pub fn replay(a: &Config, b: &Config, input: impl BufRead) -> Result<Replay, LineError> {
    let (ra, rb) = (Router::new(a), Router::new(b));
    let (fa, fb) = (Fields::of(a), Fields::of(b));
    let mut r = Replay::default();
    for svc in &ra.services {
        r.services.push(ServiceReplay {
            service: svc.cfg.name.clone(),
            from: svc.cfg.variants.iter().map(|v| v.name.clone()).collect(),
            to: rb
                .service_by_name(&svc.cfg.name)
                .map(|i| {
                    rb.services[i]
                        .cfg
                        .variants
                        .iter()
                        .map(|v| v.name.clone())
                        .collect()
                })
                .unwrap_or_default(),
            ..ServiceReplay::default()
        });
    }
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let err = |message: String| LineError { line: n, message };
        let line = line.map_err(|e| err(format!("cannot read: {e}")))?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let sample = Sample::parse(text).map_err(err)?;
        let mut minted = None;
        let old = route(&ra, &sample, &mut minted).map_err(err)?;
        let new = route(&rb, &sample, &mut minted).map_err(err)?;
        r.samples += 1;
        for (fields, file) in [(&fa, "FILE"), (&fb, "FILE2")] {
            for f in fields.missing_in(&sample) {
                *r.unrecorded
                    .entry(format!("{f} (read by {file})"))
                    .or_default() += 1;
            }
        }
        if let Some(v) = &sample.variant {
            r.recorded += 1;
            if sample.service != old.service
                || *v != old.variant
                || sample.reason.as_ref() != Some(&old.reason)
            {
                r.disagree += 1;
            }
        }
        r.add(old, new);
    }
    r.services.retain(|s| s.requests > 0);
    Ok(r)
}

impl Replay {
    fn add(&mut self, old: Outcome, new: Outcome) {
        // Grouped by the service FILE sends the request to (else FILE2's).
        let group = old
            .service
            .clone()
            .or_else(|| new.service.clone())
            .unwrap_or_else(|| NO_SERVICE.to_string());
        let i = match self.services.iter().position(|s| s.service == group) {
            Some(i) => i,
            None => {
                self.services.push(ServiceReplay {
                    service: group.clone(),
                    ..ServiceReplay::default()
                });
                self.services.len() - 1
            }
        };
        let s = &mut self.services[i];
        let label = |o: &Outcome| match &o.service {
            None => NO_SERVICE.to_string(),
            Some(name) if *name == group => o.variant.clone(),
            Some(name) => format!("{name}/{}", o.variant),
        };
        let (from, to) = (label(&old), label(&new));
        for (labels, l) in [(&mut s.from, &from), (&mut s.to, &to)] {
            if !labels.contains(l) {
                labels.push(l.clone());
            }
        }
        s.requests += 1;
        s.users.extend(old.user);
        if from != to {
            s.moved += 1;
            s.moved_users.extend(old.user);
            *s.moves_by_reason
                .entry((old.reason, new.reason))
                .or_default() += 1;
        }
        *s.counts.entry((from, to)).or_default() += 1;
    }

    /// The report `cohort simulate --samples` prints.
    pub fn text(&self, samples_file: &str) -> String {
        let mut out = format!(
            "replay of {} request samples from {samples_file}: each routed through both configs by the proxy's decision code (exact for this request mix; backend health is not replayed)\n\n",
            self.samples
        );
        for s in &self.services {
            out += &service_text(s);
            out.push('\n');
        }
        if self.recorded > 0 && self.disagree > 0 {
            out += &format!(
                "note: {} of {} samples were recorded with another decision than FILE gives: FILE may not be the config that served them\n",
                self.disagree, self.recorded
            );
        }
        for (field, n) in &self.unrecorded {
            out += &format!(
                "warning: {n} of {} samples did not record {field}: the replay takes it as not sent\n",
                self.samples
            );
        }
        out
    }
}

fn service_text(s: &ServiceReplay) -> String {
    let mut out = format!(
        "service {}: {} of {} requests move ({:.3}%)\n",
        s.service,
        s.moved,
        s.requests,
        s.moved as f64 / s.requests.max(1) as f64 * 100.0
    );
    if !s.users.is_empty() {
        out += &format!(
            "users (distinct cohort keys under FILE): {} of {} move ({:.3}%)\n",
            s.moved_users.len(),
            s.users.len(),
            s.moved_users.len() as f64 / s.users.len() as f64 * 100.0
        );
    }
    out += "from \\ to            ";
    let width = s.to.iter().map(|t| t.len() + 2).max().unwrap_or(12).max(12);
    for to in &s.to {
        out += &format!("{to:>width$}");
    }
    out.push('\n');
    for from in &s.from {
        out += &format!("{from:<20}");
        for to in &s.to {
            out += &format!("{:>width$}", s.cell(from, to));
        }
        out.push('\n');
    }
    if !s.moves_by_reason.is_empty() {
        out += "moves by reason (FILE -> FILE2):\n";
        let mut rows: Vec<_> = s.moves_by_reason.iter().collect();
        rows.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
        for ((a, b), n) in rows {
            out += &format!("  {:<40} {n:>10}\n", format!("{a} -> {b}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rules: &str) -> Config {
        Config::parse(&format!(
            "[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n\
             [[service.variant]]\nname = \"stable\"\nweight = 95\nbackends = [\"127.0.0.1:1\"]\n\
             [[service.variant]]\nname = \"canary\"\nweight = 5\nbackends = [\"127.0.0.1:2\"]\n{rules}"
        ))
        .unwrap()
    }

    const EU_SPLIT: &str = "[[service.rule]]\nname = \"eu\"\nheader = { name = \"x-country\", in = [\"DE\"] }\nweights = { canary = 50, stable = 50 }\n";
    const EU_PIN: &str = "[[service.rule]]\nname = \"eu\"\nheader = { name = \"x-country\", in = [\"DE\"] }\nvariant = \"canary\"\n";

    fn sample(user: &str, country: Option<&str>) -> String {
        let c = country.map_or("null".to_string(), |c| format!("{c:?}"));
        format!(r#"{{"path":"/","headers":{{"x-user-id":{user:?},"x-country":{c}}}}}"#)
    }

    #[test]
    fn matched_requests_move_by_the_rule_and_others_stay() {
        let (a, b) = (config(EU_SPLIT), config(EU_PIN));
        let router = Router::new(&a);
        let mut lines = String::from("# comment\n\n");
        let mut stable_de = 0;
        for i in 0..200 {
            let user = format!("u{i}");
            let country = (i % 2 == 0).then_some("DE");
            lines += &sample(&user, country);
            lines.push('\n');
            if country.is_some() {
                let s = Sample::parse(&sample(&user, country)).unwrap();
                let req = s.rebuild().unwrap();
                if router.decide(0, &req.view()).variant == 0 {
                    stable_de += 1;
                }
            }
        }
        let r = replay(&a, &b, lines.as_bytes()).unwrap();
        assert_eq!(r.samples, 200);
        let s = &r.services[0];
        assert_eq!(s.requests, 200);
        assert_eq!(s.moved, stable_de);
        assert_eq!(s.cell("stable", "canary"), stable_de);
        assert_eq!(s.cell("canary", "stable"), 0);
        assert_eq!(
            s.moves_by_reason
                .get(&("rule:eu".to_string(), "rule:eu".to_string())),
            Some(&stable_de)
        );
        assert!(stable_de > 20, "{stable_de}");
        assert!(r.unrecorded.is_empty(), "{:?}", r.unrecorded);
        assert_eq!(
            (s.users.len(), s.moved_users.len() as u64),
            (200, stable_de)
        );
        assert!(r
            .text("s.jsonl")
            .contains(&format!("service api: {stable_de} of 200 requests move")));
    }

    #[test]
    fn removing_a_rule_moves_its_requests_to_the_hash() {
        let (a, b) = (config(EU_PIN), config(""));
        let text: String = (0..100)
            .map(|i| sample(&format!("u{i}"), Some("DE")) + "\n")
            .collect();
        let r = replay(&a, &b, text.as_bytes()).unwrap();
        let s = &r.services[0];
        let rb = Router::new(&b);
        let to_stable = (0..100)
            .filter(|i| {
                let req = Sample::parse(&sample(&format!("u{i}"), Some("DE")))
                    .unwrap()
                    .rebuild()
                    .unwrap();
                rb.decide(0, &req.view()).variant == 0
            })
            .count() as u64;
        assert_eq!(s.cell("canary", "stable"), to_stable);
        assert_eq!(s.cell("canary", "canary"), 100 - to_stable);
        assert_eq!(s.moved, to_stable);
        assert_eq!(
            s.moves_by_reason.get(&("rule:eu".into(), "hash".into())),
            Some(&to_stable)
        );
        assert!(to_stable > 80, "{to_stable}");
    }

    #[test]
    fn a_user_whose_requests_partly_move_counts_once() {
        let (a, b) = (config(EU_SPLIT), config(EU_PIN));
        // Find a user the 50/50 split puts on stable: its German requests move.
        let router = Router::new(&a);
        let user = (0..100)
            .map(|i| format!("u{i}"))
            .find(|u| {
                let req = Sample::parse(&sample(u, Some("DE")))
                    .unwrap()
                    .rebuild()
                    .unwrap();
                router.decide(0, &req.view()).variant == 0
            })
            .unwrap();
        let text = [Some("DE"), None, Some("DE"), None]
            .iter()
            .map(|c| sample(&user, *c) + "\n")
            .collect::<String>();
        let r = replay(&a, &b, text.as_bytes()).unwrap();
        let s = &r.services[0];
        assert_eq!((s.requests, s.moved), (4, 2));
        assert_eq!((s.users.len(), s.moved_users.len()), (1, 1));
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let (a, b) = (config(""), config(""));
        let text = format!("{}\nnot json\n", sample("u1", None));
        let e = replay(&a, &b, text.as_bytes()).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let text = r#"{"headers":{"x-user-id":"bad\u0001value"}}"#;
        let e = replay(&a, &b, text.as_bytes()).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("headers.x-user-id"), "{e}");
    }

    #[test]
    fn unrecorded_fields_and_other_decisions_are_reported() {
        let (a, b) = (config(""), config(EU_PIN));
        let text = r#"{"service":"api","variant":"canary","reason":"hash","path":"/","headers":{"x-user-id":"u1"}}"#;
        let r = replay(&a, &b, text.as_bytes()).unwrap();
        assert_eq!(
            r.unrecorded.get("header:x-country (read by FILE2)"),
            Some(&1)
        );
        let router = Router::new(&a);
        let req = Sample::parse(text).unwrap().rebuild().unwrap();
        let canary = router.decide(0, &req.view()).variant == 1;
        assert_eq!(r.disagree, u64::from(!canary));
    }

    #[test]
    fn a_request_another_service_takes_is_a_move() {
        let a = config("");
        let b = Config::parse(
            "[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n\
             [[service.variant]]\nname = \"stable\"\nweight = 95\nbackends = [\"127.0.0.1:1\"]\n\
             [[service.variant]]\nname = \"canary\"\nweight = 5\nbackends = [\"127.0.0.1:2\"]\n\
             [[service]]\nname = \"v2\"\npath_prefix = \"/v2\"\n\
             [[service.variant]]\nname = \"new\"\nweight = 1\nbackends = [\"127.0.0.1:3\"]\n",
        )
        .unwrap();
        let text = r#"{"path":"/v2/x","headers":{"x-user-id":"u1"}}"#;
        let r = replay(&a, &b, text.as_bytes()).unwrap();
        let s = &r.services[0];
        assert_eq!(s.moved, 1);
        assert!(s.to.contains(&"v2/new".to_string()), "{s:?}");
    }
}
