//! `cohort run`: builds the Pingora server (proxy + admin services) around one shared
//! [`State`] and runs it until a signal ends it. Signals: SIGTERM drains (`/readyz` 503
//! for `drain_delay_secs` while still accepting, then a graceful stop), SIGQUIT hands the
//! sockets to a `--upgrade` process, SIGINT stops at once.

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::{ConfigError, ServerConfig};
use crate::fast::{FastApp, HandOver, OneRequest};
use crate::lifecycle::{IdleExit, Signals};
use crate::metrics::METRICS;
use crate::options::{load_config, RunOptions};
use crate::proxy::CohortProxy;
use crate::proxy_protocol::{PreTls, Proxied, SkipHeader};
use crate::reload::{ReloadTriggers, Reloader};
use crate::rollouts::fleet::Role;
use crate::rollouts::Rollouts;
use crate::routing::RoutingTable;
use crate::source::Source;
use crate::state::State;
use crate::tls::CertResolver;
use crate::upstream::health::HealthService;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{
    L4BufferSettings, ListenerConfig, Listeners, DEFAULT_L4_WRITE_BUFFER_SIZE,
};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::protocols::ALPN;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;

/// Read buffer per plaintext downstream connection (request heads are far smaller).
const PLAINTEXT_READ_BUFFER: usize = 4 * 1024;
/// The listening services' names (Pingora logs them).
const PROXY_SERVICE: &str = "cohort proxy";
const PROXY_PROTOCOL_SERVICE: &str = "cohort proxy (PROXY protocol)";
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Pingora's server settings derived from `[server]`.
fn server_conf(s: &ServerConfig, daemon: bool) -> ServerConf {
    ServerConf {
        threads: s.threads,
        daemon,
        pid_file: s.pid_file(),
        upgrade_sock: s.upgrade_sock(),
        // In-flight requests get shutdown_timeout_secs after accepting stops.
        grace_period_seconds: Some(s.shutdown_timeout.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        // Per-thread runtimes: a connection stays on the thread that accepted it, which
        // avoids cross-thread wake-ups (see BENCHMARKS.md).
        work_stealing: std::env::var("COHORT_WORK_STEALING").is_ok_and(|v| v == "1"),
        ..ServerConf::default()
    }
}

/// The Pingora carrier as the engine's hand-over target, and as the listeners' own
/// application when the engine is off.
struct PingoraCarrier(Arc<HttpProxy<CohortProxy>>, Arc<State>);

/// With the engine off, the Pingora carrier serves the listeners itself. Its cleanup
/// (which drops idle keep-alive connections) waits for the end of the drain window.
#[async_trait::async_trait]
impl ServerApp for PingoraCarrier {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.0.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        if let Some(end) = self.1.drain_window_end() {
            tokio::time::sleep_until(end.into()).await;
        }
        ServerApp::cleanup(self.0.as_ref()).await;
    }
}

#[async_trait::async_trait]
impl HandOver for PingoraCarrier {
    /// HTTP/2 for the whole connection. HTTP/1: Pingora's keep-alive loop, one request
    /// at a time, until the request it served was a [`OneRequest`] the engine can take
    /// back (or the connection ends).
    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.0.process_new(stream, shutdown).await;
        }
        let mut session = ServerSession::new_http1(stream);
        // As Pingora's own loop starts a connection; `request_filter` applies
        // `server.keepalive_timeout_secs`.
        session.set_keepalive((!*shutdown.borrow()).then_some(60));
        loop {
            let reused = HttpServerApp::process_new_http(&self.0, session, shutdown).await?;
            let (stream, settings) = reused.consume();
            if OneRequest::is_done(&stream) {
                return Some(stream);
            }
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self).await;
    }
}

/// Runs the proxy until it is stopped. Returns an error only for start-up problems.
pub fn run(opts: RunOptions) -> Result<(), ConfigError> {
    let source = opts.source();
    let config = load_config(&opts, &source)?;
    let table = RoutingTable::build(config)?;
    table.log_resolution(None);
    for w in table.config.warnings() {
        log::warn!("{w}");
    }
    run_table(table, &opts, Some(source))
}

/// Runs the proxy on an already compiled table (also used by `cohort demo`, which has no
/// config source to reload: `source = None`).
pub fn run_table(
    table: RoutingTable,
    opts: &RunOptions,
    source: Option<Source>,
) -> Result<(), ConfigError> {
    // SIGHUP's default action kills the process: claim it before anything else, so a
    // SIGHUP that arrives before the reload task listens is harmless.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    );
    let server_cfg = table.config.server.clone();
    let access_log =
        AccessLog::open(&server_cfg.access_log, server_cfg.access_log_keys).map_err(|source| {
            ConfigError::Io {
                path: format!("server.access_log {:?}", server_cfg.access_log),
                source,
            }
        })?;
    let (access_log, access_log_writer) = match access_log {
        Some((log, writer)) => (Some(log), Some(writer)),
        None => (None, None),
    };
    let (sample_log, sample_log_writer) = match &server_cfg.sample_log {
        Some(path) => {
            let (log, writer) =
                AccessLog::open_private(path).map_err(|source| ConfigError::Io {
                    path: format!("server.sample_log {path:?}"),
                    source,
                })?;
            log::info!(
                "writing request samples to {path} (server.sample_log_rate {}); they hold cohort keys",
                server_cfg.sample_log_rate
            );
            (Some(log), Some(writer))
        }
        None => (None, None),
    };
    let role = Role::of(&server_cfg, opts.config_poll.max(Duration::from_secs(1)));
    let rollout_state = server_cfg.rollout_state();
    let state_error = |e: crate::rollout::store::StoreError| ConfigError::Io {
        path: format!("server.rollout_state {rollout_state:?}"),
        source: std::io::Error::other(e.to_string()),
    };
    let decides = !matches!(role, Role::Follower(_));
    if opts.upgrade && decides {
        // The old process writes the state file until it hands the sockets over: a file
        // it cannot read stops this start now, before the hand-over; it is read for good
        // after (below).
        crate::rollout::store::load(rollout_state.as_ref()).map_err(state_error)?;
    }
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server =
        Server::new_with_opt_and_conf(Some(opt), server_conf(&server_cfg, opts.daemon));
    // With --upgrade, this waits for the old process's sockets, which it sends once it has
    // stopped writing rollout state (`Rollouts::retire` on SIGQUIT).
    server.bootstrap();
    let rollouts = match role {
        Role::Follower(link) => {
            Rollouts::follower(link, format!("{rollout_state}.fleet-copy").into())
        }
        role => Rollouts::open(rollout_state.clone().into(), role).map_err(state_error)?,
    };
    let state = Arc::new(
        State::with_access_log(table, access_log)
            .with_sample_log(sample_log)
            .with_rollouts(rollouts),
    );
    METRICS.set_config_versions(&state.versions());
    let reloader = source.map(|src| Arc::new(Reloader::new(state.clone(), opts.clone(), src)));
    // A follower takes the fleet's steps before it serves.
    crate::rollouts::follow::sync(&state);

    let fast = crate::fast::enabled();
    let cohort_proxy = || CohortProxy {
        state: state.clone(),
    };
    // The engine reads into its own buffer, so the stream needs none; Pingora's
    // default is 64 KiB, held by every idle keep-alive connection (see BENCHMARKS.md).
    // Nor does it need the stream's write buffer (1,460 bytes, held by every TLS
    // connection for its life): it writes each response piece whole and flushes it,
    // and OpenSSL buffers a handshake flight itself.
    let (read_buffer, write_buffer) = if fast {
        (0, 0)
    } else {
        (PLAINTEXT_READ_BUFFER, DEFAULT_L4_WRITE_BUFFER_SIZE)
    };
    let buffers = L4BufferSettings::new(read_buffer, write_buffer);
    // TLS listeners get the same socket buffers: TLS records are read through them.
    let plaintext = |addr: &SocketAddr| ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers);
    let mut tls_settings = Vec::new();
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
        // An idle TLS connection gives its read and write buffers (about 34 KiB) back to
        // OpenSSL's pool instead of keeping them (NGINX does the same).
        settings.set_mode(openssl::ssl::SslMode::RELEASE_BUFFERS);
        tls_settings.push((t.listen, t.proxy_protocol, settings));
    }
    // Listeners with `proxy_protocol = true` belong to a service of their own, whose app
    // reads the header: the others' connections never pay for telling them apart (a
    // Pingora service does not say which listener accepted a connection). A config that
    // has both runs two listener services.
    let mut groups = Vec::new();
    for proxied in [false, true] {
        let mut listeners = Listeners::new();
        for addr in &server_cfg.listen {
            if server_cfg.proxy_protocol.contains(addr) == proxied {
                listeners.add_listener(plaintext(addr));
            }
        }
        let (tls, others): (Vec<_>, Vec<_>) = std::mem::take(&mut tls_settings)
            .into_iter()
            .partition(|t| t.1 == proxied);
        tls_settings = others;
        let any_tls = !tls.is_empty();
        for (listen, _, settings) in tls {
            listeners.add_listener(plaintext(&listen).tls(settings));
        }
        if any_tls && proxied {
            listeners.set_pre_tls_callback(Arc::new(PreTls {
                state: state.clone(),
            }));
        }
        if !listeners.addresses().is_empty() {
            groups.push((proxied, listeners));
        }
    }
    let conf = server.configuration.clone();
    let carrier = || -> Arc<dyn HandOver> {
        Arc::new(PingoraCarrier(
            Arc::new(pingora_proxy::http_proxy(&conf, cohort_proxy())),
            state.clone(),
        ))
    };
    if fast {
        // Every listener on the HTTP/1 engine; HTTP/2 and hand-overs go to the Pingora
        // carrier behind it (one, shared by both services).
        let handover = carrier();
        for (proxied, listeners) in groups {
            let app = FastApp::new(state.clone(), handover.clone());
            let (name, app) = match proxied {
                false => (PROXY_SERVICE, app),
                true => (PROXY_PROTOCOL_SERVICE, app.with_proxy_protocol()),
            };
            server.add_service(Service::with_listeners(name.to_string(), listeners, app));
        }
    } else {
        for (proxied, listeners) in groups {
            if proxied {
                let app = Proxied {
                    state: state.clone(),
                    carrier: carrier(),
                };
                let name = PROXY_PROTOCOL_SERVICE.to_string();
                server.add_service(Service::with_listeners(name, listeners, app));
            } else {
                // Its cleanup waits for the end of the drain window.
                let app = PingoraCarrier(
                    Arc::new(pingora_proxy::http_proxy(&conf, cohort_proxy())),
                    state.clone(),
                );
                let name = PROXY_SERVICE.to_string();
                server.add_service(Service::with_listeners(name, listeners, app));
            }
        }
    }

    if let Some(addr) = server_cfg.admin {
        let app = Admin::new(state.clone(), reloader.clone());
        let mut listeners = Listeners::new();
        listeners.add_tcp(&addr.to_string());
        let name = "cohort admin".to_string();
        let proxied = !server_cfg.proxy_protocol.is_empty()
            || server_cfg.tls.iter().any(|t| t.proxy_protocol);
        if proxied {
            // An NLB that sends PROXY protocol sends it on its health checks too.
            let app = SkipHeader {
                state: state.clone(),
                inner: Arc::new(app),
            };
            let mut admin = Service::with_listeners(name, listeners, app);
            admin.threads = Some(1);
            server.add_service(admin);
        } else {
            let mut admin = Service::with_listeners(name, listeners, app);
            admin.threads = Some(1);
            server.add_service(admin);
        }
    }

    server.add_service(background_service(
        "cohort listeners",
        crate::listeners::BindWatch {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "cohort health",
        HealthService {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "cohort rollout",
        crate::rollouts::task::RolloutTask {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "cohort rollout follower",
        crate::rollouts::follow::FollowTask {
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
    let pid_file = server_cfg.pid_file();
    if !opts.daemon {
        if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
            log::warn!("cannot write pid_file {pid_file}: {e}");
        }
    }
    // Started by Pingora after it daemonizes (a fork keeps no other thread).
    if let Some(w) = access_log_writer {
        server.add_service(background_service("cohort access log", w));
    }
    if let Some(w) = sample_log_writer {
        server.add_service(background_service("cohort sample log", w));
    }
    server.add_service(background_service(
        "cohort idle exit",
        IdleExit::new(
            server.watch_execution_phase(),
            state.clone(),
            pid_file.clone(),
        ),
    ));

    log::info!(
        "cohort {} serving on {:?} (admin {:?}), config version {}",
        env!("CARGO_PKG_VERSION"),
        server_cfg.listen,
        server_cfg.admin,
        state.table().config.version
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { state }),
    });
    crate::lifecycle::remove_pid_file(&pid_file);
    Ok(())
}
