//! Changes synthetic users cannot show: each synthetic user is one key, hashed by both
//! configs, and matches whatever service is asked. A change to how a service finds a
//! user's key, mints one, honours a forced variant or matches requests moves real users
//! that the hash-split matrix does not count. These are named as cautions instead.

use crate::config::{HostPattern, ServiceConfig};

/// One line per such change between two versions of a service.
pub fn cautions(a: &ServiceConfig, b: &ServiceConfig) -> Vec<String> {
    let mut out = Vec::new();
    let keys = |s: &ServiceConfig| {
        let list: Vec<String> = s.keys.iter().map(|k| k.to_string()).collect();
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    if a.keys != b.keys {
        out.push(format!(
            "key changed ([{}] -> [{}]): a user whose first present key source changes gets another key, and another variant by hash",
            keys(a),
            keys(b)
        ));
    }
    if a.assign_cookie != b.assign_cookie {
        let c = |s: &ServiceConfig| s.assign_cookie.clone().unwrap_or_else(|| "none".into());
        out.push(format!(
            "assign_cookie changed ({} -> {}): users keyed by the cookie get another key, or none",
            c(a),
            c(b)
        ));
    }
    let force = |s: &ServiceConfig| {
        s.force.as_ref().map(|f| {
            let nets: Vec<String> = f.from.iter().map(|n| n.to_string()).collect();
            format!("{} from [{}]", f.name, nets.join(", "))
        })
    };
    if force(a) != force(b) {
        out.push(format!(
            "force_header changed ({} -> {}): forced requests may be forced no longer, or differently",
            force(a).unwrap_or_else(|| "none".into()),
            force(b).unwrap_or_else(|| "none".into())
        ));
    }
    let hosts = |s: &ServiceConfig| -> Vec<String> {
        s.hosts
            .iter()
            .map(|h| match h {
                HostPattern::Exact(e) => e.clone(),
                HostPattern::Wildcard(w) => format!("*{w}"),
            })
            .collect()
    };
    if hosts(a) != hosts(b) || a.path_prefix != b.path_prefix {
        out.push(
            "hosts or path_prefix changed: some requests may now match another service, or none"
                .to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn service(extra: &str) -> ServiceConfig {
        let text = format!(
            "[[service]]\nname = \"api\"\n{extra}\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:1\"]\n"
        );
        Config::parse(&text).unwrap().services.remove(0)
    }

    #[test]
    fn each_keying_change_is_named_and_nothing_else() {
        let base = service("key = [\"header:x-user-id\"]");
        assert!(cautions(&base, &service("key = [\"header:x-user-id\"]")).is_empty());
        for (extra, says) in [
            ("key = [\"cookie:session\"]", "key changed ([header:x-user-id] -> [cookie:session])"),
            ("key = [\"header:x-user-id\"]\nassign_cookie = \"cid\"", "assign_cookie changed (none -> cid)"),
            ("key = [\"header:x-user-id\"]\nforce_header = \"x-force\"\nforce_from = [\"10.0.0.0/8\"]", "force_header changed (none -> x-force from [10.0.0.0/8])"),
            ("key = [\"header:x-user-id\"]\npath_prefix = \"/v2\"", "hosts or path_prefix changed"),
        ] {
            let c = cautions(&base, &service(extra));
            assert_eq!(c.len(), 1, "{extra}: {c:?}");
            assert!(c[0].starts_with(says), "{extra}: {c:?}");
        }
    }
}
