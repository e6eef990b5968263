//! The text of the index's words and stems, end to end in one buffer.
//!
//! A `Box<str>` per word costs 16 bytes in the word's entry and a heap
//! allocation (with the allocator's own overhead) for a few bytes of text.
//! Here a word is an 8-byte [`Key`] into one buffer. Words freed by a sweep
//! leave their bytes behind until the freed bytes outnumber the live ones;
//! then the buffer is rewritten with the live words only ([`Keys::compact`]).

/// Bits of a [`Key`] holding the length (the rest, the start: 256 TiB).
const LEN_BITS: u32 = 16;
/// The longest string stored: words are at most
/// [`crate::analyzer::MAX_TOKEN_BYTES`], and lowercase or stemmed forms a
/// few times that.
const MAX_KEY_BYTES: usize = (1 << LEN_BITS) - 1;

/// Freed bytes below which the buffer is never rewritten.
const MIN_COMPACT_BYTES: usize = 1 << 16;

/// A string of [`Keys`]: its start and length, packed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Key(u64);

impl Key {
    fn len(self) -> usize {
        (self.0 & ((1 << LEN_BITS) - 1)) as usize
    }

    /// Where the string lies in the buffer.
    fn range(self) -> std::ops::Range<usize> {
        let start = (self.0 >> LEN_BITS) as usize;
        start..start + self.len()
    }
}

/// The strings, end to end.
#[derive(Default)]
pub(crate) struct Keys {
    text: String,
    /// Bytes of `text` no key names any more.
    freed: usize,
}

impl Keys {
    /// Stores `s` (a longer one than [`MAX_KEY_BYTES`], which no word is,
    /// as an empty key).
    pub fn add(&mut self, s: &str) -> Key {
        if s.len() > MAX_KEY_BYTES {
            return Key::default();
        }
        let key = Key(((self.text.len() as u64) << LEN_BITS) | s.len() as u64);
        self.text.push_str(s);
        key
    }

    /// The string `key` names.
    #[inline]
    pub fn get(&self, key: Key) -> &str {
        self.text.get(key.range()).unwrap_or("")
    }

    /// The bytes of the string `key` names (compared without the character
    /// boundary checks of [`Keys::get`]).
    #[inline]
    pub fn bytes(&self, key: Key) -> &[u8] {
        self.text.as_bytes().get(key.range()).unwrap_or(&[])
    }

    /// Forgets `key` (its bytes stay until the next compaction).
    pub fn release(&mut self, key: Key) {
        self.freed += key.len();
    }

    /// Whether freed bytes outnumber live ones (and are worth a rewrite).
    pub fn wants_compaction(&self) -> bool {
        self.freed >= MIN_COMPACT_BYTES && self.freed * 2 > self.text.len()
    }

    /// Rewrites the buffer with the strings of `live` only, renaming them;
    /// every key not in `live` is invalid afterwards.
    pub fn compact<'k>(&mut self, live: impl Iterator<Item = &'k mut Key>) {
        let old = std::mem::take(&mut self.text);
        self.text = String::with_capacity(old.len().saturating_sub(self.freed));
        self.freed = 0;
        for key in live {
            *key = self.add(old.get(key.range()).unwrap_or(""));
        }
    }

    /// Trims the buffer to its length.
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.text.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_strings_across_a_compaction() {
        let mut keys = Keys::default();
        let words: Vec<String> = (0..20_000).map(|i| format!("word{i}")).collect();
        let mut named: Vec<Key> = words.iter().map(|w| keys.add(w)).collect();
        assert_eq!(keys.get(named[7]), "word7");
        // Free every other word: then freed bytes are about half.
        for k in named.iter().step_by(2) {
            keys.release(*k);
        }
        keys.release(named[1]);
        assert!(keys.wants_compaction());
        let before = keys.memory_bytes();
        keys.compact(named.iter_mut().skip(3).step_by(2));
        assert!(!keys.wants_compaction());
        assert!(keys.memory_bytes() < before * 2 / 3);
        for (i, k) in named.iter().enumerate().skip(3).step_by(2) {
            assert_eq!(keys.get(*k), words[i]);
        }
    }

    #[test]
    fn an_oversized_string_is_an_empty_key() {
        let mut keys = Keys::default();
        let k = keys.add(&"x".repeat(MAX_KEY_BYTES + 1));
        assert_eq!(keys.get(k), "");
        let k = keys.add(&"y".repeat(MAX_KEY_BYTES));
        assert_eq!(keys.get(k).len(), MAX_KEY_BYTES);
        let after = keys.add("after");
        assert_eq!(keys.get(after), "after");
    }
}
