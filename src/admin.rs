//! The admin HTTP service on `server.admin`: health, readiness and status. It runs as a
//! Pingora listening service, so a binary upgrade hands its socket over like the proxy's.

use crate::explain::ExplainInput;
use crate::reload::{Outcome, Reloader};
use crate::state::State;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;

/// The largest fleet report taken (a few KiB per service in practice).
const MAX_SYNC_BODY: usize = 1024 * 1024;

/// The admin API.
pub struct Admin {
    state: Arc<State>,
    reloader: Option<Arc<Reloader>>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    reply(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

/// JSON answer.
pub fn json_reply(status: StatusCode, v: &Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

impl Admin {
    pub fn new(state: Arc<State>, reloader: Option<Arc<Reloader>>) -> Admin {
        state.table().config.server.warn_if_admin_token_unset();
        Admin { state, reloader }
    }

    fn authorize(&self, session: &ServerSession) -> Result<(), Box<Response<Vec<u8>>>> {
        let header = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        // Live: the variable `server.admin_token_env` names now (a reload can rotate it).
        let token = self.state.table().config.server.admin_token();
        match authorize_post(token.as_deref(), header, peer) {
            Ok(()) => Ok(()),
            Err(Denied::Unauthorized) => {
                let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized: bearer token required\n");
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                Err(Box::new(r))
            }
            Err(Denied::NotLoopback) => Err(Box::new(text(
                StatusCode::FORBIDDEN,
                "forbidden: without server.admin_token_env this admin call is accepted from loopback only\n",
            ))),
        }
    }

    async fn reload(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if let Err(denied) = self.authorize(session) {
            return *denied;
        }
        let Some(r) = self.reloader.clone() else {
            return json_reply(
                StatusCode::NOT_FOUND,
                &json!({"result": "rejected", "errors": ["this instance has no config file to reload"]}),
            );
        };
        let outcome = match tokio::task::spawn_blocking(move || r.reload("POST /reload")).await {
            Ok(o) => o,
            Err(e) => Outcome::Rejected {
                errors: vec![format!("reload task failed: {e}")],
            },
        };
        match outcome {
            Outcome::Applied {
                version,
                needs_upgrade,
                warnings,
            } => json_reply(
                StatusCode::OK,
                &json!({"result": "applied", "version": version, "needs_upgrade": needs_upgrade, "warnings": warnings}),
            ),
            Outcome::Unchanged { version } => json_reply(
                StatusCode::OK,
                &json!({"result": "unchanged", "version": version}),
            ),
            Outcome::Rejected { errors } => json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"result": "rejected", "errors": errors}),
            ),
        }
    }

    /// `GET /explain?service=S&key=K&ip=A&header=N:v&cookie=n=v&host=H&path=P`: the same
    /// decision code as the proxy, on the live table.
    fn explain(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let mut input = ExplainInput::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let v = v.into_owned();
            match k.as_ref() {
                "service" => input.service = Some(v),
                "key" => input.key = Some(v),
                "ip" => match v.parse() {
                    Ok(ip) => input.ip = Some(ip),
                    Err(_) => return bad_request(&format!("ip: {v:?} is not an IP address")),
                },
                "header" => input.headers.push(v),
                "cookie" => input.cookies.push(v),
                "host" => input.host = Some(v),
                "path" => input.path = Some(v),
                other => return bad_request(&format!("unknown parameter {other:?}")),
            }
        }
        let table = self.state.table();
        match crate::explain::explain(&table.router, &input) {
            Ok(e) => json_reply(StatusCode::OK, &e.to_json()),
            Err(e) => bad_request(&e.to_string()),
        }
    }

    /// 200 only while serving: not draining, and every proxy listener bound by this
    /// process (a port another process holds is not serving).
    fn readyz(&self) -> Response<Vec<u8>> {
        if self.state.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        let unbound = self.state.listeners.unbound();
        if !unbound.is_empty() {
            let list: Vec<String> = unbound.iter().map(ToString::to_string).collect();
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not listening on {}\n", list.join(", ")),
            );
        }
        text(StatusCode::OK, "ready\n")
    }

    fn status(&self) -> Value {
        let table = self.state.table();
        let services: Vec<Value> = table
            .router
            .services
            .iter()
            .zip(&table.pools)
            .map(|(s, pools)| {
                // `share` is what hashing uses now: a rollout's effective weights.
                let effective = s.rollout.as_ref().map(|r| r.load().weights.clone());
                let shares = effective.as_deref().unwrap_or(&s.weights);
                let total: f64 = shares.iter().sum();
                let variants: Vec<Value> = s
                    .cfg
                    .variants
                    .iter()
                    .zip(pools)
                    .zip(shares)
                    .map(|((v, pool), w)| {
                        // A name that does not resolve is listed as configured, down,
                        // with the reason.
                        let unresolved = pool.unresolved().map(|l| {
                            json!({"addr": l.name, "healthy": false, "error": l.error()})
                        });
                        let backends: Vec<Value> = pool
                            .health()
                            .into_iter()
                            .map(|(addr, healthy)| json!({"addr": addr.to_string(), "healthy": healthy}))
                            .chain(unresolved)
                            .collect();
                        json!({
                            "name": v.name,
                            "weight": v.weight,
                            "share": share_percent(*w, total),
                            "backends": backends,
                        })
                    })
                    .collect();
                json!({"name": s.cfg.name, "variants": variants})
            })
            .collect();
        let versions = self.state.versions();
        json!({
            "version": versions.serving,
            "loaded_version": versions.loaded,
            "pending_upgrade": versions.pending_upgrade,
            "loaded_at": humantime::format_rfc3339_seconds(table.loaded_at).to_string(),
            "last_reload": self.state.last_reload().map(|r| json!({
                "result": r.result,
                "at": humantime::format_rfc3339_seconds(r.at).to_string(),
                "errors": r.errors,
                "needs_upgrade": r.needs_upgrade,
                "trigger": r.trigger,
            })),
            "draining": self.state.is_draining(),
            "listeners": self.state.listeners.states().iter().map(|l| json!({
                "addr": l.addr.to_string(),
                "tls": l.tls,
                "bound": l.bound,
            })).collect::<Vec<_>>(),
            "services": services,
        })
    }
}

/// `weight / total` in percent, rounded to 4 decimals.
pub fn share_percent(weight: f64, total: f64) -> f64 {
    if total > 0.0 {
        (weight / total * 100.0 * 10_000.0).round() / 10_000.0
    } else {
        0.0
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        if needs_token(&path, self.state.table().config.server.admin) {
            if let Err(denied) = self.authorize(session) {
                return *denied;
            }
        }
        match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
            (Method::GET | Method::HEAD, "/readyz") => self.readyz(),
            (Method::GET | Method::HEAD, "/status") => json_reply(StatusCode::OK, &self.status()),
            (Method::GET | Method::HEAD, "/metrics") => {
                self.state.table().refresh_backend_up();
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    crate::metrics::render(),
                )
            }
            (Method::GET, "/explain") => self.explain(session.req_header().uri.query()),
            (Method::GET | Method::HEAD, "/rollout") => {
                let query = session.req_header().uri.query();
                json_reply(
                    StatusCode::OK,
                    &crate::rollouts::admin::status(&self.state, query),
                )
            }
            (Method::POST, "/fleet/sync") => {
                if let Err(denied) = self.authorize(session) {
                    return *denied;
                }
                let mut body = Vec::new();
                while let Ok(Some(chunk)) = session.read_request_body().await {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_SYNC_BODY {
                        return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
                    }
                }
                let peer = session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip());
                let (code, v) = crate::rollouts::admin::sync(&self.state, peer, &body);
                json_reply(code, &v)
            }
            (Method::POST, p) if p.starts_with("/rollout/") => {
                if let Err(denied) = self.authorize(session) {
                    return *denied;
                }
                let query = session.req_header().uri.query().map(str::to_string);
                let action = p.trim_start_matches("/rollout/");
                let (code, body) =
                    crate::rollouts::admin::act(&self.state, action, query.as_deref());
                json_reply(code, &body)
            }
            (Method::POST, "/reload") => {
                // Drain any request body so the connection stays usable (bounded).
                let mut read = 0usize;
                while let Ok(Some(chunk)) = session.read_request_body().await {
                    read += chunk.len();
                    if read > 64 * 1024 {
                        return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
                    }
                }
                self.reload(session).await
            }
            (_, "/healthz" | "/readyz" | "/status" | "/metrics" | "/reload" | "/explain")
            | (_, "/rollout" | "/fleet/sync") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// Calls open to anyone who reaches the admin listener: the load balancer's checks and
/// the scraper. The rest (`/status`, `/explain`: the config's shape and the decision for
/// any key) needs what a POST call needs when the listener is not on loopback.
const OPEN_CALLS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Whether a call on `path` must pass [`authorize_post`]: POST calls always do; on a
/// non-loopback admin listener, every call but [`OPEN_CALLS`].
fn needs_token(path: &str, listener: Option<std::net::SocketAddr>) -> bool {
    let exposed = listener.is_none_or(|a| !a.ip().to_canonical().is_loopback());
    exposed && !OPEN_CALLS.contains(&path)
}

fn bad_request(msg: &str) -> Response<Vec<u8>> {
    json_reply(StatusCode::BAD_REQUEST, &json!({ "error": msg }))
}

/// Why a POST admin call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A token is configured and the request did not present it (401).
    Unauthorized,
    /// No token is configured and the peer is not loopback (403).
    NotLoopback,
}

/// SPEC: with `admin_token_env` set, POST calls need `Authorization: Bearer <token>`
/// (an empty configured token refuses everything); without it, POST calls are accepted
/// from loopback peers only.
pub fn authorize_post(
    token: Option<&str>,
    authorization: Option<&[u8]>,
    peer: Option<std::net::IpAddr>,
) -> Result<(), Denied> {
    match token {
        Some(token) => {
            let given = authorization
                .and_then(|v| v.strip_prefix(b"Bearer "))
                .unwrap_or_default();
            if !token.is_empty() && constant_time_eq(given, token.as_bytes()) {
                Ok(())
            } else {
                Err(Denied::Unauthorized)
            }
        }
        None if peer.is_some_and(|ip| ip.to_canonical().is_loopback()) => Ok(()),
        None => Err(Denied::NotLoopback),
    }
}

/// Compares secrets in time independent of where they differ (OpenSSL's `CRYPTO_memcmp`;
/// only the length can be told apart).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_without_token_is_loopback_only() {
        let lo = Some("127.0.0.1".parse().unwrap());
        let lo6 = Some("::1".parse().unwrap());
        let mapped = Some("::ffff:127.0.0.1".parse().unwrap());
        let remote = Some("10.0.0.5".parse().unwrap());
        assert_eq!(authorize_post(None, None, lo), Ok(()));
        assert_eq!(authorize_post(None, None, lo6), Ok(()));
        assert_eq!(authorize_post(None, None, mapped), Ok(()));
        assert_eq!(authorize_post(None, None, remote), Err(Denied::NotLoopback));
        assert_eq!(authorize_post(None, None, None), Err(Denied::NotLoopback));
    }

    #[test]
    fn post_with_token_needs_the_exact_bearer_token_from_any_peer() {
        let remote = Some("10.0.0.5".parse().unwrap());
        let lo = Some("127.0.0.1".parse().unwrap());
        let t = Some("s3cret");
        assert_eq!(authorize_post(t, Some(b"Bearer s3cret"), remote), Ok(()));
        assert_eq!(
            authorize_post(t, None, lo),
            Err(Denied::Unauthorized),
            "loopback is not enough"
        );
        assert_eq!(
            authorize_post(t, Some(b"Bearer s3cre"), remote),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            authorize_post(t, Some(b"Bearer s3cretX"), remote),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            authorize_post(t, Some(b"bearer s3cret"), remote),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            authorize_post(t, Some(b"s3cret"), remote),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            authorize_post(Some(""), Some(b"Bearer "), lo),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn only_health_readiness_and_metrics_are_open_on_an_exposed_listener() {
        let exposed = Some("0.0.0.0:9090".parse().unwrap());
        let lo = Some("127.0.0.1:9090".parse().unwrap());
        for open in ["/healthz", "/readyz", "/metrics"] {
            assert!(!needs_token(open, exposed), "{open}");
            assert!(!needs_token(open, lo), "{open}");
        }
        for guarded in ["/status", "/explain", "/reload", "/nope"] {
            assert!(needs_token(guarded, exposed), "{guarded}");
            assert!(!needs_token(guarded, lo), "{guarded} on loopback");
        }
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
