//! Shared pieces of the `client_*` suites: the runtime × format matrix and small
//! helpers that read records the way a user of `ekodb_client` sees them.
//!
//! Each scenario is written once as an `async fn` and runs five times: against
//! the smol and the threads runtime, with the client in MessagePack (its
//! default) and in JSON mode, and once more (threads, JSON) against a server
//! restored from a one-file backup of another. Every case starts its own
//! server process.

#![allow(dead_code)]

pub use ekodb_client::{Client, SerializationFormat};
pub use tidepool_tests::TestServer;

use ekodb_client::{Error, FieldType, Record};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tidepool_tests::{Runtime, API_KEY};

/// Declares the five tests of a scenario. The scenario is an `async fn` of the
/// same name taking `(&mut TestServer, Client, SerializationFormat)`:
///
/// ```ignore
/// client_test!(name);
/// async fn name(srv: &mut TestServer, c: Client, fmt: SerializationFormat) { ... }
/// ```
///
/// This makes `name::smol_msgpack`, `name::smol_json`, `name::std_msgpack`,
/// `name::std_json` and `name::std_json_restored`. Attributes before the name
/// (for example `#[ignore = "..."]`) go on all five tests.
macro_rules! client_test {
    ($(#[$attr:meta])* $name:ident) => {
        mod $name {
            use ::ekodb_client::SerializationFormat::{Json, MessagePack};
            use ::tidepool_tests::Runtime::{Smol, Std};

            $(#[$attr])*
            #[test]
            fn smol_msgpack() {
                crate::common::run(Smol, MessagePack, |s, c, f| Box::pin(super::$name(s, c, f)));
            }

            $(#[$attr])*
            #[test]
            fn smol_json() {
                crate::common::run(Smol, Json, |s, c, f| Box::pin(super::$name(s, c, f)));
            }

            $(#[$attr])*
            #[test]
            fn std_msgpack() {
                crate::common::run(Std, MessagePack, |s, c, f| Box::pin(super::$name(s, c, f)));
            }

            $(#[$attr])*
            #[test]
            fn std_json() {
                crate::common::run(Std, Json, |s, c, f| Box::pin(super::$name(s, c, f)));
            }

            /// The same against a server restored from a backup.
            $(#[$attr])*
            #[test]
            fn std_json_restored() {
                crate::common::run_restored(Std, Json, |s, c, f| Box::pin(super::$name(s, c, f)));
            }
        }
    };
}

/// A scenario's future, borrowing its server.
pub type ScenarioFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Starts a server and a client in `fmt`, and runs the scenario to completion
/// on a fresh single-threaded tokio runtime.
pub fn run<F>(rt: Runtime, fmt: SerializationFormat, scenario: F)
where
    F: for<'a> FnOnce(&'a mut TestServer, Client, SerializationFormat) -> ScenarioFuture<'a>,
{
    let (mut srv, c) = start(rt, fmt);
    block_on(scenario(&mut srv, c, fmt));
}

/// Like [`run`], against a server restored from a one-file backup of
/// another ([`TestServer::start_restored`]): the data-plane suite holds for
/// a restored server too.
pub fn run_restored<F>(rt: Runtime, fmt: SerializationFormat, scenario: F)
where
    F: for<'a> FnOnce(&'a mut TestServer, Client, SerializationFormat) -> ScenarioFuture<'a>,
{
    let mut srv = TestServer::start_restored(rt);
    let c = client(&srv, fmt);
    block_on(scenario(&mut srv, c, fmt));
}

/// Starts a server and a client for it.
pub fn start(rt: Runtime, fmt: SerializationFormat) -> (TestServer, Client) {
    let srv = TestServer::start(rt);
    let c = client(&srv, fmt);
    (srv, c)
}

/// A client for `srv` in `fmt`. Retries are off so that every call shows
/// exactly what the server answered (a correct server never needs them here).
pub fn client(srv: &TestServer, fmt: SerializationFormat) -> Client {
    Client::builder()
        .base_url(srv.base_url())
        .api_key(API_KEY)
        .serialization_format(fmt)
        .timeout(Duration::from_secs(20))
        .should_retry(false)
        .build()
        .expect("client")
}

/// Runs a scenario to completion on a fresh single-threaded tokio runtime.
pub fn block_on<F: Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A record from plain JSON (an object), as a user would build it.
pub fn rec(v: Value) -> Record {
    match FieldType::from(v) {
        FieldType::Object(m) => Record::from(m),
        other => panic!("rec() wants an object, got {other:?}"),
    }
}

/// The record as the JSON the server sent: typed envelopes per field, the id as
/// a plain string.
pub fn wire(r: &Record) -> Value {
    serde_json::to_value(r).expect("record to JSON")
}

/// One field as sent (still in its `{"type","value"}` envelope).
pub fn field(r: &Record, name: &str) -> Value {
    r.get(name)
        .map(|f| serde_json::to_value(f).expect("field to JSON"))
        .unwrap_or_else(|| panic!("record has no field {name:?}: {}", wire(r)))
}

/// One field's plain value (envelope removed).
pub fn val(r: &Record, name: &str) -> Value {
    ekodb_client::get_value(&field(r, name))
}

/// The primary key, which must be a plain string.
pub fn id_of(r: &Record) -> String {
    match r.get("id") {
        Some(FieldType::String(s)) => s.clone(),
        other => panic!("id is not a plain string: {other:?} in {}", wire(r)),
    }
}

/// The set of ids in a result.
pub fn ids(rs: &[Record]) -> BTreeSet<String> {
    rs.iter().map(id_of).collect()
}

/// The ids of a result, in order.
pub fn id_list(rs: &[Record]) -> Vec<String> {
    rs.iter().map(id_of).collect()
}

/// A set of string literals.
pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The field names of a record.
pub fn keys(r: &Record) -> BTreeSet<String> {
    r.keys().cloned().collect()
}

/// Asserts the call failed with `Error::NotFound` (HTTP 404).
#[track_caller]
pub fn assert_not_found<T: Debug>(r: Result<T, Error>) {
    match r {
        Err(Error::NotFound) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Asserts the call failed with an API error whose code is one of `codes`, and
/// returns its message.
#[track_caller]
pub fn assert_api_err<T: Debug>(r: Result<T, Error>, codes: &[u16]) -> String {
    match r {
        Err(Error::Api { code, message }) if codes.contains(&code) => message,
        other => panic!("expected an API error with code in {codes:?}, got {other:?}"),
    }
}

/// Asserts that `msg` mentions every one of `words` (case-insensitive).
#[track_caller]
pub fn assert_mentions(msg: &str, words: &[&str]) {
    let lower = msg.to_lowercase();
    for w in words {
        assert!(
            lower.contains(&w.to_lowercase()),
            "error message {msg:?} does not mention {w:?}"
        );
    }
}

/// `Ok` or a panic that shows the error.
#[track_caller]
pub fn ok<T>(r: Result<T, Error>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("call failed: {e:?}"),
    }
}
