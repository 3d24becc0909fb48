//! Rule conditions (SPEC `[[service.rule]]`): every condition given must match (AND).

use super::request::RequestView;
use crate::config::{MatchOp, RuleConfig};
use std::net::IpAddr;

impl MatchOp {
    /// Tests one (optional) value: `present` looks only at presence.
    pub fn test(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (MatchOp::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (MatchOp::Equals(e), Some(v)) => v == e.as_slice(),
            (MatchOp::In(list), Some(v)) => list.iter().any(|e| v == e.as_slice()),
            (MatchOp::Prefix(p), Some(v)) => v.starts_with(p),
        }
    }
}

/// Whether `rule` matches. `key` is the cohort key found for the request (not a freshly
/// minted cookie id), used by `key_in`.
pub fn matches(
    rule: &RuleConfig,
    req: &RequestView<'_>,
    client_ip: Option<IpAddr>,
    key: Option<&[u8]>,
) -> bool {
    if !rule.client_cidr.is_empty() {
        match client_ip {
            Some(ip) if rule.client_cidr.iter().any(|n| n.contains(&ip)) => {}
            _ => return false,
        }
    }
    if let Some(m) = &rule.header {
        let ok = match &m.op {
            MatchOp::Present(want) => req.header(&m.name).is_some() == *want,
            op => req.header_all(&m.name).any(|v| op.test(Some(v))),
        };
        if !ok {
            return false;
        }
    }
    if let Some(m) = &rule.cookie {
        if !m.op.test(req.cookie(&m.name)) {
            return false;
        }
    }
    if let Some(m) = &rule.query {
        if !m.op.test(req.query(&m.name).as_deref()) {
            return false;
        }
    }
    if let Some(set) = &rule.key_in {
        match key {
            Some(k) if set.contains(k) => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_ops() {
        let eq = MatchOp::Equals(b"1".to_vec());
        assert!(eq.test(Some(b"1")));
        assert!(!eq.test(Some(b"10")));
        assert!(!eq.test(None));
        let within = MatchOp::In(vec![b"DE".to_vec(), b"FR".to_vec()]);
        assert!(within.test(Some(b"FR")));
        assert!(!within.test(Some(b"US")));
        assert!(MatchOp::Present(true).test(Some(b"")));
        assert!(!MatchOp::Present(true).test(None));
        assert!(MatchOp::Present(false).test(None));
        let pre = MatchOp::Prefix(b"partner-".to_vec());
        assert!(pre.test(Some(b"partner-acme")));
        assert!(!pre.test(Some(b"acme")));
    }
}
