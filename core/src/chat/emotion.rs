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

#[cfg(test)]
mod tests {
    use super::*;

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
