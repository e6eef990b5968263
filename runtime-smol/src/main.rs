//! `tidepool`: the Tidepool server on the smol runtime.

fn main() {
    tidepool_smol::cli_main("tidepool")
}
