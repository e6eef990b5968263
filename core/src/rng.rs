//! A small seeded generator. `core` never touches the OS random source: the runtime
//! hands in a seed, and tests pass a fixed one so runs are reproducible.

/// SplitMix64: tiny, fast and statistically fine for ids and HNSW level draws.
/// Not for secrets (the JWT key comes from the runtime).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Unpredictable bytes for secrets a function asks for (tokens, lock
/// tokens, UUIDs): HMAC-SHA-256 of a counter under a key the runtime drew
/// from the OS. Knowing some outputs tells nothing of the others.
#[derive(Clone)]
pub struct KeyedRng {
    key: Vec<u8>,
    counter: u64,
}

impl std::fmt::Debug for KeyedRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedRng")
    }
}

impl KeyedRng {
    pub fn new(secret: &[u8], seed: u64) -> Self {
        let mut key = secret.to_vec();
        key.extend_from_slice(b"tidepool-keyed-rng");
        key.extend_from_slice(&seed.to_le_bytes());
        KeyedRng { key, counter: 0 }
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        use hmac::{Hmac, KeyInit, Mac};
        for chunk in out.chunks_mut(32) {
            self.counter += 1;
            let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key)
                .expect("HMAC takes any key length");
            m.update(&self.counter.to_le_bytes());
            let block = m.finalize().into_bytes();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}
