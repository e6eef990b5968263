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
        for word in text.unicode_words() {
            if word.len() > MAX_TOKEN_BYTES {
                continue;
            }
            f(word, fold(word));
        }
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
