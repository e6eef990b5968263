//! API keys and the JWTs they are exchanged for (spec 2): HS256 tokens whose payload
//! is unpadded base64url JSON with an integer `exp`. The bootstrap keys come from
//! the configuration and are admins; registered keys (`keys`) carry grants
//! (`grants`). A token names its key by id and is checked against the key as it
//! is now, so revoking a key or changing its grants takes effect at once.

pub mod grants;
pub mod keys;

use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::Lsn;
use crate::time::Timestamp;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use grants::Access;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A registered key as parsed from the record of one version.
type Parsed = (Lsn, Arc<keys::StoredKey>, Access);

/// Parsed registered keys kept at most (more keys are parsed again).
const MAX_PARSED_KEYS: usize = 10_000;

/// Tokens whose signature was checked, kept at most (more are checked again).
const MAX_SIGNED_TOKENS: usize = 10_000;

type HmacSha256 = Hmac<Sha256>;

/// Who a verified credential belongs to, and what it may do.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub key_id: String,
    pub access: Access,
    /// When the credential stops being valid (a token's `exp`; `None` for
    /// an API key itself).
    pub expires: Option<Timestamp>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.access.is_admin()
    }
}

#[derive(Clone, Debug)]
pub struct Auth {
    secret: Vec<u8>,
    /// (key id, sha256 of the key) of the configured keys. Keys are never
    /// kept in clear.
    bootstrap: Vec<(String, [u8; 32])>,
    token_lifetime: Duration,
    /// Registered keys as last parsed, by id, with the version of the
    /// record they were parsed from: a request with a token costs a lookup,
    /// not a parse, and a changed or revoked key is never served stale.
    parsed: RefCell<HashMap<String, Parsed>>,
    /// The claims of tokens whose signature was checked, by the whole token:
    /// a client that sends the same token with every request costs a lookup
    /// under the server lock, not an HMAC and a JSON parse. Only tokens this
    /// server signed get in, and expiry is still checked on each use.
    signed: RefCell<HashMap<Box<str>, Claims>>,
}

fn unauthorized(msg: &str) -> Error {
    Error::new(ErrorKind::Unauthorized, msg)
}

/// A token's claims once its signature and expiry are checked.
#[derive(Clone, Debug)]
struct Claims {
    key_id: String,
    issued: i64,
    exp: i64,
}

impl Auth {
    pub fn new(secret: &[u8], api_keys: &[String], token_lifetime: Duration) -> Self {
        Auth {
            secret: secret.to_vec(),
            bootstrap: api_keys
                .iter()
                .map(|k| (keys::id_of(k), keys::digest(k)))
                .collect(),
            token_lifetime,
            parsed: RefCell::new(HashMap::new()),
            signed: RefCell::new(HashMap::new()),
        }
    }

    /// A registered key and what it may do, parsed once per version.
    fn registered(
        &self,
        engine: &Engine,
        id: &str,
        now: Timestamp,
    ) -> Option<(Arc<keys::StoredKey>, Access)> {
        let version = engine.get_internal(keys::KEYS, id, now)?.record.version;
        let mut parsed = self.parsed.borrow_mut();
        if let Some((v, key, access)) = parsed.get(id) {
            if *v == version {
                return Some((key.clone(), access.clone()));
            }
        }
        let key = Arc::new(keys::load(engine, id, now)?);
        let access = access_of(&key);
        if parsed.len() >= MAX_PARSED_KEYS {
            parsed.clear();
        }
        parsed.insert(id.to_string(), (version, key.clone(), access.clone()));
        Some((key, access))
    }

    /// The ids of the configured keys.
    pub fn bootstrap_ids(&self) -> impl Iterator<Item = &str> {
        self.bootstrap.iter().map(|(id, _)| id.as_str())
    }

    /// Whether `id` names a configured (bootstrap) key.
    pub fn is_bootstrap(&self, id: &str) -> bool {
        self.bootstrap.iter().any(|(b, _)| b == id)
    }

    /// Checks an API key itself: a configured key (an admin) or a
    /// registered one with its grants.
    pub fn check_key(&self, engine: &Engine, api_key: &str, now: Timestamp) -> Result<Principal> {
        let d = keys::digest(api_key);
        if let Some((id, _)) = self.bootstrap.iter().find(|(_, k)| constant_time_eq(k, &d)) {
            return Ok(Principal {
                key_id: id.clone(),
                access: Access::Admin,
                expires: None,
            });
        }
        match self.registered(engine, &keys::id_of(api_key), now) {
            Some((k, access)) if k.matches(api_key) => Ok(Principal {
                key_id: k.id.clone(),
                access,
                expires: None,
            }),
            _ => Err(unauthorized("Invalid API key")),
        }
    }

    /// Exchanges an API key for a signed token.
    pub fn issue(&self, engine: &Engine, api_key: &str, now: Timestamp) -> Result<String> {
        let who = self.check_key(engine, api_key, now)?;
        let exp = now.secs() + self.token_lifetime.as_secs() as i64;
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "sub": who.key_id, "iat": now.secs(), "exp": exp, "admin": who.is_admin()
        });
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        Ok(format!("{signing_input}.{sig}"))
    }

    /// A new API key. The server's generator is seeded, not secret, so the
    /// key is an HMAC under the token secret of a fresh `nonce`: nobody
    /// without the secret can predict it from ids they have seen.
    pub fn generate_key(&self, nonce: &[u8]) -> String {
        let mut data = b"tidepool api key\0".to_vec();
        data.extend_from_slice(nonce);
        format!("tp_{}", URL_SAFE_NO_PAD.encode(self.sign(&data)))
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| {
            // HMAC accepts keys of any length; this branch cannot be taken.
            HmacSha256::new_from_slice(b"tidepool").expect("fixed key")
        });
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// What a key may do now (`None`: it was revoked), for a stream that
    /// checks its key again on each message.
    pub fn current_access(&self, engine: &Engine, id: &str, now: Timestamp) -> Option<Access> {
        if self.is_bootstrap(id) {
            return Some(Access::Admin);
        }
        self.registered(engine, id, now).map(|(_, access)| access)
    }

    /// Checks a token's signature (once per token) and expiry.
    fn claims(&self, token: &str, now: Timestamp) -> Result<Claims> {
        let known = self.signed.borrow().get(token).cloned();
        let claims = match known {
            Some(c) => c,
            None => {
                let c = self.signature_claims(token)?;
                let mut signed = self.signed.borrow_mut();
                if signed.len() >= MAX_SIGNED_TOKENS {
                    signed.clear();
                }
                signed.insert(token.into(), c.clone());
                c
            }
        };
        if claims.exp <= now.secs() {
            return Err(unauthorized("Token expired"));
        }
        Ok(claims)
    }

    /// A token's claims once its signature is checked.
    fn signature_claims(&self, token: &str) -> Result<Claims> {
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
        Ok(Claims {
            key_id: claims["sub"].as_str().unwrap_or_default().to_string(),
            issued: claims["iat"].as_i64().unwrap_or(0),
            exp,
        })
    }

    /// Verifies a token and finds its key as it is now: a revoked key's
    /// tokens stop working at once.
    pub fn verify(&self, engine: &Engine, token: &str, now: Timestamp) -> Result<Principal> {
        let claims = self.claims(token, now)?;
        let access = if self.is_bootstrap(&claims.key_id) {
            Access::Admin
        } else {
            match self.registered(engine, &claims.key_id, now) {
                Some((k, access)) if k.created_at <= claims.issued => access,
                _ => return Err(unauthorized("Invalid token: key revoked")),
            }
        };
        Ok(Principal {
            key_id: claims.key_id,
            access,
            expires: Some(Timestamp::from_secs(claims.exp)),
        })
    }

    /// A token or an API key, whichever `credential` is.
    pub fn check_credential(
        &self,
        engine: &Engine,
        credential: &str,
        now: Timestamp,
    ) -> Result<Principal> {
        match self.verify(engine, credential, now) {
            Ok(p) => Ok(p),
            Err(e) => self.check_key(engine, credential, now).map_err(|_| e),
        }
    }

    /// Checks an `Authorization: Bearer …` header.
    pub fn check_bearer(
        &self,
        engine: &Engine,
        header: Option<&str>,
        now: Timestamp,
    ) -> Result<Principal> {
        let header = header.ok_or_else(|| unauthorized("Missing Authorization: Bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("Authorization must be `Bearer <token>`"))?;
        self.verify(engine, token.trim(), now)
    }
}

/// What a registered key may do.
fn access_of(k: &keys::StoredKey) -> Access {
    if k.is_admin {
        Access::Admin
    } else {
        Access::Limited(Arc::new(k.grants.clone()))
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
        let engine = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        let token = auth.issue(&engine, "key-1", now).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert!(!token.contains('='));
        let payload: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(payload["exp"], 1_700_003_600);
        assert!(auth.verify(&engine, &token, now).is_ok());
        assert_eq!(
            auth.verify(&engine, &token, Timestamp::from_secs(1_700_003_600))
                .unwrap_err()
                .kind,
            ErrorKind::Unauthorized
        );
        assert!(auth.issue(&engine, "wrong", now).is_err());
        let mut forged = token.clone();
        forged.push('x');
        assert!(auth.verify(&engine, &forged, now).is_err());
        // The genuine token is known now; its signature on another payload
        // (a later `exp`) is still refused.
        let parts: Vec<&str> = token.split('.').collect();
        let later = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"sub": payload["sub"], "iat": payload["iat"], "exp": 1_800_000_000})
                .to_string(),
        );
        let swapped = format!("{}.{later}.{}", parts[0], parts[2]);
        assert!(auth.verify(&engine, &swapped, now).is_err());
        assert!(auth.verify(&engine, &token, now).is_ok());
        assert!(auth.verify(&engine, "a.b", now).is_err());
        let other = Auth::new(b"other", &["key-1".to_string()], Duration::from_secs(3600));
        assert!(other.verify(&engine, &token, now).is_err());
    }
}
