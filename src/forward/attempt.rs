//! One request's upstream attempts: select a backend, fall back to the service's
//! `fallback` variant when the assigned one has none, retry after a failure when that is
//! safe, and give up with a status. The rules are [`judge`], a pure function of the
//! failure; [`Attempt`] applies its verdicts (metrics, passive health, what to try next).
//! Both carriers drive an `Attempt` from their own events, so the two cannot disagree.

use super::error::UpstreamError;
use crate::metrics::VariantMetrics;
use crate::routing::{Decision, Reason, RoutingTable};
use crate::upstream::Pool;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where in the exchange an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting: nothing was sent upstream.
    Connect,
    /// The request was (perhaps partly) sent; no response byte has reached the client.
    Exchange,
    /// The response had started reaching the client: it can be cut short, not replaced.
    Relay,
}

/// Whether the request could be sent again as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body, or all of it is still held.
    Replayable,
    /// Part of the body was streamed upstream and is gone.
    Consumed,
}

/// One failed attempt, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub error: UpstreamError,
    pub phase: Phase,
    /// The attempt used a pooled (kept-alive) upstream connection.
    pub reused: bool,
    /// The method is idempotent ([`is_idempotent`]).
    pub idempotent: bool,
    pub body: Body,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try the same choice again on a new connection: a pooled connection the upstream
    /// had closed is routine, not a sign of a failing backend.
    Fresh,
    /// Try another backend (the failed one is avoided).
    OtherBackend,
    /// Answer with this status (nothing is sent when the response had started).
    GiveUp(u16),
}

/// What a failure says about the backend, for its passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Nothing: the failure says nothing certain about the backend.
    None,
    /// It refused or did not take the connection: the backend's failure alone.
    ConnectFailed,
    /// A fresh connection closed without answering: the backend's, or the request's.
    HungUp,
}

/// The verdict on one failure: what to do next, and what it says about the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub retry: Retry,
    /// Counted in `cohort_upstream_errors_total`.
    pub counted: bool,
    /// Counted against the backend's passive health.
    pub against_backend: Signal,
}

/// Retries already spent by this request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Another backend was tried after a failure.
    pub other_backend: bool,
    /// A fresh connection was tried after a stale pooled one.
    pub fresh: bool,
}

/// The retry rules. A request is tried on at most two backends, and on one more fresh
/// connection when a pooled one was stale. A request is sent again only when doing so
/// cannot duplicate or corrupt it: nothing sent yet (connect failures), or an idempotent
/// method whose whole body is still held, and never once the response has started.
pub fn judge(f: Failure, spent: Spent) -> Verdict {
    let resend_ok = f.idempotent && f.body == Body::Replayable;
    let closed = f.error == UpstreamError::Closed;
    // A pooled connection closing is the keep-alive race as often as a failing
    // backend: only a fresh connection's hang-up counts against the backend.
    let hung_up = if closed && !f.reused {
        Signal::HungUp
    } else {
        Signal::None
    };
    let (retry, counted, against_backend) = match f.phase {
        Phase::Connect if !spent.other_backend => {
            (Retry::OtherBackend, true, Signal::ConnectFailed)
        }
        Phase::Connect => (Retry::GiveUp(f.error.status()), true, Signal::ConnectFailed),
        Phase::Exchange if closed && f.reused && resend_ok && !spent.fresh => {
            (Retry::Fresh, false, Signal::None)
        }
        Phase::Exchange if closed && !f.reused && resend_ok && !spent.other_backend => {
            (Retry::OtherBackend, true, hung_up)
        }
        Phase::Exchange => (Retry::GiveUp(f.error.status()), true, hung_up),
        Phase::Relay => (Retry::GiveUp(f.error.status()), true, Signal::None),
    };
    Verdict {
        retry,
        counted,
        against_backend,
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// One routed request's attempts.
pub struct Attempt {
    table: Arc<RoutingTable>,
    svc: usize,
    pool_key: u64,
    /// The variant serving (the decision's, or `fallback`).
    served: usize,
    reason: Reason,
    /// The backend a failed attempt used (the next selection avoids it).
    avoid: Option<SocketAddr>,
    spent: Spent,
    /// The next attempt must open a new connection.
    fresh_only: bool,
    /// The last failure was a connect failure: nothing was sent, so when the variant has
    /// no other backend the request may go to `fallback` instead.
    may_fall_back: bool,
    /// The backend of the latest attempt.
    upstream: Option<SocketAddr>,
}

impl Attempt {
    pub fn new(table: Arc<RoutingTable>, svc: usize, decision: &Decision) -> Attempt {
        Attempt {
            table,
            svc,
            pool_key: decision.pool_key,
            served: decision.variant,
            reason: decision.reason,
            avoid: None,
            spent: Spent::default(),
            fresh_only: false,
            may_fall_back: false,
            upstream: None,
        }
    }

    /// The backend for the next attempt, falling back to the `fallback` variant when the
    /// served one has no healthy backend, or no other backend after a connect failure;
    /// `Err(status)` when there is none (503), or none left after a failure (502).
    pub fn next_backend(&mut self) -> Result<SocketAddr, u16> {
        let pools = &self.table.pools[self.svc];
        let failed_before = self.spent.other_backend;
        let addr = match pools[self.served].select(self.pool_key, self.avoid) {
            Some(a) => a,
            None if failed_before && !self.may_fall_back => return Err(502),
            None => match self
                .table
                .fallback_backend(self.svc, self.served, self.pool_key)
            {
                Some((f, a)) => {
                    self.served = f;
                    self.reason = Reason::Fallback;
                    a
                }
                None if failed_before => return Err(502),
                None => return Err(503),
            },
        };
        self.upstream = Some(addr);
        Ok(addr)
    }

    /// Judges a failed attempt on `addr` ([`judge`]) and applies the verdict: the error
    /// metric, passive health, and which backend and connection come next.
    pub fn failed(&mut self, addr: SocketAddr, f: Failure) -> Retry {
        let v = judge(f, self.spent);
        if v.counted {
            if let Some(m) = self.metrics() {
                m.record_upstream_error(f.error.kind());
            }
        }
        match v.against_backend {
            Signal::None => {}
            Signal::ConnectFailed => self.pool().connect_failed(addr),
            Signal::HungUp => self.pool().hung_up(addr),
        }
        match v.retry {
            Retry::Fresh => {
                self.spent.fresh = true;
                self.fresh_only = true;
            }
            Retry::OtherBackend => {
                self.spent.other_backend = true;
                self.avoid = Some(addr);
                self.may_fall_back = f.phase == Phase::Connect;
            }
            Retry::GiveUp(_) => {}
        }
        v.retry
    }

    /// Whether the next attempt must not take a pooled connection.
    pub fn fresh_only(&self) -> bool {
        self.fresh_only
    }

    /// The pool of the variant serving.
    pub fn pool(&self) -> &Pool {
        &self.table.pools[self.svc][self.served]
    }

    pub fn table(&self) -> &Arc<RoutingTable> {
        &self.table
    }

    pub fn service(&self) -> usize {
        self.svc
    }

    pub fn served(&self) -> usize {
        self.served
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    pub fn upstream(&self) -> Option<SocketAddr> {
        self.upstream
    }

    /// The metric handles of the variant serving.
    pub fn metrics(&self) -> Option<&VariantMetrics> {
        self.table.metrics.variants.get(self.svc)?.get(self.served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Body::*;
    use Phase::{Exchange, Relay};
    use Retry::*;
    use Signal::{ConnectFailed, HungUp};
    use UpstreamError::*;

    const NONE: Spent = Spent {
        other_backend: false,
        fresh: false,
    };
    const OTHER: Spent = Spent {
        other_backend: true,
        fresh: false,
    };
    const FRESH: Spent = Spent {
        other_backend: false,
        fresh: true,
    };

    /// (phase, error, reused, idempotent, body, spent) -> (retry, counted, against backend)
    #[test]
    fn the_retry_rules_as_a_table() {
        #[rustfmt::skip]
        let table = [
            // Connect failures: nothing was sent, so any request moves to another backend once.
            (Phase::Connect, UpstreamError::Connect, false, false, Consumed, NONE, OtherBackend, true, ConnectFailed),
            (Phase::Connect, ConnectTimeout, false, true, Replayable, NONE, OtherBackend, true, ConnectFailed),
            (Phase::Connect, UpstreamError::Connect, false, true, Replayable, OTHER, GiveUp(502), true, ConnectFailed),
            (Phase::Connect, ConnectTimeout, false, true, Replayable, OTHER, GiveUp(504), true, ConnectFailed),
            // A failed TLS handshake: nothing was sent either; 502 once no backend is left.
            (Phase::Connect, Tls, false, false, Consumed, NONE, OtherBackend, true, ConnectFailed),
            (Phase::Connect, Tls, false, true, Replayable, OTHER, GiveUp(502), true, ConnectFailed),
            // A stale pooled connection: once more on a fresh one, not held against the backend.
            (Exchange, Closed, true, true, Replayable, NONE, Fresh, false, Signal::None),
            (Exchange, Closed, true, true, Replayable, OTHER, Fresh, false, Signal::None),
            (Exchange, Closed, true, true, Replayable, FRESH, GiveUp(502), true, Signal::None),
            // ... but never a request that cannot be sent twice as it was.
            (Exchange, Closed, true, false, Replayable, NONE, GiveUp(502), true, Signal::None),
            (Exchange, Closed, true, true, Consumed, NONE, GiveUp(502), true, Signal::None),
            // A fresh connection that closed without answering: the backend is failing.
            (Exchange, Closed, false, true, Replayable, NONE, OtherBackend, true, HungUp),
            (Exchange, Closed, false, true, Replayable, FRESH, OtherBackend, true, HungUp),
            (Exchange, Closed, false, true, Replayable, OTHER, GiveUp(502), true, HungUp),
            (Exchange, Closed, false, false, Replayable, NONE, GiveUp(502), true, HungUp),
            (Exchange, Closed, false, true, Consumed, NONE, GiveUp(502), true, HungUp),
            // Timeouts and bad responses are answered, never retried.
            (Exchange, Timeout, false, true, Replayable, NONE, GiveUp(504), true, Signal::None),
            (Exchange, Timeout, true, true, Replayable, NONE, GiveUp(504), true, Signal::None),
            (Exchange, Protocol, false, true, Replayable, NONE, GiveUp(502), true, Signal::None),
            (Exchange, Other, false, true, Replayable, NONE, GiveUp(502), true, Signal::None),
            // Once the response has started, nothing is retried or held against the backend.
            (Relay, Closed, false, true, Replayable, NONE, GiveUp(502), true, Signal::None),
            (Relay, Timeout, true, true, Replayable, NONE, GiveUp(504), true, Signal::None),
            (Relay, Protocol, false, true, Replayable, NONE, GiveUp(502), true, Signal::None),
        ];
        for (phase, error, reused, idempotent, body, spent, retry, counted, against) in table {
            let f = Failure {
                error,
                phase,
                reused,
                idempotent,
                body,
            };
            let want = Verdict {
                retry,
                counted,
                against_backend: against,
            };
            assert_eq!(judge(f, spent), want, "{f:?} after {spent:?}");
        }
    }

    #[test]
    fn idempotent_methods_are_rfc_9110s() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get", "PROPFIND"] {
            assert!(!is_idempotent(m), "{m}");
        }
    }
}
