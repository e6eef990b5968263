//! `tidepool`: the Tidepool server on the smol runtime.

/// Recovery and the record store are allocation-heavy: glibc's allocator was a
/// third of recovery time and fragments small records; mimalloc is faster and
/// packs them tighter. The binary chooses it, not a library.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tidepool_smol::cli_main("tidepool")
}
