//! The admin HTTP service on `server.admin`: health, readiness and status. It runs as a
//! Pingora listening service, so a binary upgrade hands its socket over like the proxy's.

use crate::state::State;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin API.
pub struct Admin {
    pub state: Arc<State>,
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
    fn status(&self) -> Value {
        let table = self.state.table();
        let services: Vec<Value> = table
            .router
            .services
            .iter()
            .zip(&table.pools)
            .map(|(s, pools)| {
                let total: f64 = s.weights.iter().sum();
                let variants: Vec<Value> = s
                    .cfg
                    .variants
                    .iter()
                    .zip(pools)
                    .map(|(v, pool)| {
                        let backends: Vec<Value> = pool
                            .health()
                            .into_iter()
                            .map(|(addr, healthy)| json!({"addr": addr.to_string(), "healthy": healthy}))
                            .collect();
                        json!({
                            "name": v.name,
                            "weight": v.weight,
                            "share": share_percent(v.weight, total),
                            "backends": backends,
                        })
                    })
                    .collect();
                json!({"name": s.cfg.name, "variants": variants})
            })
            .collect();
        json!({
            "version": table.config.version,
            "loaded_at": humantime::format_rfc3339_seconds(table.loaded_at).to_string(),
            "last_reload": Value::Null,
            "draining": self.state.is_draining(),
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
        match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
            (Method::GET | Method::HEAD, "/readyz") => {
                if self.state.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            (Method::GET | Method::HEAD, "/status") => json_reply(StatusCode::OK, &self.status()),
            (_, "/healthz" | "/readyz" | "/status") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
