//! Hot reload: SIGHUP, `POST /reload` and the file watcher all call [`Reloader::reload`],
//! which reads, parses, validates and compiles a complete new [`RoutingTable`] (pools,
//! resolved addresses) *before* one atomic swap. A failed reload changes nothing and is
//! recorded for `/status`, the log and `cohort_config_reloads_total{result="error"}`.
//! A backend name that does not resolve fails nothing: the reload applies with a warning,
//! that backend is down, and the re-resolution tick retries it.

use crate::config::{Config, ConfigError, Fingerprint};
use crate::metrics::{ReloadResult, METRICS};
use crate::options::{apply_overrides, RunOptions};
use crate::routing::table::Scope;
use crate::routing::RoutingTable;
use crate::source::{Fetched, Source};
use crate::state::{ReloadRecord, State};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new table serves. `needs_upgrade` lists changed settings that only a process
    /// upgrade (`cohort run --upgrade`) applies; `warnings` the backends whose names do
    /// not resolve (`path: cannot resolve ...`), down until they do.
    Applied {
        version: String,
        needs_upgrade: Vec<String>,
        warnings: Vec<String>,
    },
    /// The file is byte-for-byte the version already serving.
    Unchanged { version: String },
    /// Nothing changed; every error is listed.
    Rejected { errors: Vec<String> },
}

impl Outcome {
    pub fn result(&self) -> ReloadResult {
        match self {
            Outcome::Applied { .. } => ReloadResult::Applied,
            Outcome::Unchanged { .. } => ReloadResult::Unchanged,
            Outcome::Rejected { .. } => ReloadResult::Error,
        }
    }
}

/// Reloads the config file the process was started with.
pub struct Reloader {
    state: Arc<State>,
    opts: RunOptions,
    source: Source,
    /// One reload at a time.
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(state: Arc<State>, opts: RunOptions, source: Source) -> Reloader {
        Reloader {
            state,
            opts,
            source,
            lock: Mutex::new(()),
        }
    }

    /// Runs one reload (blocking: file I/O and DNS). `trigger` names the cause for logs.
    pub fn reload(&self, trigger: &str) -> Outcome {
        let _one_at_a_time = self.lock.lock();
        let outcome = self.try_reload();
        let result = outcome.result();
        METRICS.record_reload(result);
        let (errors, needs_upgrade) = match &outcome {
            Outcome::Applied {
                version,
                needs_upgrade,
                warnings: _,
            } => {
                // The names that do not resolve were logged when the table was built
                // (`log_resolution`: once per state change, not on every reload).
                log::info!("reload ({trigger}): applied version {version}");
                if !needs_upgrade.is_empty() {
                    log::warn!(
                        "reload ({trigger}): changed {} need a process upgrade (cohort run --upgrade); the rest is applied",
                        needs_upgrade.join(", ")
                    );
                }
                (Vec::new(), needs_upgrade.clone())
            }
            Outcome::Unchanged { version } => {
                log::info!("reload ({trigger}): unchanged (version {version})");
                (Vec::new(), Vec::new())
            }
            Outcome::Rejected { errors } => {
                log::error!(
                    "reload ({trigger}): rejected, still serving the previous config: {}",
                    errors.join("; ")
                );
                (errors.clone(), Vec::new())
            }
        };
        self.state.set_last_reload(ReloadRecord {
            result: result.as_str(),
            at: SystemTime::now(),
            errors,
            needs_upgrade,
            trigger: trigger.to_string(),
        });
        outcome
    }

    /// Re-resolves the serving table's backend names in `scope`; when any answer changed
    /// (new addresses, or a name that resolves now), compiles the same config with the
    /// new answers and swaps it in (health carries over per address). Returns whether a
    /// new table was swapped in.
    pub fn re_resolve(&self, scope: Scope) -> bool {
        let _one_at_a_time = self.lock.lock();
        let current = self.state.table();
        if !current.uses_dns() {
            return false;
        }
        let session = crate::upstream::Resolver::from_env().session();
        let Some(lookups) = current.re_resolve(scope, |name| session.lookup(name)) else {
            return false;
        };
        match RoutingTable::build_resolved((*current.config).clone(), lookups) {
            Ok(table) => {
                let addrs = |t: &RoutingTable| -> Vec<_> {
                    t.pools.iter().flatten().map(|p| p.addrs.clone()).collect()
                };
                let (before, after) = (addrs(&current), addrs(&table));
                table.log_resolution(Some(&current));
                self.state.install(table);
                log::info!("backend DNS changed: {before:?} -> {after:?}; new addresses serve now");
                true
            }
            Err(e) => {
                log::warn!(
                    "backend DNS re-resolution failed, keeping the current addresses: {}",
                    e.lines().join("; ")
                );
                false
            }
        }
    }

    fn try_reload(&self) -> Outcome {
        let (text, etag) = match &self.source {
            Source::File(path) => match std::fs::read_to_string(path) {
                Ok(t) => (t, None),
                Err(source) => {
                    let e = ConfigError::Io {
                        path: path.display().to_string(),
                        source,
                    };
                    return Outcome::Rejected { errors: e.lines() };
                }
            },
            Source::Url(u) => match u.fetch(true) {
                Ok(Fetched::Body(body, etag)) => (body, etag),
                Ok(Fetched::NotModified) => {
                    return Outcome::Unchanged {
                        version: self.state.table().config.version.clone(),
                    }
                }
                Err(e) => {
                    return Outcome::Rejected {
                        errors: vec![format!(
                            "fetch failed (still serving the last good config): {e}"
                        )],
                    }
                }
            },
        };
        let current = self.state.table();
        // Unchanged bytes are told before parsing (or hashing with sha256).
        let certs_unchanged =
            crate::tls::files_digest(&current.config.server.tls) == current.certs.digest;
        if Fingerprint::of(text.as_bytes()) == current.config.fingerprint && certs_unchanged {
            if let Source::Url(u) = &self.source {
                u.commit(&text, etag);
            }
            return Outcome::Unchanged {
                version: current.config.version.clone(),
            };
        }
        let mut config = match Config::parse(&text) {
            Ok(c) => c,
            Err(e) => return Outcome::Rejected { errors: e.lines() },
        };
        let version = config.version.clone();
        apply_overrides(&mut config.server, &self.opts);
        let needs_upgrade = self.state.bound.changes(&config.server.bound());
        let table = match current.build_replacing(config, &crate::upstream::Resolver::from_env()) {
            Ok(t) => t,
            Err(e) => return Outcome::Rejected { errors: e.lines() },
        };
        table.config.server.warn_if_admin_token_unset();
        table.log_resolution(Some(&current));
        for w in table.config.warnings() {
            log::warn!("{w}");
        }
        let warnings = table
            .unresolved()
            .map(|l| format!("{}: {}", l.path, l.error().unwrap_or_default()))
            .collect();
        self.state.install(table);
        if let Source::Url(u) = &self.source {
            u.commit(&text, etag);
        }
        METRICS.set_config_versions(&self.state.versions());
        Outcome::Applied {
            version,
            needs_upgrade,
            warnings,
        }
    }
}

/// Background work that triggers reloads: SIGHUP, and the file watcher when the loaded
/// config has `watch = true`. Stops with the server.
pub struct ReloadTriggers {
    pub reloader: Arc<Reloader>,
}

/// How often the watcher looks at the file.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// What the watcher compares between polls: a change must be seen stable on two polls
/// in a row before it triggers a reload, so a half-written file is never read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

#[async_trait]
impl BackgroundService for ReloadTriggers {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let path = match &self.reloader.source {
            Source::File(p) => Some(p.clone()),
            Source::Url(_) => None,
        };
        let poll = match &self.reloader.source {
            Source::Url(u) => u.poll.max(Duration::from_millis(100)),
            Source::File(_) => WATCH_INTERVAL,
        };
        let mut last = path.as_deref().and_then(stamp);
        let mut pending: Option<FileStamp> = None;
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        let mut poll_tick = tokio::time::interval(poll);
        poll_tick.tick().await; // the first tick is immediate: the initial fetch just ran

        // `resolve_interval_secs = 0` turns the re-resolution of names that resolved off;
        // names that do not resolve yet are still retried (UNRESOLVED_RETRY).
        let resolve_every = self
            .reloader
            .state
            .bound
            .resolve_interval_secs
            .map(Duration::from_secs);
        let scope = match resolve_every {
            Some(_) => Scope::All,
            None => Scope::Unresolved,
        };
        let mut resolve_tick = tokio::time::interval(
            resolve_every.unwrap_or(crate::upstream::resolve::UNRESOLVED_RETRY),
        );
        resolve_tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    self.run("SIGHUP").await;
                    last = path.as_deref().and_then(stamp);
                    pending = None;
                }
                _ = poll_tick.tick(), if path.is_none() => {
                    self.run("poll").await;
                }
                _ = resolve_tick.tick() => {
                    let r = self.reloader.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || r.re_resolve(scope)).await {
                        log::error!("re-resolution task failed: {e}");
                    }
                }
                _ = tick.tick(), if path.is_some() => {
                    let Some(path) = path.as_deref() else { continue };
                    if !self.reloader.state.table().config.server.watch {
                        last = stamp(path);
                        continue;
                    }
                    let now = stamp(path);
                    if now == last {
                        pending = None;
                    } else if now.is_some() && pending == now {
                        // Stable for a whole interval: the write is complete.
                        self.run("file watch").await;
                        last = now;
                        pending = None;
                    } else {
                        pending = now;
                    }
                }
            }
        }
    }
}

impl ReloadTriggers {
    async fn run(&self, trigger: &'static str) {
        let r = self.reloader.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || r.reload(trigger)).await {
            log::error!("reload task failed: {e}");
        }
    }
}
