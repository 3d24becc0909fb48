//! Optional access log (`[server] access_log = "off" | "stdout" | "<path>"`): one JSON
//! object per request. Workers hand finished lines to a bounded channel; one writer
//! thread buffers them (64 KiB) and flushes when the buffer fills or every 200 ms, so a
//! busy proxy does not pay a syscall per request. If the writer falls behind, lines are
//! dropped (and counted) rather than slowing requests down.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
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
}

impl AccessLog {
    /// Opens the target and starts the writer thread; `None` for [`Target::Off`].
    pub fn open(target: &Target, include_keys: bool) -> std::io::Result<Option<AccessLog>> {
        let out: Box<dyn Write + Send> = match target {
            Target::Off => return Ok(None),
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("cohort-access-log".to_string())
            .spawn(move || {
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
            })?;
        Ok(Some(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            include_keys,
        }))
    }

    /// Queues one line (which must end with `\n`); never blocks.
    pub fn write(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!("access log writer is behind: {n} lines dropped so far");
            }
        }
    }
}
