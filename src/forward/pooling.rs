//! When an upstream connection may be used again after an exchange.
//!
//! A response that carries no body by rule (to `HEAD`, and `204`, `304`) ends with its
//! head. An upstream that sends a body anyway sends it *late*: on a pooled connection
//! those bytes would be read as the next request's response, which may be another
//! user's. Such connections are closed, not pooled.

/// The connection may be pooled after this exchange: the response to a request (`HEAD`
/// or not) with this status could not be followed by late body bytes.
pub fn reusable_after(head_request: bool, status: u16) -> bool {
    !(head_request || status == 204 || status == 304)
}

/// What a carrier that must decide before the response (Pingora's pool, which reads the
/// status itself) can tell: a `HEAD` request's connection is never reused, so the
/// request goes up with `Connection: close`. After a `204` or `304` such a carrier
/// relies on its pool's idle check, which drops a connection that receives bytes while
/// idle (as NGINX's upstream keep-alive cache does).
pub fn reusable_before(method: &str) -> bool {
    method != "HEAD"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodiless_responses_end_the_connection() {
        for (head, status, reusable) in [
            (false, 200, true),
            (false, 404, true),
            (false, 500, true),
            (true, 200, false),
            (true, 404, false),
            (false, 204, false),
            (false, 304, false),
        ] {
            assert_eq!(reusable_after(head, status), reusable, "{head} {status}");
        }
        assert!(!reusable_before("HEAD"));
        assert!(reusable_before("GET") && reusable_before("POST"));
    }
}
