//! Short byte-string comparisons, 8 bytes at a time and inlined: exact ([`eq_bytes`]) and
//! against names known to be lower-case ASCII ([`eq_lower`]: header names, host patterns).
//! The standard slice `==` calls `memcmp` and `eq_ignore_ascii_case` compares byte by
//! byte behind a call; routing compares a dozen short names and values per request.

const ONES: u64 = 0x0101_0101_0101_0101;

/// ASCII-lower-cases each byte of `x`. Bytes from 0x80 up keep their high bit, so they
/// never equal a byte of lower-case ASCII.
#[inline]
fn lower8(x: u64) -> u64 {
    let low7 = x & (0x7f * ONES);
    // High bit of each byte: at least 'A', and above 'Z' (no carries: every byte < 0x80).
    let from_a = low7.wrapping_add((0x80 - b'A' as u64) * ONES);
    let past_z = low7.wrapping_add((0x80 - b'Z' as u64 - 1) * ONES);
    let upper = from_a & !past_z & (0x80 * ONES);
    x | (upper >> 2)
}

/// The first 8 bytes of `b` as a little-endian word, zero-padded when `b` is shorter
/// (two overlapping loads instead of a byte loop).
#[inline]
fn word(b: &[u8]) -> u64 {
    let n = b.len();
    if let Some(w) = b.first_chunk::<8>() {
        return u64::from_le_bytes(*w);
    }
    if let (Some(lo), Some(hi)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        return u64::from(u32::from_le_bytes(*lo))
            | u64::from(u32::from_le_bytes(*hi)) << (8 * (n - 4));
    }
    if let (Some(lo), Some(hi)) = (b.first_chunk::<2>(), b.last_chunk::<2>()) {
        return u64::from(u16::from_le_bytes(*lo))
            | u64::from(u16::from_le_bytes(*hi)) << (8 * (n - 2));
    }
    b.first().map_or(0, |&x| u64::from(x))
}

/// `raw` equals `lower` ignoring ASCII case in `raw`. `lower` must be lower-case ASCII
/// (validated header names and host patterns are); then this agrees with
/// `raw.eq_ignore_ascii_case(lower)`.
#[inline]
pub fn eq_lower(raw: &[u8], lower: &[u8]) -> bool {
    raw.len() == lower.len() && words_equal(raw, lower, lower8)
}

/// `a == b`.
#[inline]
pub fn eq_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && words_equal(a, b, |w| w)
}

/// `hay` starts with `prefix`.
#[inline]
pub fn starts_with(hay: &[u8], prefix: &[u8]) -> bool {
    hay.get(..prefix.len())
        .is_some_and(|head| words_equal(head, prefix, |w| w))
}

/// Word by word, `f(word of a) == word of b`, for slices of equal length.
#[inline]
fn words_equal(mut a: &[u8], mut b: &[u8], f: impl Fn(u64) -> u64) -> bool {
    while let (Some(x), Some(y)) = (a.first_chunk::<8>(), b.first_chunk::<8>()) {
        if f(u64::from_le_bytes(*x)) != u64::from_le_bytes(*y) {
            return false;
        }
        a = &a[8..];
        b = &b[8..];
    }
    f(word(a)) == word(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_load_every_length_like_a_byte_loop() {
        let bytes = b"abcdefghij";
        for n in 0..=10 {
            let b = &bytes[..n];
            let slow = b
                .iter()
                .take(8)
                .rev()
                .fold(0u64, |w, &x| (w << 8) | u64::from(x));
            assert_eq!(word(b), slow, "length {n}");
        }
    }

    #[test]
    fn exact_comparisons_agree_with_slice_equality() {
        let samples: [&[u8]; 8] = [
            b"",
            b"/",
            b"/v1",
            b"/v1/orders",
            b"/v1/orders/",
            b"partner-acme",
            b"partner-acmE",
            b"0123456789abcdef0",
        ];
        for a in samples {
            for b in samples {
                assert_eq!(eq_bytes(a, b), a == b, "{a:?} == {b:?}");
                assert_eq!(
                    starts_with(a, b),
                    a.starts_with(b),
                    "{a:?} starts with {b:?}"
                );
            }
        }
    }

    #[test]
    fn agrees_with_eq_ignore_ascii_case_for_lower_case_names() {
        let names = [
            "",
            "x",
            "te",
            "dnt",
            "host",
            "x-abcde",
            "x-user-id",
            "x-forwarded-for",
            "api.example.com",
            "cloudfront-viewer-country",
            "x-a^b",
            "abcdefgh",
            "abcdefghi",
        ];
        for lower in names {
            let l = lower.as_bytes();
            for raw in [
                lower.to_string(),
                lower.to_ascii_uppercase(),
                lower.get(..1).unwrap_or("").to_ascii_uppercase() + lower.get(1..).unwrap_or(""),
                lower.to_string() + "z",
            ] {
                let r = raw.as_bytes();
                assert_eq!(
                    eq_lower(r, l),
                    r.eq_ignore_ascii_case(l),
                    "{raw} vs {lower}"
                );
            }
            if let Some(short) = l.get(1..) {
                assert_eq!(eq_lower(short, l), short.eq_ignore_ascii_case(l));
            }
            // Every one-byte change, including those `| 0x20` alone would hide.
            for i in 0..l.len() {
                for b in [b'~', b'^', b'_', b'@', b'[', b'`', b'{', 0xc1, 0x80 | l[i]] {
                    let mut raw = l.to_vec();
                    raw[i] = b;
                    assert_eq!(
                        eq_lower(&raw, l),
                        raw.eq_ignore_ascii_case(l),
                        "{raw:?} vs {lower}"
                    );
                }
            }
        }
    }
}
