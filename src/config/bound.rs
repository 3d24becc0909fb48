//! Server settings by when they take effect. Most of `[server]` is *live*: read from the
//! current table each time it is used, so a reload applies it. The rest is *bound* when
//! the process starts (sockets, threads, files and background tasks set up once) and
//! only a graceful upgrade changes it. [`Bound`] holds exactly those, and a reload's
//! `needs_upgrade` is computed from it ([`Bound::changes`]), not kept by hand.

use super::ServerConfig;
use serde::Serialize;
use std::net::SocketAddr;

/// The settings bound at start, each named by its path in the file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bound {
    #[serde(rename = "server.listen")]
    listen: Vec<SocketAddr>,
    /// The plaintext listeners that take a PROXY protocol header.
    #[serde(rename = "server.listen.proxy_protocol")]
    listen_proxy_protocol: Vec<SocketAddr>,
    #[serde(rename = "server.admin")]
    admin: Option<SocketAddr>,
    #[serde(rename = "server.threads")]
    threads: usize,
    #[serde(rename = "server.upgrade_sock")]
    upgrade_sock: String,
    #[serde(rename = "server.pid_file")]
    pid_file: String,
    #[serde(rename = "server.rollout_state")]
    rollout_state: String,
    #[serde(rename = "server.fleet.decider")]
    fleet_decider: Option<SocketAddr>,
    #[serde(rename = "server.tls.listen")]
    tls_listen: Vec<SocketAddr>,
    /// The TLS listeners that take a PROXY protocol header.
    #[serde(rename = "server.tls.proxy_protocol")]
    tls_proxy_protocol: Vec<SocketAddr>,
    #[serde(rename = "server.access_log")]
    access_log: String,
    #[serde(rename = "server.access_log_keys")]
    access_log_keys: bool,
    #[serde(rename = "server.sample_log")]
    sample_log: Option<String>,
    #[serde(rename = "server.resolve_interval_secs")]
    pub resolve_interval_secs: Option<u64>,
    #[serde(rename = "server.shutdown_timeout_secs")]
    shutdown_timeout_secs: u64,
}

impl ServerConfig {
    /// The settings of this config that are bound at start.
    pub fn bound(&self) -> Bound {
        // Every field is named, so a new setting does not compile until it is classified:
        // bound (kept below) or live (read from the current table where it is used).
        let ServerConfig {
            listen,
            proxy_protocol,
            threads,
            admin,
            admin_token_env: _,
            trusted_proxies: _,
            watch: _,
            drain_delay: _,
            shutdown_timeout,
            upgrade_sock_set: _,
            pid_file_set: _,
            rollout_state_set: _,
            fleet,
            access_log,
            access_log_keys,
            sample_log,
            sample_log_rate: _,
            tls,
            resolve_interval,
            client_write_timeout: _,
            client_header_timeout: _,
            keepalive_timeout: _,
            max_request_body_bytes: _,
            max_request_head_bytes: _,
        } = self;
        Bound {
            listen: listen.clone(),
            // Which listeners read a PROXY protocol header is fixed when they are set up.
            listen_proxy_protocol: proxy_protocol.clone(),
            admin: *admin,
            threads: *threads,
            upgrade_sock: self.upgrade_sock(),
            pid_file: self.pid_file(),
            rollout_state: self.rollout_state(),
            // Which process decides is settled at start (`crate::rollouts::fleet::Role`).
            fleet_decider: fleet.as_ref().map(|f| f.decider),
            // Certificate paths are live (re-read on every reload); addresses are bound.
            tls_listen: tls.iter().map(|t| t.listen).collect(),
            tls_proxy_protocol: tls
                .iter()
                .filter(|t| t.proxy_protocol)
                .map(|t| t.listen)
                .collect(),
            access_log: format!("{access_log:?}"),
            access_log_keys: *access_log_keys,
            sample_log: sample_log.clone(),
            resolve_interval_secs: resolve_interval.map(|d| d.as_secs()),
            shutdown_timeout_secs: shutdown_timeout.as_secs(),
        }
    }
}

impl Bound {
    /// The file paths of the bound settings that differ in `new`: what a reload to `new`
    /// cannot apply.
    pub fn changes(&self, new: &Bound) -> Vec<String> {
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
            (serde_json::to_value(self), serde_json::to_value(new))
        else {
            return Vec::new();
        };
        let mut changed: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        changed.sort();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn server(extra: &str) -> ServerConfig {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n{extra}\n[[service]]\nname = \"api\"\nkey = [\"ip\"]\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:9000\"]\n"
        );
        Config::parse(&text).unwrap().server
    }

    #[test]
    fn each_bound_setting_is_named_when_it_changes() {
        let base = server("").bound();
        for (line, path) in [
            ("admin = \"127.0.0.1:9999\"", "server.admin"),
            ("threads = 3", "server.threads"),
            ("upgrade_sock = \"/tmp/x.sock\"", "server.upgrade_sock"),
            ("pid_file = \"/tmp/x.pid\"", "server.pid_file"),
            ("access_log = \"stdout\"", "server.access_log"),
            ("access_log_keys = true", "server.access_log_keys"),
            ("sample_log = \"/tmp/s.jsonl\"", "server.sample_log"),
            ("resolve_interval_secs = 0", "server.resolve_interval_secs"),
            ("shutdown_timeout_secs = 7", "server.shutdown_timeout_secs"),
            (
                "[server.fleet]\ndecider = \"127.0.0.1:9090\"",
                "server.fleet.decider",
            ),
        ] {
            assert_eq!(base.changes(&server(line).bound()), [path], "{line}");
        }
        let other = server("").bound();
        assert!(base.changes(&other).is_empty());
    }

    #[test]
    fn proxy_protocol_on_a_listener_needs_an_upgrade() {
        let base = server("").bound();
        let text = "[server]\nlisten = [{ addr = \"127.0.0.1:8080\", proxy_protocol = true }]\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:9000\"]\n";
        let proxied = Config::parse(text).unwrap().server.bound();
        assert_eq!(base.changes(&proxied), ["server.listen.proxy_protocol"]);
        let tls = |on: bool| {
            let mut s = server("");
            s.tls.push(crate::config::TlsListener {
                listen: "127.0.0.1:8443".parse().unwrap(),
                cert: "c".into(),
                key: "k".into(),
                proxy_protocol: on,
            });
            s.bound()
        };
        assert_eq!(
            tls(false).changes(&tls(true)),
            ["server.tls.proxy_protocol"]
        );
    }

    #[test]
    fn live_settings_are_not_bound() {
        let base = server("").bound();
        for line in [
            "admin_token_env = \"T\"",
            "trusted_proxies = [\"10.0.0.0/8\"]",
            "watch = true",
            "drain_delay_secs = 9",
            "client_write_timeout_secs = 9",
            "client_header_timeout_secs = 9",
            "keepalive_timeout_secs = 9",
            "max_request_body_bytes = 9",
            "max_request_head_bytes = 4096",
            "sample_log_rate = 0.5",
        ] {
            assert!(base.changes(&server(line).bound()).is_empty(), "{line}");
        }
    }
}
