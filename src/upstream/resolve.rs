//! Backend name resolution: each configured `host:port` on its own, so one name that does
//! not resolve leaves only that backend down ([`Lookup`] keeps why). Names are looked up
//! in the hosts file named by `COHORT_HOSTS_FILE` first, when it is set, then by the
//! system resolver. Resolution runs when a table is compiled and on re-resolution, never
//! on the request path (it blocks).

use crate::config::VariantConfig;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable naming a hosts file (`/etc/hosts` format) consulted before the
/// system resolver: for tests, air-gapped hosts and names the system resolver must not
/// answer. It is re-read on every resolution, so an edit is seen on the next retry.
pub const HOSTS_FILE_ENV: &str = "COHORT_HOSTS_FILE";

/// How often names that do not resolve are retried when `resolve_interval_secs = 0` turns
/// the periodic re-resolution of the others off: a backend must not stay down until the
/// next reload only because its service-discovery name came up after cohort did.
pub const UNRESOLVED_RETRY: Duration = Duration::from_secs(30);

/// What one configured backend resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// `host:port` as written in the config.
    pub name: String,
    /// Its field path, `service[0].variant[1].backends[0]`.
    pub path: String,
    /// The addresses, or why there are none (`cannot resolve "name": ...`).
    pub answer: Result<Vec<SocketAddr>, String>,
}

impl Lookup {
    /// The addresses; none while the name does not resolve.
    pub fn addrs(&self) -> &[SocketAddr] {
        self.answer.as_deref().unwrap_or(&[])
    }

    /// Why the name has no address, if it has none.
    pub fn error(&self) -> Option<&str> {
        self.answer.as_ref().err().map(String::as_str)
    }
}

/// Where backend names are looked up.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    hosts_file: Option<PathBuf>,
}

impl Resolver {
    /// The system resolver, after the hosts file named by [`HOSTS_FILE_ENV`] if set.
    pub fn from_env() -> Resolver {
        Resolver {
            hosts_file: std::env::var_os(HOSTS_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }

    /// The system resolver, after `hosts_file`.
    pub fn with_hosts_file(hosts_file: impl Into<PathBuf>) -> Resolver {
        Resolver {
            hosts_file: Some(hosts_file.into()),
        }
    }

    /// One round of lookups: the hosts file is read once for all of them.
    pub fn session(&self) -> Session {
        let (hosts, hosts_error) = match &self.hosts_file {
            None => (HashMap::new(), None),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => (parse_hosts(&text), None),
                Err(e) => (
                    HashMap::new(),
                    Some(format!("{HOSTS_FILE_ENV} {}: {e}", p.display())),
                ),
            },
        };
        Session { hosts, hosts_error }
    }
}

/// A snapshot of the name sources for one round of lookups.
#[derive(Debug)]
pub struct Session {
    /// Lower-case name → addresses in file order.
    hosts: HashMap<String, Vec<IpAddr>>,
    /// Why the hosts file could not be read (said in every failed lookup's error).
    hosts_error: Option<String>,
}

impl Session {
    /// Resolves one `host:port` (syntax already validated).
    pub fn lookup(&self, backend: &str) -> Result<Vec<SocketAddr>, String> {
        if let Ok((host, port)) = crate::config::split_host_port(backend) {
            if let Some(ips) = self.hosts.get(&host.to_ascii_lowercase()) {
                return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
            }
        }
        let why = match backend.to_socket_addrs() {
            Ok(addrs) => {
                let mut out: Vec<SocketAddr> = Vec::new();
                for a in addrs {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
                "no address".to_string()
            }
            Err(e) => e.to_string(),
        };
        Err(match &self.hosts_error {
            None => format!("cannot resolve {backend:?}: {why}"),
            Some(h) => format!("cannot resolve {backend:?}: {why} (and {h})"),
        })
    }

    /// Resolves every backend of a variant at `path` (`service[0].variant[1]`), each on
    /// its own, in config order.
    pub fn variant(&self, v: &VariantConfig, path: &str) -> Vec<Lookup> {
        v.backends
            .iter()
            .enumerate()
            .map(|(i, b)| Lookup {
                name: b.clone(),
                path: format!("{path}.backends[{i}]"),
                answer: self.lookup(b),
            })
            .collect()
    }
}

/// `/etc/hosts` format: an address, then names, `#` starts a comment. Lines whose first
/// word is not an IP address are skipped.
fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in words {
            let ips = map.entry(name.to_ascii_lowercase()).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(hosts: &str) -> Session {
        Session {
            hosts: parse_hosts(hosts),
            hosts_error: None,
        }
    }

    #[test]
    fn the_hosts_file_answers_before_the_system_resolver() {
        let s = session(
            "# comment\n10.0.0.7  canary.svc.local  Canary-Alias # trailing\n10.0.0.8 canary.svc.local\nnot-an-ip name\n[::1] bracketed\n::1 six.local\n",
        );
        assert_eq!(
            s.lookup("canary.svc.local:8000").unwrap(),
            [
                "10.0.0.7:8000".parse().unwrap(),
                "10.0.0.8:8000".parse().unwrap()
            ]
        );
        assert_eq!(
            s.lookup("canary-alias:81").unwrap(),
            ["10.0.0.7:81".parse().unwrap()],
            "aliases count, names are case-insensitive"
        );
        assert_eq!(
            s.lookup("six.local:80").unwrap(),
            ["[::1]:80".parse().unwrap()]
        );
        assert!(
            s.lookup("name:80").is_err(),
            "a line without an IP is skipped"
        );
        assert_eq!(
            s.lookup("127.0.0.1:9").unwrap(),
            ["127.0.0.1:9".parse().unwrap()],
            "IP literals need no lookup"
        );
    }

    #[test]
    fn a_failed_lookup_names_the_backend_and_an_unreadable_hosts_file() {
        let e = session("").lookup("no-such-host.invalid:80").unwrap_err();
        assert!(
            e.starts_with("cannot resolve \"no-such-host.invalid:80\": "),
            "{e}"
        );
        let r = Resolver::with_hosts_file("/nonexistent/cohort-hosts");
        let e = r.session().lookup("no-such-host.invalid:80").unwrap_err();
        assert!(
            e.contains("COHORT_HOSTS_FILE /nonexistent/cohort-hosts"),
            "{e}"
        );
    }
}
