//! Chat: sessions and their messages (records in internal collections, so
//! durable like documents), retrieval over the session's collections, the
//! offline provider, and turns: a message answered by a provider, streamed as
//! events with positions that any number of clients can watch and resume.

pub mod compact;
pub mod documents;
pub mod emotion;
pub mod event;
pub mod offline;
pub mod retrieval;
pub mod session;
pub mod store;
pub mod tools;
pub mod turn;
