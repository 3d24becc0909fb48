//! Every request forwarded carries an id the backend and the access log share: the
//! client's `X-Request-Id` passes through as it is; without one, an ALB's
//! `X-Amzn-Trace-Id` is adopted; without either, cohort makes one (32 hex digits, random).
//! Adopted and new ids go to the backend as `X-Request-Id`. `traceparent` and every other
//! tracing field pass through untouched.

use super::edits::is;

/// The field cohort reads and sets.
pub const REQUEST_ID: &str = "x-request-id";
const AMZN_TRACE_ID: &str = "x-amzn-trace-id";
/// Longer client values are not trusted as ids (they are forwarded, not adopted).
const MAX_LEN: usize = 256;

/// A request's id and whether cohort adds it to the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    value: Value,
    /// The client sent `X-Request-Id`: it passes through, nothing is added.
    from_client: bool,
}

/// A new id is kept inline (no allocation on the request path); a client's is copied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    New([u8; 32]),
    Given(String),
}

impl RequestId {
    /// The id for a request with these fields.
    pub fn of<'v>(fields: impl Iterator<Item = (&'v str, &'v [u8])>) -> RequestId {
        let mut trace = None;
        for (name, value) in fields {
            if is(name, REQUEST_ID) {
                if let Some(v) = usable(value) {
                    return RequestId {
                        value: Value::Given(v.to_string()),
                        from_client: true,
                    };
                }
            } else if trace.is_none() && is(name, AMZN_TRACE_ID) {
                trace = usable(value);
            }
        }
        RequestId {
            value: trace.map_or_else(|| Value::New(new_id()), |t| Value::Given(t.to_string())),
            from_client: false,
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.value {
            // Hex digits only: always UTF-8.
            Value::New(hex) => std::str::from_utf8(hex).unwrap_or_default(),
            Value::Given(s) => s,
        }
    }

    /// The `X-Request-Id` value cohort adds upstream (`None`: the client's passes).
    pub fn to_add(&self) -> Option<&str> {
        (!self.from_client).then(|| self.as_str())
    }
}

/// A field value usable as an id: visible ASCII, not empty, not over [`MAX_LEN`].
fn usable(value: &[u8]) -> Option<&str> {
    let ok =
        !value.is_empty() && value.len() <= MAX_LEN && value.iter().all(|b| b.is_ascii_graphic());
    ok.then(|| std::str::from_utf8(value).ok()).flatten()
}

/// 128 random bits as 32 lowercase hex digits (written by hand: `format!` costs more
/// than the rest of the id on the request path).
fn new_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    let mut out = [0u8; 32];
    for (i, c) in out.iter_mut().enumerate() {
        *c = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(fields: &[(&'static str, &'static str)]) -> RequestId {
        RequestId::of(fields.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    #[test]
    fn the_clients_id_passes_and_nothing_is_added() {
        let r = id(&[("X-Amzn-Trace-Id", "Root=1-abc"), ("X-Request-ID", "req-7")]);
        assert_eq!(r.as_str(), "req-7");
        assert_eq!(r.to_add(), None);
    }

    #[test]
    fn an_alb_trace_id_is_adopted_and_sent_as_x_request_id() {
        let r = id(&[(
            "x-amzn-trace-id",
            "Root=1-67891233-abcdef012345678912345678",
        )]);
        assert_eq!(r.as_str(), "Root=1-67891233-abcdef012345678912345678");
        assert_eq!(r.to_add(), Some(r.as_str()));
    }

    #[test]
    fn without_either_a_random_id_is_made() {
        let (a, b) = (id(&[("traceparent", "00-abc-def-01")]), id(&[]));
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.to_add(), Some(a.as_str()));
    }

    #[test]
    fn unusable_client_values_are_not_adopted() {
        let long = "x".repeat(MAX_LEN + 1);
        let long: &'static str = Box::leak(long.into_boxed_str());
        for bad in ["", "has space", "tab\there", long] {
            let r = id(&[("x-request-id", bad)]);
            assert_ne!(r.as_str(), bad);
            assert_eq!(r.as_str().len(), 32, "{bad:?}: a new id");
        }
    }
}
