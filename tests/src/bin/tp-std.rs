//! The threads server under test: the same entry point and allocator as `tidepool-std`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tidepool_std::cli_main("tidepool-std")
}
