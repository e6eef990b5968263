//! Arbitrary bytes as a MessagePack request body. `codec::decode` never panics;
//! when it accepts the bytes, the value it built re-encodes (with rmp-serde, as
//! responses are encoded) into bytes that decode to the same value again.
//! The same bytes as a JSON body must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool_core::wire::format::{self as codec, Format};

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode(data, Format::Json);
    let Ok(value) = codec::decode(data, Format::MsgPack) else {
        return;
    };
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
