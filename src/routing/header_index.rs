//! One pass over a raw header list instead of one scan per lookup.
//!
//! The router knows at compile time every header name a decision can read (`Host`,
//! `Cookie`, `X-Forwarded-For`, and the services' key, rule and force headers). Each gets a
//! numbered [`Slot`] in [`HeaderSlots`], and the compiled service keeps the slots of the
//! names it reads. For each request the HTTP/1.1 fast path walks its header list once and
//! notes where each slot's first value is ([`HeaderIndex`]); a lookup by slot then starts
//! at that position, or answers "absent" at once. Names without a slot (beyond
//! [`MAX_SLOTS`] distinct names) are scanned as before.

use super::compare::eq_lower;

/// Slots per table; a config naming more distinct headers indexes the first ones.
pub const MAX_SLOTS: usize = 32;

/// Longest name with a length bucket of its own; longer names share the last bucket.
const LONG: usize = 64;

/// A header name's number in the router's [`HeaderSlots`], or [`Slot::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(u8);

impl Slot {
    /// Not indexed: lookups scan the whole list.
    pub const NONE: Slot = Slot(u8::MAX);
    pub const HOST: Slot = Slot(0);
    pub const COOKIE: Slot = Slot(1);
    pub const FORWARDED_FOR: Slot = Slot(2);
}

/// The header names a router reads, lower-cased; slot `i` is `names[i]`.
#[derive(Debug, Clone)]
pub struct HeaderSlots {
    names: Vec<Box<[u8]>>,
    /// Bit `n` set: some name is `n` bytes long (`n` < 64).
    lengths: u64,
    /// Slot numbers ordered by the length bucket of their name.
    bucketed: Vec<u8>,
    /// The slots whose name has bucket length `n` are `bucketed[by_len[n]..by_len[n + 1]]`.
    by_len: [u8; LONG + 2],
}

fn bucket(len: usize) -> usize {
    len.min(LONG)
}

impl Default for HeaderSlots {
    /// `Host`, `Cookie` and `X-Forwarded-For` in their fixed slots.
    fn default() -> HeaderSlots {
        let mut slots = HeaderSlots {
            names: Vec::new(),
            lengths: 0,
            bucketed: Vec::new(),
            by_len: [0; LONG + 2],
        };
        slots.add("host");
        slots.add("cookie");
        slots.add("x-forwarded-for");
        slots
    }
}

impl HeaderSlots {
    /// The slot of `name` (case-insensitive), numbering it if it is new; [`Slot::NONE`]
    /// once [`MAX_SLOTS`] names are numbered.
    pub fn add(&mut self, name: &str) -> Slot {
        let lower = name.to_ascii_lowercase().into_bytes();
        if let Some(i) = self.names.iter().position(|n| **n == *lower) {
            return Slot(i as u8);
        }
        if self.names.len() == MAX_SLOTS {
            return Slot::NONE;
        }
        if lower.len() < 64 {
            self.lengths |= 1 << lower.len();
        }
        self.names.push(lower.into_boxed_slice());
        let mut order: Vec<u8> = (0..self.names.len() as u8).collect();
        order.sort_by_key(|&s| bucket(self.names[s as usize].len()));
        for (b, start) in self.by_len.iter_mut().enumerate() {
            // At most MAX_SLOTS (32) names: the count fits in a u8.
            *start = order
                .iter()
                .take_while(|&&s| bucket(self.names[s as usize].len()) < b)
                .count() as u8;
        }
        self.bucketed = order;
        Slot(self.names.len() as u8 - 1)
    }

    /// Where each slot's values are in `list`; `None` for lists too long to index.
    pub fn index(&self, list: &[httparse::Header<'_>]) -> Option<HeaderIndex> {
        if list.len() >= u8::MAX as usize {
            return None;
        }
        let mut ix = HeaderIndex {
            first: [0; MAX_SLOTS],
            more: 0,
        };
        for (pos, h) in list.iter().enumerate() {
            let name = h.name.as_bytes();
            if name.len() < 64 && self.lengths & (1 << name.len()) == 0 {
                continue;
            }
            let b = bucket(name.len());
            let (lo, hi) = (self.by_len[b] as usize, self.by_len[b + 1] as usize);
            for &s in self.bucketed.get(lo..hi).unwrap_or_default() {
                let s = s as usize;
                if !eq_lower(name, &self.names[s]) {
                    continue;
                }
                if ix.first[s] == 0 {
                    // `pos < 255`: checked above.
                    ix.first[s] = pos as u8 + 1;
                } else {
                    ix.more |= 1 << s;
                }
                break;
            }
        }
        Some(ix)
    }
}

/// Where a request's indexed headers are: for each slot, 1 + the position of its first
/// value (0 = absent), and whether more values follow.
#[derive(Debug, Clone, Copy)]
pub struct HeaderIndex {
    first: [u8; MAX_SLOTS],
    more: u32,
}

/// Where the values of one header are, as [`HeaderIndex::narrow`] found them.
#[derive(Debug, Clone, Copy)]
pub enum Narrowed<'l, 'h> {
    /// The header occurs once, with this value (its name is known to match).
    One(&'h [u8]),
    /// Every occurrence is in this part of the list; names still need comparing. Also the
    /// whole list for [`Slot::NONE`], and nothing for an absent header.
    Scan(&'l [httparse::Header<'h>]),
}

impl HeaderIndex {
    /// The values of the header in `slot`.
    #[inline]
    pub fn narrow<'l, 'h>(&self, list: &'l [httparse::Header<'h>], slot: Slot) -> Narrowed<'l, 'h> {
        let s = slot.0 as usize;
        let pos = match self.first.get(s) {
            None => return Narrowed::Scan(list),
            Some(0) => return Narrowed::Scan(&[]),
            Some(&p) => p as usize - 1,
        };
        match list.get(pos..) {
            Some([h, ..]) if self.more & (1 << s) == 0 => Narrowed::One(h.value),
            Some(rest) => Narrowed::Scan(rest),
            None => Narrowed::Scan(list),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    fn values<'a>(
        ix: &HeaderIndex,
        list: &'a [httparse::Header<'a>],
        slot: Slot,
        name: &str,
    ) -> Vec<&'a [u8]> {
        match ix.narrow(list, slot) {
            Narrowed::One(v) => vec![v],
            Narrowed::Scan(part) => part
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect(),
        }
    }

    #[test]
    fn fixed_names_have_fixed_slots_and_names_are_numbered_once() {
        let mut slots = HeaderSlots::default();
        assert_eq!(slots.add("Host"), Slot::HOST);
        assert_eq!(slots.add("cookie"), Slot::COOKIE);
        assert_eq!(slots.add("X-Forwarded-For"), Slot::FORWARDED_FOR);
        let user = slots.add("X-User-Id");
        assert_eq!(slots.add("x-user-id"), user);
        assert_ne!(user, Slot::NONE);
    }

    #[test]
    fn narrowed_lists_hold_exactly_the_values_a_full_scan_finds() {
        let mut slots = HeaderSlots::default();
        let user = slots.add("x-user-id");
        let accept = slots.add("accept");
        let absent = slots.add("x-absent");
        let list = [
            h("Host", "a"),
            h("accept", "*/*"),
            h("COOKIE", "a=1"),
            h("x-forwarded-for", "1.1.1.1"),
            h("X-USER-ID", "u1"),
            h("cookie", "b=2"),
            h("X-Forwarded-For", "2.2.2.2"),
        ];
        let ix = slots.index(&list).expect("short list");
        let cases = [
            (Slot::HOST, "host"),
            (Slot::COOKIE, "cookie"),
            (Slot::FORWARDED_FOR, "x-forwarded-for"),
            (user, "x-user-id"),
            (accept, "accept"),
            (absent, "x-absent"),
            (Slot::NONE, "x-user-id"),
        ];
        for (slot, name) in cases {
            let full: Vec<&[u8]> = list
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect();
            assert_eq!(values(&ix, &list, slot, name), full, "{name}");
        }
        assert!(matches!(ix.narrow(&list, user), Narrowed::One(b"u1")));
        assert!(matches!(ix.narrow(&list, absent), Narrowed::Scan([])));
        assert!(matches!(ix.narrow(&list, Slot::NONE), Narrowed::Scan(l) if l.len() == list.len()));
        assert!(matches!(ix.narrow(&list, Slot::COOKIE), Narrowed::Scan(l) if l.len() == 5));
    }

    #[test]
    fn names_beyond_the_slot_limit_get_no_slot() {
        let mut slots = HeaderSlots::default();
        let given: Vec<Slot> = (0..MAX_SLOTS + 5)
            .map(|i| slots.add(&format!("x-h{i}")))
            .collect();
        assert_eq!(
            given.iter().filter(|s| **s != Slot::NONE).count(),
            MAX_SLOTS - 3
        );
        assert_eq!(given.last(), Some(&Slot::NONE));
    }

    #[test]
    fn long_names_share_a_bucket() {
        let long_a = "x-".to_string() + &"a".repeat(80);
        let long_b = "x-".to_string() + &"b".repeat(90);
        let mut slots = HeaderSlots::default();
        let (a, b) = (slots.add(&long_a), slots.add(&long_b));
        let list = [h(&long_b, "b"), h(&long_a, "a")];
        let ix = slots.index(&list).expect("short list");
        assert_eq!(values(&ix, &list, a, &long_a), [b"a"]);
        assert_eq!(values(&ix, &list, b, &long_b), [b"b"]);
    }

    #[test]
    fn over_long_lists_are_not_indexed() {
        let slots = HeaderSlots::default();
        let list = vec![h("x", "y"); 300];
        assert!(slots.index(&list).is_none());
    }
}
