#![allow(clippy::unwrap_used)]
//! Cross-checks the Rust assignment function against the offline Python reference
//! `scripts/cohort_assign.py` (which uses the `xxhash` package, not our Rust code).
//!
//! Needs `python3` with `xxhash` (`pip install xxhash`). Without them the tests print a note
//! and pass, except under `CI=true`, where a missing reference is a failure.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cohort::routing::cohort::{assign, unit, variant_seed};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    root().join("scripts/cohort_assign.py")
}

/// `python3` with `PYTHONUTF8=1`, so command-line salts and keys are read as UTF-8 whatever
/// the locale.
fn python() -> Command {
    let mut cmd = Command::new("python3");
    cmd.current_dir(root()).env("PYTHONUTF8", "1");
    cmd
}

/// Whether `python3` and its `xxhash` module are usable. When they are not: panics if
/// `CI=true`, otherwise prints a note to stderr and returns `false` (the caller skips).
fn python_reference_available() -> bool {
    let problem = match python().args(["-c", "import xxhash"]).output() {
        Err(e) => format!("python3 cannot be run ({e})"),
        Ok(out) if !out.status.success() => format!(
            "python3 cannot import xxhash; run `pip install xxhash` ({})",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        ),
        Ok(_) => return true,
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and the Python reference cannot run: {problem}");
    }
    // Straight to stderr, not `eprintln!`, which the test harness captures for passing tests.
    let note = format!("note: skipping the Python reference cross-check: {problem}\n");
    let _ = std::io::stderr().write_all(note.as_bytes());
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SplitMix64: a tiny deterministic generator, so the keys are the same on every run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> usize {
        usize::try_from(self.next() % n).expect("small")
    }
}

/// 500 keys: a few fixed edge cases, then random ones whose lengths cover every xxh3 size
/// class (0, 1-3, 4-8, 9-16, 17-128, 129-240, > 240 bytes) and whose bytes are arbitrary
/// (NUL, 0x80-0xff, invalid UTF-8) or user-id-like text.
fn pseudo_random_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0xff, 0xfe],
        b"user-1".to_vec(),
        "用户-42".as_bytes().to_vec(),
        vec![b'a'; 4096],
    ];
    let mut rng = SplitMix64(0x00c0_4017_2024_0001);
    let classes: [(usize, usize); 7] = [
        (0, 0),
        (1, 3),
        (4, 8),
        (9, 16),
        (17, 128),
        (129, 240),
        (241, 1500),
    ];
    while keys.len() < 500 {
        let key = if rng.below(4) == 0 {
            format!("user-{}", rng.next() % 1_000_000).into_bytes()
        } else {
            let (lo, hi) = classes[rng.below(classes.len() as u64)];
            let len = lo + rng.below((hi - lo + 1) as u64);
            (0..len).map(|_| rng.next().to_le_bytes()[0]).collect()
        };
        keys.push(key);
    }
    keys
}

#[test]
fn the_python_reference_reproduces_every_golden_row() {
    if !python_reference_available() {
        return;
    }
    let out = run(python()
        .arg(script())
        .args(["--check", "tests/golden/vectors.tsv"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rows match"), "unexpected output: {stdout}");
}

#[test]
fn python_and_rust_agree_exactly_on_500_pseudo_random_keys() {
    if !python_reference_available() {
        return;
    }
    let salt = "ref-check-ü";
    let variants: [(&str, f64); 3] = [("stable", 6.0), ("canary", 2.5), ("beta.v2", 1.5)];
    let keys = pseudo_random_keys();
    assert_eq!(keys.len(), 500);

    let mut cmd = python();
    cmd.arg(script()).args(["--json", "--salt", salt]);
    for (name, weight) in variants {
        cmd.arg("--variant").arg(format!("{name}={weight}"));
    }
    for key in &keys {
        cmd.arg("--hex-key").arg(to_hex(key));
    }
    let out = run(&mut cmd);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the Python reference prints valid JSON");
    let results = json.as_array().expect("a JSON array, one entry per key");
    assert_eq!(results.len(), keys.len(), "one result per key");

    let seeds: Vec<u64> = variants
        .iter()
        .map(|(name, _)| variant_seed(salt, name))
        .collect();
    let weights: Vec<f64> = variants.iter().map(|(_, w)| *w).collect();
    let mut failures = Vec::new();
    let mut wins = [0usize; 3];
    for (key, result) in keys.iter().zip(results) {
        let hex = to_hex(key);
        assert_eq!(result["key_hex"], hex.as_str(), "results come in key order");
        let rust = assign(key, &seeds, &weights).expect("weights are positive");
        wins[rust] += 1;
        if result["winner"] != variants[rust].0 {
            failures.push(format!(
                "key {hex}: Rust picks {}, Python {}",
                variants[rust].0, result["winner"]
            ));
        }
        for (i, v) in result["variants"]
            .as_array()
            .expect("per-variant results")
            .iter()
            .enumerate()
        {
            assert_eq!(v["name"], variants[i].0, "variants come in config order");
            let py_seed = v["seed"]
                .as_str()
                .and_then(|s| s.strip_prefix("0x"))
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .expect("seed is a 0x-prefixed hex string");
            if py_seed != seeds[i] {
                failures.push(format!(
                    "variant {}: Rust seed {:#018x}, Python {py_seed:#018x}",
                    variants[i].0, seeds[i]
                ));
            }
            // `u_repr` is Python's repr(), which `str::parse` reads back exactly.
            let py_u = v["u_repr"]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .expect("u_repr is a decimal float");
            let rust_u = unit(key, seeds[i]);
            if py_u.to_bits() != rust_u.to_bits() {
                failures.push(format!(
                    "key {hex}, variant {}: Rust u {rust_u:?}, Python {py_u:?}",
                    variants[i].0
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements between Rust and the Python reference (first 20):\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
    assert!(
        wins.iter().all(|&n| n > 0),
        "every variant should win some of the 500 keys: {wins:?}"
    );
}

#[test]
fn python_seeds_match_variant_seed_for_every_golden_service() {
    if !python_reference_available() {
        return;
    }
    let path = root().join("tests/golden/vectors.tsv");
    let table = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut services: Vec<(&str, &str)> = table
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1) // header
        .filter_map(|l| {
            let mut fields = l.split('\t');
            Some((fields.next()?, fields.next()?))
        })
        .collect();
    services.sort_unstable();
    services.dedup();
    assert!(services.len() >= 5, "too few services: {services:?}");

    for (salt, variants) in services {
        let out = run(python().arg(script()).args([
            "--json",
            "--salt",
            salt,
            "--variant",
            variants,
            "--hex-key",
            "",
        ]));
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("the Python reference prints valid JSON");
        for v in json[0]["variants"].as_array().expect("per-variant results") {
            let name = v["name"].as_str().expect("variant name");
            let want = format!("{:#018x}", variant_seed(salt, name));
            assert_eq!(
                v["seed"], want,
                "seed of {name} with salt {salt:?}: Python vs Rust"
            );
        }
    }
}
