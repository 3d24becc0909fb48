//! Optional access log (`[server] access_log = "off" | "stdout" | "<path>"`): one JSON
//! object per request. Workers hand finished lines to a bounded channel; one writer
//! thread buffers them (64 KiB) and flushes when the buffer fills or every 200 ms, so a
//! busy proxy does not pay a syscall per request. If the writer falls behind, lines are
//! dropped (and counted) rather than slowing requests down.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

const QUEUE: usize = 65_536;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Off,
    Stdout,
    File(String),
}

impl Target {
    pub fn parse(s: &str) -> Target {
        match s {
            "" | "off" => Target::Off,
            "stdout" => Target::Stdout,
            path => Target::File(path.to_string()),
        }
    }
}

/// The sending side, shared by all workers.
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: AtomicU64,
    /// Whether lines include the cohort key (`access_log_keys`).
    pub include_keys: bool,
    /// What the lines are, for the log (`access log`, `sample log`).
    what: &'static str,
}

/// The receiving side: drains the queue into the target. Run by [`AccessLogWriter::start`]
/// as a background service, i.e. after Pingora daemonizes (a fork keeps no threads).
pub struct AccessLogWriter {
    parts: std::sync::Mutex<Option<WriterParts>>,
}

type WriterParts = (Receiver<String>, Box<dyn Write + Send>);

impl AccessLog {
    /// Opens the target; `None` for [`Target::Off`]. Lines are written once the returned
    /// writer runs.
    pub fn open(
        target: &Target,
        include_keys: bool,
    ) -> std::io::Result<Option<(AccessLog, AccessLogWriter)>> {
        let out: Box<dyn Write + Send> = match target {
            Target::Off => return Ok(None),
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
        };
        Ok(Some(Self::to_writer(out, include_keys, "access log")))
    }

    /// Opens a file readable by its owner only (a new file gets mode 0600; an existing
    /// one keeps its mode), for lines that hold user data (`server.sample_log`).
    pub fn open_private(path: &str) -> std::io::Result<(AccessLog, AccessLogWriter)> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        Ok(Self::to_writer(
            Box::new(options.open(path)?),
            false,
            "sample log",
        ))
    }

    fn to_writer(
        out: Box<dyn Write + Send>,
        include_keys: bool,
        what: &'static str,
    ) -> (AccessLog, AccessLogWriter) {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        (
            AccessLog {
                tx,
                dropped: AtomicU64::new(0),
                include_keys,
                what,
            },
            AccessLogWriter {
                parts: std::sync::Mutex::new(Some((rx, out))),
            },
        )
    }

    /// Queues one line (which must end with `\n`); never blocks.
    pub fn write(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!("{} writer is behind: {n} lines dropped so far", self.what);
            }
        }
    }
}

/// One request as the access log records it (the same fields from every proxy path).
pub struct Entry<'a> {
    pub service: &'a str,
    pub variant: &'a str,
    pub reason: &'a str,
    pub method: &'a str,
    /// The path without its query string (which can carry a cohort key).
    pub path: &'a str,
    pub status: u16,
    pub seconds: f64,
    pub upstream: Option<std::net::SocketAddr>,
    /// Response body bytes sent to the client.
    pub bytes: usize,
    /// The cohort key, only with `access_log_keys`.
    pub key: Option<&'a str>,
    /// The client's address as routing saw it (`X-Forwarded-For` from a trusted proxy,
    /// else the peer).
    pub client_ip: Option<std::net::IpAddr>,
    /// `Host` (or the HTTP/2 authority), as the client sent it.
    pub host: &'a str,
    /// The id the backend got in `X-Request-Id` ([`crate::forward::RequestId`]).
    pub request_id: &'a str,
}

/// An access log line as it is written (field names are the documented ones).
#[derive(serde::Serialize)]
struct Line<'a> {
    time: String,
    service: &'a str,
    variant: &'a str,
    reason: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    upstream: Option<std::net::SocketAddr>,
    bytes: usize,
    client_ip: Option<std::net::IpAddr>,
    host: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

impl Entry<'_> {
    /// The entry as one JSON line, newline included.
    pub fn line(&self) -> String {
        let line = Line {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            service: self.service,
            variant: self.variant,
            reason: self.reason,
            method: self.method,
            path: self.path,
            status: self.status,
            duration_ms: (self.seconds * 1e6).round() / 1e3,
            upstream: self.upstream,
            bytes: self.bytes,
            client_ip: self.client_ip,
            host: self.host,
            request_id: self.request_id,
            key: self.key,
        };
        let mut out = Vec::with_capacity(256);
        // Serializing this struct to a Vec cannot fail (no map keys, no I/O errors).
        let _ = serde_json::to_writer(&mut out, &line);
        out.push(b'\n');
        String::from_utf8(out).unwrap_or_default()
    }
}

fn drain(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut w = BufWriter::with_capacity(64 * 1024, out);
    loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(line) => {
                let _ = w.write_all(line.as_bytes());
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = w.flush();
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = w.flush();
                return;
            }
        }
    }
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for AccessLogWriter {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        let Some((rx, out)) = self.parts.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        if let Err(e) = std::thread::Builder::new()
            .name("cohort-access-log".to_string())
            .spawn(move || drain(rx, out))
        {
            log::error!("cannot start the access log writer: {e}");
        }
    }
}
