//! The `dwaar` binary: command-line parsing and wiring; no business logic lives here.

mod commands;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "dwaar",
    version,
    about = "Dwaar: a reverse proxy and web server with a Caddyfile-compatible config"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server in the foreground.
    Run {
        /// Path to the Dwaarfile (default: $DWAAR_CONFIG, then ./Dwaarfile).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Worker threads for the proxy (default: number of CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Reload when the config file or a file it imports changes.
        #[arg(long)]
        watch: bool,
    },
    /// Check a config file and print a one-line summary.
    Validate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Format a Dwaarfile canonically.
    Fmt {
        /// The file to format (default: $DWAAR_CONFIG, then ./Dwaarfile).
        file: Option<PathBuf>,
        /// Write the result back to the file.
        #[arg(long)]
        overwrite: bool,
        /// Exit 1 when the file is not formatted (prints nothing else).
        #[arg(long)]
        check: bool,
    },
    /// Print the validated config model as JSON.
    Adapt {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        pretty: bool,
    },
    /// Print the version.
    Version,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run {
            config,
            threads,
            watch,
        } => commands::run(config.as_deref(), threads, watch),
        Command::Validate { config } => commands::validate(config.as_deref()),
        Command::Fmt {
            file,
            overwrite,
            check,
        } => commands::fmt(file.as_deref(), overwrite, check),
        Command::Adapt { config, pretty } => commands::adapt(config.as_deref(), pretty),
        Command::Version => {
            println!("dwaar {}", env!("CARGO_PKG_VERSION"));
            0
        }
    };
    std::process::exit(code);
}
