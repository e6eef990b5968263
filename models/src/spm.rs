//! SentencePiece tokenization as a GGUF file carries it (`tokenizer.ggml.*`:
//! pieces, scores, kinds), for the chat model: GGUF chat models ship no
//! `tokenizer.json`, so this reads the vocabulary the file itself holds.
//!
//! The rule is SentencePiece's BPE as llama.cpp applies it: spaces become
//! `▁`, the text starts as single characters, and the adjacent pair whose
//! concatenation is a piece with the highest score merges first (leftmost on
//! ties) until no pair is a piece; a leftover character that is no piece is
//! spelled with byte pieces (`<0x41>`), or the unknown piece without them.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The SentencePiece word-boundary mark that stands for a space.
const SPACE: char = '\u{2581}';

/// A piece's kind, as GGUF numbers them.
const KIND_CONTROL: i32 = 3;
const KIND_BYTE: i32 = 6;

#[derive(Debug)]
pub struct SentencePiece {
    pieces: Vec<String>,
    scores: Vec<f32>,
    kinds: Vec<i32>,
    ids: HashMap<String, u32>,
    /// The piece for each byte value (`<0xXX>`), when the vocabulary has one.
    bytes: Vec<Option<u32>>,
    unknown: u32,
}

impl SentencePiece {
    /// `kinds` may be empty (every piece normal, byte pieces found by name).
    pub fn new(pieces: Vec<String>, scores: Vec<f32>, kinds: Vec<i32>, unknown: u32) -> Self {
        let ids: HashMap<String, u32> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        let bytes = (0..=255u8)
            .map(|b| ids.get(&format!("<0x{b:02X}>")).copied())
            .collect();
        SentencePiece {
            pieces,
            scores,
            kinds,
            ids,
            bytes,
            unknown,
        }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The id of a piece spelled exactly so (control pieces included).
    pub fn id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    fn kind(&self, id: u32) -> i32 {
        self.kinds.get(id as usize).copied().unwrap_or(1)
    }

    /// Control pieces (`<bos>`, `<end_of_turn>`) are never written out.
    pub fn is_control(&self, id: u32) -> bool {
        self.kind(id) == KIND_CONTROL
    }

    /// Plain text to ids. Control pieces are never produced from text, so a
    /// user cannot type `<end_of_turn>` into the prompt's structure.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = text.replace(' ', &SPACE.to_string());
        let mut syms: Vec<Symbol> = Vec::new();
        for (i, c) in text.char_indices() {
            let n = syms.len();
            syms.push(Symbol {
                start: i,
                end: i + c.len_utf8(),
                prev: n.checked_sub(1),
                next: None,
            });
            if n > 0 {
                syms[n - 1].next = Some(n);
            }
        }
        let mut heap = BinaryHeap::new();
        for left in 1..syms.len() {
            self.offer(&text, &syms, left - 1, &mut heap);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            // Stale: one side merged since this pair was offered.
            if syms[l].next != Some(r) || syms[l].end - syms[l].start + syms[r].len() != b.len {
                continue;
            }
            syms[l].end = syms[r].end;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            syms[r].start = syms[r].end; // gone
            syms[r].next = None;
            if let Some(p) = syms[l].prev {
                self.offer(&text, &syms, p, &mut heap);
            }
            self.offer(&text, &syms, l, &mut heap);
        }
        let mut out = Vec::new();
        let mut at = (!syms.is_empty()).then_some(0);
        while let Some(i) = at {
            let piece = &text[syms[i].start..syms[i].end];
            match self.ids.get(piece) {
                Some(&id) if !self.is_control(id) => out.push(id),
                _ => out.extend(
                    piece
                        .bytes()
                        .map(|b| self.bytes[b as usize].unwrap_or(self.unknown)),
                ),
            }
            at = syms[i].next;
        }
        out
    }

    /// Offers the pair starting at `left` for merging, if it is a piece.
    fn offer(&self, text: &str, syms: &[Symbol], left: usize, heap: &mut BinaryHeap<Bigram>) {
        let Some(right) = syms[left].next else {
            return;
        };
        let joined = &text[syms[left].start..syms[right].end];
        if let Some(&id) = self.ids.get(joined) {
            if self.is_control(id) {
                return;
            }
            heap.push(Bigram {
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                right,
                len: joined.len(),
            });
        }
    }

    /// The bytes a piece stands for in text: a byte piece its byte, a
    /// control piece nothing, any other its spelling with `▁` as a space.
    pub fn piece_bytes(&self, id: u32) -> Cow<'_, [u8]> {
        let Some(piece) = self.pieces.get(id as usize) else {
            return Cow::Borrowed(&[]);
        };
        match self.kind(id) {
            KIND_CONTROL => Cow::Borrowed(&[]),
            KIND_BYTE => {
                match u8::from_str_radix(piece.trim_start_matches("<0x").trim_end_matches('>'), 16)
                {
                    Ok(b) => Cow::Owned(vec![b]),
                    Err(_) => Cow::Borrowed(&[]),
                }
            }
            _ if piece.contains(SPACE) => Cow::Owned(piece.replace(SPACE, " ").into_bytes()),
            _ => Cow::Borrowed(piece.as_bytes()),
        }
    }
}

#[derive(Debug)]
struct Symbol {
    start: usize,
    end: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Symbol {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// A candidate merge; the heap pops the highest score, then the leftmost.
#[derive(Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Turns a stream of piece bytes into text, holding back a character that
/// is split across pieces until it is whole.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text that is complete after `bytes`.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or(""));
                    match e.error_len() {
                        // A character still arriving: keep its bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end (an unfinished character is replaced).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> SentencePiece {
        let mut pieces: Vec<(String, f32, i32)> = vec![
            ("<unk>".into(), 0.0, 2),
            ("<bos>".into(), 0.0, 3),
            ("<eot>".into(), 0.0, 3),
        ];
        for b in 0..=255u8 {
            pieces.push((format!("<0x{b:02X}>"), 0.0, 6));
        }
        for (p, s) in [
            ("h", -1.0),
            ("e", -1.0),
            ("l", -1.0),
            ("o", -1.0),
            ("▁", -1.0),
            ("w", -1.0),
            ("r", -1.0),
            ("d", -1.0),
            ("he", -2.0),
            ("ll", -3.0),
            ("hell", -2.5),
            ("hello", -1.5),
            ("▁w", -4.0),
            ("or", -3.5),
            ("▁wor", -3.0),
            ("▁world", -2.0),
            ("ld", -5.0),
            ("▁worl", -6.0),
        ] {
            pieces.push((p.into(), s, 1));
        }
        let (p, rest): (Vec<String>, Vec<(f32, i32)>) =
            pieces.into_iter().map(|(p, s, k)| (p, (s, k))).unzip();
        let (s, k) = rest.into_iter().unzip();
        SentencePiece::new(p, s, k, 0)
    }

    fn pieces(v: &SentencePiece, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&i| v.pieces[i as usize].clone()).collect()
    }

    #[test]
    fn merges_by_score_into_whole_pieces() {
        let v = vocab();
        assert_eq!(pieces(&v, &v.encode("hello world")), ["hello", "▁world"]);
        // No `hello▁` piece: the space starts the next word.
        assert_eq!(pieces(&v, &v.encode("hell")), ["hell"]);
    }

    #[test]
    fn unknown_characters_are_spelled_in_bytes() {
        let v = vocab();
        let ids = v.encode("hé");
        assert_eq!(pieces(&v, &ids), ["h", "<0xC3>", "<0xA9>"]);
        let mut text = Utf8Stream::default();
        let mut out = String::new();
        for id in ids {
            out.push_str(&text.push(&v.piece_bytes(id)));
        }
        assert_eq!(out, "hé");
    }

    #[test]
    fn control_pieces_never_come_from_text_or_go_to_it() {
        let v = vocab();
        let ids = v.encode("<eot>");
        assert!(!ids.contains(&v.id("<eot>").unwrap()));
        assert!(v.piece_bytes(v.id("<bos>").unwrap()).is_empty());
    }

    #[test]
    fn decoding_turns_the_mark_back_into_spaces() {
        let v = vocab();
        let ids = v.encode("hello world");
        let text: Vec<u8> = ids
            .iter()
            .flat_map(|&i| v.piece_bytes(i).to_vec())
            .collect();
        assert_eq!(text, b"hello world");
    }

    #[test]
    fn a_character_split_across_pieces_waits_until_whole() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xE2, 0x82]), "a");
        assert_eq!(s.push(&[0xAC, b'!']), "€!");
        assert_eq!(s.push(&[0xFF, b'x']), "\u{FFFD}x");
        assert_eq!(s.push(&[0xE2]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }
}
