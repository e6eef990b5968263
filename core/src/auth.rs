//! API keys and the JWTs they are exchanged for (spec 2): HS256 tokens whose payload
//! is unpadded base64url JSON with an integer `exp`.

use crate::error::{Error, ErrorKind, Result};
use crate::time::Timestamp;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Who a verified token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub admin: bool,
    /// When the credential stops being valid (a token's `exp`; `None` for
    /// an API key itself).
    pub expires: Option<Timestamp>,
}

#[derive(Clone, Debug)]
pub struct Auth {
    secret: Vec<u8>,
    /// (key id, sha256 of the key). Keys are never kept in clear.
    keys: Vec<(String, [u8; 32])>,
    token_lifetime: Duration,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn unauthorized(msg: &str) -> Error {
    Error::new(ErrorKind::Unauthorized, msg)
}

impl Auth {
    pub fn new(secret: &[u8], api_keys: &[String], token_lifetime: Duration) -> Self {
        Auth {
            secret: secret.to_vec(),
            keys: api_keys
                .iter()
                .map(|k| {
                    let d = digest(k);
                    let id: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
                    (id, d)
                })
                .collect(),
            token_lifetime,
        }
    }

    /// Exchanges an API key for a signed token.
    pub fn issue(&self, api_key: &str, now: Timestamp) -> Result<String> {
        let d = digest(api_key);
        let (key_id, _) = self
            .keys
            .iter()
            .find(|(_, k)| constant_time_eq(k, &d))
            .ok_or_else(|| unauthorized("Invalid API key"))?;
        let exp = now.secs() + self.token_lifetime.as_secs() as i64;
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims =
            serde_json::json!({"sub": key_id, "iat": now.secs(), "exp": exp, "admin": true});
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        Ok(format!("{signing_input}.{sig}"))
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| {
            // HMAC accepts keys of any length; this branch cannot be taken.
            HmacSha256::new_from_slice(b"tidepool").expect("fixed key")
        });
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// Verifies a token's signature and expiry.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Principal> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unauthorized("Invalid token: not a JWT"));
        };
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| unauthorized("Invalid token: bad signature encoding"))?;
        let mut mac = HmacSha256::new_from_slice(&self.secret)
            .map_err(|_| Error::internal("bad token secret"))?;
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| unauthorized("Invalid token: signature mismatch"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| unauthorized("Invalid token: bad payload"))?;
        let claims: serde_json::Value = serde_json::from_slice(&payload)
            .map_err(|_| unauthorized("Invalid token: bad payload"))?;
        let exp = claims["exp"]
            .as_i64()
            .ok_or_else(|| unauthorized("Invalid token: no exp"))?;
        if exp <= now.secs() {
            return Err(unauthorized("Token expired"));
        }
        let key_id = claims["sub"].as_str().unwrap_or_default().to_string();
        if !self.keys.iter().any(|(id, _)| *id == key_id) {
            return Err(unauthorized("Invalid token: key revoked"));
        }
        Ok(Principal {
            key_id,
            admin: claims["admin"].as_bool().unwrap_or(false),
            expires: Some(Timestamp::from_secs(exp)),
        })
    }

    /// Checks an `Authorization: Bearer …` header (or a `token` query fallback).
    /// Checks an API key itself (dialect clients are configured with one).
    pub fn check_key(&self, api_key: &str) -> Result<Principal> {
        let d = digest(api_key);
        self.keys
            .iter()
            .find(|(_, k)| constant_time_eq(k, &d))
            .map(|(id, _)| Principal {
                key_id: id.clone(),
                admin: true,
                expires: None,
            })
            .ok_or_else(|| unauthorized("Invalid API key"))
    }

    /// A token or an API key, whichever `credential` is.
    pub fn check_credential(&self, credential: &str, now: Timestamp) -> Result<Principal> {
        match self.verify(credential, now) {
            Ok(p) => Ok(p),
            Err(e) => self.check_key(credential).map_err(|_| e),
        }
    }

    pub fn check_bearer(&self, header: Option<&str>, now: Timestamp) -> Result<Principal> {
        let header = header.ok_or_else(|| unauthorized("Missing Authorization: Bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("Authorization must be `Bearer <token>`"))?;
        self.verify(token.trim(), now)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_expire() {
        let auth = Auth::new(b"secret", &["key-1".to_string()], Duration::from_secs(3600));
        let now = Timestamp::from_secs(1_700_000_000);
        let token = auth.issue("key-1", now).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert!(!token.contains('='));
        let payload: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(payload["exp"], 1_700_003_600);
        assert!(auth.verify(&token, now).is_ok());
        assert_eq!(
            auth.verify(&token, Timestamp::from_secs(1_700_003_600))
                .unwrap_err()
                .kind,
            ErrorKind::Unauthorized
        );
        assert!(auth.issue("wrong", now).is_err());
        let mut forged = token.clone();
        forged.push('x');
        assert!(auth.verify(&forged, now).is_err());
        assert!(auth.verify("a.b", now).is_err());
        let other = Auth::new(b"other", &["key-1".to_string()], Duration::from_secs(3600));
        assert!(other.verify(&token, now).is_err());
    }
}
