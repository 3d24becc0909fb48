//! gRPC as the forwarding core sees it: which requests are gRPC, what a `grpc-status`
//! says about the variant that answered, and how cohort's own failures reach a gRPC
//! client (as gRPC errors, never as an HTML or plain-text 502).
//!
//! The choice (docs/upstreams.md): a gRPC call's HTTP status is almost always 200, so
//! its outcome is its `grpc-status`. The codes that mean the server failed, UNKNOWN (2),
//! DEADLINE_EXCEEDED (4), INTERNAL (13), UNAVAILABLE (14) and DATA_LOSS (15), are errors
//! in `cohort_requests_total` (label `grpc_status`, 17 values at most) and in the rollout
//! analysis (`cohort_analysis_requests_total{outcome="error"}`), as a 5xx is; every other
//! code (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, ...) is the client's outcome, as
//! a 4xx is.

/// Whether a `content-type` value is gRPC's (`application/grpc`, `application/grpc+proto`,
/// `application/grpc-web`, ...).
pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type.len() >= 16 && content_type[..16].eq_ignore_ascii_case(b"application/grpc")
}

/// A gRPC status code, 0 to 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcStatus(u8);

impl GrpcStatus {
    pub const OK: GrpcStatus = GrpcStatus(0);
    pub const UNKNOWN: GrpcStatus = GrpcStatus(2);
    pub const DEADLINE_EXCEEDED: GrpcStatus = GrpcStatus(4);
    pub const UNAVAILABLE: GrpcStatus = GrpcStatus(14);
    /// Every code's label value, by code.
    const LABELS: [&'static str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];

    /// A `grpc-status` value. A code outside 0–16, or a value that is no number, is
    /// UNKNOWN (as gRPC clients read it).
    pub fn parse(value: &[u8]) -> GrpcStatus {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<u8>().ok())
            .filter(|c| *c <= 16)
            .map_or(GrpcStatus::UNKNOWN, GrpcStatus)
    }

    /// The status of a code (above 16: UNKNOWN, as [`GrpcStatus::parse`] reads it).
    pub fn from_code(code: u8) -> GrpcStatus {
        if code <= 16 {
            GrpcStatus(code)
        } else {
            GrpcStatus::UNKNOWN
        }
    }

    pub fn code(self) -> u8 {
        self.0
    }

    /// The `grpc_status` label value.
    pub fn label(self) -> &'static str {
        Self::LABELS[usize::from(self.0.min(16))]
    }

    /// Whether the code says the server failed (an error, as a 5xx), rather than the
    /// call's own outcome.
    pub fn is_server_fault(self) -> bool {
        matches!(self.0, 2 | 4 | 13 | 14 | 15)
    }

    /// The gRPC error a client gets instead of cohort's own HTTP `status`: 14
    /// UNAVAILABLE for no backend (503) or a failed upstream (502), 4 DEADLINE_EXCEEDED
    /// for a timeout (504), and gRPC's HTTP mapping for the rest.
    pub fn for_status(status: u16) -> GrpcStatus {
        GrpcStatus(match status {
            502 | 503 | 429 => 14,
            504 => 4,
            400 | 431 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            413 => 8,
            _ => 2,
        })
    }
}

/// Whether a finished request counts as an error: a status of 500 or more, or a gRPC
/// server fault.
pub fn is_error(status: u16, grpc: Option<GrpcStatus>) -> bool {
    status >= 500 || grpc.is_some_and(GrpcStatus::is_server_fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_in_any_case() {
        for ct in [
            &b"application/grpc"[..],
            b"application/grpc+proto",
            b"Application/GRPC-web",
        ] {
            assert!(is_grpc(ct));
        }
        for ct in [&b"application/json"[..], b"application/grp", b""] {
            assert!(!is_grpc(ct));
        }
    }

    #[test]
    fn server_faults_are_errors_and_the_rest_are_client_outcomes() {
        let faults: Vec<u8> = (0..=16)
            .filter(|c| GrpcStatus(*c).is_server_fault())
            .collect();
        assert_eq!(faults, [2, 4, 13, 14, 15]);
        assert!(is_error(200, Some(GrpcStatus(14))));
        assert!(!is_error(200, Some(GrpcStatus(5))));
        assert!(!is_error(200, Some(GrpcStatus::OK)));
        assert!(is_error(503, None));
        assert!(!is_error(404, None));
    }

    #[test]
    fn statuses_parse_and_odd_values_are_unknown() {
        assert_eq!(GrpcStatus::parse(b"0"), GrpcStatus::OK);
        assert_eq!(GrpcStatus::parse(b" 14 "), GrpcStatus::UNAVAILABLE);
        for odd in [&b"17"[..], b"-1", b"x", b"", b"\xff"] {
            assert_eq!(GrpcStatus::parse(odd), GrpcStatus::UNKNOWN);
        }
        assert_eq!(GrpcStatus(16).label(), "16");
    }

    #[test]
    fn own_failures_map_to_unavailable_and_deadline_exceeded() {
        assert_eq!(GrpcStatus::for_status(503), GrpcStatus::UNAVAILABLE);
        assert_eq!(GrpcStatus::for_status(502), GrpcStatus::UNAVAILABLE);
        assert_eq!(GrpcStatus::for_status(504), GrpcStatus::DEADLINE_EXCEEDED);
        assert_eq!(GrpcStatus::for_status(404).code(), 12);
        assert_eq!(GrpcStatus::for_status(500), GrpcStatus::UNKNOWN);
    }
}
