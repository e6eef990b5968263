//! Arbitrary bytes as a MessagePack request body. `codec::decode` never panics;
//! when it accepts the bytes, the value it built re-encodes (with rmp-serde, as
//! responses are encoded) into bytes that decode to the same value again.
//! The same bytes as a JSON body must not panic either. Whatever either
//! decoder accepts holds no integer above i64 (it would be stored as a float,
//! changed, so the decoders refuse it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool_core::wire::format::{self as codec, Format};

/// Panics on an integer that only fits in u64.
fn assert_no_wide(v: &serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => assert!(n.is_i64() || n.is_f64(), "wide integer {n}"),
        serde_json::Value::Array(items) => items.iter().for_each(assert_no_wide),
        serde_json::Value::Object(m) => m.values().for_each(assert_no_wide),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = codec::decode(data, Format::Json) {
        assert_no_wide(&v);
    }
    let Ok(value) = codec::decode(data, Format::MsgPack) else {
        return;
    };
    assert_no_wide(&value);
    let packed = codec::encode(Format::MsgPack, &value).expect("a decoded value re-encodes");
    match codec::decode(&packed, Format::MsgPack) {
        Ok(again) => assert_eq!(
            again, value,
            "round trip changed the value; re-encoded as {packed:02x?}"
        ),
        Err(e) => panic!(
            "re-encoded value {value} ({packed:02x?}) does not decode: {}",
            e.message
        ),
    }
});
