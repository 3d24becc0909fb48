//! "Which variant would this request get, and why?" for `cohort explain` and
//! `GET /explain`. It builds a real request (headers, cookies, URI, peer) and runs it
//! through the same [`Router::match_service`] / [`Router::decide`] as the live proxy.

use crate::config::KeySource;
use crate::routing::cohort;
use crate::routing::key::KeyFrom;
use crate::routing::{Reason, RequestView, Router};
use http::{header, HeaderMap, HeaderName, HeaderValue, Uri};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// A request described by flags or query parameters.
#[derive(Debug, Clone, Default)]
pub struct ExplainInput {
    pub service: Option<String>,
    /// A cohort key, placed where the service looks first (see [`explain`]).
    pub key: Option<String>,
    /// `Name: value` pairs.
    pub headers: Vec<String>,
    /// `name=value` pairs.
    pub cookies: Vec<String>,
    /// The TCP peer address.
    pub ip: Option<IpAddr>,
    pub host: Option<String>,
    pub path: Option<String>,
}

/// The decision and its reasons.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub service: String,
    pub variant: String,
    pub reason: String,
    pub rule: Option<String>,
    pub key_source: Option<String>,
    pub key: Option<String>,
    pub new_cookie: bool,
    /// `(variant, u, score)` for every variant, when a key was hashed.
    pub scores: Vec<(String, f64, f64)>,
}

struct Built {
    headers: HeaderMap,
    uri: Uri,
    peer: Option<IpAddr>,
}

/// Why a request cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// No service matches the request's host and path (the proxy would answer 404).
    #[error("no service matches host {host:?} and path {path:?} (the proxy would answer 404)")]
    NoService { host: String, path: String },
    /// `service` names no service of the config.
    #[error("no service named {0:?}")]
    UnknownService(String),
    /// A flag or parameter that does not make a request.
    #[error("{0}")]
    Input(String),
}

impl From<String> for ExplainError {
    fn from(msg: String) -> ExplainError {
        ExplainError::Input(msg)
    }
}

/// The services a request can be sent to, one line each (`name  hosts  prefix`), for the
/// hint after [`ExplainError::NoService`] or [`ExplainError::UnknownService`].
pub fn service_list(router: &Router) -> String {
    let mut out = String::new();
    for s in &router.services {
        let hosts = if s.cfg.hosts.is_empty() {
            "any host".to_string()
        } else {
            s.cfg
                .hosts
                .iter()
                .map(|h| match h {
                    crate::config::HostPattern::Exact(e) => e.clone(),
                    crate::config::HostPattern::Wildcard(w) => format!("*{w}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        out += &format!(
            "  {:<16} {hosts}, path prefix {}\n",
            s.cfg.name, s.cfg.path_prefix
        );
    }
    out
}

/// Explains one request. `--key K` is put where the service's key chain looks first:
/// its first non-`ip` key source, else its `assign_cookie`, else the client IP.
pub fn explain(router: &Router, input: &ExplainInput) -> Result<Explanation, ExplainError> {
    let mut built = build(input)?;
    let svc = match &input.service {
        Some(name) => router
            .service_by_name(name)
            .ok_or_else(|| ExplainError::UnknownService(name.clone()))?,
        None => {
            let view = view(&built);
            router
                .match_service(&view)
                .ok_or_else(|| ExplainError::NoService {
                    host: String::from_utf8_lossy(view.host().unwrap_or_default()).into_owned(),
                    path: String::from_utf8_lossy(view.path()).into_owned(),
                })?
        }
    };
    let service = &router.services[svc];
    if let Some(k) = &input.key {
        place_key(
            &mut built,
            &service.cfg.keys,
            service.cfg.assign_cookie.as_deref(),
            k,
        )?;
    }
    let view = view(&built);
    let d = router.decide(svc, &view);
    let weights = match d.weights_rule.map(|r| &service.cfg.rules[r].action) {
        Some(crate::config::RuleAction::Weights(w)) => w.clone(),
        _ => service.weights.clone(),
    };
    let ip = router.client_ip(&view);
    let found = service.find_key(&view, ip);
    let key_bytes: Option<Vec<u8>> = match (&d.new_cookie, &found) {
        (Some(id), _) => Some(id.as_str().as_bytes().to_vec()),
        (None, Some((k, _))) if d.key_from.is_some() => Some(k.as_bytes().to_vec()),
        _ => None,
    };
    let hashed = matches!(d.reason, Reason::Hash | Reason::Cookie) || d.weights_rule.is_some();
    let scores = match (&key_bytes, hashed) {
        (Some(k), true) => service
            .cfg
            .variants
            .iter()
            .zip(&service.seeds)
            .zip(&weights)
            .map(|((v, &seed), &w)| {
                let u = cohort::unit(k, seed);
                let s = if w > 0.0 {
                    cohort::score(w, u)
                } else {
                    f64::NEG_INFINITY
                };
                (v.name.clone(), u, s)
            })
            .collect(),
        _ => Vec::new(),
    };
    let key_source = match (d.new_cookie.is_some(), d.key_from) {
        (true, _) | (_, Some(KeyFrom::AssignedCookie)) => service
            .cfg
            .assign_cookie
            .as_ref()
            .map(|c| format!("cookie:{c}")),
        (false, Some(KeyFrom::Source(i))) => service.cfg.keys.get(i).map(|k| k.to_string()),
        (false, None) => None,
    };
    Ok(Explanation {
        service: service.cfg.name.clone(),
        variant: service.variant_name(d.variant).to_string(),
        reason: service.reason_str(d.reason).to_string(),
        rule: match d.reason {
            Reason::Rule(i) => Some(service.cfg.rules[i].name.clone()),
            _ => None,
        },
        key_source,
        key: key_bytes.map(|k| String::from_utf8_lossy(&k).into_owned()),
        new_cookie: d.new_cookie.is_some(),
        scores,
    })
}

fn view(b: &Built) -> RequestView<'_> {
    RequestView::new(&b.headers, &b.uri, b.peer)
}

fn build(input: &ExplainInput) -> Result<Built, String> {
    let mut headers = HeaderMap::new();
    for h in &input.headers {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?}: expected 'Name: value'"))?;
        let name = HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| format!("--header {h:?}: invalid header name"))?;
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| format!("--header {h:?}: invalid header value"))?;
        headers.append(name, value);
    }
    for c in &input.cookies {
        if !c.contains('=') {
            return Err(format!("--cookie {c:?}: expected 'name=value'"));
        }
        let v = HeaderValue::from_str(c).map_err(|_| format!("--cookie {c:?}: invalid value"))?;
        headers.append(header::COOKIE, v);
    }
    if let Some(h) = &input.host {
        let v = HeaderValue::from_str(h).map_err(|_| format!("--host {h:?}: invalid"))?;
        headers.insert(header::HOST, v);
    }
    let path = input.path.clone().unwrap_or_else(|| "/".to_string());
    let uri: Uri = path
        .parse()
        .map_err(|_| format!("--path {path:?}: not a valid path"))?;
    Ok(Built {
        headers,
        uri,
        peer: input.ip,
    })
}

fn place_key(
    b: &mut Built,
    keys: &[KeySource],
    assign_cookie: Option<&str>,
    key: &str,
) -> Result<(), String> {
    let cookie = |b: &mut Built, name: &str| -> Result<(), String> {
        let v = HeaderValue::from_str(&format!("{name}={key}"))
            .map_err(|_| format!("--key {key:?}: not valid in a cookie"))?;
        b.headers.append(header::COOKIE, v);
        Ok(())
    };
    match keys.iter().find(|k| **k != KeySource::Ip) {
        Some(KeySource::Header(h)) => {
            let v = HeaderValue::from_str(key)
                .map_err(|_| format!("--key {key:?}: not valid in a header"))?;
            b.headers.insert(h.clone(), v);
            Ok(())
        }
        Some(KeySource::Cookie(c)) => cookie(b, c),
        Some(KeySource::Query(q)) => {
            let enc = utf8_percent_encode(key, NON_ALPHANUMERIC);
            let pq = b.uri.path_and_query().map_or("/", |p| p.as_str());
            let sep = if pq.contains('?') { '&' } else { '?' };
            b.uri = format!("{pq}{sep}{q}={enc}")
                .parse()
                .map_err(|_| format!("--key {key:?}: cannot build the query"))?;
            Ok(())
        }
        _ => match assign_cookie {
            Some(c) => cookie(b, c),
            None if keys.contains(&KeySource::Ip) => {
                b.peer = Some(key.parse().map_err(|_| {
                    format!("--key {key:?}: this service keys on ip; give an IP address")
                })?);
                Ok(())
            }
            None => Err("this service has no key source; --key does not apply".to_string()),
        },
    }
}

impl Explanation {
    /// The JSON shape shared by `cohort explain --json` and `GET /explain`.
    pub fn to_json(&self) -> Value {
        let mut scores = Map::new();
        let mut us = Map::new();
        for (v, u, s) in &self.scores {
            scores.insert(
                v.clone(),
                if s.is_finite() { json!(s) } else { Value::Null },
            );
            us.insert(v.clone(), json!(u));
        }
        json!({
            "service": self.service,
            "variant": self.variant,
            "reason": self.reason,
            "rule": self.rule,
            "key_source": self.key_source,
            "key": self.key,
            "new_cookie": self.new_cookie,
            "scores": scores,
            "u": us,
        })
    }

    /// Human-readable lines for the terminal.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "service  {}\nvariant  {}\nreason   {}\n",
            self.service, self.variant, self.reason
        );
        if let Some(src) = &self.key_source {
            let key = self.key.as_deref().unwrap_or("");
            out += &format!("key      {key:?} from {src}\n");
        }
        if self.new_cookie {
            out += "cookie   a new anonymous id would be minted and set\n";
        }
        if !self.scores.is_empty() {
            out += "\nvariant              u                     score\n";
            for (v, u, s) in &self.scores {
                let mark = if *v == self.variant {
                    "  <- highest"
                } else {
                    ""
                };
                out += &format!("{v:<20} {u:<21.17} {s:.6}{mark}\n");
            }
        }
        out
    }
}
