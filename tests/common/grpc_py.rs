//! A real gRPC server and client for tests: Python `grpcio` (Debian's
//! `python3-grpcio`, installed by scripts/install-deps.sh) running
//! `tests/grpc_py/server.py` and `tests/grpc_py/client.py`.
#![allow(dead_code, clippy::unwrap_used)]

use super::certs::Leaf;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_py");

/// A Python that imports `grpc` (`python3` first, then Debian's own). There must be
/// one: `scripts/test.sh` installs it (`scripts/install-deps.sh`, `python3-grpcio`), so
/// a missing one fails the test rather than skipping it.
pub fn python() -> Option<&'static str> {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import grpc"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    panic!("no python3 imports grpc: run scripts/install-deps.sh (it installs python3-grpcio)");
}

/// `tests/grpc_py/server.py` on 127.0.0.1; killed on drop.
pub struct GrpcServer {
    pub addr: SocketAddr,
    child: Child,
}

impl GrpcServer {
    /// h2c, or h2 over TLS with `tls`; `fail`: unary calls end with INTERNAL.
    pub fn spawn(py: &str, name: &str, tls: Option<&Leaf>, fail: bool) -> GrpcServer {
        let mut cmd = Command::new(py);
        cmd.arg(format!("{SCRIPTS}/server.py")).arg(name);
        if let Some(leaf) = tls {
            cmd.arg("--tls").arg(&leaf.cert_pem).arg(&leaf.key_pem);
        }
        if fail {
            cmd.arg("--fail");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("server.py {name} printed {line:?}")
        });
        GrpcServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/grpc_py/client.py` against cohort's TLS listener `addr` (certificate
/// for `localhost` from `ca_pem`): `users` users (`x-user-id: user-i`) make
/// `per_user` calls each of `method` (`Say` or `Count`); one JSON value per call.
pub fn calls(
    py: &str,
    addr: SocketAddr,
    ca_pem: &Path,
    method: &str,
    users: usize,
    per_user: usize,
) -> Vec<serde_json::Value> {
    let out = Command::new(py)
        .arg(format!("{SCRIPTS}/client.py"))
        .arg(addr.to_string())
        .arg(ca_pem)
        .arg(method)
        .arg(users.to_string())
        .arg(per_user.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), users * per_user);
    calls
}
