//! `cohort run`: builds the Pingora server (proxy + admin services) around one shared
//! [`State`] and runs it until a signal ends it. Signals: SIGTERM drains (`/readyz` 503
//! for `drain_delay_secs` while still accepting, then a graceful stop), SIGQUIT hands the
//! sockets to a `--upgrade` process, SIGINT stops at once.

use crate::admin::Admin;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::proxy::CohortProxy;
use crate::routing::RoutingTable;
use crate::state::State;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// How `cohort run` was invoked.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    /// `--listen` (repeatable): replaces `server.listen`.
    pub listen: Vec<SocketAddr>,
    /// `--admin`: replaces `server.admin`.
    pub admin: Option<SocketAddr>,
    pub upgrade: bool,
    pub daemon: bool,
}

/// Loads a config file and applies the command-line overrides.
pub fn load_config(opts: &RunOptions) -> Result<Config, ConfigError> {
    let mut config = Config::load(&opts.config)?;
    apply_overrides(&mut config.server, opts);
    Ok(config)
}

fn apply_overrides(server: &mut ServerConfig, opts: &RunOptions) {
    if !opts.listen.is_empty() {
        server.listen = opts.listen.clone();
    }
    if opts.admin.is_some() {
        server.admin = opts.admin;
    }
}

/// Pingora's server settings derived from `[server]`.
fn server_conf(s: &ServerConfig, daemon: bool) -> ServerConf {
    ServerConf {
        threads: s.threads,
        daemon,
        pid_file: s
            .pid_file
            .clone()
            .unwrap_or_else(|| s.upgrade_sock.replace(".sock", ".pid")),
        upgrade_sock: s.upgrade_sock.clone(),
        // In-flight requests get shutdown_timeout_secs after accepting stops.
        grace_period_seconds: Some(s.shutdown_timeout.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// Runs the proxy until it is stopped. Returns an error only for start-up problems.
pub fn run(opts: RunOptions) -> Result<(), ConfigError> {
    let config = load_config(&opts)?;
    let table = RoutingTable::build(config)?;
    run_table(table, &opts)
}

/// Runs the proxy on an already compiled table (also used by `cohort demo`).
pub fn run_table(table: RoutingTable, opts: &RunOptions) -> Result<(), ConfigError> {
    let server_cfg = table.config.server.clone();
    let state = Arc::new(State::new(table));
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server =
        Server::new_with_opt_and_conf(Some(opt), server_conf(&server_cfg, opts.daemon));
    server.bootstrap();

    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        CohortProxy {
            state: state.clone(),
            tls: false,
        },
        "cohort proxy",
    );
    for addr in &server_cfg.listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);

    if let Some(addr) = server_cfg.admin {
        let mut admin = Service::new(
            "cohort admin".to_string(),
            Admin {
                state: state.clone(),
            },
        );
        admin.threads = Some(1);
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }

    log::info!(
        "cohort {} serving on {:?} (admin {:?}), config version {}",
        env!("CARGO_PKG_VERSION"),
        server_cfg.listen,
        server_cfg.admin,
        state.table().config.version
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            state,
            drain_delay: server_cfg.drain_delay,
        }),
    });
    Ok(())
}

/// Maps Unix signals to Pingora's shutdown kinds, with the SIGTERM drain delay first.
struct Signals {
    state: Arc<State>,
    drain_delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => {
                log::info!("SIGQUIT: handing the listening sockets to the new process");
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                self.state.start_draining();
                log::info!(
                    "SIGTERM: draining; /readyz answers 503, still accepting for {:?}",
                    self.drain_delay
                );
                tokio::select! {
                    _ = tokio::time::sleep(self.drain_delay) => {
                        log::info!("drain delay over: stopping accepting, finishing in-flight requests");
                        ShutdownSignal::GracefulTerminate
                    }
                    _ = int.recv() => ShutdownSignal::FastShutdown,
                }
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
        }
    }
}
