//! Large `key_in` arrays lifted out of the config text before `toml` parses it.
//!
//! `toml` builds a document tree with a node per array element before serde sees any of
//! it: for 1M allow-list keys that tree is about 190 MB, over a 16 MB text, on every
//! reload. A `[[service.rule]]`'s `key_in = [ "...", ... ]` whose text is at least
//! [`LIFT_AT_LEAST`] bytes is instead read here, key by key, straight into its
//! [`KeySet`]; `toml` parses the rest of the text with a short marker string in the
//! array's place, and [`KeySet`]'s deserialiser swaps the marker for the set.
//!
//! Exactness: an array is lifted only when this module is sure of what `toml` would make
//! of it. The scan follows the document's structure (strings of all four kinds, comments,
//! brackets, table headers) and considers only a bare `key_in` at the start of a line,
//! outside any array or inline table, under a `[[service.rule]]` header. The array must
//! hold basic or literal single-line strings only, separated as TOML 1.0 allows
//! (whitespace, newlines, comments, a trailing comma), with the escapes and characters
//! `toml` 0.8 accepts; anything else (a multi-line string, a number, an invalid escape, a
//! control character in a comment) leaves that array in the text for `toml`, which then
//! decodes it or reports the error itself. A text the scan cannot follow, or one that
//! already contains the marker's prefix, is parsed by `toml` alone. Error positions are
//! mapped back through [`Lifted::original_offset`], so `line L:C` points into the file.
//!
//! The grammar followed is `toml_edit` 0.22's (`parser/strings.rs`, `parser/trivia.rs`,
//! `parser/array.rs`), which `toml` 0.8 uses. `toml_parser` (toml 1.x's lexer) was not
//! used: it implements TOML 1.1, whose `\e` and `\xHH` escapes toml 0.8 rejects, and
//! needs a newer Rust than this crate's `rust-version`.

use super::KeySet;
use std::cell::RefCell;

/// Arrays whose text (brackets included) is at least this long are lifted: about 250
/// keys like the scale bench's. Smaller ones cost `toml` little.
pub const LIFT_AT_LEAST: usize = 4096;

/// Start of every marker; a text that contains it anywhere is not lifted.
const MARKER: &str = "cohort-lifted-key-set/";

/// The text `toml` parses instead of the file, and the sets its markers stand for.
pub struct Lifted {
    pub text: String,
    /// The replaced arrays, in text order.
    splices: Vec<Splice>,
    /// `MARKER`, a per-parse nonce and `/`; the marker of set `i` is this and `i`.
    prefix: String,
    sets: Vec<KeySet>,
}

/// One array replaced by its marker.
struct Splice {
    /// Where the marker starts in `Lifted::text`, and its length.
    at: usize,
    len: usize,
    /// The array's byte range in the original text.
    from: usize,
    to: usize,
}

impl Lifted {
    /// The offset in the original text of byte `offset` of [`Lifted::text`]; an offset
    /// within a marker maps to its array's opening bracket.
    pub fn original_offset(&self, offset: usize) -> usize {
        let i = self.splices.partition_point(|s| s.at <= offset);
        let Some(s) = i.checked_sub(1).and_then(|i| self.splices.get(i)) else {
            return offset;
        };
        if offset < s.at + s.len {
            s.from
        } else {
            offset - (s.at + s.len) + s.to
        }
    }

    /// Number of arrays lifted.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Runs `parse` (on this thread) with the markers resolvable by [`claim`].
    pub fn resolving<R>(&self, parse: impl FnOnce() -> R) -> R {
        struct Clear;
        impl Drop for Clear {
            fn drop(&mut self) {
                TABLE.with(|t| t.borrow_mut().take());
            }
        }
        TABLE.with(|t| {
            *t.borrow_mut() = Some(Table {
                prefix: self.prefix.clone(),
                sets: self.sets.clone(),
            })
        });
        let _clear = Clear;
        parse()
    }
}

/// The sets the markers of the parse running on this thread stand for.
struct Table {
    prefix: String,
    sets: Vec<KeySet>,
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// The set a marker string stands for, during [`Lifted::resolving`]; `None` for any
/// other string (which is then the type error it always was).
pub(super) fn claim(s: &str) -> Option<KeySet> {
    TABLE.with(|t| {
        let t = t.borrow();
        let t = t.as_ref()?;
        let i = s.strip_prefix(t.prefix.as_str())?;
        if i.is_empty() || !i.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.sets.get(i.parse::<usize>().ok()?).cloned()
    })
}

/// The text with every liftable `key_in` array of at least `at_least` bytes replaced by
/// a marker; `None` when there is none, or the text is one to leave to `toml` whole.
pub fn lift(text: &str, at_least: usize) -> Option<Lifted> {
    let b = text.as_bytes();
    memchr::memmem::find(b, b"key_in")?;
    if memchr::memmem::find(b, MARKER.as_bytes()).is_some() {
        return None;
    }
    let arrays = scan(b, at_least)?;
    if arrays.is_empty() {
        return None;
    }
    let prefix = format!(
        "{MARKER}{:016x}{:016x}/",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let lifted: usize = arrays.iter().map(|a| a.to - a.from).sum();
    let mut out = String::with_capacity(text.len() - lifted + arrays.len() * (prefix.len() + 10));
    let mut splices = Vec::with_capacity(arrays.len());
    let mut sets = Vec::with_capacity(arrays.len());
    let mut last = 0;
    for (i, a) in arrays.into_iter().enumerate() {
        // `from` and `to` are at ASCII brackets, so on char boundaries.
        out.push_str(text.get(last..a.from)?);
        let at = out.len();
        out.push('"');
        out.push_str(&prefix);
        out.push_str(&i.to_string());
        out.push('"');
        splices.push(Splice {
            at,
            len: out.len() - at,
            from: a.from,
            to: a.to,
        });
        sets.push(a.set);
        last = a.to;
    }
    out.push_str(text.get(last..)?);
    Some(Lifted {
        text: out,
        splices,
        prefix,
        sets,
    })
}

/// A `key_in` array read into its set: `from..to` is `[` to `]` inclusive.
struct Array {
    from: usize,
    to: usize,
    set: KeySet,
}

/// Follows the document's structure and reads the liftable arrays; `None` where it
/// cannot follow the text (an unterminated string, an unbalanced bracket), which is
/// then not valid TOML and left to `toml` to report.
fn scan(b: &[u8], at_least: usize) -> Option<Vec<Array>> {
    let mut out = Vec::new();
    let mut i = 0;
    // Open `[` and `{`, of arrays, inline tables and the header being read.
    let mut depth = 0usize;
    // Only whitespace since the last newline outside any bracket.
    let mut line_start = true;
    // The last table header was `[[service.rule]]`.
    let mut in_rule = false;
    while let Some(&c) = b.get(i) {
        match c {
            b'\n' => {
                line_start = depth == 0;
                i += 1;
            }
            b' ' | b'\t' => i += 1,
            b'#' => i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n),
            b'"' | b'\'' => {
                i = skip_string(b, i)?;
                line_start = false;
            }
            b'[' | b'{' => {
                if c == b'[' && depth == 0 && line_start {
                    in_rule = is_rule_header(&b[i..]);
                }
                depth += 1;
                i += 1;
                line_start = false;
            }
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                i += 1;
                line_start = false;
            }
            b'k' if line_start && in_rule => {
                line_start = false;
                let Some(open) = key_in_value(b, i) else {
                    i += 1;
                    continue;
                };
                match read_array(b, open) {
                    Some((to, set)) if to - open >= at_least => {
                        out.push(Array {
                            from: open,
                            to,
                            set,
                        });
                        i = to;
                    }
                    // Left to `toml`: the scan goes on through the array as through any.
                    _ => i = open,
                }
            }
            _ => {
                line_start = false;
                i += 1;
            }
        }
    }
    (depth == 0).then_some(out)
}

/// Whether a line starting with `[` is the header `[[service.rule]]` (TOML allows
/// whitespace inside the brackets and around the dot).
fn is_rule_header(b: &[u8]) -> bool {
    let mut i = 0;
    let mut expect = |tok: &[u8], ws_before: bool| {
        if ws_before {
            while matches!(b.get(i), Some(b' ' | b'\t')) {
                i += 1;
            }
        }
        if b.get(i..i + tok.len()) == Some(tok) {
            i += tok.len();
            true
        } else {
            false
        }
    };
    expect(b"[[", false)
        && expect(b"service", true)
        && expect(b".", true)
        && expect(b"rule", true)
        && expect(b"]]", true)
}

/// At a line's first non-blank byte: if it is the bare key `key_in` then `=`, where the
/// value starts, when it is an array.
fn key_in_value(b: &[u8], i: usize) -> Option<usize> {
    if !b.get(i..)?.starts_with(b"key_in") {
        return None;
    }
    let mut j = skip_ws(b, i + 6);
    if b.get(j) != Some(&b'=') {
        return None;
    }
    j = skip_ws(b, j + 1);
    (b.get(j) == Some(&b'[')).then_some(j)
}

fn skip_ws(b: &[u8], mut j: usize) -> usize {
    while matches!(b.get(j), Some(b' ' | b'\t')) {
        j += 1;
    }
    j
}

/// Past the string starting at `b[i]` (`"` or `'`, single or triple), for following the
/// structure only (its value is not needed); `None` if it does not end.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let q = b[i];
    if b.get(i..i + 3) == Some(&[q, q, q][..]) {
        let mut j = i + 3;
        loop {
            let n = if q == b'"' {
                memchr::memchr2(b'"', b'\\', b.get(j..)?)?
            } else {
                memchr::memchr(q, b.get(j..)?)?
            };
            j += n;
            if b[j] == b'\\' {
                j += 2;
                continue;
            }
            let run = b[j..].iter().take_while(|&&c| c == q).count();
            if run >= 3 {
                // Up to two quotes before the closing three belong to the string.
                return (run <= 5).then_some(j + run);
            }
            j += run;
        }
    }
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            c if c == q => return Some(j + 1),
            b'\n' => return None,
            b'\\' if q == b'"' => j += 2,
            _ => j += 1,
        }
    }
}

/// The array opening at `b[open]`, read into a set, when every element is a
/// single-line string `toml` would accept with the same value; `(end, set)`, `end`
/// just past the closing `]`. `None` for anything else, an empty array included.
fn read_array(b: &[u8], open: usize) -> Option<(usize, KeySet)> {
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    let mut j = open + 1;
    loop {
        // array-values = ws-comment-newline val ws-comment-newline [ array-sep ... ]
        j = skip_ws_comment_newline(b, j)?;
        match *b.get(j)? {
            b']' => {
                j += 1;
                break;
            }
            b'"' if b.get(j + 1..j + 3) != Some(&b"\"\""[..]) => {
                j = basic_string(b, j, &mut bytes)?
            }
            b'\'' if b.get(j + 1..j + 3) != Some(&b"''"[..]) => {
                j = literal_string(b, j, &mut bytes)?
            }
            _ => return None,
        }
        ends.push(bytes.len());
        j = skip_ws_comment_newline(b, j)?;
        match *b.get(j)? {
            b',' => j += 1,
            b']' => {
                j += 1;
                break;
            }
            _ => return None,
        }
    }
    if ends.is_empty() {
        return None;
    }
    let set = KeySet::from_packed(&bytes, &ends).ok()?;
    Some((j, set))
}

/// ws-comment-newline: spaces, tabs, newlines (LF or CRLF) and comments, each comment
/// ending in a newline; `None` on a byte a comment may not hold or a lone CR.
fn skip_ws_comment_newline(b: &[u8], mut j: usize) -> Option<usize> {
    loop {
        match b.get(j) {
            Some(b' ' | b'\t' | b'\n') => j += 1,
            Some(b'\r') => j = newline(b, j)?,
            Some(b'#') => {
                j += 1;
                // non-eol = %x09 / %x20-7E / non-ascii
                while let Some(&c) = b.get(j) {
                    if c == 0x09 || (0x20..=0x7e).contains(&c) || c >= 0x80 {
                        j += 1;
                    } else {
                        break;
                    }
                }
                j = newline(b, j)?;
            }
            _ => return Some(j),
        }
    }
}

/// Past the LF or CRLF at `b[j]`.
fn newline(b: &[u8], j: usize) -> Option<usize> {
    match (b.get(j), b.get(j + 1)) {
        (Some(b'\n'), _) => Some(j + 1),
        (Some(b'\r'), Some(b'\n')) => Some(j + 2),
        _ => None,
    }
}

/// basic-unescaped = wschar / %x21 / %x23-5B / %x5D-7E / non-ascii
fn basic_unescaped(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

/// The basic string starting at `b[i]` (`"`), decoded onto `out`; past its closing quote.
fn basic_string(b: &[u8], i: usize, out: &mut Vec<u8>) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let run = b
            .get(j..)?
            .iter()
            .take_while(|&&c| basic_unescaped(c))
            .count();
        out.extend_from_slice(&b[j..j + run]);
        j += run;
        match *b.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j = escape(b, j + 1, out)?,
            _ => return None,
        }
    }
}

/// The escape whose letter is at `b[j]` (after the backslash), decoded onto `out`.
fn escape(b: &[u8], j: usize, out: &mut Vec<u8>) -> Option<usize> {
    let simple = match *b.get(j)? {
        b'b' => Some(0x08),
        b'f' => Some(0x0c),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'"' => Some(b'"'),
        b'\\' => Some(b'\\'),
        _ => None,
    };
    if let Some(c) = simple {
        out.push(c);
        return Some(j + 1);
    }
    let digits = match b[j] {
        b'u' => 4,
        b'U' => 8,
        _ => return None,
    };
    let hex = b.get(j + 1..j + 1 + digits)?;
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    let c = char::from_u32(code)?;
    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    Some(j + 1 + digits)
}

/// The literal string starting at `b[i]` (`'`), onto `out`; past its closing quote.
fn literal_string(b: &[u8], i: usize, out: &mut Vec<u8>) -> Option<usize> {
    let j = i + 1;
    // literal-char = %x09 / %x20-26 / %x28-7E / non-ascii
    let run = b
        .get(j..)?
        .iter()
        .take_while(|&&c| matches!(c, 0x09 | 0x20..=0x26 | 0x28..=0x7e | 0x80..=0xff))
        .count();
    if b.get(j + run) != Some(&b'\'') {
        return None;
    }
    out.extend_from_slice(&b[j..j + run]);
    Some(j + run + 1)
}

#[cfg(test)]
#[path = "lift_tests.rs"]
mod tests;
