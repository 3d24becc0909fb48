//! Where the config comes from: a local file, or an http(s) URL polled with
//! `If-None-Match` (fleet config: S3 presigned or public object URLs, CloudFront, any
//! static server). Every fetched version is validated before use; the last good copy is
//! cached on disk so a restart with the source down still serves.

use crate::config::{version_of, ConfigError};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// The config source of a running instance.
#[derive(Debug)]
pub enum Source {
    File(PathBuf),
    Url(UrlSource),
}

/// A polled URL with its ETag and on-disk cache of the last good copy.
#[derive(Debug)]
pub struct UrlSource {
    pub url: String,
    pub cache: PathBuf,
    pub poll: Duration,
    /// ETag of the version serving (sent as `If-None-Match`).
    etag: Mutex<Option<String>>,
    /// Built once, on the first fetch.
    agent: Mutex<Option<ureq::Agent>>,
}

/// What a fetch produced.
#[derive(Debug)]
pub enum Fetched {
    /// New bytes (with their ETag, if any).
    Body(String, Option<String>),
    /// `304 Not Modified`.
    NotModified,
}

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Config files larger than this are refused.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Default cache path for a URL: `/tmp/cohort-config-<sha12(url)>.toml`.
pub fn default_cache(url: &str) -> PathBuf {
    PathBuf::from(format!(
        "/tmp/cohort-config-{}.toml",
        version_of(url.as_bytes())
    ))
}

fn agent() -> Result<ureq::Agent, String> {
    let tls = native_tls::TlsConnector::new().map_err(|e| format!("TLS setup: {e}"))?;
    Ok(ureq::AgentBuilder::new()
        .timeout(FETCH_TIMEOUT)
        .tls_connector(std::sync::Arc::new(tls))
        .build())
}

impl UrlSource {
    pub fn new(url: String, cache: Option<PathBuf>, poll: Duration) -> UrlSource {
        UrlSource {
            cache: cache.unwrap_or_else(|| default_cache(&url)),
            url,
            poll,
            etag: Mutex::new(None),
            agent: Mutex::new(None),
        }
    }

    /// The HTTP agent (and its TLS connector), built on first use and kept: every poll
    /// reuses it and its connections.
    fn agent(&self) -> Result<ureq::Agent, String> {
        let mut slot = self
            .agent
            .lock()
            .map_err(|_| "agent lock poisoned".to_string())?;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let a = agent()?;
        *slot = Some(a.clone());
        Ok(a)
    }

    /// GETs the URL; conditional on the serving version's ETag when `conditional`.
    pub fn fetch(&self, conditional: bool) -> Result<Fetched, String> {
        let mut req = self.agent()?.get(&self.url);
        if conditional {
            if let Some(tag) = self.etag.lock().ok().and_then(|t| t.clone()) {
                req = req.set("If-None-Match", &tag);
            }
        }
        match req.call() {
            Ok(resp) if resp.status() == 304 => Ok(Fetched::NotModified),
            Ok(resp) => {
                let etag = resp.header("etag").map(str::to_string);
                let mut body = String::new();
                use std::io::Read;
                resp.into_reader()
                    .take(MAX_CONFIG_BYTES + 1)
                    .read_to_string(&mut body)
                    .map_err(|e| format!("{}: reading the body: {e}", self.url))?;
                if body.len() as u64 > MAX_CONFIG_BYTES {
                    return Err(format!(
                        "{}: larger than {MAX_CONFIG_BYTES} bytes",
                        self.url
                    ));
                }
                Ok(Fetched::Body(body, etag))
            }
            Err(ureq::Error::Status(code, _)) => Err(format!("{}: HTTP {code}", self.url)),
            Err(e) => Err(format!("{}: {e}", self.url)),
        }
    }

    /// Records the version now serving: its ETag, and the bytes as the cached copy
    /// (written to a temp file and renamed, so a crash never leaves half a file).
    pub fn commit(&self, body: &str, etag: Option<String>) {
        if let Ok(mut t) = self.etag.lock() {
            *t = etag;
        }
        let tmp = self.cache.with_extension("tmp");
        let written = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &self.cache));
        if let Err(e) = written {
            log::warn!("cannot cache the config at {}: {e}", self.cache.display());
        }
    }

    /// The config text at start: the URL, or else the cached last good copy.
    pub fn initial(&self) -> Result<(String, Option<String>), ConfigError> {
        match self.fetch(false) {
            Ok(Fetched::Body(body, etag)) => Ok((body, etag)),
            Ok(Fetched::NotModified) => Err(ConfigError::Io {
                path: self.url.clone(),
                source: std::io::Error::other("unexpected 304 on an unconditional GET"),
            }),
            Err(e) => match std::fs::read_to_string(&self.cache) {
                Ok(cached) => {
                    log::warn!(
                        "cannot fetch the config ({e}); serving the cached copy {} until the source answers",
                        self.cache.display()
                    );
                    Ok((cached, None))
                }
                Err(_) => Err(ConfigError::Io {
                    path: self.url.clone(),
                    source: std::io::Error::other(format!(
                        "{e}; and no cached copy at {}",
                        self.cache.display()
                    )),
                }),
            },
        }
    }
}
