//! Tidepool's sans-io core.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod engine;
pub mod error;
pub mod http;
pub mod ids;
pub mod realtime;
pub mod rng;
pub mod server;
pub mod time;
pub mod value;
pub mod ws;
