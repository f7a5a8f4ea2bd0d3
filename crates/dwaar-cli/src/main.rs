//! The `dwaar` binary: command-line parsing and wiring; no business logic lives here.

mod commands;
mod run;
mod runtime_log;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

// `--features system-alloc` builds with the C library's allocator instead, for heap
// profilers that intercept malloc (heaptrack, valgrind); see docs/performance.md.
#[cfg(all(not(target_env = "msvc"), not(feature = "system-alloc")))]
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
        /// Worker processes (default: the `workers` global option, else 1 = in-process).
        #[arg(long)]
        workers: Option<u16>,
        /// Write the process ID to this file.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Print the environment before starting.
        #[arg(long)]
        environ: bool,
        /// Internal: run as worker process of the supervisor listening at this socket.
        #[arg(long, hide = true)]
        worker_of: Option<PathBuf>,
        /// Internal: this worker's index.
        #[arg(long, hide = true, default_value_t = 0)]
        worker_index: usize,
    },
    /// Load the config file into the running server (via the admin API).
    Reload {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Admin API address (default: from the config, $DWAAR_ADMIN, localhost:2019).
        #[arg(long)]
        address: Option<String>,
    },
    /// Stop the running server gracefully (via the admin API).
    Stop {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        address: Option<String>,
    },
    /// Replace the running server with the binary now on disk, without dropping connections.
    Upgrade {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        address: Option<String>,
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
    /// Install the local CA's root certificate (`tls internal`) into the system trust store.
    Trust {
        /// Take the storage directory from this config's `storage` option.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The storage directory (default: the config's, else the user's data directory).
        #[arg(long)]
        storage: Option<PathBuf>,
    },
    /// Remove the local CA's root certificate from the system trust store.
    Untrust,
    /// Hash a password for basic_auth (bcrypt). Reads it from the terminal or stdin.
    HashPassword {
        /// The password (visible in the process list: prefer stdin).
        #[arg(long)]
        plaintext: Option<String>,
        /// bcrypt cost (4 to 31).
        #[arg(long, default_value_t = 14)]
        cost: u32,
    },
    /// Print the version.
    Version,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run {
            worker_of: Some(channel),
            worker_index,
            threads,
            ..
        } => run::worker(&channel, worker_index, threads),
        Command::Run {
            config,
            threads,
            watch,
            workers,
            pidfile,
            environ,
            worker_of: None,
            ..
        } => run::run(run::RunOptions {
            config: config.as_deref(),
            threads,
            workers,
            watch,
            pidfile,
            environ,
        }),
        Command::Reload { config, address } => {
            commands::reload(config.as_deref(), address.as_deref())
        }
        Command::Stop { config, address } => commands::stop(config.as_deref(), address.as_deref()),
        Command::Upgrade { config, address } => {
            commands::upgrade(config.as_deref(), address.as_deref())
        }
        Command::Validate { config } => commands::validate(config.as_deref()),
        Command::Fmt {
            file,
            overwrite,
            check,
        } => commands::fmt(file.as_deref(), overwrite, check),
        Command::Adapt { config, pretty } => commands::adapt(config.as_deref(), pretty),
        Command::Trust { config, storage } => {
            commands::trust(config.as_deref(), storage.as_deref())
        }
        Command::Untrust => commands::untrust(),
        Command::HashPassword { plaintext, cost } => commands::hash_password(plaintext, cost),
        Command::Version => {
            println!("dwaar {}", env!("CARGO_PKG_VERSION"));
            0
        }
    };
    std::process::exit(code);
}
