//! Compressed posting lists: the occurrences of one term, in the order the
//! documents were written.
//!
//! A posting says that the document version numbered `seq` has the word
//! numbered `member` of the list's group (see [`crate::text`]) `tf` times in
//! `field`, `upper` of them not written in lowercase. Sequence numbers
//! only grow (every write of a document takes a fresh one, see
//! [`crate::text::TextIndex`]), so a list is only ever appended to and each
//! posting is stored as small varints:
//!
//! ```text
//! varint(seq - previous seq)   -- 0 for another posting of the same version
//! varint(field << 5 | tf_small << 2 | has_upper << 1 | has_member)
//!                              -- tf_small = tf when 1..=7, else 0
//! [varint(tf)]                 -- when tf_small = 0
//! [varint(upper)]              -- when has_upper (upper > 0)
//! [varint(member)]             -- when has_member (member > 0)
//! ```
//!
//! A group's first word, written once in lowercase in one of the first four
//! fields of a document, costs two bytes when the previous posting is fewer
//! than 128 versions back: a quarter of a fixed-width posting.

/// One decoded posting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Posting {
    pub seq: u32,
    pub field: u16,
    /// Occurrences in the field (at least 1).
    pub tf: u32,
    /// Occurrences not written in lowercase (at most `tf`).
    pub upper: u32,
    /// Which word of the list's group.
    pub member: u32,
}

/// An append-only, varint-encoded list of postings in ascending `seq` order.
/// The owner keeps the last `seq` appended (it fits beside the owner's own
/// fields, where here it would cost 8 bytes of padding per list).
#[derive(Clone, Debug, Default)]
pub(crate) struct PostingList {
    bytes: Vec<u8>,
}

impl PostingList {
    /// Appends `p`; `previous` is the `seq` of the last posting appended (0
    /// for an empty list), and `p.seq` must not be below it.
    pub fn push(&mut self, previous: u32, p: Posting) {
        let delta = p.seq.saturating_sub(previous);
        put_varint(&mut self.bytes, delta);
        let small = if (1..=7).contains(&p.tf) { p.tf } else { 0 };
        let head = (u32::from(p.field) << 5)
            | (small << 2)
            | (u32::from(p.upper > 0) << 1)
            | u32::from(p.member > 0);
        put_varint(&mut self.bytes, head);
        if small == 0 {
            put_varint(&mut self.bytes, p.tf);
        }
        if p.upper > 0 {
            put_varint(&mut self.bytes, p.upper);
        }
        if p.member > 0 {
            put_varint(&mut self.bytes, p.member);
        }
    }

    /// An empty list with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> PostingList {
        PostingList {
            bytes: Vec::with_capacity(bytes),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// At least the number of postings (each takes two bytes or more).
    pub fn max_len(&self) -> usize {
        self.bytes.len() / 2
    }

    /// The postings in bytes `from..to`, where `from` is 0 or a byte length
    /// the list had when a posting was appended after `previous` 0 (a
    /// restart of the delta chain), and `to` is 0, such a length or the end.
    pub fn iter_range(&self, from: usize, to: usize) -> Postings<'_> {
        let to = to.min(self.bytes.len());
        Postings {
            bytes: &self.bytes[..to],
            at: from.min(to),
            seq: 0,
        }
    }

    /// Encoded length in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
    }

    /// Heap bytes held.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}

/// Iterator over a [`PostingList`].
pub(crate) struct Postings<'a> {
    bytes: &'a [u8],
    at: usize,
    seq: u32,
}

impl Iterator for Postings<'_> {
    type Item = Posting;

    #[inline(always)]
    fn next(&mut self) -> Option<Posting> {
        if self.at >= self.bytes.len() {
            return None;
        }
        self.seq = self.seq.wrapping_add(self.varint());
        let head = self.varint();
        let small = (head >> 2) & 7;
        let tf = if small == 0 { self.varint() } else { small };
        let upper = if head & 2 != 0 { self.varint() } else { 0 };
        let member = if head & 1 != 0 { self.varint() } else { 0 };
        Some(Posting {
            seq: self.seq,
            field: (head >> 5) as u16,
            tf,
            upper,
            member,
        })
    }
}

impl Postings<'_> {
    #[inline(always)]
    fn varint(&mut self) -> u32 {
        // Most values fit in one byte.
        if let Some(&b) = self.bytes.get(self.at) {
            if b < 0x80 {
                self.at += 1;
                return u32::from(b);
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> u32 {
        let mut value = 0u32;
        let mut shift = 0u32;
        while let Some(&b) = self.bytes.get(self.at) {
            self.at += 1;
            value |= u32::from(b & 0x7f).wrapping_shl(shift);
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        value
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(seq: u32, field: u16, tf: u32, upper: u32, member: u32) -> Posting {
        Posting {
            seq,
            field,
            tf,
            upper,
            member,
        }
    }

    #[test]
    fn round_trips_every_shape_of_posting() {
        let input = [
            posting(0, 0, 1, 0, 0),
            posting(0, 3, 7, 7, 1),
            posting(5, 7, 8, 0, 300),
            posting(200, 9, 1, 1, 0),
            posting(70_000, u16::MAX, u32::MAX, u32::MAX, u32::MAX),
            posting(u32::MAX, 1, 300, 2, 2),
        ];
        let mut list = PostingList::default();
        let mut previous = 0;
        for p in input {
            list.push(previous, p);
            previous = p.seq;
        }
        assert_eq!(list.iter_range(0, usize::MAX).collect::<Vec<_>>(), input);
    }

    #[test]
    fn a_range_reads_from_a_restart_of_the_delta_chain() {
        let mut list = PostingList::default();
        list.push(0, posting(10, 1, 1, 0, 0));
        list.push(10, posting(12, 1, 2, 0, 0));
        let split = list.len_bytes();
        list.push(0, posting(3, 0, 1, 0, 1));
        list.push(3, posting(4, 2, 9, 1, 0));
        let seqs = |from, to| list.iter_range(from, to).map(|p| p.seq).collect::<Vec<_>>();
        assert_eq!(seqs(0, split), [10, 12]);
        assert_eq!(seqs(split, usize::MAX), [3, 4]);
        assert_eq!(seqs(split, split), Vec::<u32>::new());
    }

    #[test]
    fn a_common_posting_takes_two_bytes() {
        let mut list = PostingList::default();
        for seq in 0..100u32 {
            list.push(seq.saturating_sub(1), posting(seq, 2, 1, 0, 0));
        }
        assert_eq!(list.bytes.len(), 200);
    }
}
