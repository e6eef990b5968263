fn main() {
    tidepool_smol::cli_main("tidepool")
}
