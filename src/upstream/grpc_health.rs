//! The gRPC health check (`grpc.health.v1.Health/Check`) over HTTP/2, for variants
//! whose `health_check` has `grpc = true`: a backend is healthy when it answers
//! `grpc-status: 0` with `HealthCheckResponse { status: SERVING }`. The two protobuf
//! messages are small enough to write and read by hand (field 1 of each).

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

/// The most of a health response cohort reads.
const MAX_RESPONSE: usize = 16 * 1024;

/// `HealthCheckRequest { service }`, as a length-prefixed gRPC message.
fn request_message(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0); // not compressed
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    Bytes::from(framed)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Whether a response body (length-prefixed messages) says SERVING: field 1 (varint)
/// of the first message is 1.
fn serving(body: &[u8]) -> bool {
    let Some(len) = body
        .get(1..5)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return false;
    };
    let Some(msg) = body.get(5..5 + len as usize) else {
        return false;
    };
    // `status` is the message's only field; SERVING is 1.
    body[0] == 0 && msg == [0x08, 0x01]
}

/// Asks `service` ("" = the server as a whole) on an open connection (`authority` is
/// the `:authority` sent).
pub async fn check<S>(io: S, service: &str, authority: &str, tls: bool) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h2 = |e: h2::Error| std::io::Error::other(e.to_string());
    let (client, conn) = h2::client::handshake(io).await.map_err(h2)?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let mut client = client.ready().await.map_err(h2)?;
        let scheme = if tls { "https" } else { "http" };
        let req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "{scheme}://{authority}/grpc.health.v1.Health/Check"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "cohort-health-check")
            .body(())
            .map_err(std::io::Error::other)?;
        let (resp, mut send) = client.send_request(req, false).map_err(h2)?;
        send.send_data(request_message(service), true).map_err(h2)?;
        let resp = resp.await.map_err(h2)?;
        let (parts, mut body) = resp.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
            if data.len() > MAX_RESPONSE {
                return Ok(false);
            }
        }
        let trailers = body.trailers().await.map_err(h2)?;
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .map(|v| crate::forward::grpc::GrpcStatus::parse(v.as_bytes()));
        Ok(parts.status == http::StatusCode::OK
            && status == Some(crate::forward::grpc::GrpcStatus::OK)
            && serving(&data))
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_service_in_field_one() {
        assert_eq!(&request_message("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("api.v1.Users")[..],
            [&[0u8, 0, 0, 0, 14, 0x0a, 12][..], b"api.v1.Users"].concat()
        );
    }

    #[test]
    fn only_serving_is_healthy() {
        assert!(serving(&[0, 0, 0, 0, 2, 0x08, 0x01]));
        assert!(!serving(&[0, 0, 0, 0, 2, 0x08, 0x02]), "NOT_SERVING");
        assert!(!serving(&[0, 0, 0, 0, 0]), "UNKNOWN (the default, 0)");
        assert!(!serving(&[0, 0, 0, 0, 9, 0x08]), "cut short");
        assert!(!serving(&[]));
    }
}
