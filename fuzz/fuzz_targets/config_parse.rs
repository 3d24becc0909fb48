//! Arbitrary bytes as a config file: parsing and validation must return Ok or errors
//! with field paths, never panic; a valid config must compile into a router that can
//! decide, explain and simulate.
#![no_main]

use cohort::config::Config;
use cohort::routing::Router;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(config) => {
            let router = Router::new(&config);
            for s in &config.services {
                let _ = cohort::simulate::shares(s, 64);
            }
            let _ = cohort::explain::explain(&router, &Default::default());
            let _ = cohort::cli::summary(&config);
        }
        Err(e) => {
            for line in e.lines() {
                assert!(!line.is_empty());
                assert!(!line.contains('\n'), "one error per line: {line:?}");
            }
        }
    }
});
