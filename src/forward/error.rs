//! What can go wrong with an upstream attempt, as one type for both carriers: each
//! carrier translates its own failures (socket errors on the fast engine, Pingora's
//! `ErrorType` on the proxy) into an [`UpstreamError`], and the status the client gets
//! and the `kind` label of `cohort_upstream_errors_total` follow from it here, once.

pub use crate::metrics::ErrorKind;

/// One failed upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The TCP connection was refused or failed.
    Connect,
    /// The TCP connection was not established within `connect_timeout_ms`.
    ConnectTimeout,
    /// Connected, but a read or write waited longer than `read_timeout_ms`.
    Timeout,
    /// The TLS handshake failed: the certificate is not trusted or not for the backend's
    /// name, or the two sides share no protocol or cipher. Nothing was sent.
    Tls,
    /// The connection closed or reset.
    Closed,
    /// The upstream sent something that is not an HTTP/1.1 response (or one too large).
    Protocol,
    /// Anything else (an internal failure on the way).
    Other,
}

impl UpstreamError {
    /// The metric kind.
    pub fn kind(self) -> ErrorKind {
        match self {
            UpstreamError::Connect => ErrorKind::Connect,
            UpstreamError::ConnectTimeout | UpstreamError::Timeout => ErrorKind::Timeout,
            UpstreamError::Tls => ErrorKind::Tls,
            UpstreamError::Closed => ErrorKind::Reset,
            UpstreamError::Protocol => ErrorKind::Protocol,
            UpstreamError::Other => ErrorKind::Other,
        }
    }

    /// The status the client gets when cohort gives up on this error: 504 for a
    /// timeout (connect or read), 502 for everything else.
    pub fn status(self) -> u16 {
        match self {
            UpstreamError::ConnectTimeout | UpstreamError::Timeout => 504,
            _ => 502,
        }
    }

    /// Whether the failure happened while connecting (nothing was sent upstream).
    pub fn at_connect(self) -> bool {
        matches!(
            self,
            UpstreamError::Connect | UpstreamError::ConnectTimeout | UpstreamError::Tls
        )
    }
}

/// Logs a failed TLS handshake with a backend, with the reason (both carriers).
pub fn log_tls_failure(addr: std::net::SocketAddr, name: Option<&str>, reason: &str) {
    log::warn!(
        "upstream TLS handshake with {addr} (server name {}) failed: {reason}",
        name.unwrap_or("none")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_504_and_everything_else_502() {
        use UpstreamError::*;
        for (e, status, kind) in [
            (Connect, 502, ErrorKind::Connect),
            (ConnectTimeout, 504, ErrorKind::Timeout),
            (Timeout, 504, ErrorKind::Timeout),
            (Tls, 502, ErrorKind::Tls),
            (Closed, 502, ErrorKind::Reset),
            (Protocol, 502, ErrorKind::Protocol),
            (Other, 502, ErrorKind::Other),
        ] {
            assert_eq!((e.status(), e.kind()), (status, kind), "{e:?}");
        }
    }
}
