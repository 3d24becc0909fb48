#![allow(clippy::unwrap_used)]
//! Process lifecycle through the real binary: SIGTERM drain step by step, and a binary
//! upgrade (scripts/upgrade.sh: `--upgrade` + SIGQUIT) under load with no failed request.

mod common;
use common::*;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(b: &EchoBackend, drain: u64, shutdown: u64) -> String {
    format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\ndrain_delay_secs = {drain}\nshutdown_timeout_secs = {shutdown}\n\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{}\"]\n",
        b.addr
    )
}

#[test]
fn sigterm_drains_then_stops_accepting_then_finishes_in_flight_and_exits_0() {
    let b = backend("stable");
    let mut px = Cohort::start(&config(&b, 2, 10));
    assert_eq!(px.admin_client().get("/readyz", &[]).status, 200);
    let admin = px.admin.to_string();
    assert_eq!(
        cohort_cmd(&["health", "--admin", &admin]).0,
        0,
        "health: ready"
    );
    let target = px.addr;
    let slow = std::thread::spawn(move || Client::new(target).get("/?sleep_ms=3500", &[]));
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    px.signal("TERM");

    // 1. readiness fails at once, liveness holds
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(px.admin_client().get("/readyz", &[]).status, 503);
    assert_eq!(px.admin_client().get("/healthz", &[]).status, 200);
    let (code, _, err) = cohort_cmd(&["health", "--admin", &admin]);
    assert_eq!(code, 1, "health: draining is not ready");
    assert!(err.contains("503"), "{err}");
    // 2. new connections are still served inside the drain delay
    for at in [500, 1500] {
        while t0.elapsed() < Duration::from_millis(at) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = Client::new(px.addr).get("/", &[("x-user-id", "u")]);
        assert_eq!(r.status, 200, "new connection at {at} ms");
    }
    // 3. after the drain delay, accepting stops
    let mut refused_at = None;
    while t0.elapsed() < Duration::from_millis(3300) {
        if TcpStream::connect(px.addr).is_err() {
            refused_at = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused_at = refused_at.expect("listener closed after the drain delay");
    assert!(
        refused_at >= Duration::from_millis(1900),
        "closed too early: {refused_at:?}"
    );
    // 4. the request in flight completes
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "in-flight request finished");
    // 5. exit code 0, soon after the last request (not after the whole shutdown timeout)
    let code = px.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0), "{}", px.stderr());
    let (code, _, err) = cohort_cmd(&["health", "--admin", &admin, "--timeout-ms", "500"]);
    assert_eq!(code, 1, "health: gone");
    assert!(err.contains("cannot reach"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "exited at {:?}",
        t0.elapsed()
    );
}

struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn upgrade_script_hands_over_under_load_with_no_failed_or_refused_request() {
    let b = backend("stable");
    let mut old = Cohort::start(&config(&b, 0, 2));
    let old_pid = old.pid();
    let stop = Arc::new(AtomicBool::new(false));
    // 6 keep-alive clients and 2 that open a new connection per request
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let stop = stop.clone();
            let target = old.addr;
            std::thread::spawn(move || {
                let mut ok = 0u32;
                let mut failures = Vec::new();
                let mut cl = Client::new(target);
                while !stop.load(Ordering::Relaxed) {
                    if t >= 6 {
                        cl = Client::new(target);
                    }
                    match cl.try_request("GET", "/", &[("x-user-id", &format!("u{t}-{ok}"))], b"") {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failures.push(format!("status {}", r.status)),
                        Err(e) => failures.push(format!("{e}")),
                    }
                }
                (ok, failures)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/upgrade.sh");
    let log = old.dir.path().join("upgrade.log");
    let out = std::process::Command::new(script)
        .args([
            "-c",
            old.config_path.to_str().unwrap(),
            "--bin",
            bin(),
            "--timeout",
            "30",
        ])
        .args(["--log", log.to_str().unwrap()])
        .output()
        .unwrap();
    let new_pid: Option<u32> = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    let _guard = KillOnDrop(new_pid.or_else(|| {
        // upgrade.sh failed: find the new process through the pid file to clean it up
        std::fs::read_to_string(format!("/tmp/cohort-{}.pid", old.addr.port()))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .filter(|p| *p != old_pid)
    }));
    if !out.status.success() {
        stop.store(true, Ordering::Relaxed);
    }
    assert!(
        out.status.success(),
        "upgrade.sh failed: {}\nnew log: {}\nold log: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default(),
        old.stderr()
    );
    let new_pid = new_pid.expect("upgrade.sh prints the new pid");
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        old.wait_exit(Duration::from_secs(1)),
        Some(0),
        "old process exited cleanly"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (ok, failures) = w.join().unwrap();
        assert!(
            failures.is_empty(),
            "failed or refused: {:?}",
            &failures[..failures.len().min(5)]
        );
        total += ok;
    }
    assert!(total > 500, "traffic flowed through the hand-over: {total}");
    // the new process serves both listeners (the admin listener moved too)
    assert_eq!(Client::new(old.addr).get("/", &[]).status, 200);
    assert_eq!(Client::new(old.admin).get("/readyz", &[]).status, 200);
    let pid_file = std::fs::read_to_string(format!("/tmp/cohort-{}.pid", old.addr.port())).unwrap();
    assert_eq!(pid_file.trim(), new_pid.to_string());
}

/// Two instances share one file and differ by `--listen`/`--admin`: each gets its own pid
/// file, named after its effective listen port, and removes it when it exits. (The
/// upgrade socket follows the same port: `options::tests`, and `cohort check` prints it.)
#[test]
fn per_instance_files_follow_the_effective_listen_address_and_the_pid_file_is_removed() {
    let b = backend("stable");
    let dir = tempfile::tempdir().unwrap();
    let file_port = free_port();
    let text = render(
        &config(&b, 0, 5),
        std::net::SocketAddr::from(([127, 0, 0, 1], file_port)),
        std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
        dir.path(),
    );
    let path = dir.path().join("shared.toml");
    std::fs::write(&path, text).unwrap();
    // a stale file from an earlier run (before pid files were removed) would mislead
    let _ = std::fs::remove_file(format!("/tmp/cohort-{file_port}.pid"));
    let mut instances = Vec::new();
    for _ in 0..2 {
        // free_port() does not hold the port: skip the file's
        let port = || loop {
            let p = free_port();
            if p != file_port {
                break p;
            }
        };
        let (listen, admin) = (port(), port());
        let child = spawn_run(
            &path,
            dir.path(),
            &[
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ],
        );
        instances.push((child, listen, admin));
    }
    // A failed assertion must not leave the instances running.
    let _guards: Vec<KillOnDrop> = instances
        .iter()
        .map(|(c, _, _)| KillOnDrop(Some(c.id())))
        .collect();
    for (child, listen, admin) in &mut instances {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Client::new(std::net::SocketAddr::from(([127, 0, 0, 1], *admin)))
            .try_request("GET", "/readyz", &[], b"")
            .map_or(true, |r| r.status != 200)
        {
            assert!(Instant::now() < deadline, "instance on {listen} not ready");
            assert!(
                child.try_wait().unwrap().is_none(),
                "instance on {listen} exited"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = std::fs::read_to_string(format!("/tmp/cohort-{listen}.pid")).unwrap();
        assert_eq!(pid.trim(), child.id().to_string(), "own pid file");
    }
    assert!(
        !std::path::Path::new(&format!("/tmp/cohort-{file_port}.pid")).exists(),
        "no instance used the file's port"
    );
    for (mut child, listen, _) in instances {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        assert!(status.success(), "clean exit");
        assert!(
            !std::path::Path::new(&format!("/tmp/cohort-{listen}.pid")).exists(),
            "pid file of {listen} removed on exit"
        );
    }
}

/// A port held by a listener of this test, and a config (written in a new directory)
/// whose proxy listens there: (the holder, dir, config path, proxy addr, admin addr).
fn taken_port_config(
    b: &EchoBackend,
) -> (
    std::net::TcpListener,
    tempfile::TempDir,
    std::path::PathBuf,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let dir = tempfile::tempdir().unwrap();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap();
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let path = dir.path().join("c.toml");
    std::fs::write(&path, render(&config(b, 0, 5), addr, admin, dir.path())).unwrap();
    (squatter, dir, path, addr, admin)
}

/// Another process holds the proxy port: the admin API comes up, but `/readyz` (and
/// `cohort health`) say not ready, and `/status` names the listener, until the port is
/// free and cohort holds it.
#[test]
fn readiness_waits_for_every_listener_to_be_bound_by_this_process() {
    let b = backend("stable");
    let (squatter, dir, path, addr, admin) = taken_port_config(&b);
    let mut child = spawn_run(&path, dir.path(), &[]);
    let _guard = KillOnDrop(Some(child.id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        if let Ok(r) = Client::new(admin).try_request("GET", "/readyz", &[], b"") {
            break r;
        }
        assert!(Instant::now() < deadline, "admin API never came up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r.status, 503, "not serving: {}", r.text());
    assert!(
        r.text().contains(&format!("not listening on {addr}")),
        "{}",
        r.text()
    );
    let (code, _, err) = cohort_cmd(&["health", "--admin", &admin.to_string()]);
    assert_eq!(code, 1, "health: not ready");
    assert!(err.contains("not listening"), "{err}");
    let st = Client::new(admin).get("/status", &[]).json();
    assert_eq!(st["listeners"][0]["addr"], addr.to_string());
    assert_eq!(st["listeners"][0]["bound"], false);
    // The port comes free: Pingora's next bind attempt takes it.
    drop(squatter);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::new(admin).get("/readyz", &[]).status != 200 {
        assert!(Instant::now() < deadline, "never became ready");
        assert!(child.try_wait().unwrap().is_none(), "exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(Client::new(addr).get("/", &[]).backend(), "stable");
    let st = Client::new(admin).get("/status", &[]).json();
    assert_eq!(st["listeners"][0]["bound"], true);
    let _ = child.kill();
    let _ = child.wait();
}

/// A port that stays taken ends start-up with exit 1 after the bind timeout (35 s by
/// default; `COHORT_BIND_TIMEOUT_SECS` shortens it here), as NGINX exits when it cannot
/// bind, instead of running unready forever.
#[test]
fn a_port_that_stays_taken_ends_start_up_with_exit_1() {
    let b = backend("stable");
    let (squatter, dir, path, addr, _admin) = taken_port_config(&b);
    let log = std::fs::File::create(dir.path().join("err.log")).unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["run", "-c", path.to_str().unwrap()])
        .env("COHORT_BIND_TIMEOUT_SECS", "2")
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(Some(child.id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running with the port taken"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1));
    let err = std::fs::read_to_string(dir.path().join("err.log")).unwrap();
    assert!(err.contains(&format!("not listening on [{addr}]")), "{err}");
    drop(squatter);
}

/// Keep-alive clients that never retry, sending all the time, through ten upgrades by
/// `scripts/upgrade.sh`: the old process answers each kept-alive connection's next
/// request with `Connection: close` instead of closing it while idle, so no request is
/// lost in the race between a client's send and the server's close.
#[test]
fn ten_upgrades_lose_no_request_of_keep_alive_clients_that_never_retry() {
    let b = backend("stable");
    let mut first = Cohort::start(&config(&b, 1, 5));
    let addr = first.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut closes, mut failures) = (0u32, 0u32, Vec::new());
                let mut cl = Client::never_retrying(addr);
                while !stop.load(Ordering::Relaxed) {
                    match cl.try_request("GET", "/", &[("x-user-id", &format!("u{t}"))], b"") {
                        Ok(r) if r.status == 200 => {
                            ok += 1;
                            closes += u32::from(r.header("connection") == Some("close"));
                        }
                        Ok(r) => failures.push(format!("status {}", r.status)),
                        Err(e) => failures.push(format!("{e}")),
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                (ok, closes, failures)
            })
        })
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/upgrade.sh");
    let config_path = first.config_path.clone();
    let mut pids = vec![first.pid()];
    for round in 0..10 {
        let log = first.dir.path().join(format!("upgrade-{round}.log"));
        let out = std::process::Command::new(script)
            .args(["-c", config_path.to_str().unwrap(), "--bin", bin()])
            .args(["--timeout", "20", "--log", log.to_str().unwrap()])
            .output()
            .unwrap();
        let new_pid: Option<u32> = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        if let Some(p) = new_pid {
            pids.push(p);
        }
        if !out.status.success() {
            stop.store(true, Ordering::Relaxed);
            for p in &pids {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &p.to_string()])
                    .status();
            }
        }
        assert!(
            out.status.success(),
            "upgrade {round} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if round == 0 {
            assert_eq!(first.wait_exit(Duration::from_secs(5)), Some(0));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _guard = KillOnDrop(pids.last().copied());
    let (mut total, mut closes) = (0, 0);
    for w in workers {
        let (ok, c, failures) = w.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} failed, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        total += ok;
        closes += c;
    }
    assert!(total > 300, "traffic flowed through the upgrades: {total}");
    assert!(
        closes >= 10,
        "old processes said Connection: close ({closes})"
    );
}

/// SIGTERM: during the drain delay, every response says `Connection: close`, so a
/// keep-alive client (a load balancer's pooled connection) moves off before the process
/// stops, instead of finding its idle connection closed.
#[test]
fn draining_answers_keep_alive_requests_with_connection_close() {
    let b = backend("stable");
    let mut px = Cohort::start(&config(&b, 2, 5));
    let mut cl = Client::never_retrying(px.addr);
    let r = cl.get("/", &[]);
    assert_ne!(r.header("connection"), Some("close"), "kept alive before");
    px.signal("TERM");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(150));
    let mut n = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        let r = cl
            .try_request("GET", "/", &[], b"")
            .expect("no request fails while draining");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"), "draining: close");
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(n > 10);
    assert_eq!(px.wait_exit(Duration::from_secs(8)), Some(0));
}
