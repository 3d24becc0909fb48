//! cohort's own short plain-text responses (404 and the 5xx it answers when an upstream
//! attempt gives up): the same body and fields from either carrier.

use super::Attempt;
use http::header::{self, HeaderName, HeaderValue};

/// The body of cohort's own response with status `code`.
pub fn error_body(code: u16) -> &'static str {
    match code {
        502 => "502 bad gateway: the upstream failed\n",
        503 => "503 service unavailable: no healthy backend for this variant\n",
        504 => "504 gateway timeout: the upstream did not answer in time\n",
        404 => "404 not found: no service matches this host and path\n",
        400 => "400 bad request\n",
        431 => "431 request header fields too large: over server.max_request_head_bytes\n",
        413 => "413 content too large: the request body is over server.max_request_body_bytes\n",
        _ => "error\n",
    }
}

/// The header fields of cohort's own plain-text responses: content type, length, and
/// `Retry-After: 1` on a 503.
pub fn plain_fields(code: u16, body: &str) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
    [
        Some((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )),
        Some((header::CONTENT_LENGTH, HeaderValue::from(body.len()))),
        (code == 503).then(|| (header::RETRY_AFTER, HeaderValue::from_static("1"))),
    ]
    .into_iter()
    .flatten()
}

/// The service's `expose_header` naming the variant an attempt was for, on cohort's own
/// 502/503/504: a client (and a dashboard reading its logs) can tell which variant failed.
pub fn variant_field(attempt: &Attempt) -> Option<(&str, &str)> {
    let service = &attempt.table().router.services[attempt.service()];
    let name = service.cfg.expose_header.as_ref()?.as_str();
    Some((name, service.variant_name(attempt.served())))
}
