//! `tidepool-std`: the Tidepool server on OS threads.

/// The same allocator as the `tidepool` binary (see its main.rs for why).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tidepool_std::cli_main("tidepool-std")
}
