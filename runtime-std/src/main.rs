//! `tidepool-std`: the Tidepool server on OS threads.

fn main() {
    tidepool_std::cli_main("tidepool-std")
}
