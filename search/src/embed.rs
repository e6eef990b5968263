//! A deterministic, offline text embedder (feature hashing). Not a neural model.
//!
//! [`embed`] maps text to a vector by the "hashing trick": it lowercases and splits
//! the text into Unicode words (no stemming, any language), then adds, into
//! `dimension` buckets chosen by a fixed 64-bit hash (FNV-1a with a SplitMix64
//! finaliser, stable across platforms and Rust versions), with a sign also taken
//! from the hash so collisions cancel out on average:
//!
//! * each word, weight 1;
//! * each pair of adjacent words, weight 0.5;
//! * the character trigrams of each word padded with boundary marks (`^ca`, `cat`,
//!   `at$`), together weighing 0.5 per word (each `0.5 / sqrt(count)`), so that
//!   spelling variants and inflections (`index` / `indexes`) land close.
//!
//! The result is L2-normalised, so cosine similarity is a dot product; texts that
//! share words (and, less, word pairs and word pieces) are close. It knows nothing
//! of synonyms or meaning: `car` and `automobile` are unrelated to it. It exists so
//! that vector and hybrid search work on a machine with no model and no network;
//! real embeddings come from a configured provider.

use crate::analyzer::Analyzer;

const WORD: u8 = b'w';
const PAIR: u8 = b'p';
const TRIGRAM: u8 = b't';

fn hash(kind: u8, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    feed(kind);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            feed(0xff); // not valid UTF-8: cannot occur inside a part
        }
        part.iter().copied().for_each(&mut feed);
    }
    // SplitMix64 finaliser: FNV's low bits alone are poorly mixed.
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

fn add(v: &mut [f32], h: u64, weight: f32) {
    let bucket = (h % v.len() as u64) as usize;
    let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
    v[bucket] += sign * weight;
}

/// Embeds `text` into a unit vector of `dimension` components (see the module
/// docs). Deterministic. Text with no words gives the zero vector; `dimension` 0
/// gives an empty vector.
pub fn embed(text: &str, dimension: usize) -> Vec<f32> {
    let mut v = vec![0f32; dimension];
    if dimension == 0 {
        return v;
    }
    let analyzer = Analyzer::new(None);
    let words = analyzer.words(text);
    let mut padded: Vec<char> = Vec::new();
    let mut buf = [0u8; 12];
    for (i, (_, word)) in words.iter().enumerate() {
        add(&mut v, hash(WORD, &[word.as_bytes()]), 1.0);
        if let Some((_, next)) = words.get(i + 1) {
            add(&mut v, hash(PAIR, &[word.as_bytes(), next.as_bytes()]), 0.5);
        }
        padded.clear();
        padded.push('^');
        padded.extend(word.chars());
        padded.push('$');
        let count = padded.len().saturating_sub(2).max(1);
        let weight = 0.5 / (count as f32).sqrt();
        for tri in padded.windows(3) {
            let mut len = 0;
            for c in tri {
                len += c.encode_utf8(&mut buf[len..]).len();
            }
            add(&mut v, hash(TRIGRAM, &[&buf[..len]]), weight);
        }
    }
    crate::vector::normalize(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::dot;

    #[test]
    fn deterministic_unit_vectors() {
        let a = embed("The quick brown fox", 64);
        assert_eq!(a, embed("The quick brown fox", 64));
        assert_eq!(a, embed("the QUICK, brown fox!", 64));
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        assert_eq!(a.len(), 64);
        // Pinned: stored embeddings must stay comparable across versions.
        let pinned = [
            -0.20126678,
            -0.20126678,
            0.0,
            0.0,
            0.20126678,
            0.0,
            0.0,
            0.93727005,
        ];
        let got = embed("tidepool", 8);
        assert!(
            got.iter().zip(pinned).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?}"
        );
    }

    #[test]
    fn shared_words_are_close() {
        let d = 256;
        let q = embed("rust database engine", d);
        let near = embed("an embedded database engine written in rust", d);
        let far = embed("chocolate cake recipe with strawberries", d);
        let inflected = embed("databases engines", d);
        assert!(dot(&q, &near) > 0.4, "{}", dot(&q, &near));
        assert!(dot(&q, &far).abs() < 0.2, "{}", dot(&q, &far));
        assert!(dot(&q, &inflected) > dot(&q, &far) + 0.1);
    }

    #[test]
    fn edge_cases() {
        assert!(embed("anything", 0).is_empty());
        assert!(embed("", 16).iter().all(|&x| x == 0.0));
        assert!(embed("  ...  ", 16).iter().all(|&x| x == 0.0));
        let one = embed("日本語のテキスト", 1);
        assert_eq!(one.len(), 1);
        assert!((one[0].abs() - 1.0).abs() < 1e-6 || one[0] == 0.0);
        assert!(embed(&"word ".repeat(10_000), 32)
            .iter()
            .all(|x| x.is_finite()));
    }
}
