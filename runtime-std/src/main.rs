//! `tidepool-std`: the Tidepool server on OS threads.

use tidepool_core::config::{Command, Config};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Config::parse(args, |k| std::env::var(k).ok()) {
        Ok(Command::Run(config)) => {
            if let Err(e) = tidepool_std::run(config) {
                eprintln!("tidepool-std: {e}");
                std::process::exit(1);
            }
        }
        Ok(Command::Help(_)) => print!("{}", tidepool_core::config::help_text("tidepool-std")),
        Ok(Command::Version) => println!("tidepool-std {}", tidepool_core::server::VERSION),
        Err(e) => {
            eprintln!("tidepool-std: {e}");
            std::process::exit(2);
        }
    }
}
