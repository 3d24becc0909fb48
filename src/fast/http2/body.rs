//! An HTTP/2 request body on its way upstream: up to [`REPLAY_BODY`] is held before the
//! first attempt (a retry resends exactly that), the rest streams as it arrives, within
//! `server.max_request_body_bytes` (the forwarding core's [`BodyLimit`]). Upstream, a body
//! keeps the client's `Content-Length`, gets one when it ended within what was held, and
//! is sent chunked otherwise.

use super::super::exchange::REPLAY_BODY;
use super::super::upstream_io::{send_upstream, UpErr, UpStream};
use super::super::BODY_READ_TIMEOUT;
use crate::forward::request::BodyLimit;
use crate::forward::Body;
use bytes::Bytes;
use h2::RecvStream;
use pingora_timeout::fast_timeout::fast_timeout;
use std::io::Write as _;
use std::time::Duration;

/// How the body is framed towards the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (the client ended the stream with its head).
    None,
    /// The client's `Content-Length` passes on unchanged.
    ClientLength,
    /// The whole body is held: cohort sends its length.
    Held,
    /// Length unknown: `Transfer-Encoding: chunked`.
    Chunked,
}

pub(super) struct RequestBody {
    recv: RecvStream,
    /// Body bytes read from the client and not streamed yet.
    pub held: Vec<u8>,
    /// The client ended the stream: `held` is all of what is left.
    pub ended: bool,
    /// Part of the body went upstream beyond `held` and cannot be sent again.
    streamed: bool,
    limit: BodyLimit,
    /// The body went over `server.max_request_body_bytes` (413).
    pub too_large: bool,
    pub framing: Framing,
}

impl RequestBody {
    pub fn new(recv: RecvStream, max: u64, client_length: bool) -> RequestBody {
        let ended = recv.is_end_stream();
        RequestBody {
            recv,
            held: Vec::new(),
            ended,
            streamed: false,
            limit: BodyLimit::new(max),
            too_large: false,
            framing: match (ended, client_length) {
                (true, _) => Framing::None,
                (false, true) => Framing::ClientLength,
                (false, false) => Framing::Chunked,
            },
        }
    }

    /// Whether the request could be sent again as it was.
    pub fn replay(&self) -> Body {
        if self.streamed {
            Body::Consumed
        } else {
            Body::Replayable
        }
    }

    /// The next piece of body from the client; `Ok(None)` at its end. `Err`: the client
    /// reset the stream, went quiet for [`BODY_READ_TIMEOUT`], or sent too much.
    async fn next(&mut self) -> Result<Option<Bytes>, ()> {
        if self.ended {
            return Ok(None);
        }
        match fast_timeout(BODY_READ_TIMEOUT, self.recv.data()).await {
            Ok(Some(Ok(piece))) => {
                // The window opens again as soon as the bytes are taken.
                let _ = self.recv.flow_control().release_capacity(piece.len());
                if self.limit.add(piece.len()).is_err() {
                    self.too_large = true;
                    return Err(());
                }
                Ok(Some(piece))
            }
            Ok(None) => {
                self.ended = true;
                Ok(None)
            }
            Ok(Some(Err(_))) | Err(_) => Err(()),
        }
    }

    /// Reads and holds the body up to [`REPLAY_BODY`] (or its end); a body that ends
    /// within it goes upstream with its length.
    pub async fn hold(&mut self) -> Result<(), ()> {
        if self.framing == Framing::None {
            return Ok(());
        }
        while self.held.len() < REPLAY_BODY {
            match self.next().await? {
                Some(piece) => self.held.extend_from_slice(&piece),
                None => break,
            }
        }
        if self.ended && self.framing == Framing::Chunked {
            self.framing = Framing::Held;
        }
        Ok(())
    }

    /// The framing fields of the upstream head for this body.
    pub fn head_fields(&self, out: &mut Vec<u8>) {
        match self.framing {
            Framing::Held => {
                let _ = write!(out, "content-length: {}\r\n", self.held.len());
            }
            Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::None | Framing::ClientLength => {}
        }
    }

    /// Appends the held bytes, framed, after the upstream head.
    pub fn put_held(&self, out: &mut Vec<u8>) {
        if self.framing == Framing::Chunked {
            if !self.held.is_empty() {
                chunk(out, &self.held);
            }
        } else {
            out.extend_from_slice(&self.held);
        }
    }

    /// Whether bytes beyond those held remain to stream.
    pub fn more(&self) -> bool {
        !self.ended
    }

    /// Streams the rest of the body upstream as it arrives.
    pub async fn stream(&mut self, up: &mut UpStream, limit: Duration) -> Result<(), UpErr> {
        self.streamed = true;
        let mut framed = Vec::new();
        loop {
            let piece = self.next().await.map_err(|()| UpErr::ClientGone)?;
            let (bytes, last): (&[u8], bool) = match (&piece, self.framing) {
                (Some(p), Framing::Chunked) => {
                    framed.clear();
                    chunk(&mut framed, p);
                    (framed.as_slice(), false)
                }
                (Some(p), _) => (&p[..], false),
                (None, Framing::Chunked) => (&b"0\r\n\r\n"[..], true),
                (None, _) => (&b""[..], true),
            };
            if !bytes.is_empty() {
                send_upstream(up, bytes, limit).await?;
            }
            if last {
                return Ok(());
            }
        }
    }
}

/// What is read and dropped of a body after its response (see [`RequestBody::drain`]).
const DRAIN_MAX: usize = 1024 * 1024;
/// How long each read of a body being dropped may wait.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

impl RequestBody {
    /// After the response (a 413, an early answer): reads and drops what is left of the
    /// body, up to [`DRAIN_MAX`], so the client's upload ends as it should rather than
    /// with the stream cancelled under it (which clients report as a failed request).
    pub async fn drain(&mut self) {
        let mut left = DRAIN_MAX;
        while !self.ended && left > 0 {
            match fast_timeout(DRAIN_WAIT, self.recv.data()).await {
                Ok(Some(Ok(piece))) => {
                    let _ = self.recv.flow_control().release_capacity(piece.len());
                    left = left.saturating_sub(piece.len());
                }
                Ok(None) => self.ended = true,
                Ok(Some(Err(_))) | Err(_) => return,
            }
        }
    }
}

/// One chunk of a chunked body.
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}
