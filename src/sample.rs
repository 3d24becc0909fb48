//! Request samples: what routing read from one request, one JSON object per line, so
//! `cohort simulate --against FILE2 --samples FILE` can route the same requests through
//! two configs with the proxy's own decision code. The proxy writes them when
//! `server.sample_log` is set ([`crate::forward::sample`]); people may write them too.
//!
//! ```json
//! {"time":"…","service":"api","variant":"canary","reason":"hash","host":"api.example.com",
//!  "path":"/v1/items","ip":"203.0.113.7","headers":{"x-user-id":"u-1","x-cohort-force":null},
//!  "cookies":{"beta":null},"query":{"uid":null}}
//! ```
//!
//! Only the fields the config reads are recorded (its key sources, `assign_cookie`,
//! `force_header` and its rules' headers, cookies and query parameters, over all
//! services), each with its value, or `null` when the request did not send it. A field
//! absent from a sample was not recorded: a config that reads it cannot be replayed
//! exactly on that sample, and the replay says so. `ip` is the client address as routing
//! saw it (after `trusted_proxies`). `service`, `variant` and `reason` are the decision
//! taken when the sample was written (before any health fallback).

use crate::config::{Config, KeySource};
use crate::routing::request::trim;
use crate::routing::{Decision, RequestView, Service};
use http::{header, HeaderMap, HeaderName, HeaderValue, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One request's routing inputs (and the decision recorded with it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The recorded decision: service (`None`: no service matched), variant and reason.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Host without port.
    #[serde(default)]
    pub host: Option<String>,
    /// The path without its query string.
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// Lower-case name → value(s), trimmed; `null` = not sent.
    #[serde(default)]
    pub headers: BTreeMap<String, Option<Values>>,
    /// Name → value as routing reads it (trimmed, unquoted); `null` = not sent.
    #[serde(default)]
    pub cookies: BTreeMap<String, Option<String>>,
    /// Name → percent-decoded value; `null` = not sent (or empty).
    #[serde(default)]
    pub query: BTreeMap<String, Option<String>>,
}

fn root() -> String {
    "/".to_string()
}

/// A header's value, or its values in order when it was sent more than once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Values {
    One(String),
    Many(Vec<String>),
}

impl Values {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many): (Option<&str>, &[String]) = match self {
            Values::One(v) => (Some(v), &[]),
            Values::Many(v) => (None, v),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }
}

/// The request fields a config reads, over all its services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub headers: BTreeSet<String>,
    pub cookies: BTreeSet<String>,
    pub query: BTreeSet<String>,
}

impl Fields {
    /// What `config` reads: key sources, `assign_cookie`, `force_header`, rule matchers.
    pub fn of(config: &Config) -> Fields {
        let mut f = Fields::default();
        for s in &config.services {
            for k in &s.keys {
                match k {
                    KeySource::Header(h) => f.headers.insert(h.as_str().to_string()),
                    KeySource::Cookie(c) => f.cookies.insert(c.clone()),
                    KeySource::Query(q) => f.query.insert(q.clone()),
                    KeySource::Ip => false,
                };
            }
            if let Some(c) = &s.assign_cookie {
                f.cookies.insert(c.clone());
            }
            if let Some(force) = &s.force {
                f.headers.insert(force.name.as_str().to_string());
            }
            for r in &s.rules {
                if let Some(m) = &r.header {
                    f.headers.insert(m.name.as_str().to_string());
                }
                if let Some(m) = &r.cookie {
                    f.cookies.insert(m.name.clone());
                }
                if let Some(m) = &r.query {
                    f.query.insert(m.name.clone());
                }
            }
        }
        f
    }

    /// The fields of `self` that `sample` did not record, as `header:NAME` etc.
    pub fn missing_in(&self, sample: &Sample) -> Vec<String> {
        let h = self
            .headers
            .iter()
            .filter(|n| !sample.headers.contains_key(*n))
            .map(|n| format!("header:{n}"));
        let c = self
            .cookies
            .iter()
            .filter(|n| !sample.cookies.contains_key(*n))
            .map(|n| format!("cookie:{n}"));
        let q = self
            .query
            .iter()
            .filter(|n| !sample.query.contains_key(*n))
            .map(|n| format!("query:{n}"));
        h.chain(c).chain(q).collect()
    }
}

impl Sample {
    /// The sample of a request: `fields` of `view`, the client address routing used, and
    /// the decision (`None`: no service matched). A freshly minted anonymous id is
    /// recorded as the `assign_cookie` the client will send back, so a replay hashes the
    /// same id.
    pub fn capture(
        fields: &Fields,
        view: &RequestView<'_>,
        client_ip: Option<IpAddr>,
        decided: Option<(&Service, &Decision)>,
    ) -> Sample {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let headers = fields
            .headers
            .iter()
            .map(|name| {
                let mut values: Vec<String> = view.values(name).map(|v| text(trim(v))).collect();
                let v = match values.len() {
                    0 => None,
                    1 => values.pop().map(Values::One),
                    _ => Some(Values::Many(values)),
                };
                (name.clone(), v)
            })
            .collect();
        let mut cookies: BTreeMap<String, Option<String>> = fields
            .cookies
            .iter()
            .map(|name| (name.clone(), view.cookie(name).map(text)))
            .collect();
        let query = fields
            .query
            .iter()
            .map(|name| (name.clone(), view.query(name).map(|v| text(&v))))
            .collect();
        if let Some((
            s,
            Decision {
                new_cookie: Some(id),
                ..
            },
        )) = decided
        {
            if let Some(name) = &s.cfg.assign_cookie {
                cookies.insert(name.clone(), Some(id.as_str().to_string()));
            }
        }
        Sample {
            time: Some(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()),
            service: decided.map(|(s, _)| s.cfg.name.clone()),
            variant: decided.map(|(s, d)| s.variant_name(d.variant).to_string()),
            reason: decided.map(|(s, d)| s.reason_str(d.reason).to_string()),
            host: view.host().map(text),
            path: text(view.path()),
            ip: client_ip,
            headers,
            cookies,
            query,
        }
    }

    /// The sample as one JSON line, newline included.
    pub fn line(&self) -> String {
        let mut out = serde_json::to_string(self).unwrap_or_default();
        out.push('\n');
        out
    }

    /// Reads one line of a samples file.
    pub fn parse(line: &str) -> Result<Sample, String> {
        serde_json::from_str(line).map_err(|e| e.to_string())
    }

    /// A request carrying exactly what the sample recorded, for the routing code.
    pub fn rebuild(&self) -> Result<Rebuilt, String> {
        let mut headers = HeaderMap::new();
        for (name, values) in &self.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a header name"))?;
            for v in values.iter().flat_map(Values::iter) {
                let v = HeaderValue::from_str(v)
                    .map_err(|_| format!("headers.{name}: {v:?} is not a valid header value"))?;
                headers.append(n.clone(), v);
            }
        }
        for (name, value) in &self.cookies {
            if let Some(v) = value {
                let c = HeaderValue::from_str(&format!("{name}={v}"))
                    .map_err(|_| format!("cookies.{name}: {v:?} is not a valid cookie value"))?;
                headers.append(header::COOKIE, c);
            }
        }
        if let Some(h) = &self.host {
            let v = HeaderValue::from_str(h).map_err(|_| format!("host: {h:?} is not valid"))?;
            headers.insert(header::HOST, v);
        }
        let mut target = uri_path(&self.path);
        let pairs: Vec<String> = self
            .query
            .iter()
            .filter_map(|(k, v)| {
                Some(format!(
                    "{k}={}",
                    utf8_percent_encode(v.as_ref()?, NON_ALPHANUMERIC)
                ))
            })
            .collect();
        if !pairs.is_empty() {
            target.push('?');
            target += &pairs.join("&");
        }
        let uri: Uri = target
            .parse()
            .map_err(|_| format!("path: {:?} is not a request path", self.path))?;
        Ok(Rebuilt {
            headers,
            uri,
            peer: self.ip,
        })
    }
}

/// Bytes a path may carry that `http::Uri` refuses: encoded, so a path the proxy took
/// replays (the service match compares prefixes, which such bytes rarely reach).
const PATH_UNSAFE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'#')
    .add(b'?');

fn uri_path(path: &str) -> String {
    let p = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if p.parse::<Uri>().is_ok() && !p.contains(['?', '#']) {
        p
    } else {
        utf8_percent_encode(&p, PATH_UNSAFE).to_string()
    }
}

/// A request rebuilt from a sample.
#[derive(Debug)]
pub struct Rebuilt {
    pub headers: HeaderMap,
    pub uri: Uri,
    pub peer: Option<IpAddr>,
}

impl Rebuilt {
    pub fn view(&self) -> RequestView<'_> {
        RequestView::new(&self.headers, &self.uri, self.peer)
    }

    /// Adds a cookie (a replay's minted id, shared by both sides).
    pub fn add_cookie(&mut self, name: &str, value: &str) {
        if let Ok(v) = HeaderValue::from_str(&format!("{name}={value}")) {
            self.headers.append(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Router;

    const CONFIG: &str = "[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\", \"query:uid\"]\n\
        assign_cookie = \"cid\"\nforce_header = \"x-force\"\nforce_from = [\"10.0.0.0/8\"]\n\
        [[service.variant]]\nname = \"stable\"\nweight = 9\nbackends = [\"127.0.0.1:1\"]\n\
        [[service.variant]]\nname = \"canary\"\nweight = 1\nbackends = [\"127.0.0.1:2\"]\n\
        [[service.rule]]\nname = \"beta\"\ncookie = { name = \"beta\", equals = \"1\" }\nvariant = \"canary\"\n\
        [[service.rule]]\nname = \"eu\"\nheader = { name = \"x-country\", in = [\"DE\"] }\nweights = { canary = 1, stable = 1 }\n";

    #[test]
    fn fields_are_what_keys_and_rules_read() {
        let f = Fields::of(&Config::parse(CONFIG).unwrap());
        assert_eq!(
            f.headers.iter().map(String::as_str).collect::<Vec<_>>(),
            ["x-country", "x-force", "x-user-id"]
        );
        assert_eq!(
            f.cookies.iter().map(String::as_str).collect::<Vec<_>>(),
            ["beta", "cid"]
        );
        assert_eq!(
            f.query.iter().map(String::as_str).collect::<Vec<_>>(),
            ["uid"]
        );
    }

    #[test]
    fn a_captured_sample_replays_to_the_same_decision() {
        let config = Config::parse(CONFIG).unwrap();
        let router = Router::new(&config);
        let fields = Fields::of(&config);
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("API.example.com:8080"));
        h.append("x-country", HeaderValue::from_static(" DE "));
        h.append("x-country", HeaderValue::from_static("FR"));
        h.insert("authorization", HeaderValue::from_static("Bearer secret"));
        h.insert(
            "cookie",
            HeaderValue::from_static("other=x; beta=0; sid=secret"),
        );
        let uri: Uri = "/v1/items?uid=a%20b&token=secret".parse().unwrap();
        let peer = Some("203.0.113.7".parse().unwrap());
        let view = RequestView::new(&h, &uri, peer);
        let d = router.decide(0, &view);
        let s = Sample::capture(
            &fields,
            &view,
            router.client_ip(&view),
            Some((&router.services[0], &d)),
        );
        let line = s.line();
        for secret in ["secret", "authorization", "token", "other", "sid"] {
            assert!(!line.contains(secret), "{secret} recorded: {line}");
        }
        assert_eq!(
            s.headers["x-country"],
            Some(Values::Many(vec!["DE".into(), "FR".into()]))
        );
        assert_eq!(s.headers["x-user-id"], None);
        assert_eq!(s.query["uid"].as_deref(), Some("a b"));
        assert_eq!(s.host.as_deref(), Some("API.example.com"));
        assert_eq!(s.reason.as_deref(), Some("rule:eu"));
        let back = Sample::parse(line.trim_end()).unwrap();
        assert_eq!(back, s);
        let rebuilt = back.rebuild().unwrap();
        let again = router.decide(0, &rebuilt.view());
        assert_eq!((again.variant, again.reason), (d.variant, d.reason));
        assert_eq!(router.match_service(&rebuilt.view()), Some(0));
    }

    #[test]
    fn a_minted_id_is_recorded_as_the_cookie_it_will_be() {
        let config = Config::parse(CONFIG).unwrap();
        let router = Router::new(&config);
        let h = HeaderMap::new();
        let uri = Uri::from_static("/");
        let view = RequestView::new(&h, &uri, None);
        let d = router.decide(0, &view);
        let id = d.new_cookie.unwrap();
        let s = Sample::capture(
            &Fields::of(&config),
            &view,
            None,
            Some((&router.services[0], &d)),
        );
        assert_eq!(s.cookies["cid"].as_deref(), Some(id.as_str()));
        let rebuilt = s.rebuild().unwrap();
        let again = router.decide(0, &rebuilt.view());
        assert_eq!(again.variant, d.variant);
        assert!(again.new_cookie.is_none());
    }

    #[test]
    fn missing_fields_are_named() {
        let f = Fields::of(&Config::parse(CONFIG).unwrap());
        let s = Sample::parse(
            r#"{"path":"/","headers":{"x-user-id":null,"x-force":null},"cookies":{"beta":"1"}}"#,
        )
        .unwrap();
        assert_eq!(
            f.missing_in(&s),
            ["header:x-country", "cookie:cid", "query:uid"]
        );
    }

    #[test]
    fn odd_paths_still_rebuild() {
        let s = Sample::parse(r#"{"path":"/a b/{x}|"}"#).unwrap();
        let r = s.rebuild().unwrap();
        assert!(r.uri.path().starts_with("/a%20b/"), "{}", r.uri);
        assert!(Sample::parse(r#"{"headers":{"bad name":"x"}}"#)
            .unwrap()
            .rebuild()
            .is_err());
    }
}
