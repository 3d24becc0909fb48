//! Arbitrary bytes as the start of a connection on a `proxy_protocol = true` listener:
//! the PROXY protocol header reading never panics; a complete header is no longer than
//! the input and reads the same with nothing after it; every shorter prefix of it is
//! incomplete (so a header that arrives in pieces is never refused for the cut), and an
//! input that is refused stays refused whatever follows it.
#![no_main]

use cohort::proxy_protocol::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Some(h)) => {
            assert!(h.len <= data.len());
            let alone = parse(&data[..h.len]).expect("the header alone").expect("complete");
            assert_eq!(alone, h);
            for cut in 0..h.len {
                assert!(
                    matches!(parse(&data[..cut]), Ok(None)),
                    "a prefix of a header ({cut} of {} bytes) was refused",
                    h.len
                );
            }
        }
        Ok(None) => {}
        Err(_) => {
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\n\r\n");
            assert!(parse(&more).is_err(), "refused, then accepted with more bytes");
        }
    }
});
