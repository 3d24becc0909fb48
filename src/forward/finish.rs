//! End-of-request accounting, once for both carriers: the request metrics of the variant
//! serving (or of unmatched requests) and the access log line.

use crate::access_log::{AccessLog, Entry};
use crate::metrics::reason_slot;
use crate::routing::{Decision, Reason, RequestView, RoutingTable};
use std::net::SocketAddr;

/// Where a routed request went: service, the variant serving, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub service: usize,
    pub variant: usize,
    pub reason: Reason,
}

/// A finished request, as metrics and the access log record it.
pub struct Finished<'a> {
    pub table: &'a RoutingTable,
    /// `None`: no service matched.
    pub served: Option<Served>,
    /// The status the client got; 499 when it went away before any response.
    pub status: u16,
    /// A gRPC call's `grpc-status` (the upstream's, or the one cohort answered with);
    /// `None` for other requests.
    pub grpc: Option<super::grpc::GrpcStatus>,
    pub seconds: f64,
    pub upstream: Option<SocketAddr>,
    /// Response body bytes sent to the client.
    pub body_bytes: usize,
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    /// The cohort key, only when the access log includes keys.
    pub key: Option<&'a str>,
    /// The client IP as routing saw it.
    pub client_ip: Option<std::net::IpAddr>,
    pub host: &'a str,
    pub request_id: &'a str,
}

impl Finished<'_> {
    /// Records the request's metrics and, if the access log is on, its line.
    pub fn record(&self, log: Option<&AccessLog>) {
        let m = &self.table.metrics;
        match self
            .served
            .and_then(|s| m.variants.get(s.service)?.get(s.variant).map(|v| (v, s)))
        {
            Some((v, s)) => v.record_request(
                self.status,
                self.grpc,
                self.seconds,
                Some(reason_slot(s.reason)),
            ),
            None => m
                .unmatched
                .record_request(self.status, self.grpc, self.seconds, None),
        }
        if let Some(log) = log {
            log.write(self.entry().line());
        }
    }

    fn entry(&self) -> Entry<'_> {
        let (service, variant, reason) = match self.served {
            Some(s) => {
                let svc = &self.table.router.services[s.service];
                (
                    svc.cfg.name.as_str(),
                    svc.variant_name(s.variant),
                    svc.reason_str(s.reason),
                )
            }
            None => (crate::metrics::NONE, crate::metrics::NONE, ""),
        };
        Entry {
            service,
            variant,
            reason,
            method: self.method,
            path: self.path,
            status: self.status,
            seconds: self.seconds,
            upstream: self.upstream,
            bytes: self.body_bytes,
            key: self.key,
            client_ip: self.client_ip,
            host: self.host,
            request_id: self.request_id,
        }
    }
}

/// A request's duration for metrics and the log: to its end, or for an upgraded
/// request (a WebSocket) to its 101. What follows the 101 is a connection's lifetime, not
/// a request's latency: counted as one it would swamp the duration histograms and the
/// rollout's latency gate.
pub fn seconds(start: std::time::Instant, upgraded_at: Option<std::time::Instant>) -> f64 {
    upgraded_at
        .map_or_else(|| start.elapsed(), |at| at.duration_since(start))
        .as_secs_f64()
}

/// The key the decision hashed (or the minted cookie id), as text, for the access log.
pub fn log_key(
    table: &RoutingTable,
    svc: usize,
    view: &RequestView<'_>,
    d: &Decision,
) -> Option<String> {
    if let Some(id) = &d.new_cookie {
        return Some(id.as_str().to_string());
    }
    let s = &table.router.services[svc];
    let ip = table.router.client_ip(view);
    s.find_key(view, ip)
        .map(|(k, _)| String::from_utf8_lossy(k.as_bytes()).into_owned())
}

/// The path of a request target without its query string (which can carry a key).
pub fn log_path(target: &str) -> &str {
    target.split('?').next().unwrap_or_default()
}
