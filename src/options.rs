//! How `cohort run` was invoked ([`RunOptions`]) and the initial config it names, with
//! the command-line overrides applied. The reloader applies the same overrides to every
//! new version, so this sits beside the config source, below both the server and the
//! reloader.

use crate::config::{Config, ConfigError, ServerConfig};
use crate::source::{Source, UrlSource};
use std::net::SocketAddr;
use std::path::PathBuf;

/// How `cohort run` was invoked.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `-c FILE` (exclusive with `config_url`).
    pub config: PathBuf,
    /// `--config-url URL`: fleet config source, polled.
    pub config_url: Option<String>,
    /// `--config-poll-secs`: how often `--config-url` is polled, and how often a fleet
    /// follower syncs with its decider.
    pub config_poll: std::time::Duration,
    /// `--config-cache FILE`: last good fetched copy.
    pub config_cache: Option<PathBuf>,
    /// `--listen` (repeatable): replaces `server.listen`; the new listeners take a PROXY
    /// protocol header when every listener of the file's `server.listen` does.
    pub listen: Vec<SocketAddr>,
    /// `--admin`: replaces `server.admin`.
    pub admin: Option<SocketAddr>,
    pub upgrade: bool,
    pub daemon: bool,
}

impl RunOptions {
    /// The config source these options name.
    pub fn source(&self) -> Source {
        match &self.config_url {
            Some(url) => Source::Url(UrlSource::new(
                url.clone(),
                self.config_cache.clone(),
                self.config_poll,
            )),
            None => Source::File(self.config.clone()),
        }
    }
}

/// Reads the initial config from `source` (a URL falls back to its cached copy) and
/// applies the command-line overrides.
pub fn load_config(opts: &RunOptions, source: &Source) -> Result<Config, ConfigError> {
    let mut config = match source {
        Source::File(p) => Config::load(p)?,
        Source::Url(u) => {
            let (text, etag) = u.initial()?;
            let config = Config::parse(&text)?;
            u.commit(&text, etag);
            config
        }
    };
    apply_overrides(&mut config.server, opts);
    Ok(config)
}

pub fn apply_overrides(server: &mut ServerConfig, opts: &RunOptions) {
    if !opts.listen.is_empty() {
        // One shared file behind an NLB, per-instance ports: the file says whether its
        // listeners take PROXY protocol, `--listen` only moves them.
        let all_proxied = server
            .listen
            .iter()
            .all(|a| server.proxy_protocol.contains(a));
        if !all_proxied && !server.proxy_protocol.is_empty() {
            log::warn!(
                "--listen replaces server.listen, whose listeners differ in proxy_protocol: \
                 the --listen listeners take no PROXY protocol header"
            );
        }
        server.listen = opts.listen.clone();
        server.proxy_protocol = if all_proxied {
            opts.listen.clone()
        } else {
            Vec::new()
        };
    }
    if opts.admin.is_some() {
        server.admin = opts.admin;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(extra: &str) -> ServerConfig {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n{extra}\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:9\"]\n"
        );
        Config::parse(&text).expect("valid").server
    }

    #[test]
    fn default_files_follow_the_listen_override_and_set_ones_do_not() {
        let opts = RunOptions {
            listen: vec!["127.0.0.1:18095".parse().expect("addr")],
            ..RunOptions::default()
        };
        let mut s = server("");
        assert_eq!(s.pid_file(), "/tmp/cohort-8080.pid");
        apply_overrides(&mut s, &opts);
        assert_eq!(s.pid_file(), "/tmp/cohort-18095.pid");
        assert_eq!(s.upgrade_sock(), "/tmp/cohort-18095.sock");
        let mut s = server("pid_file = \"/run/a.pid\"\nupgrade_sock = \"/run/a.sock\"");
        apply_overrides(&mut s, &opts);
        assert_eq!(s.pid_file(), "/run/a.pid");
        assert_eq!(s.upgrade_sock(), "/run/a.sock");
    }

    fn listening(listen: &str) -> ServerConfig {
        let text = format!(
            "[server]\nlisten = {listen}\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:9000\"]\n"
        );
        Config::parse(&text).unwrap().server
    }

    fn overridden(listen: &str) -> ServerConfig {
        let mut s = listening(listen);
        let opts = RunOptions {
            listen: vec!["127.0.0.1:18095".parse().unwrap()],
            ..RunOptions::default()
        };
        apply_overrides(&mut s, &opts);
        s
    }

    #[test]
    fn listen_override_keeps_a_uniform_proxy_protocol_setting() {
        let on = overridden(r#"[{ addr = "0.0.0.0:8080", proxy_protocol = true }]"#);
        assert_eq!(on.listen, on.proxy_protocol);
        let off = overridden(r#"["0.0.0.0:8080"]"#);
        assert!(off.proxy_protocol.is_empty());
        let mixed =
            overridden(r#"["0.0.0.0:8080", { addr = "0.0.0.0:8081", proxy_protocol = true }]"#);
        assert_eq!(mixed.listen.len(), 1);
        assert!(mixed.proxy_protocol.is_empty());
    }

    #[test]
    fn the_rollout_state_file_defaults_per_instance_and_must_be_absolute() {
        let opts = RunOptions {
            listen: vec!["127.0.0.1:18095".parse().expect("addr")],
            ..RunOptions::default()
        };
        let mut s = server("");
        assert_eq!(s.rollout_state(), "/tmp/cohort-8080.rollout.json");
        apply_overrides(&mut s, &opts);
        assert_eq!(s.rollout_state(), "/tmp/cohort-18095.rollout.json");
        let s = server("rollout_state = \"/var/lib/cohort/r.json\"");
        assert_eq!(s.rollout_state(), "/var/lib/cohort/r.json");
        for bad in ["r.json", "/var/lib/cohort/"] {
            let text = format!(
                "[server]\nlisten = [\"127.0.0.1:8080\"]\nrollout_state = {bad:?}\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:9\"]\n"
            );
            let err = Config::parse(&text).expect_err(bad).lines().join("\n");
            assert!(err.contains("server.rollout_state"), "{err}");
        }
    }
}
