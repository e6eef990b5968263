//! Live change feeds: change events derived from committed batches, the
//! subscription hub that routes them to streaming connections.

pub mod events;
pub mod hub;
