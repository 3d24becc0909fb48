//! Case-insensitive comparison against names known to be lower-case ASCII (header names,
//! host patterns), 8 bytes at a time and inlined. The standard `eq_ignore_ascii_case`
//! compares byte by byte behind a call; on the names one decision compares, this takes
//! about 40% of its time (`names/7-compares` in BENCHMARKS.md §2). Exact comparisons stay
//! with the standard `==` (`memcmp`), which measured as fast.

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
pub fn eq_lower(mut raw: &[u8], mut lower: &[u8]) -> bool {
    if raw.len() != lower.len() {
        return false;
    }
    while let (Some(r), Some(l)) = (raw.first_chunk::<8>(), lower.first_chunk::<8>()) {
        if lower8(u64::from_le_bytes(*r)) != u64::from_le_bytes(*l) {
            return false;
        }
        raw = &raw[8..];
        lower = &lower[8..];
    }
    lower8(word(raw)) == word(lower)
}

/// A hash of `bytes` that ignores ASCII case (equal for any two inputs [`eq_lower`]
/// takes as equal), word at a time: the service index looks request hosts up with it.
/// Not for hashing attacker-chosen keys into a growing table (it is unseeded); the
/// index's tables are fixed by the config, so a collision costs one more comparison.
#[inline]
pub fn hash_lower(mut bytes: &[u8]) -> u64 {
    #[inline]
    fn mix(h: u64, w: u64) -> u64 {
        let m = u128::from(h ^ w) * 0x9e37_79b9_7f4a_7c15_u128;
        (m as u64) ^ ((m >> 64) as u64)
    }
    let mut h = mix(0x243f_6a88_85a3_08d3, bytes.len() as u64);
    while let Some(w) = bytes.first_chunk::<8>() {
        h = mix(h, lower8(u64::from_le_bytes(*w)));
        bytes = &bytes[8..];
    }
    mix(h, lower8(word(bytes)) ^ 0x1319_8a2e_0370_7344)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_lower_ignores_ascii_case_only() {
        let h = hash_lower(b"Api.Example.COM");
        assert_eq!(h, hash_lower(b"api.example.com"));
        assert_eq!(h, hash_lower(b"API.EXAMPLE.COM"));
        assert_ne!(h, hash_lower(b"api.example.co"));
        assert_ne!(h, hash_lower(b"api.example.comm"));
        assert_ne!(hash_lower(b"a"), hash_lower(b"b"));
        assert_ne!(hash_lower(b""), hash_lower(b"\0"));
        // '@' and '`' are not letters: they differ in the case bit and must stay apart.
        assert_ne!(hash_lower(b"@"), hash_lower(b"`"));
    }

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
