//! The request and config the decision benches use: `benches/hot_path.rs` (criterion,
//! time) and `examples/decide_count.rs` (callgrind, instructions) include this file.

use http::{HeaderMap, HeaderValue};

/// One service: 3 variants, 4 rules (CIDR, cookie, header `in`, `key_in`), key from a
/// header, a cookie, a query parameter or the client IP.
pub const SERVICE: &str = r#"
[[service]]
name = "api"
hosts = ["api.example.com"]
path_prefix = "/"
key = ["header:x-user-id", "cookie:session", "query:uid", "ip"]

[[service.variant]]
name = "stable"
weight = 80
backends = ["127.0.0.1:9001"]

[[service.variant]]
name = "canary"
weight = 15
backends = ["127.0.0.1:9002"]

[[service.variant]]
name = "beta"
weight = 5
backends = ["127.0.0.1:9003"]

[[service.rule]]
name = "staff"
client_cidr = ["10.20.0.0/16"]
variant = "canary"

[[service.rule]]
name = "beta-opt-in"
cookie = { name = "beta", equals = "1" }
variant = "beta"

[[service.rule]]
name = "eu"
header = { name = "cloudfront-viewer-country", in = ["DE", "FR", "NL"] }
weights = { stable = 50, canary = 50 }

[[service.rule]]
name = "partners"
key_in = ["partner-acme", "partner-globex"]
variant = "canary"
"#;

pub fn realistic_headers(user: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &'static str, v: &str| {
        h.insert(k, HeaderValue::from_str(v).expect("valid header"));
    };
    put("host", "api.example.com");
    put("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36");
    put("accept", "application/json, text/plain, */*");
    put("accept-language", "en-US,en;q=0.9");
    put("accept-encoding", "gzip, deflate, br");
    put(
        "cookie",
        "_ga=GA1.2.1234567890.1700000000; theme=dark; session=abcdef0123456789",
    );
    put("x-request-id", "6f1c1f8e-2b7a-4a7e-9d1e-1c2b3a4d5e6f");
    put("x-forwarded-for", "198.51.100.23");
    put("cloudfront-viewer-country", "US");
    put(
        "authorization",
        "Bearer eyJhbGciOiJIUzI1NiJ9.payload.signature",
    );
    put("content-type", "application/json");
    put("x-user-id", user);
    h
}

/// The same headers as an HTTP/1.1 request head, as the fast path receives it.
pub fn raw_head(headers: &HeaderMap) -> Vec<u8> {
    let mut raw = b"GET /v1/orders?page=2 HTTP/1.1\r\n".to_vec();
    for (k, v) in headers {
        raw.extend_from_slice(k.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(v.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw
}
