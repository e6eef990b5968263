//! Encoding and crypto stages (spec G2, "Crypto and encoding") that need no
//! more than the HMAC, SHA-2 and base64 crates core already uses. Random
//! bytes come from the caller (the server's keyed generator), never from a
//! clock or the OS here.

use crate::error::{Error, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value as J};
use sha1::Sha1;
use sha2::{Sha256, Sha384, Sha512};

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A version 4 UUID from 16 random bytes.
pub fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `RandomToken`'s encodings.
pub fn encode_token(bytes: &[u8], encoding: Option<&str>) -> Result<String> {
    match encoding.unwrap_or("hex") {
        "hex" => Ok(hex(bytes)),
        "base64" => Ok(STANDARD.encode(bytes)),
        "base64url" => Ok(URL_SAFE_NO_PAD.encode(bytes)),
        other => Err(Error::invalid(format!(
            "unknown encoding `{other}` (hex, base64 or base64url)"
        ))),
    }
}

pub fn base64_encode(input: &str, url_safe: bool) -> String {
    if url_safe {
        URL_SAFE_NO_PAD.encode(input)
    } else {
        STANDARD.encode(input)
    }
}

/// Decoded UTF-8 text, or `null` when the input is not valid.
pub fn base64_decode(input: &str, url_safe: bool) -> J {
    let bytes = if url_safe {
        URL_SAFE_NO_PAD.decode(input.trim_end_matches('='))
    } else {
        STANDARD.decode(input)
    };
    bytes
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map_or(J::Null, J::String)
}

pub fn hex_decode(input: &str) -> J {
    unhex(input)
        .and_then(|b| String::from_utf8(b).ok())
        .map_or(J::Null, J::String)
}

/// A URL slug: lower-case ASCII letters and digits joined by `-`, accents
/// folded (`"Héllo World"` is `"hello-world"`).
pub fn slugify(input: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut out = String::with_capacity(input.len());
    let mut dash = false;
    for c in input.nfd() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        } else if unicode_normalization::char::is_combining_mark(c) {
            continue;
        } else {
            dash = true;
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Sha {
    S1,
    S256,
    S384,
    S512,
}

impl Sha {
    /// The JWT `alg` name (SHA-1 is TOTP's only: `sha` never picks it for a JWT).
    fn jwt_name(self) -> &'static str {
        match self {
            Sha::S1 => "HS1",
            Sha::S256 => "HS256",
            Sha::S384 => "HS384",
            Sha::S512 => "HS512",
        }
    }
}

fn sha(name: Option<&str>, jwt: bool) -> Result<Sha> {
    let n = name.unwrap_or(if jwt { "HS256" } else { "sha256" });
    match n.to_ascii_lowercase().as_str() {
        "sha256" | "hs256" => Ok(Sha::S256),
        "sha384" | "hs384" => Ok(Sha::S384),
        "sha512" | "hs512" => Ok(Sha::S512),
        _ => Err(Error::invalid(format!(
            "unsupported algorithm `{n}` ({})",
            if jwt {
                "HS256, HS384 or HS512"
            } else {
                "sha256, sha384 or sha512"
            }
        ))),
    }
}

fn mac(alg: Sha, secret: &[u8], input: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(secret: &[u8], input: &[u8]) -> Vec<u8> {
        let mut m = <M as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
        m.update(input);
        m.finalize().into_bytes().to_vec()
    }
    match alg {
        Sha::S1 => run::<Hmac<Sha1>>(secret, input),
        Sha::S256 => run::<Hmac<Sha256>>(secret, input),
        Sha::S384 => run::<Hmac<Sha384>>(secret, input),
        Sha::S512 => run::<Hmac<Sha512>>(secret, input),
    }
}

fn encode_mac(bytes: &[u8], encoding: Option<&str>) -> Result<String> {
    match encoding.unwrap_or("hex") {
        "hex" => Ok(hex(bytes)),
        "base64" => Ok(STANDARD.encode(bytes)),
        other => Err(Error::invalid(format!(
            "unknown encoding `{other}` (hex or base64)"
        ))),
    }
}

pub fn hmac_sign(
    input: &str,
    secret: &str,
    algorithm: Option<&str>,
    encoding: Option<&str>,
) -> Result<String> {
    let alg = sha(algorithm, false)?;
    encode_mac(&mac(alg, secret.as_bytes(), input.as_bytes()), encoding)
}

/// Constant-time comparison of the expected MAC with the one provided.
pub fn hmac_verify(
    input: &str,
    provided: &str,
    secret: &str,
    algorithm: Option<&str>,
    encoding: Option<&str>,
) -> Result<bool> {
    let expected = hmac_sign(input, secret, algorithm, encoding)?;
    Ok(constant_eq(expected.as_bytes(), provided.trim().as_bytes()))
}

/// A 256-bit AES key written as hex (the default) or base64.
fn aes_key(key: &str, encoding: Option<&str>) -> Result<[u8; 32]> {
    let bytes = match encoding.unwrap_or("hex") {
        "hex" => unhex(key.trim()),
        "base64" => STANDARD.decode(key.trim()).ok(),
        other => {
            return Err(Error::invalid(format!(
                "unknown key_encoding `{other}` (hex or base64)"
            )))
        }
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Error::invalid("an AES key must be 32 bytes (AES-256), as hex or base64"))
}

/// AES-256-GCM: `{"ciphertext": base64, "nonce": base64}` (the tag is the
/// ciphertext's last 16 bytes).
pub fn aes_encrypt(
    plaintext: &str,
    key: &str,
    encoding: Option<&str>,
    nonce: [u8; 12],
) -> Result<J> {
    use aes_gcm::aead::{Aead, KeyInit as _};
    let cipher = aes_gcm::Aes256Gcm::new(&aes_key(key, encoding)?.into());
    let sealed = cipher
        .encrypt(&nonce.into(), plaintext.as_bytes())
        .map_err(|_| Error::internal("AES-GCM refused to encrypt"))?;
    Ok(serde_json::json!({
        "ciphertext": STANDARD.encode(sealed),
        "nonce": STANDARD.encode(nonce),
    }))
}

/// The plaintext of `aes_encrypt`'s output, or `null` when the key, the
/// nonce or the tag does not match (or the text is not UTF-8).
pub fn aes_decrypt(sealed: &J, key: &str, encoding: Option<&str>) -> Result<J> {
    use aes_gcm::aead::{Aead, KeyInit as _};
    let cipher = aes_gcm::Aes256Gcm::new(&aes_key(key, encoding)?.into());
    let open = || -> Option<String> {
        let ct = STANDARD.decode(sealed.get("ciphertext")?.as_str()?).ok()?;
        let nonce = STANDARD.decode(sealed.get("nonce")?.as_str()?).ok()?;
        let nonce = <[u8; 12]>::try_from(nonce).ok()?;
        let plain = cipher.decrypt(&nonce.into(), ct.as_slice()).ok()?;
        String::from_utf8(plain).ok()
    };
    Ok(open().map_or(J::Null, J::String))
}

/// RFC 4648 base32 (the alphabet authenticator apps use for TOTP
/// secrets); spaces, case and padding are forgiven.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in text.bytes().filter(|c| !matches!(c, b' ' | b'-' | b'=')) {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The TOTP parameters of a stage (RFC 6238).
pub struct Totp<'a> {
    pub secret: &'a str,
    pub digits: Option<u32>,
    pub period: Option<u64>,
    pub algorithm: Option<&'a str>,
}

impl Totp<'_> {
    fn parts(&self) -> Result<(Vec<u8>, u32, u64, Sha)> {
        let key = base32_decode(self.secret)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Error::invalid("a TOTP secret must be base32 (RFC 4648)"))?;
        let digits = self.digits.unwrap_or(6);
        if !(6..=10).contains(&digits) {
            return Err(Error::invalid("TOTP digits must be 6 to 10"));
        }
        let period = self.period.unwrap_or(30);
        if period == 0 {
            return Err(Error::invalid("a TOTP period must be at least 1 second"));
        }
        let alg = match self.algorithm.map(str::to_ascii_lowercase).as_deref() {
            None | Some("sha1") => Sha::S1,
            other => sha(other, false)?,
        };
        Ok((key, digits, period, alg))
    }

    fn code_at(key: &[u8], digits: u32, alg: Sha, counter: u64) -> String {
        let h = mac(alg, key, &counter.to_be_bytes());
        let at = usize::from(h[h.len() - 1] & 0x0f);
        let bin = u32::from_be_bytes([h[at] & 0x7f, h[at + 1], h[at + 2], h[at + 3]]);
        let code = u64::from(bin) % 10u64.pow(digits);
        format!("{code:0width$}", width = digits as usize)
    }

    /// The code for the time step holding `now_secs`.
    pub fn generate(&self, now_secs: i64) -> Result<String> {
        let (key, digits, period, alg) = self.parts()?;
        let counter = now_secs.max(0) as u64 / period;
        Ok(Self::code_at(&key, digits, alg, counter))
    }

    /// Whether `code` is the code of this step or one within `skew` steps.
    pub fn verify(&self, code: &str, skew: u8, now_secs: i64) -> Result<bool> {
        let (key, digits, period, alg) = self.parts()?;
        let counter = now_secs.max(0) as u64 / period;
        let code = code.trim();
        let lo = counter.saturating_sub(u64::from(skew));
        let hi = counter.saturating_add(u64::from(skew));
        Ok((lo..=hi).fold(false, |ok, c| {
            ok | constant_eq(
                Self::code_at(&key, digits, alg, c).as_bytes(),
                code.as_bytes(),
            )
        }))
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An HS256/384/512 JWT of `claims`; `iat`/`exp` added when it expires.
pub fn jwt_sign(
    claims: &Map<String, J>,
    secret: &str,
    algorithm: Option<&str>,
    expires_in_secs: Option<i64>,
    now_secs: i64,
) -> Result<String> {
    let alg = sha(algorithm, true)?;
    let name = alg.jwt_name();
    let mut claims = claims.clone();
    if let Some(ttl) = expires_in_secs {
        claims.insert("iat".into(), J::from(now_secs));
        claims.insert("exp".into(), J::from(now_secs.saturating_add(ttl)));
    }
    let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{name}","typ":"JWT"}}"#));
    let body = URL_SAFE_NO_PAD.encode(J::Object(claims).to_string());
    let signing = format!("{head}.{body}");
    let sig = URL_SAFE_NO_PAD.encode(mac(alg, secret.as_bytes(), signing.as_bytes()));
    Ok(format!("{signing}.{sig}"))
}

/// The claims of a valid, unexpired token signed with `secret`; `null` on
/// any failure (wrong signature or algorithm, expired, malformed).
pub fn jwt_verify(token: &str, secret: &str, algorithm: Option<&str>, now_secs: i64) -> J {
    let check = || -> Option<J> {
        let alg = sha(algorithm, true).ok()?;
        let mut parts = token.trim().split('.');
        let (head, body, sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: J = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).ok()?).ok()?;
        let expected = alg.jwt_name();
        if header.get("alg").and_then(J::as_str) != Some(expected) {
            return None;
        }
        let mac_bytes = mac(alg, secret.as_bytes(), format!("{head}.{body}").as_bytes());
        if !constant_eq(&URL_SAFE_NO_PAD.decode(sig).ok()?, &mac_bytes) {
            return None;
        }
        let claims: J = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        if let Some(exp) = claims.get("exp").and_then(J::as_i64) {
            if exp <= now_secs {
                return None;
            }
        }
        claims.is_object().then_some(claims)
    };
    check().unwrap_or(J::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hmac_sign("what do ya want for nothing?", "Jefe", None, None).unwrap(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(hmac_verify(
            "what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            "Jefe",
            Some("sha256"),
            None
        )
        .unwrap());
    }

    #[test]
    fn jwt_round_trips_and_refuses_tampering_and_expiry() {
        let claims = json!({"sub": "u1"}).as_object().unwrap().clone();
        let t = jwt_sign(&claims, "s3cret", None, Some(60), 1000).unwrap();
        assert_eq!(
            jwt_verify(&t, "s3cret", None, 1001),
            json!({"sub": "u1", "iat": 1000, "exp": 1060})
        );
        assert_eq!(jwt_verify(&t, "other", None, 1001), J::Null);
        assert_eq!(jwt_verify(&t, "s3cret", None, 2000), J::Null);
        assert_eq!(jwt_verify(&t, "s3cret", Some("HS512"), 1001), J::Null);
    }

    #[test]
    fn encodings() {
        assert_eq!(slugify("Héllo World"), "hello-world");
        assert_eq!(slugify("  --A  b__C-- "), "a-b-c");
        assert_eq!(base64_encode("hi?", true), "aGk_");
        assert_eq!(base64_decode("aGk_", true), json!("hi?"));
        assert_eq!(base64_decode("***", false), J::Null);
        assert_eq!(hex_decode(&hex(b"ok")), json!("ok"));
        let u = uuid_v4([0xff; 16]);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn totp_matches_rfc_6238_vectors() {
        let keys = [
            ("sha1", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            ("sha256", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZA===="),
            ("sha512", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNA="),
        ];
        let table: [(i64, [&str; 3]); 3] = [
            (59, ["94287082", "46119246", "90693936"]),
            (1_111_111_109, ["07081804", "68084774", "25091201"]),
            (20_000_000_000, ["65353130", "77737706", "47863826"]),
        ];
        for (t, codes) in table {
            for ((alg, secret), code) in keys.iter().zip(codes) {
                let totp = Totp {
                    secret,
                    digits: Some(8),
                    period: None,
                    algorithm: Some(alg),
                };
                assert_eq!(totp.generate(t).unwrap(), code, "{alg} at {t}");
                assert!(totp.verify(code, 0, t).unwrap());
                assert!(totp.verify(code, 1, t + 30).unwrap(), "one step of skew");
                assert!(!totp.verify(code, 0, t + 30).unwrap());
            }
        }
        let bad = Totp {
            secret: "not base32!",
            digits: None,
            period: None,
            algorithm: None,
        };
        assert!(bad.generate(0).is_err());
    }
}
