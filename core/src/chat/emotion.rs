//! A small deterministic emotion classifier for EVA's `emotion` field: word
//! lists, first strongest match wins, `neutral` otherwise. It is what
//! answers carry when no model supplies an emotion (the offline provider,
//! and providers that do not tag their answers). Documented as such in the
//! README: it reads surface words, not meaning.

/// EVA's eight emotions (seed 004).
pub const EMOTIONS: [&str; 8] = [
    "neutral",
    "happy",
    "excited",
    "thoughtful",
    "curious",
    "confident",
    "concerned",
    "empathetic",
];

/// Cue words per emotion, checked in this order (ties go to the earlier).
const CUES: &[(&str, &[&str])] = &[
    (
        "empathetic",
        &[
            "sorry",
            "understand",
            "apologize",
            "apologies",
            "unfortunately",
            "feel",
        ],
    ),
    (
        "concerned",
        &[
            "error", "failed", "cannot", "can't", "warning", "problem", "risk", "careful", "unable",
        ],
    ),
    (
        "excited",
        &["amazing", "awesome", "wow", "fantastic", "incredible", "!"],
    ),
    (
        "happy",
        &[
            "glad", "great", "happy", "pleased", "welcome", "thanks", "thank",
        ],
    ),
    (
        "curious",
        &[
            "?",
            "wonder",
            "interesting",
            "curious",
            "which",
            "could you",
        ],
    ),
    (
        "confident",
        &[
            "certainly",
            "definitely",
            "sure",
            "exactly",
            "clearly",
            "found",
        ],
    ),
    (
        "thoughtful",
        &[
            "consider", "perhaps", "depends", "however", "might", "think",
        ],
    ),
];

/// The emotion a text reads as.
pub fn classify(text: &str) -> &'static str {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .collect();
    let mut best = ("neutral", 0usize);
    for (emotion, cues) in CUES {
        let hits = cues
            .iter()
            .map(|cue| {
                if cue.chars().all(|c| c.is_alphanumeric() || c == '\'') {
                    words.iter().filter(|w| *w == cue).count()
                } else {
                    lower.matches(cue).count()
                }
            })
            .sum::<usize>();
        if hits > best.1 {
            best = (emotion, hits);
        }
    }
    best.0
}

/// What an EVA conversation's system prompt asks of a real model, so the
/// emotion comes from the model: a leading tag the turn strips
/// (`TagReader`).
pub const INSTRUCTION: &str = "Begin every answer with the emotion it expresses, as one tag \
in square brackets from this list: [neutral] [happy] [excited] [thoughtful] [curious] \
[confident] [concerned] [empathetic]. Then write the answer itself.";

/// The longest prefix that may still become a tag (`[empathetic]` plus
/// spaces); past it without a tag, the text is the answer.
const MAX_TAG: usize = 24;

/// Reads a leading `[emotion]` tag off a streamed answer: holds text back
/// only while it could still be a tag, then passes everything through.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagReader {
    held: String,
    decided: bool,
}

impl TagReader {
    /// More of the answer: the emotion, if the tag just completed, and the
    /// text that can go out now.
    pub fn feed(&mut self, text: &str) -> (Option<&'static str>, String) {
        if self.decided {
            return (None, text.to_string());
        }
        self.held.push_str(text);
        let start = self.held.trim_start();
        if start.is_empty() {
            return (None, String::new());
        }
        if !start.starts_with('[') {
            return (None, self.release());
        }
        if let Some(end) = start.find(']') {
            let name = start[1..end].trim().to_ascii_lowercase();
            if let Some(e) = EMOTIONS.iter().find(|e| **e == name) {
                let rest = start[end + 1..].trim_start().to_string();
                self.held.clear();
                self.decided = true;
                return (Some(e), rest);
            }
            return (None, self.release());
        }
        if self.held.len() > MAX_TAG {
            return (None, self.release());
        }
        (None, String::new())
    }

    /// The answer ended: whatever was held back.
    pub fn finish(&mut self) -> String {
        self.release()
    }

    fn release(&mut self) -> String {
        self.decided = true;
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_tag_split_across_tokens_is_read_and_stripped() {
        let mut r = TagReader::default();
        assert_eq!(r.feed(" [Cur"), (None, String::new()));
        assert_eq!(r.feed("ious]"), (Some("curious"), String::new()));
        assert_eq!(r.feed(" Let me"), (None, " Let me".into()));
        let mut r = TagReader::default();
        assert_eq!(r.feed("[happy] Hi"), (Some("happy"), "Hi".into()));
    }

    #[test]
    fn anything_else_passes_through_untouched() {
        let mut r = TagReader::default();
        assert_eq!(r.feed("The price"), (None, "The price".into()));
        assert_eq!(r.feed(" is 99"), (None, " is 99".into()));
        let mut r = TagReader::default();
        assert_eq!(r.feed("[1] first"), (None, "[1] first".into()));
        let mut r = TagReader::default();
        assert_eq!(
            r.feed("[a very long bracketed aside"),
            (None, "[a very long bracketed aside".into())
        );
        let mut r = TagReader::default();
        assert_eq!(r.feed("[hap"), (None, String::new()));
        assert_eq!(r.finish(), "[hap");
    }

    #[test]
    fn surface_cues_pick_an_emotion_and_plain_text_is_neutral() {
        assert_eq!(classify("The price is 42."), "neutral");
        assert_eq!(
            classify("I'm sorry, I understand how that feels."),
            "empathetic"
        );
        assert_eq!(classify("The import failed with an error."), "concerned");
        assert_eq!(classify("Glad to help, thanks"), "happy");
        assert_eq!(classify("Which one do you mean?"), "curious");
        assert!(EMOTIONS.contains(&classify("Wow! Amazing!")));
        assert_eq!(classify("Wow! Amazing!"), "excited");
    }
}
