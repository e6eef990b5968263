fn main() {
    tidepool_std::cli_main("tidepool-std")
}
