//! The command-line entry point both binaries share.

use crate::boot::BootError;
use tidepool_core::config::Config;

/// The command-line entry point both binaries share: parses flags and the
/// environment, then calls `run`. Exits with status 1 when running fails and 2
/// for bad arguments. `backup`, `restore` and `verify` are subcommands
/// (`subcommands`).
pub fn cli_main(program: &str, run: fn(Config) -> Result<(), BootError>) {
    use tidepool_core::config::{help_text, Command};
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(status) = crate::subcommands::run(&args) {
        std::process::exit(status);
    }
    match Config::parse(args, |k| std::env::var(k).ok()) {
        Ok(Command::Run(config)) => {
            if let Err(e) = run(*config) {
                eprintln!("{program}: {e}");
                std::process::exit(1);
            }
        }
        Ok(Command::Help(_)) => print!("{}\n{}", help_text(program), crate::subcommands::USAGE),
        Ok(Command::Version) => println!("{program} {}", tidepool_core::server::VERSION),
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::exit(2);
        }
    }
}
