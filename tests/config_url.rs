#![allow(clippy::unwrap_used)]
//! Fleet config source through the real binary: `--config-url` polled with ETag /
//! If-None-Match from a local HTTP server serving changing files; a bad version is
//! rejected (last good kept), the source going away keeps the last good, a restart with
//! the source down serves the cached copy, and three instances agree on 10,000 keys
//! (and with SPEC's algorithm) before and after a weight change delivered by the source.

mod common;
use common::*;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn config(stable: &EchoBackend, canary: &EchoBackend, canary_weight: f64) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\nadmin = \"127.0.0.1:2\"\nthreads = 1\n\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n\n[[service.variant]]\nname = \"stable\"\nweight = {}\nbackends = [\"{}\"]\n\n[[service.variant]]\nname = \"canary\"\nweight = {canary_weight}\nbackends = [\"{}\"]\n",
        100.0 - canary_weight,
        stable.addr,
        canary.addr
    )
}

/// `cohort run --config-url` with per-instance `--listen/--admin` overrides.
struct Instance {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Instance {
    fn start(url: &str, cache: &std::path::Path) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(bin())
            .args(["run", "--config-url", url, "--config-poll-secs", "1"])
            .arg("--config-cache")
            .arg(cache)
            .args(["--listen", &addr.to_string(), "--admin", &admin.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut i = Instance {
            child,
            addr,
            admin,
            _dir: dir,
        };
        let t0 = Instant::now();
        while TcpStream::connect(addr).is_err() || TcpStream::connect(admin).is_err() {
            if let Ok(Some(s)) = i.child.try_wait() {
                panic!(
                    "cohort exited: {s}: {}",
                    std::fs::read_to_string(i._dir.path().join("stderr.log")).unwrap()
                );
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        i
    }

    fn status(&self) -> serde_json::Value {
        Client::new(self.admin).get("/status", &[]).json()
    }

    fn version(&self) -> String {
        self.status()["version"].as_str().unwrap().to_string()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn version_of(text: &str) -> String {
    cohort::config::version_of(text.as_bytes())
}

#[test]
fn polls_the_url_applies_new_versions_rejects_bad_ones_and_survives_the_source_going_away() {
    let (s, c) = (backend("stable"), backend("canary"));
    let v1 = config(&s, &c, 0.0);
    let src = ConfigServer::start(&v1);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("cache.toml");
    let i = Instance::start(&src.url(), &cache);
    assert_eq!(i.version(), version_of(&v1));
    assert_eq!(
        std::fs::read_to_string(&cache).unwrap(),
        v1,
        "last good copy cached"
    );
    // unchanged versions are answered 304 (If-None-Match)
    assert!(wait_for(Duration::from_secs(4), || src
        .not_modified
        .load(Ordering::SeqCst)
        >= 2));
    // a new version is applied
    let v2 = config(&s, &c, 100.0);
    src.set(&v2);
    assert!(wait_for(Duration::from_secs(4), || i.version() == version_of(&v2)));
    assert_eq!(
        Client::new(i.addr)
            .get("/", &[("x-user-id", "u")])
            .backend(),
        "canary"
    );
    let m = Client::new(i.admin).get("/metrics", &[]).text();
    assert!(m.contains(&format!(
        "cohort_config_info{{version=\"{}\"}} 1",
        version_of(&v2)
    )));
    // a bad version is rejected and the last good one keeps serving
    src.set(&v2.replace("weight = 100", "weight = -5"));
    assert!(wait_for(Duration::from_secs(4), || i.status()
        ["last_reload"]["result"]
        == "error"));
    assert_eq!(i.version(), version_of(&v2));
    assert_eq!(
        std::fs::read_to_string(&cache).unwrap(),
        v2,
        "cache keeps the last good copy"
    );
    assert_eq!(
        Client::new(i.addr)
            .get("/", &[("x-user-id", "u")])
            .backend(),
        "canary"
    );
    // the source goes away: still serving, error visible
    src.set(&v2);
    src.go_away();
    std::thread::sleep(Duration::from_millis(2500));
    let st = i.status();
    assert_eq!(st["version"], version_of(&v2).as_str());
    assert_eq!(st["last_reload"]["result"], "error");
    assert!(
        st["last_reload"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("fetch failed"),
        "{st}"
    );
    assert_eq!(
        Client::new(i.addr).get("/", &[("x-user-id", "u")]).status,
        200
    );
}

#[test]
fn a_restart_with_the_source_down_serves_the_cached_copy() {
    let (s, c) = (backend("stable"), backend("canary"));
    let v1 = config(&s, &c, 100.0);
    let src = ConfigServer::start(&v1);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("cache.toml");
    drop(Instance::start(&src.url(), &cache));
    src.go_away();
    let i = Instance::start(&src.url(), &cache);
    assert_eq!(i.version(), version_of(&v1));
    assert_eq!(
        Client::new(i.addr)
            .get("/", &[("x-user-id", "u")])
            .backend(),
        "canary"
    );
    // with neither source nor cache, start-up fails clearly
    let (code, _, err) = cohort_cmd(&[
        "run",
        "--config-url",
        &src.url(),
        "--config-cache",
        "/nonexistent/cache.toml",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no cached copy"), "{err}");
}

#[test]
fn three_instances_from_one_source_assign_10000_keys_identically_before_and_after_a_change() {
    let (s, c) = (backend("stable"), backend("canary"));
    let src = ConfigServer::start(&config(&s, &c, 10.0));
    let caches: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let fleet: Vec<Instance> = caches
        .iter()
        .map(|d| Instance::start(&src.url(), &d.path().join("c.toml")))
        .collect();
    let check = |weights: &[(&str, f64)]| {
        let answers: Vec<Vec<String>> = fleet
            .iter()
            .map(|i| {
                parallel(
                    10_000,
                    2,
                    |cl, k| {
                        cl.get("/", &[("x-user-id", &format!("fleet-{k}"))])
                            .backend()
                    },
                    i.addr,
                )
            })
            .collect();
        for k in 0..10_000 {
            let want = expected_variant("api", weights, &format!("fleet-{k}"));
            for (n, a) in answers.iter().enumerate() {
                assert_eq!(a[k], want, "instance {n}, key fleet-{k}");
            }
        }
    };
    check(&[("stable", 90.0), ("canary", 10.0)]);
    let v2 = config(&s, &c, 25.0);
    src.set(&v2);
    for i in &fleet {
        assert!(
            wait_for(Duration::from_secs(5), || i.version() == version_of(&v2)),
            "instance converged"
        );
    }
    check(&[("stable", 75.0), ("canary", 25.0)]);
}

#[test]
fn config_file_and_url_are_exclusive_and_one_is_required() {
    assert_eq!(cohort_cmd(&["run"]).0, 2);
    assert_eq!(
        cohort_cmd(&[
            "run",
            "-c",
            "x.toml",
            "--config-url",
            "http://127.0.0.1:1/x"
        ])
        .0,
        2
    );
}
