//! Stored functions (spec G): named pipelines of stages that the server
//! keeps, runs on demand (`POST /api/functions/{id_or_label}`), on a
//! schedule, or under their own path (`/api/route/...`).
//!
//! | module | job |
//! |---|---|
//! | `definition.rs` | the definition document: lenient parse, canonical echo (G1-G4, G9) |
//! | `store.rs` | definitions in an internal collection, parsed once per version |
//! | `scope.rs` | parameters and `{{...}}` placeholders (G5) |
//! | `interp.rs` | the run: frames, control flow, budgets, suspension on effects |
//! | `data.rs` | stages over records, KV and search, and the one-output stages |
//! | `transform.rs` | Project, Group, Count, AddFields |
//! | `condition.rs` | `If` conditions (G3) |
//! | `crypto.rs` | HMAC, JWT, encodings, UUIDs, slugs |
//! | `password.rs` | bcrypt, run off the lock as an effect |
//! | `validate.rs` | the `Validate` stage's JSON Schema subset |
//! | `route.rs` | the path-routed dispatcher's matching (G8) |

pub mod condition;
pub mod crypto;
pub mod data;
pub mod definition;
pub mod interp;
pub mod password;
pub mod route;
pub mod scope;
pub mod store;
pub mod transform;
pub mod validate;

pub use definition::{Definition, Stage};
pub use interp::{Budget, Effect, Embedder, Finished, HttpCall, Poll, Resume, Run};
pub use store::FunctionStore;
