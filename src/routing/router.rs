//! The routing decision (SPEC "Service matching" and "Decision order"): a pure function of
//! the compiled [`Router`] and a [`RequestView`]. The live proxy, `cohort explain` and
//! `GET /explain` all call [`Router::match_service`] and [`Router::decide`].

use super::cohort;
use super::key::{client_ip, find_key, KeyBytes, KeyFrom};
use super::request::RequestView;
use super::rules::matches;
use super::service_index::ServiceIndex;
use crate::config::{Config, RuleAction, ServiceConfig};
use crate::rollout::Effective;
use arc_swap::ArcSwap;
use ipnet::IpNet;
use std::net::IpAddr;

/// Why a request got its variant; `as_str` gives the SPEC `reason` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Forced,
    /// Index of the rule that decided.
    Rule(usize),
    Hash,
    Cookie,
    NoKey,
    /// The assigned variant had no healthy backend; `fallback` served.
    Fallback,
    /// A rule pinned the user to a rolled-back canary: the baseline served (SPEC
    /// "Progressive rollout").
    Rollback,
}

/// A fresh anonymous id: 128 random bits as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CookieId([u8; 32]);

impl CookieId {
    pub fn random() -> CookieId {
        let bits: u128 = rand::random();
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            let nibble = ((bits >> (124 - 4 * i)) & 0xf) as usize;
            *b = b"0123456789abcdef"[nibble];
        }
        CookieId(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for CookieId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub variant: usize,
    pub reason: Reason,
    /// Where the hashed key came from (`None`: forced, pinned by a rule without a key,
    /// no key, or a freshly minted cookie id).
    pub key_from: Option<KeyFrom>,
    /// Set when a new anonymous id was minted: send it in `Set-Cookie`.
    pub new_cookie: Option<CookieId>,
    /// Rule whose `weights` were hashed (`None`: the variants' own weights).
    pub weights_rule: Option<usize>,
    /// Stable per-user hash for `balance = "consistent"` inside the pool.
    pub pool_key: u64,
}

/// One compiled service: config plus precomputed seeds and labels.
#[derive(Debug)]
pub struct Service {
    pub cfg: ServiceConfig,
    pub seeds: Vec<u64>,
    pub weights: Vec<f64>,
    /// `rule:<name>` per rule, for headers and metric labels.
    pub rule_labels: Vec<String>,
    /// Header values built once per table (cloning one only bumps a reference count):
    /// variant names, and `rule:<name>` per rule.
    pub variant_values: Vec<http::HeaderValue>,
    pub rule_values: Vec<http::HeaderValue>,
    /// With a `[service.rollout]`: the effective weights and suspension, replaced whole
    /// when the rollout's state changes (read once per decision, never computed there).
    pub rollout: Option<ArcSwap<Effective>>,
}

impl Service {
    fn new(cfg: ServiceConfig) -> Service {
        let seeds = cfg
            .variants
            .iter()
            .map(|v| cohort::variant_seed(&cfg.salt, &v.name))
            .collect();
        let weights: Vec<f64> = cfg.variants.iter().map(|v| v.weight).collect();
        let rule_labels: Vec<String> = cfg
            .rules
            .iter()
            .map(|r| format!("rule:{}", r.name))
            .collect();
        // Names are validated to [A-Za-z0-9._-]: always valid header values.
        let value = |s: &str| {
            http::HeaderValue::from_str(s).unwrap_or_else(|_| http::HeaderValue::from_static(""))
        };
        let variant_values = cfg.variants.iter().map(|v| value(&v.name)).collect();
        let rule_values = rule_labels.iter().map(|l| value(l)).collect();
        // Until the rollout's state is applied (before the table serves), its first step.
        let rollout = cfg.rollout.as_ref().map(|r| {
            let first = r.steps.first().copied().unwrap_or(100.0);
            let weights =
                crate::rollout::shares::weights(&weights, r.canary.index, r.baseline.index, first);
            ArcSwap::from_pointee(Effective {
                weights,
                suspended: None,
            })
        });
        Service {
            rollout,
            cfg,
            seeds,
            weights,
            rule_labels,
            variant_values,
            rule_values,
        }
    }

    /// The request's cohort key for this service (SPEC "Decision order" steps 3–5).
    pub fn find_key<'a>(
        &self,
        req: &RequestView<'a>,
        client_ip: Option<IpAddr>,
    ) -> Option<(KeyBytes<'a>, KeyFrom)> {
        find_key(
            &self.cfg.keys,
            self.cfg.assign_cookie.as_deref(),
            req,
            client_ip,
        )
    }

    /// The SPEC `reason` text.
    pub fn reason_str(&self, r: Reason) -> &str {
        match r {
            Reason::Forced => "forced",
            Reason::Rule(i) => self.rule_labels.get(i).map_or("rule", String::as_str),
            Reason::Hash => "hash",
            Reason::Cookie => "cookie",
            Reason::NoKey => "no_key",
            Reason::Fallback => "fallback",
            Reason::Rollback => "rollback",
        }
    }

    /// Replaces the effective weights of this service's rollout (no-op without one).
    pub fn set_effective(&self, e: Effective) {
        if let Some(cell) = &self.rollout {
            cell.store(std::sync::Arc::new(e));
        }
    }

    /// The `x-cohort-variant` value of variant `i`.
    pub fn variant_value(&self, i: usize) -> http::HeaderValue {
        self.variant_values
            .get(i)
            .cloned()
            .unwrap_or_else(|| http::HeaderValue::from_static(""))
    }

    /// The `x-cohort-reason` value of a reason.
    pub fn reason_value(&self, r: Reason) -> http::HeaderValue {
        match r {
            Reason::Rule(i) => self
                .rule_values
                .get(i)
                .cloned()
                .unwrap_or_else(|| http::HeaderValue::from_static("rule")),
            Reason::Forced => http::HeaderValue::from_static("forced"),
            Reason::Hash => http::HeaderValue::from_static("hash"),
            Reason::Cookie => http::HeaderValue::from_static("cookie"),
            Reason::NoKey => http::HeaderValue::from_static("no_key"),
            Reason::Fallback => http::HeaderValue::from_static("fallback"),
            Reason::Rollback => http::HeaderValue::from_static("rollback"),
        }
    }

    pub fn variant_name(&self, i: usize) -> &str {
        self.cfg.variants.get(i).map_or("", |v| v.name.as_str())
    }

    fn variant_by_name(&self, name: &[u8]) -> Option<usize> {
        self.cfg
            .variants
            .iter()
            .position(|v| v.name.as_bytes() == name)
    }

    /// Steps 3–6 with `weights` (the variants' own, or a rule's).
    fn hashed(
        &self,
        key: Option<(KeyBytes<'_>, KeyFrom)>,
        weights: &[f64],
        rule: Option<usize>,
    ) -> Decision {
        let (variant, reason, key_from, new_cookie, pool_key) = match key {
            Some((k, from)) => {
                let bytes = k.as_bytes();
                let reason = match from {
                    KeyFrom::AssignedCookie => Reason::Cookie,
                    KeyFrom::Source(_) => Reason::Hash,
                };
                let v = cohort::assign(bytes, &self.seeds, weights);
                (v, reason, Some(from), None, pool_hash(bytes))
            }
            None if self.cfg.assign_cookie.is_some() => {
                let id = CookieId::random();
                let v = cohort::assign(id.as_str().as_bytes(), &self.seeds, weights);
                (
                    v,
                    Reason::Cookie,
                    None,
                    Some(id),
                    pool_hash(id.as_str().as_bytes()),
                )
            }
            None => (
                cohort::first_positive(weights),
                Reason::NoKey,
                None,
                None,
                rand::random(),
            ),
        };
        Decision {
            // Validation guarantees a positive weight sum, so `variant` is always Some.
            variant: variant.unwrap_or(0),
            reason: rule.map_or(reason, Reason::Rule),
            key_from,
            new_cookie,
            weights_rule: rule,
            pool_key,
        }
    }
}

fn pool_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The pure routing state compiled from a [`Config`] (no I/O).
#[derive(Debug)]
pub struct Router {
    pub services: Vec<Service>,
    pub trusted_proxies: Vec<IpNet>,
    index: ServiceIndex,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        Router {
            services: config.services.iter().cloned().map(Service::new).collect(),
            trusted_proxies: config.server.trusted_proxies.clone(),
            index: ServiceIndex::new(&config.services),
        }
    }

    pub fn service_by_name(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.cfg.name == name)
    }

    /// Among services whose `hosts` match (case-insensitive, port ignored; no `hosts` =
    /// any host), the longest `path_prefix` wins; on a tie exact host > wildcard > any
    /// host; then config order.
    /// The cost does not grow with the number of services ([`ServiceIndex`]).
    #[inline]
    pub fn match_service(&self, req: &RequestView<'_>) -> Option<usize> {
        self.index.find(req.host().unwrap_or_default(), req.path())
    }

    /// The client IP as routing sees it (after trusted `X-Forwarded-For`).
    pub fn client_ip(&self, req: &RequestView<'_>) -> Option<IpAddr> {
        client_ip(req, &self.trusted_proxies)
    }

    /// SPEC "Decision order" for service `svc` (an index from [`Self::match_service`]).
    pub fn decide(&self, svc: usize, req: &RequestView<'_>) -> Decision {
        let s = &self.services[svc];
        let ip = self.client_ip(req);
        if let Some(f) = &s.cfg.force {
            if let Some(v) = req.header(&f.name) {
                let trusted = ip.is_some_and(|ip| f.from.iter().any(|n| n.contains(&ip)));
                if let (true, Some(variant)) = (trusted, s.variant_by_name(v)) {
                    return Decision {
                        variant,
                        reason: Reason::Forced,
                        key_from: None,
                        new_cookie: None,
                        weights_rule: None,
                        pool_key: rand::random(),
                    };
                }
            }
        }
        let key = s.find_key(req, ip);
        // One load per decision: the rollout's weights, computed when its state changed.
        let rollout = s.rollout.as_ref().map(ArcSwap::load);
        let effective = rollout.as_deref().map(|e| &**e);
        for (ri, rule) in s.cfg.rules.iter().enumerate() {
            if !matches(rule, req, ip, key.as_ref().map(|(k, _)| k.as_bytes())) {
                continue;
            }
            let d = match &rule.action {
                RuleAction::Variant(v) => Decision {
                    variant: *v,
                    reason: Reason::Rule(ri),
                    key_from: key.as_ref().map(|(_, f)| *f),
                    new_cookie: None,
                    weights_rule: None,
                    pool_key: key
                        .as_ref()
                        .map_or_else(rand::random, |(k, _)| pool_hash(k.as_bytes())),
                },
                RuleAction::Weights(w) => s.hashed(key, w, Some(ri)),
            };
            return suspend(d, effective);
        }
        let weights = effective.map_or(s.weights.as_slice(), |e| e.weights.as_slice());
        s.hashed(key, weights, None)
    }
}

/// A rule's decision for a rolled-back canary goes to the baseline, reason `rollback`.
fn suspend(d: Decision, effective: Option<&Effective>) -> Decision {
    match effective.and_then(|e| e.redirect(d.variant)) {
        Some(baseline) => Decision {
            variant: baseline,
            reason: Reason::Rollback,
            ..d
        },
        None => d,
    }
}
