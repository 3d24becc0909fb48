//! A static config source for `--config-url`: an HTTP server on 127.0.0.1 serving one
//! body that the test changes, with strong ETags and 304s; it can go away.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A static file server with strong ETags and 304s; can go away.
pub struct ConfigServer {
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    pub gets: Arc<AtomicUsize>,
    pub not_modified: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl ConfigServer {
    pub fn start(body: &str) -> ConfigServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = ConfigServer {
            addr,
            body: Arc::new(Mutex::new(body.to_string())),
            gets: Arc::new(AtomicUsize::new(0)),
            not_modified: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(AtomicBool::new(false)),
        };
        let (b, g, nm, down) = (
            s.body.clone(),
            s.gets.clone(),
            s.not_modified.clone(),
            s.down.clone(),
        );
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                if down.load(Ordering::SeqCst) {
                    return; // drops the listener: connections are refused from now on
                }
                let (b, g, nm) = (b.clone(), g.clone(), nm.clone());
                std::thread::spawn(move || serve(conn, &b, &g, &nm));
            }
        });
        s
    }

    pub fn url(&self) -> String {
        format!("http://{}/cohort.toml", self.addr)
    }

    pub fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }

    pub fn go_away(&self) {
        self.down.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, body: &Mutex<String>, gets: &AtomicUsize, nm: &AtomicUsize) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    let mut inm = None;
    let mut line = String::new();
    r.read_line(&mut line).unwrap_or(0);
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("if-none-match") {
                inm = Some(v.trim().to_string());
            }
        }
    }
    gets.fetch_add(1, Ordering::SeqCst);
    let body = body.lock().unwrap().clone();
    let etag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body.as_bytes()));
    let resp = if inm.as_deref() == Some(etag.as_str()) {
        nm.fetch_add(1, Ordering::SeqCst);
        format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n")
    } else {
        format!("HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    let _ = w.write_all(resp.as_bytes());
}
