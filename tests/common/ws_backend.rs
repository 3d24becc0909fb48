//! A WebSocket echo backend on 127.0.0.1 (RFC 6455, plaintext or TLS), and a small
//! blocking WebSocket client. The backend answers an upgrade with 101 and its name in
//! `x-backend`, then echoes each text or binary message as `<name>: <message>` until the
//! client closes.
#![allow(dead_code, clippy::unwrap_used)]

use super::certs::Leaf;
use openssl::ssl::{SslAcceptor, SslMethod};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    openssl::base64::encode_block(&openssl::sha::sha1(format!("{key}{GUID}").as_bytes()))
}

pub struct WsEcho {
    pub name: String,
    pub addr: SocketAddr,
}

impl WsEcho {
    /// A plaintext WebSocket echo backend.
    pub fn spawn(name: &str) -> WsEcho {
        Self::start(name, None)
    }

    /// A WebSocket echo backend over TLS with `leaf`.
    pub fn spawn_tls(name: &str, leaf: &Leaf) -> WsEcho {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_certificate(&leaf.cert).unwrap();
        b.set_private_key(&leaf.key).unwrap();
        Self::start(name, Some(Arc::new(b.build())))
    }

    fn start(name: &str, tls: Option<Arc<SslAcceptor>>) -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let n = name.to_string();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (n, tls) = (n.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(tcp, &n),
                    Some(a) => {
                        if let Ok(s) = a.accept(tcp) {
                            serve(s, &n);
                        }
                    }
                });
            }
        });
        WsEcho {
            name: name.to_string(),
            addr,
        }
    }
}

fn serve<S: Read + Write>(s: S, name: &str) {
    let mut r = BufReader::new(s);
    let mut key = None;
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut variant = String::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "sec-websocket-key" => key = Some(v.trim().to_string()),
                "x-cohort-variant" => variant = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let Some(key) = key else {
        let _ = r
            .get_mut()
            .write_all(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\nx-backend: {name}\r\nx-upstream-variant: {variant}\r\n\r\n",
        accept_key(&key)
    );
    if r.get_mut().write_all(head.as_bytes()).is_err() {
        return;
    }
    while let Some((opcode, payload)) = read_frame(&mut r) {
        if opcode == 8 {
            let _ = write_frame(r.get_mut(), 8, &payload, None);
            return;
        }
        let mut out = format!("{name}: ").into_bytes();
        out.extend_from_slice(&payload);
        if write_frame(r.get_mut(), opcode, &out, None).is_err() {
            return;
        }
    }
}

/// Reads one frame (unmasking it); `None` at the end of the stream.
pub fn read_frame<R: Read>(r: &mut R) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).ok()?;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            r.read_exact(&mut l).ok()?;
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            r.read_exact(&mut l).ok()?;
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).ok()?;
    }
    let mut payload = vec![0u8; usize::try_from(len).ok()?.min(1 << 24)];
    r.read_exact(&mut payload).ok()?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Some((opcode, payload))
}

/// Writes one final frame; masked with `mask` (clients must mask, servers must not).
pub fn write_frame<W: Write>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> std::io::Result<()> {
    let mut out = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    w.write_all(&out)?;
    w.flush()
}

/// A byte stream a client speaks over (TCP, or TLS over TCP).
pub trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// A WebSocket client connection opened through a proxy.
pub struct WsClient {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    r: BufReader<Box<dyn Io>>,
}

impl WsClient {
    /// Sends the upgrade request for `path` with `headers` to `addr`; returns the
    /// connection with the response head read.
    pub fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> WsClient {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        Self::over(Box::new(tcp), addr, path, headers)
    }

    /// The same over TLS (any certificate accepted).
    pub fn connect_tls(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> WsClient {
        use openssl::ssl::{SslConnector, SslVerifyMode};
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
        c.set_verify(SslVerifyMode::NONE);
        c.set_alpn_protos(b"\x08http/1.1").unwrap();
        let s = c.build().connect("localhost", tcp).unwrap();
        Self::over(Box::new(s), addr, path, headers)
    }

    fn over(io: Box<dyn Io>, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> WsClient {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        req += "\r\n";
        let mut r = BufReader::new(io);
        r.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        WsClient { status, headers, r }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sends a text message and reads the echo.
    pub fn echo(&mut self, text: &str) -> String {
        write_frame(self.r.get_mut(), 1, text.as_bytes(), Some([1, 2, 3, 4])).unwrap();
        let (opcode, payload) = read_frame(&mut self.r).expect("an echo");
        assert_eq!(opcode, 1);
        String::from_utf8(payload).unwrap()
    }

    /// Reads (and drops) what comes until the proxy ends the connection: `true`, or
    /// `false` when the 20 s read timeout ran out first.
    pub fn wait_closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.r.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }

    /// Sends a close frame and reads the backend's.
    pub fn close(mut self) -> u8 {
        write_frame(self.r.get_mut(), 8, &[3, 232], Some([9, 9, 9, 9])).unwrap();
        read_frame(&mut self.r).map_or(0, |(op, _)| op)
    }
}
