//! Text analysis: Unicode word segmentation, case folding and Snowball stemming.
//!
//! The pipeline for one piece of text is:
//!
//! 1. split into words with the Unicode word-boundary rules of UAX #29
//!    (`unicode-segmentation`'s `unicode_words`: punctuation and spaces are dropped,
//!    `can't` and `3.14` stay one word);
//! 2. drop words longer than [`MAX_TOKEN_BYTES`] (base64 blobs, hashes);
//! 3. fold case with Unicode lowercasing (`str::to_lowercase`; this is the full
//!    lowercase mapping, not the full case-folding table, so `ß` stays `ß`);
//! 4. optionally stem the folded word with the Snowball stemmer of the analyzer's
//!    language.
//!
//! Diacritics are kept (`café` and `cafe` are different terms).

use std::borrow::Cow;
use std::fmt;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation;

use crate::TextError;

/// Words longer than this many bytes are not indexed (nor searched).
pub const MAX_TOKEN_BYTES: usize = 64;

/// A stemming language (one of the Snowball stemmers of `rust-stemmers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Language(Algorithm);

/// Every accepted name, in lowercase: the English name and the ISO 639-1 code.
const LANGUAGES: &[(&str, &str, Algorithm)] = &[
    ("arabic", "ar", Algorithm::Arabic),
    ("danish", "da", Algorithm::Danish),
    ("dutch", "nl", Algorithm::Dutch),
    ("english", "en", Algorithm::English),
    ("finnish", "fi", Algorithm::Finnish),
    ("french", "fr", Algorithm::French),
    ("german", "de", Algorithm::German),
    ("greek", "el", Algorithm::Greek),
    ("hungarian", "hu", Algorithm::Hungarian),
    ("italian", "it", Algorithm::Italian),
    ("norwegian", "no", Algorithm::Norwegian),
    ("portuguese", "pt", Algorithm::Portuguese),
    ("romanian", "ro", Algorithm::Romanian),
    ("russian", "ru", Algorithm::Russian),
    ("spanish", "es", Algorithm::Spanish),
    ("swedish", "sv", Algorithm::Swedish),
    ("tamil", "ta", Algorithm::Tamil),
    ("turkish", "tr", Algorithm::Turkish),
];

impl Language {
    /// English (the engine's default stemming language).
    pub const ENGLISH: Language = Language(Algorithm::English);

    /// Looks a language up by English name (`"english"`, `"French"`) or ISO 639-1
    /// code (`"en"`, `"fr"`), ignoring ASCII case and surrounding spaces.
    pub fn from_name(name: &str) -> Result<Language, TextError> {
        let wanted = name.trim();
        LANGUAGES
            .iter()
            .find(|(long, code, _)| {
                wanted.eq_ignore_ascii_case(long) || wanted.eq_ignore_ascii_case(code)
            })
            .map(|&(_, _, algorithm)| Language(algorithm))
            .ok_or_else(|| TextError::UnknownLanguage(name.to_string()))
    }

    /// The English name of the language, lowercase (`"english"`).
    pub fn name(self) -> &'static str {
        LANGUAGES
            .iter()
            .find(|(_, _, algorithm)| *algorithm == self.0)
            .map_or("unknown", |(long, _, _)| long)
    }

    /// The names [`Language::from_name`] accepts (English names).
    pub fn names() -> impl Iterator<Item = &'static str> {
        LANGUAGES.iter().map(|(long, _, _)| *long)
    }
}

/// Turns text into terms. Cheap to build; one per [`crate::TextIndex`].
pub struct Analyzer {
    language: Option<Language>,
    stemmer: Option<Stemmer>,
}

impl fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Analyzer")
            .field("language", &self.language.map(Language::name))
            .finish()
    }
}

impl Clone for Analyzer {
    fn clone(&self) -> Self {
        Analyzer::new(self.language)
    }
}

impl Default for Analyzer {
    /// English stemming.
    fn default() -> Self {
        Analyzer::new(Some(Language::ENGLISH))
    }
}

impl Analyzer {
    /// An analyzer that stems with `language`, or never stems with `None`.
    pub fn new(language: Option<Language>) -> Analyzer {
        Analyzer {
            language,
            stemmer: language.map(|l| Stemmer::create(l.0)),
        }
    }

    /// An analyzer for a language name (see [`Language::from_name`]).
    pub fn for_language(name: &str) -> Result<Analyzer, TextError> {
        Ok(Analyzer::new(Some(Language::from_name(name)?)))
    }

    /// The stemming language, if any.
    pub fn language(&self) -> Option<Language> {
        self.language
    }

    /// Calls `f(raw, folded)` for every word of `text`, in order. `raw` is the word
    /// as written, `folded` its lowercase form.
    pub fn for_each_word<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str, Cow<'t, str>)) {
        each_token(text, |word, _| f(word, fold(word)));
    }

    /// `for_each_word` for a caller that looks the lowercase form up before
    /// it keeps it (an index counting words): `f(raw, lowered)` gets the
    /// lowercase form only when it differs from `raw`, in a buffer reused from
    /// word to word, so a word written with capitals costs no allocation.
    pub fn for_each_word_lowered<'t>(
        &self,
        text: &'t str,
        mut f: impl FnMut(&'t str, Option<&str>),
    ) {
        let mut buf = String::new();
        each_token(text, |word, case| match case {
            Case::Lower => f(word, None),
            Case::AsciiUpper => {
                buf.clear();
                buf.push_str(word);
                buf.make_ascii_lowercase();
                f(word, Some(&buf));
            }
            Case::Unknown => match fold(word) {
                Cow::Borrowed(_) => f(word, None),
                Cow::Owned(lower) => f(word, Some(&lower)),
            },
        });
    }

    /// The words of `text` as `(raw, folded)` pairs.
    pub fn words<'t>(&self, text: &'t str) -> Vec<(&'t str, Cow<'t, str>)> {
        let mut out = Vec::new();
        self.for_each_word(text, |raw, folded| out.push((raw, folded)));
        out
    }

    /// The stem of an already folded word (the word itself without a stemmer).
    pub fn stem<'w>(&self, folded: &'w str) -> Cow<'w, str> {
        match &self.stemmer {
            Some(stemmer) => stemmer.stem(folded),
            None => Cow::Borrowed(folded),
        }
    }
}

/// What the tokenizer knows of a word's case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// ASCII, no capital.
    Lower,
    /// ASCII, with a capital.
    AsciiUpper,
    /// Not looked at (a word of non-ASCII text).
    Unknown,
}

/// Calls `f` for every word of `text` no longer than [`MAX_TOKEN_BYTES`], in
/// order: UAX #29 words, found by `ascii_words` in the ASCII stretches of the
/// text and by `unicode_words` around its other characters.
///
/// The text is cut only after an ASCII whitespace byte followed by an ASCII
/// byte other than a space: no word-boundary rule joins across that point
/// (spaces join only further spaces, and the combining marks that could
/// attach to whitespace are not ASCII), nor looks back across it, so each
/// piece splits as it would within the whole. One accented letter in a long
/// page no longer sends the whole page through the per-character tables.
fn each_token<'t>(text: &'t str, mut f: impl FnMut(&'t str, Case)) {
    let mut rest = text;
    loop {
        let bytes = rest.as_bytes();
        // An ASCII stretch to `start`, then (when there is a non-ASCII byte)
        // the piece around it to `end`: the last cut before it and the
        // first after it.
        let (start, end) = match first_non_ascii(bytes) {
            None => (bytes.len(), bytes.len()),
            Some(first) => {
                let cut = |i: usize| {
                    bytes[i - 1].is_ascii_whitespace() && bytes[i].is_ascii() && bytes[i] != b' '
                };
                let start = (1..first).rev().find(|&i| cut(i)).unwrap_or(0);
                let end = (first + 1..bytes.len())
                    .find(|&i| cut(i))
                    .unwrap_or(bytes.len());
                (start, end)
            }
        };
        ascii_tokens(&rest[..start], &mut f);
        if start == bytes.len() {
            return;
        }
        for word in rest[start..end].unicode_words() {
            if word.len() <= MAX_TOKEN_BYTES {
                f(word, Case::Unknown);
            }
        }
        rest = &rest[end..];
    }
}

/// The position of the first non-ASCII byte, checked a block at a time.
fn first_non_ascii(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    for block in bytes.chunks(64) {
        if !block.is_ascii() {
            return block.iter().position(|b| !b.is_ascii()).map(|p| at + p);
        }
        at += block.len();
    }
    None
}

/// [`each_token`] over ASCII text.
fn ascii_tokens<'t>(text: &'t str, f: &mut impl FnMut(&'t str, Case)) {
    ascii_words(text, &mut |word, upper| {
        if word.len() <= MAX_TOKEN_BYTES {
            f(word, if upper { Case::AsciiUpper } else { Case::Lower });
        }
    });
}

/// Byte classes of ASCII for [`ascii_words`].
const JOINS: u8 = 1;
const LETTER: u8 = 2;
const DIGIT: u8 = 4;
const UPPER: u8 = 8;
/// Joins two letters (`:`, `.`, `'`)...
const MID_LETTER: u8 = 16;
/// ... or two digits (`,`, `;`, `.`, `'`).
const MID_NUM: u8 = 32;

/// The class bits of every byte (0 for non-ASCII bytes).
const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        table[b] = if c.is_ascii_uppercase() {
            JOINS | LETTER | UPPER
        } else if c.is_ascii_lowercase() {
            JOINS | LETTER
        } else if c.is_ascii_digit() {
            JOINS | DIGIT
        } else {
            match c {
                b'_' => JOINS,
                b':' => MID_LETTER,
                b'.' | b'\'' => MID_LETTER | MID_NUM,
                b',' | b';' => MID_NUM,
                _ => 0,
            }
        };
        b += 1;
    }
    table
};

/// The words of an ASCII `text`, exactly as `unicode_words` finds them, at a
/// fraction of the cost (one table lookup per byte), each with whether it
/// has a capital. UAX #29 restricted to ASCII: letters, digits and `_`
/// always join (WB5, WB8-WB10, WB13a-b); `:`, `.` and `'` join two letters
/// (WB6-WB7); `,`, `;`, `.` and `'` join two digits (WB11-WB12); everything
/// else breaks. A word has at least one letter or digit (a run of `_` is not
/// one).
#[inline(always)]
fn ascii_words<'t>(text: &'t str, f: &mut impl FnMut(&'t str, bool)) {
    let bytes = text.as_bytes();
    let class = |i: usize| bytes.get(i).map_or(0, |&b| CLASSES[usize::from(b)]);
    let mut i = 0;
    while i < bytes.len() {
        let mut c = class(i);
        if c & JOINS == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut seen = 0;
        loop {
            seen |= c;
            let next = class(i + 1);
            if next & JOINS != 0 {
                i += 1;
                c = next;
                continue;
            }
            if next & (MID_LETTER | MID_NUM) != 0 {
                let after = class(i + 2);
                if (c & after & LETTER != 0 && next & MID_LETTER != 0)
                    || (c & after & DIGIT != 0 && next & MID_NUM != 0)
                {
                    i += 2;
                    c = after;
                    continue;
                }
            }
            i += 1;
            break;
        }
        if seen & (LETTER | DIGIT) != 0 {
            f(&text[start..i], seen & UPPER != 0);
        }
    }
}

/// Unicode lowercase, borrowing when the word is already lowercase.
pub fn fold(word: &str) -> Cow<'_, str> {
    let lower = if word.is_ascii() {
        !word.bytes().any(|b| b.is_ascii_uppercase())
    } else {
        !word.chars().any(|c| c.is_uppercase())
    };
    if lower {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(word.to_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: &[&str]) {
        let a = Analyzer::default();
        let got: Vec<String> = a
            .words(text)
            .into_iter()
            .map(|(_, f)| a.stem(&f).into_owned())
            .collect();
        assert_eq!(got, expect, "analyzing {text:?}");
    }

    #[test]
    fn lowered_words_are_the_folded_words() {
        let a = Analyzer::default();
        let long = "X".repeat(MAX_TOKEN_BYTES + 1);
        for text in [
            "The QUICK brown Fox, don't e.g. 3.14 A_b",
            "ÉCOLE Straße naïve ΣΊΣΥΦΟΣ déjà",
            &format!("keep {long} Drop"),
            "",
        ] {
            let folded: Vec<(String, Option<String>)> = a
                .words(text)
                .into_iter()
                .map(|(raw, f)| {
                    let lowered = matches!(f, Cow::Owned(_)).then(|| f.into_owned());
                    (raw.to_string(), lowered)
                })
                .collect();
            let mut lowered = Vec::new();
            a.for_each_word_lowered(text, |raw, l| {
                lowered.push((raw.to_string(), l.map(str::to_string)));
            });
            assert_eq!(lowered, folded, "{text:?}");
        }
    }

    #[test]
    fn analysis_cases() {
        check("", &[]);
        check("  ,;!  ", &[]);
        check("Running runners RUN", &["run", "runner", "run"]);
        check("Hello, World!", &["hello", "world"]);
        check("Straße ÉCOLE", &["straße", "école"]);
        check("can't stop 3.14", &["can't", "stop", "3.14"]);
        check("日本語 テキスト", &["日", "本", "語", "テキスト"]);
        check(&"x".repeat(MAX_TOKEN_BYTES + 1), &[]);
    }

    /// `ascii_words` must split exactly as UAX #29 does: checked against
    /// `unicode_words` on strings of the characters its rules treat apart.
    #[test]
    fn ascii_words_split_as_unicode_words_does() {
        let alphabet = b"aZ09_:.',; \n\t-/@\"!#xY5";
        let mut rng = crate::rng::SplitMix64::new(0x9e37_79b9_7f4a_7c15u64);
        let mut next = || rng.next_u64();
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect();
            let mut ours = Vec::new();
            ascii_words(&text, &mut |w, upper| {
                assert_eq!(upper, w.bytes().any(|b| b.is_ascii_uppercase()), "{w:?}");
                ours.push(w)
            });
            let theirs: Vec<&str> = text.unicode_words().collect();
            assert_eq!(ours, theirs, "splitting {text:?}");
        }
        let mut words = Vec::new();
        ascii_words(
            "can't a.b 3.14 1,000 a:b __x__ a_.b x1.5 a..b 1:2 ",
            &mut |w, _| words.push(w),
        );
        assert_eq!(
            words,
            [
                "can't", "a.b", "3.14", "1,000", "a:b", "__x__", "a_", "b", "x1.5", "a", "b", "1",
                "2"
            ]
        );
    }

    /// Text with other characters is cut into pieces around them: the words
    /// must be exactly `unicode_words`' over the whole text, whatever sits
    /// next to the cuts (combining marks, joiners, flags, CR LF, apostrophes).
    #[test]
    fn mixed_text_splits_as_unicode_words_does() {
        let alphabet: Vec<char> = "aZ09_:.',; \n\r\t-\u{a0}\u{301}\u{200d}\u{93f}\u{2019}éß日🇫👍"
            .chars()
            .collect();
        let mut rng = crate::rng::SplitMix64::new(0x2545_f491_4f6c_dd1du64);
        let mut next = || rng.next_u64();
        for _ in 0..20_000 {
            let len = (next() % 32) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut ours = Vec::new();
            each_token(&text, |w, case| {
                if case != Case::Unknown {
                    let upper = w.bytes().any(|b| b.is_ascii_uppercase());
                    assert_eq!(case == Case::AsciiUpper, upper, "{w:?} in {text:?}");
                }
                ours.push(w)
            });
            let theirs: Vec<&str> = text.unicode_words().collect();
            assert_eq!(ours, theirs, "splitting {text:?}");
        }
    }

    #[test]
    fn languages() {
        assert_eq!(Language::from_name("English").unwrap(), Language::ENGLISH);
        assert_eq!(Language::from_name(" fr ").unwrap().name(), "french");
        assert_eq!(
            Language::from_name("klingon"),
            Err(TextError::UnknownLanguage("klingon".into()))
        );
        assert_eq!(Language::names().count(), 18);
        let fr = Analyzer::for_language("french").unwrap();
        assert_eq!(fr.stem("continuellement"), "continuel");
        assert!(Analyzer::for_language("").is_err());
        let none = Analyzer::new(None);
        assert_eq!(none.stem("running"), "running");
    }
}
