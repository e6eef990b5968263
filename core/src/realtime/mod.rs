//! Live change feeds: change events derived from committed batches, the
//! subscription hub and the ekoDB WebSocket message protocol.

pub mod ekodb_ws;
pub mod events;
pub mod hub;
