//! Password hashing for the `BcryptHash` and `BcryptVerify` stages. bcrypt is
//! slow on purpose (cost 12 is about a quarter of a second of CPU), far too
//! slow to run under the server lock, so a run asks for it as an effect
//! (`Effect::Compute`) and the server runs it off the lock (the host's
//! compute thread, apart from the query readers), then
//! resumes the run with the answer. The work itself is pure: the salt comes
//! from the server's keyed generator, never from the OS here.

use crate::error::{Error, Result};
use serde_json::Value as J;

/// bcrypt's default cost, as ekoDB's.
pub const DEFAULT_COST: u32 = 12;

/// The highest cost accepted. bcrypt cannot be stopped part way, so a cost
/// must finish well inside a function's time budget: 16 takes about 4 s on
/// one core, and each step up doubles it (31, the format's limit, would take
/// days).
pub const MAX_COST: u32 = 16;

/// A password computation to run off the lock.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordJob {
    Hash {
        plain: String,
        cost: u32,
        salt: [u8; 16],
    },
    Verify {
        plain: String,
        hash: String,
    },
}

/// Secrets stay out of logs and debug output.
impl std::fmt::Debug for PasswordJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordJob::Hash { cost, .. } => write!(f, "BcryptHash(cost {cost})"),
            PasswordJob::Verify { .. } => f.write_str("BcryptVerify"),
        }
    }
}

impl PasswordJob {
    /// A hash job, its cost checked (4 to `MAX_COST`, default 12).
    pub fn hash(plain: String, cost: Option<u32>, salt: [u8; 16]) -> Result<PasswordJob> {
        let cost = cost.unwrap_or(DEFAULT_COST);
        if !(4..=MAX_COST).contains(&cost) {
            return Err(Error::invalid(format!(
                "`cost` must be between 4 and {MAX_COST} (each step doubles the time; {MAX_COST} takes seconds), not {cost}"
            )));
        }
        Ok(PasswordJob::Hash { plain, cost, salt })
    }

    /// Does the work: a `$2b$` hash string, or whether `plain` matches the
    /// hash (false for anything that is not a bcrypt hash).
    pub fn run(&self) -> J {
        match self {
            PasswordJob::Hash { plain, cost, salt } => {
                match bcrypt::hash_with_salt(plain, *cost, *salt) {
                    Ok(parts) => J::String(parts.format_for_version(bcrypt::Version::TwoB)),
                    // Only a cost out of range fails, and `hash` checked it.
                    Err(_) => J::Null,
                }
            }
            PasswordJob::Verify { plain, hash } => {
                J::Bool(bcrypt::verify(plain, hash).unwrap_or(false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let job = PasswordJob::hash("s3cret".into(), Some(4), [7; 16]).unwrap();
        let hash = job.run().as_str().unwrap().to_string();
        assert!(hash.starts_with("$2b$04$"), "{hash}");
        let verify = |plain: &str, hash: &str| {
            PasswordJob::Verify {
                plain: plain.into(),
                hash: hash.into(),
            }
            .run()
        };
        assert_eq!(verify("s3cret", &hash), J::Bool(true));
        assert_eq!(verify("S3cret", &hash), J::Bool(false));
        assert_eq!(verify("s3cret", "not a hash"), J::Bool(false));
        // The same salt gives the same hash; the salt is the caller's.
        assert_eq!(job.run().as_str(), Some(hash.as_str()));
    }

    #[test]
    fn hashes_made_elsewhere_verify() {
        // From the OpenBSD test vectors (`$2a$`, cost 5, password "U*U").
        let known = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
        let job = PasswordJob::Verify {
            plain: "U*U".into(),
            hash: known.into(),
        };
        assert_eq!(job.run(), J::Bool(true));
    }

    #[test]
    fn costs_outside_the_range_are_refused_with_the_range() {
        for cost in [0, 3, 17, 31] {
            let e = PasswordJob::hash("pw".into(), Some(cost), [0; 16]).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.message.contains("between 4 and 16"), "{}", e.message);
        }
        assert!(matches!(
            PasswordJob::hash("pw".into(), None, [0; 16]).unwrap(),
            PasswordJob::Hash { cost: 12, .. }
        ));
    }
}
