//! A whole client connection: fuzzer bytes through `Connection` and `Server`
//! (see `harness.rs` for the invariants checked and the input's layout).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    harness::run(control, body);
});
