//! `cohort` binary: parse the command line, set up logging, dispatch.

use clap::Parser;
use cohort::cli::{dispatch, Cli, LogFormat};
use std::io::Write;

/// mimalloc: fewer cycles per allocation than glibc malloc on Pingora's per-request
/// allocations (see BENCHMARKS.md). The `system-alloc` feature (profiling only) leaves the
/// system allocator in place, for heap profilers that intercept `malloc`.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let LogFormat::Json = format {
        b.format(|buf, record| {
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    std::process::exit(dispatch(cli));
}
