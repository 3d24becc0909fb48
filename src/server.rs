//! `cohort run`: builds the Pingora server (proxy + admin services) around one shared
//! [`State`] and runs it until a signal ends it. Signals: SIGTERM drains (`/readyz` 503
//! for `drain_delay_secs` while still accepting, then a graceful stop), SIGQUIT hands the
//! sockets to a `--upgrade` process, SIGINT stops at once.

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::metrics::METRICS;
use crate::proxy::CohortProxy;
use crate::reload::{ReloadTriggers, Reloader};
use crate::routing::RoutingTable;
use crate::state::State;
use crate::tls::CertResolver;
use crate::upstream::health::HealthService;
use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::ExecutionPhase;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
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

pub fn apply_overrides(server: &mut ServerConfig, opts: &RunOptions) {
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
        pid_file: s.pid_file.clone(),
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
    run_table(table, &opts, true)
}

/// Runs the proxy on an already compiled table (also used by `cohort demo`, which has no
/// config file to reload: `reloadable = false`).
pub fn run_table(
    table: RoutingTable,
    opts: &RunOptions,
    reloadable: bool,
) -> Result<(), ConfigError> {
    // SIGHUP's default action kills the process: claim it before anything else, so a
    // SIGHUP that arrives before the reload task listens is harmless.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    );
    let server_cfg = table.config.server.clone();
    METRICS.set_config_version(None, &table.config.version);
    let access_log =
        AccessLog::open(&server_cfg.access_log, server_cfg.access_log_keys).map_err(|source| {
            ConfigError::Io {
                path: format!("server.access_log {:?}", server_cfg.access_log),
                source,
            }
        })?;
    let state = Arc::new(State::with_access_log(table, access_log));
    let reloader = reloadable.then(|| Arc::new(Reloader::new(state.clone(), opts.clone())));
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
        },
        "cohort proxy",
    );
    for addr in &server_cfg.listen {
        proxy.add_tcp(&addr.to_string());
    }
    for t in &server_cfg.tls {
        let resolver = CertResolver {
            state: state.clone(),
            listen: t.listen,
        };
        let mut settings =
            TlsSettings::with_callbacks(Box::new(resolver)).map_err(|e| ConfigError::Io {
                path: format!("server.tls {}", t.listen),
                source: std::io::Error::other(e.to_string()),
            })?;
        settings.enable_h2();
        proxy.add_tls_with_settings(&t.listen.to_string(), None, settings);
    }
    server.add_service(proxy);

    if let Some(addr) = server_cfg.admin {
        let mut admin = Service::new(
            "cohort admin".to_string(),
            Admin::new(state.clone(), reloader.clone()),
        );
        admin.threads = Some(1);
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }

    server.add_service(background_service(
        "cohort health",
        HealthService {
            state: state.clone(),
        },
    ));
    if let Some(r) = &reloader {
        server.add_service(background_service(
            "cohort reload",
            ReloadTriggers {
                reloader: r.clone(),
            },
        ));
    }
    // With --daemon, Pingora writes the pid file after forking.
    if !opts.daemon {
        if let Err(e) = std::fs::write(&server_cfg.pid_file, format!("{}\n", std::process::id())) {
            log::warn!("cannot write pid_file {}: {e}", server_cfg.pid_file);
        }
    }
    exit_when_idle_after_shutdown(&server, state.clone());

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

/// Once Pingora stops accepting (SIGTERM after the drain delay, or SIGQUIT after the
/// hand-over), exit as soon as no request is in flight instead of sleeping the whole
/// `shutdown_timeout_secs`; Pingora still enforces that limit for slow requests.
fn exit_when_idle_after_shutdown(server: &Server, state: Arc<State>) {
    let mut phases = server.watch_execution_phase();
    let spawned = std::thread::Builder::new()
        .name("cohort-exit".to_string())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => {
                    // Let connections that were mid-request register before counting.
                    std::thread::sleep(Duration::from_millis(100));
                    let mut idle_polls = 0;
                    while idle_polls < 3 {
                        std::thread::sleep(Duration::from_millis(50));
                        idle_polls = if state.in_flight() == 0 {
                            idle_polls + 1
                        } else {
                            0
                        };
                    }
                    log::info!("no request in flight: exiting");
                    std::process::exit(0);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the idle-exit watcher: {e}");
    }
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
