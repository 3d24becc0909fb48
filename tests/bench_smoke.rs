#![allow(clippy::unwrap_used)]
//! `scripts/bench.sh --smoke` runs in the suite so the bundled load test never rots: a
//! few seconds of wrk through the real binary with nginx backends on 127.0.0.1, failing
//! on any error, and printing cohort's per-variant table.

#[test]
fn bench_script_smoke_run_succeeds() {
    let have = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !(have("nginx") && have("wrk")) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nginx and wrk are required in CI (scripts/install-deps.sh)"
        );
        eprintln!("nginx or wrk missing: skipping the bench smoke run");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench.sh");
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(script)
        .args(["--smoke", "--bin", env!("CARGO_BIN_EXE_cohort"), "--out"])
        .arg(out_dir.path())
        .env("NO_INSTALL", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench.sh --smoke failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("smoke: ok"), "{stdout}");
    assert!(stdout.contains("cohort's own histograms"), "{stdout}");
    let has_row = |v: &str| {
        stdout
            .lines()
            .any(|l| l.starts_with("api") && l.split_whitespace().nth(1) == Some(v))
    };
    assert!(
        has_row("stable") && has_row("canary"),
        "per-variant rows: {stdout}"
    );
    assert!(out_dir.path().join("results.csv").exists());
}
