//! The requests cohort refuses before routing them, on every carrier alike: framing that
//! two parsers could read two ways, a missing `Host`, and bodies over the configured
//! limit. What NGINX 1.22 answers for each is in the hostile-input tests.

use super::edits::is;

/// Why a request is refused, and with which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Content-Length` given twice, or as a list (`5, 5`), or not a number: 400.
    AmbiguousLength,
    /// HTTP/1.1 without a `Host`, with an empty one, or with several: 400.
    BadHost,
    /// `Content-Length` over `server.max_request_body_bytes`: 413, body unread.
    BodyTooLarge,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::AmbiguousLength | Refusal::BadHost => 400,
            Refusal::BodyTooLarge => 413,
        }
    }
}

/// Checks a request head's fields (`name`, `value`) before routing. `http11`: the
/// request is HTTP/1.1 (HTTP/2 carries the authority elsewhere, HTTP/1.0 may omit
/// `Host`). `max_body`: `server.max_request_body_bytes`.
pub fn check<'a>(
    http11: bool,
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
    max_body: u64,
) -> Result<(), Refusal> {
    let (mut lengths, mut length, mut bad_length) = (0, 0, false);
    let (mut hosts, mut empty_host) = (0, false);
    for (name, value) in fields {
        if is(name, "content-length") {
            lengths += 1;
            match decimal(value) {
                Some(n) => length = n,
                None => bad_length = true,
            }
        } else if is(name, "host") {
            hosts += 1;
            empty_host |= trim(value).is_empty();
        }
    }
    // Ambiguity first: a head that two parsers could frame two ways is refused as such,
    // whatever else is wrong with it.
    if bad_length || lengths > 1 {
        return Err(Refusal::AmbiguousLength);
    }
    if http11 && (hosts != 1 || empty_host) {
        return Err(Refusal::BadHost);
    }
    if length > max_body {
        return Err(Refusal::BodyTooLarge);
    }
    Ok(())
}

/// The body limit for a body that streams without a `Content-Length` (chunked): counts
/// the bytes as they pass and refuses once they go over `server.max_request_body_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    seen: u64,
    max: u64,
}

impl BodyLimit {
    pub fn new(max: u64) -> BodyLimit {
        BodyLimit { seen: 0, max }
    }

    /// Counts `n` more body bytes.
    pub fn add(&mut self, n: usize) -> Result<(), Refusal> {
        self.seen = self.seen.saturating_add(n as u64);
        if self.seen > self.max {
            Err(Refusal::BodyTooLarge)
        } else {
            Ok(())
        }
    }
}

/// A `Content-Length` value: digits only (surrounding spaces allowed), at most 18 of
/// them, so it fits a `u64` with room.
fn decimal(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    crate::routing::request::trim(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(http11: bool, fields: &[(&str, &str)], max: u64) -> Result<(), Refusal> {
        check(http11, fields.iter().map(|(n, v)| (*n, v.as_bytes())), max)
    }

    #[test]
    fn framing_that_can_be_read_two_ways_is_refused() {
        use Refusal::*;
        let h = ("Host", "x");
        for (fields, want) in [
            (vec![h, ("Content-Length", "5")], Ok(())),
            (vec![h, ("content-length", " 5 ")], Ok(())),
            (vec![h, ("Content-Length", "5, 5")], Err(AmbiguousLength)),
            (
                vec![h, ("Content-Length", "5"), ("Content-Length", "5")],
                Err(AmbiguousLength),
            ),
            (vec![h, ("Content-Length", "-1")], Err(AmbiguousLength)),
            (vec![h, ("Content-Length", "0x10")], Err(AmbiguousLength)),
            (
                vec![h, ("Content-Length", "1234567890123456789")],
                Err(AmbiguousLength),
            ),
            (vec![h, ("Content-Length", "101")], Err(BodyTooLarge)),
            (
                vec![h, ("Content-Length", "101"), ("Content-Length", "1")],
                Err(AmbiguousLength),
            ),
            (vec![("Content-Length", "101")], Err(BadHost)),
            (vec![h, ("Content-Length", "100")], Ok(())),
            (vec![], Err(BadHost)),
            (vec![("Host", "")], Err(BadHost)),
            (vec![("Host", "  ")], Err(BadHost)),
            (vec![h, h], Err(BadHost)),
        ] {
            assert_eq!(run(true, &fields, 100), want, "{fields:?}");
        }
    }

    #[test]
    fn a_streamed_body_is_refused_once_it_passes_the_limit() {
        let mut limit = BodyLimit::new(10);
        assert_eq!(limit.add(6), Ok(()));
        assert_eq!(limit.add(4), Ok(()), "exactly the limit is taken");
        assert_eq!(limit.add(1), Err(Refusal::BodyTooLarge));
    }

    #[test]
    fn the_host_rule_is_http_1_1s() {
        assert_eq!(run(false, &[], 100), Ok(()));
        assert_eq!(run(true, &[], 100), Err(Refusal::BadHost));
    }
}
