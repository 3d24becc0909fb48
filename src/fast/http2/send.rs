//! Writing to an HTTP/2 client: DATA within the stream's and the connection's
//! flow-control windows, and cohort's own short responses.

use crate::forward::plain::{error_body, plain_fields};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::SendStream;
use http::header::{HeaderName, HeaderValue};
use pingora_timeout::tokio_timeout;
use std::future::poll_fn;
use std::time::Duration;

/// Sends `data` (`end`: and ends the stream), in pieces as the client's windows allow.
/// `Err` when the client is gone, reset the stream, or gave no window for `limit`
/// (`server.client_write_timeout_secs`, per wait, as on HTTP/1).
pub(super) async fn data(
    tx: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    limit: Duration,
) -> Result<(), ()> {
    if data.is_empty() {
        return if end {
            tx.send_data(data, true).map_err(drop)
        } else {
            Ok(())
        };
    }
    while !data.is_empty() {
        tx.reserve_capacity(data.len());
        let mut room = tx.capacity();
        if room == 0 {
            room = match tokio_timeout(limit, poll_fn(|cx| tx.poll_capacity(cx))).await {
                Ok(Some(Ok(n))) => n,
                Ok(Some(Err(_)) | None) | Err(_) => return Err(()),
            };
            if room == 0 {
                continue;
            }
        }
        let piece = data.split_to(room.min(data.len()));
        tx.send_data(piece, end && data.is_empty()).map_err(drop)?;
    }
    Ok(())
}

/// The `Date` field's value now.
pub(super) fn date() -> HeaderValue {
    super::super::http1::with_date(HeaderValue::from_str)
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// cohort's own plain-text response with status `code` (and the variant's field when
/// given); returns `code`, or 499 if the client is gone.
pub(super) async fn plain(
    respond: &mut SendResponse<Bytes>,
    code: u16,
    variant: Option<(&str, &str)>,
    limit: Duration,
) -> u16 {
    let body = error_body(code);
    let mut resp = http::Response::new(());
    *resp.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let fields = resp.headers_mut();
    for (name, value) in plain_fields(code, body) {
        fields.insert(name, value);
    }
    if let Some((name, value)) = variant {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            fields.insert(n, v);
        }
    }
    fields.insert(http::header::DATE, date());
    let Ok(mut tx) = respond.send_response(resp, false) else {
        return 499;
    };
    match data(&mut tx, Bytes::from_static(body.as_bytes()), true, limit).await {
        Ok(()) => code,
        Err(()) => 499,
    }
}
