//! The smol server under test: the same entry point and allocator as `tidepool`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tidepool_smol::cli_main("tidepool")
}
