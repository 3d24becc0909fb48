//! The fast path's chunked-body scanner (`fast::http1::ChunkedScanner`) reads bytes an
//! upstream sent, in whatever pieces the socket delivers them. These properties pin it
//! against a second, independent reading of RFC 9112 §7.1 (`reference` below, which
//! walks a whole buffer by index instead of a byte-at-a-time state machine):
//!
//! - for valid bodies of random chunks, extensions, hex case, leading zeros and trailers,
//!   followed by the next response's bytes, the end is found exactly, however the bytes
//!   are split;
//! - for any input (valid bodies with bytes changed, inserted or cut, and random bytes
//!   from the grammar's alphabet), the scanner says what the reference says: complete at
//!   the same offset, incomplete, or broken; and feeding it in pieces never changes the
//!   answer.

use cohort::fast::http1::ChunkedScanner;
use proptest::prelude::*;

/// What the reference makes of a whole buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The body ends after this many bytes.
    Complete(usize),
    /// Every byte so far is valid; more are needed.
    Incomplete,
    Broken,
}

/// Longest chunk-size the scanner accepts, in hex digits (leading zeros count).
const MAX_DIGITS: usize = 15;

/// An independent reading of `chunked-body` (RFC 9112 §7.1): `chunk-size [ chunk-ext ]
/// CRLF chunk-data CRLF`, repeated, then `0 [ chunk-ext ] CRLF`, trailer lines and CRLF.
/// Like the scanner it lets an extension or a trailer line hold any byte but LF, and
/// insists on CRLF line ends.
fn reference(b: &[u8]) -> Outcome {
    use Outcome::*;
    let mut i = 0;
    // Reads `\r\n` at `i`, the CR already required by the caller's grammar.
    let crlf = |i: usize| -> Result<usize, Outcome> {
        match (b.get(i), b.get(i + 1)) {
            (None, _) => Err(Incomplete),
            (Some(b'\r'), None) => Err(Incomplete),
            (Some(b'\r'), Some(b'\n')) => Ok(i + 2),
            _ => Err(Broken),
        }
    };
    // A line's rest up to and including CRLF: any byte but LF before the CR.
    let line_end = |from: usize| -> Result<usize, Outcome> {
        match b[from.min(b.len())..]
            .iter()
            .position(|&c| c == b'\r' || c == b'\n')
        {
            None => Err(Incomplete),
            Some(p) if b[from + p] == b'\n' => Err(Broken),
            Some(p) => crlf(from + p),
        }
    };
    loop {
        let digits = b[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits > MAX_DIGITS {
            return Broken;
        }
        if i + digits == b.len() {
            return Incomplete;
        }
        if digits == 0 {
            return Broken;
        }
        let text = std::str::from_utf8(&b[i..i + digits]).expect("hex digits are ASCII");
        let size = u64::from_str_radix(text, 16).expect("at most 15 hex digits");
        i += digits;
        i = match b[i] {
            b';' | b' ' | b'\t' => match line_end(i + 1) {
                Ok(next) => next,
                Err(o) => return o,
            },
            b'\r' => match crlf(i) {
                Ok(next) => next,
                Err(o) => return o,
            },
            _ => return Broken,
        };
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if b.len() - i <= size {
            return Incomplete;
        }
        i = match crlf(i + size) {
            Ok(next) => next,
            Err(o) => return o,
        };
    }
    // Trailer section: lines until an empty one.
    loop {
        match b.get(i) {
            None => return Incomplete,
            Some(b'\r') => {
                return match crlf(i) {
                    Ok(end) => Complete(end),
                    Err(o) => o,
                }
            }
            Some(b'\n') => return Broken,
            Some(_) => {
                i = match line_end(i) {
                    Ok(next) => next,
                    Err(o) => return o,
                }
            }
        }
    }
}

/// What the scanner makes of `data` fed in pieces that end at `cuts`.
fn scan(data: &[u8], cuts: &[usize]) -> Outcome {
    let mut s = ChunkedScanner::default();
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
    points.push(data.len());
    points.sort_unstable();
    let mut from = 0;
    for to in points {
        match s.feed(&data[from..to]) {
            Ok(Some(n)) => return Outcome::Complete(from + n),
            Ok(None) => {}
            Err(_) => return Outcome::Broken,
        }
        from = to;
    }
    Outcome::Incomplete
}

/// One chunk as generated: its data, how its size is spelled, and its extension.
#[derive(Debug, Clone)]
struct Chunk {
    data: Vec<u8>,
    upper: bool,
    zeros: usize,
    ext: Option<String>,
}

/// A chunk whose size has up to `max_zeros - 1` leading zeros.
fn chunk(max_zeros: usize) -> impl Strategy<Value = Chunk> {
    (
        proptest::collection::vec(any::<u8>(), 1..300),
        any::<bool>(),
        0..max_zeros,
        proptest::option::of("[ \t]?;[a-z]{1,5}(=[a-z0-9\"]{0,6})?"),
    )
        .prop_map(|(data, upper, zeros, ext)| Chunk {
            data,
            upper,
            zeros,
            ext,
        })
}

/// A whole chunked body: chunks, the last chunk, trailers and the final CRLF.
fn encode(chunks: &[Chunk], last_ext: &Option<String>, trailers: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    let size_line =
        |out: &mut Vec<u8>, size: usize, upper: bool, zeros: usize, ext: &Option<String>| {
            out.extend(std::iter::repeat_n(b'0', zeros));
            let hex = if upper {
                format!("{size:X}")
            } else {
                format!("{size:x}")
            };
            out.extend_from_slice(hex.as_bytes());
            if let Some(e) = ext {
                out.extend_from_slice(e.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        };
    for c in chunks {
        size_line(&mut out, c.data.len(), c.upper, c.zeros, &c.ext);
        out.extend_from_slice(&c.data);
        out.extend_from_slice(b"\r\n");
    }
    size_line(&mut out, 0, false, 0, last_ext);
    for t in trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A valid body (sizes with at most 2 leading zeros), or with `max_zeros` 20 one whose
/// sizes may exceed the 15 hex digits the scanner accepts.
fn body_with(max_zeros: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(chunk(max_zeros), 0..6),
        proptest::option::of(";[a-z]{1,4}"),
        proptest::collection::vec("[A-Za-z-]{1,8}: [ -~]{0,12}", 0..3),
    )
        .prop_map(|(chunks, last_ext, trailers)| encode(&chunks, &last_ext, &trailers))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    body_with(3)
}

/// A change to a valid body: overwrite, insert or delete one byte (from bytes that
/// matter to the grammar, or any byte).
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn grammar_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        prop::sample::select(b"\r\n;: \t0123456789abcdefABCDEFgxZ".to_vec()),
        any::<u8>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), grammar_byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), grammar_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if data.is_empty() {
            break;
        }
        match *e {
            Edit::Set(i, b) => {
                let i = i % data.len();
                data[i] = b;
            }
            Edit::Insert(i, b) => data.insert(i % (data.len() + 1), b),
            Edit::Delete(i) => {
                data.remove(i % data.len());
            }
        }
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn valid_bodies_end_exactly_where_they_end_however_split(
        body in body(),
        next in proptest::collection::vec(any::<u8>(), 0..40),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut data = body.clone();
        data.extend_from_slice(&next);
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        prop_assert_eq!(reference(&data), Outcome::Complete(body.len()));
        prop_assert_eq!(scan(&data, &cuts), Outcome::Complete(body.len()));
        // Every proper prefix is incomplete, not broken.
        for cut in [body.len() / 3, body.len() / 2, body.len() - 1] {
            prop_assert_eq!(scan(&data[..cut], &cuts), Outcome::Incomplete, "prefix {}", cut);
        }
    }

    #[test]
    fn edited_bodies_are_read_as_the_reference_reads_them(
        body in body(),
        edits in proptest::collection::vec(edit(), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let data = apply(body, &edits);
        let whole = scan(&data, &[]);
        prop_assert_eq!(whole, reference(&data), "input {:?}", String::from_utf8_lossy(&data));
        prop_assert_eq!(scan(&data, &cuts), whole);
    }

    #[test]
    fn long_chunk_sizes_are_read_as_the_reference_reads_them(
        data in body_with(20),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = scan(&data, &[]);
        prop_assert_eq!(whole, reference(&data), "input {:?}", String::from_utf8_lossy(&data));
        prop_assert_eq!(scan(&data, &cuts), whole);
    }

    #[test]
    fn arbitrary_bytes_are_read_as_the_reference_reads_them(
        data in proptest::collection::vec(grammar_byte(), 0..64),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = scan(&data, &[]);
        prop_assert_eq!(whole, reference(&data), "input {:?}", String::from_utf8_lossy(&data));
        prop_assert_eq!(scan(&data, &cuts), whole);
    }
}

#[test]
fn reference_agrees_with_hand_written_cases() {
    use Outcome::*;
    let cases: [(&[u8], Outcome); 12] = [
        (b"0\r\n\r\n", Complete(5)),
        (b"5;a=b\r\nhello\r\n0\r\nX: y\r\n\r\nrest", Complete(25)),
        (b"A\r\n0123456789\r\n0\r\n\r\n", Complete(20)),
        (b"5\r\nhel", Incomplete),
        (b"0\r\nX: y\r", Incomplete),
        (b"", Incomplete),
        (b"\r\n", Broken),
        (b"5\nhello", Broken),
        (b"5\r\nhelloXX", Broken),
        (b"0;ext\n", Broken),
        (b"0\r\nbad\ntrailer", Broken),
        (b"0000000000000001\r\n", Broken),
    ];
    for (input, want) in cases {
        let text = String::from_utf8_lossy(input);
        assert_eq!(reference(input), want, "reference on {text:?}");
        assert_eq!(scan(input, &[]), want, "scanner on {text:?}");
    }
}
