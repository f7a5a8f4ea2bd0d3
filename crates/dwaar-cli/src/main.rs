//! The `dwaar` binary: command-line parsing and wiring; no business logic lives here.

mod commands;
mod envfile;
mod info;
mod quick;
mod run;
mod runtime_log;
mod start;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

// `--features system-alloc` builds with the C library's allocator instead, for heap
// profilers that intercept malloc (heaptrack, valgrind); see docs/performance.md.
#[cfg(all(not(target_env = "msvc"), not(feature = "system-alloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Returns jemalloc's free (dirty and muzzy) pages of every arena to the system; the
/// idle trimmer calls it (`dwaar_core::server::footprint`).
#[cfg(all(not(target_env = "msvc"), not(feature = "system-alloc")))]
#[allow(unsafe_code)]
fn purge_heap() {
    // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` takes no input and writes no output.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[derive(Parser)]
#[command(
    name = "dwaar",
    version,
    about = "Dwaar: a reverse proxy and web server with a Caddyfile-compatible config",
    long_about = "Dwaar: a reverse proxy and web server with a Caddyfile-compatible config \
                  (the Dwaarfile), automatic HTTPS, analytics, request logs and rate limits \
                  in one binary."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the config comes from; shared by every command that reads one.
#[derive(Args, Clone, Default)]
pub(crate) struct ConfigArgs {
    /// Path to the config file (default: $DWAAR_CONFIG, then ./Dwaarfile, then ./Caddyfile).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The config's language. A Dwaarfile is a Caddyfile, so `caddyfile` (what Caddy's
    /// units and scripts pass) and `dwaarfile` are the same; anything else is refused.
    #[arg(long, value_enum, value_name = "NAME")]
    pub adapter: Option<Adapter>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Adapter {
    Caddyfile,
    Dwaarfile,
}

/// What `run` and `start` share.
#[derive(Args, Clone, Default)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Load environment variables from this file first (KEY=VALUE lines; repeatable;
    /// variables already set keep their value).
    #[arg(long, value_name = "FILE")]
    pub envfile: Vec<PathBuf>,
    /// Write the process ID to this file.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Reload when the config file or a file it imports changes.
    #[arg(long)]
    pub watch: bool,
    /// Worker threads for the proxy (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Worker processes (default: the `workers` global option, else 1 = in-process).
    #[arg(long)]
    pub workers: Option<u16>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server in the foreground.
    Run {
        #[command(flatten)]
        serve: ServeArgs,
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
    /// Start the server in the background; returns once it serves (exit 0) or failed.
    Start {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Load the config file into the running server (via the admin API).
    Reload {
        #[command(flatten)]
        config: ConfigArgs,
        /// Admin API address (default: from the config, $DWAAR_ADMIN, localhost:2019).
        #[arg(long)]
        address: Option<String>,
        /// Accepted for Caddy's units: Dwaar applies every reload, changed or not.
        #[arg(long)]
        force: bool,
    },
    /// Stop the running server gracefully (via the admin API).
    Stop {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        address: Option<String>,
    },
    /// Replace the running server with the binary now on disk, without dropping connections.
    Upgrade {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        address: Option<String>,
    },
    /// Check a config file and print a one-line summary.
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Load environment variables from this file first (repeatable).
        #[arg(long, value_name = "FILE")]
        envfile: Vec<PathBuf>,
    },
    /// Validate a config and publish it to every instance of its fleet (through its
    /// `storage redis`), then print what each instance reported.
    Push {
        #[command(flatten)]
        config: ConfigArgs,
        /// How long to wait for the instances' reports, in seconds.
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
    /// Format a Dwaarfile canonically.
    Fmt {
        /// The file to format (default: $DWAAR_CONFIG, then ./Dwaarfile, then ./Caddyfile).
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
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        pretty: bool,
    },
    /// Serve a reverse proxy from one address to one or more backends, no config file.
    ReverseProxy(quick::ReverseProxyArgs),
    /// Serve files from a directory, no config file.
    FileServer(quick::FileServerArgs),
    /// Answer every request with a fixed response, no config file.
    Respond(quick::RespondArgs),
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (or write one page per command into a directory).
    Manpage {
        /// Write dwaar.1 and dwaar-<command>.1 here instead of printing dwaar.1.
        #[arg(long, short = 'o', value_name = "DIR")]
        directory: Option<PathBuf>,
    },
    /// Print the version, commit, compiler, target and main libraries of this build.
    BuildInfo,
    /// Print the environment as Dwaar sees it.
    Environ,
    /// List the directives, global options and matchers the config language supports.
    ListDirectives {
        /// Also list what Caddy has and Dwaar refuses for now.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version,
}

fn main() {
    #[cfg(all(not(target_env = "msvc"), not(feature = "system-alloc")))]
    dwaar_core::server::footprint::set_heap_trim(purge_heap);
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run {
            worker_of: Some(channel),
            worker_index,
            serve,
            ..
        } => run::worker(&channel, worker_index, serve.threads),
        Command::Run {
            serve,
            environ,
            worker_of: None,
            ..
        } => match envfile::load_all(&serve.envfile) {
            Err(c) => c,
            Ok(()) => run::run(run::RunOptions {
                source: run::ConfigSource::File(serve.config.config.as_deref()),
                threads: serve.threads,
                workers: serve.workers,
                watch: serve.watch,
                pidfile: serve.pidfile,
                environ,
                announce: Vec::new(),
            }),
        },
        Command::Start { serve } => start::start(&serve),
        Command::Reload {
            config, address, ..
        } => commands::reload(config.config.as_deref(), address.as_deref()),
        Command::Stop { config, address } => {
            commands::stop(config.config.as_deref(), address.as_deref())
        }
        Command::Upgrade { config, address } => {
            commands::upgrade(config.config.as_deref(), address.as_deref())
        }
        Command::Push { config, wait } => commands::push(config.config.as_deref(), wait),
        Command::Validate { config, envfile } => match envfile::load_all(&envfile) {
            Err(c) => c,
            Ok(()) => commands::validate(config.config.as_deref()),
        },
        Command::Fmt {
            file,
            overwrite,
            check,
        } => commands::fmt(file.as_deref(), overwrite, check),
        Command::Adapt { config, pretty } => commands::adapt(config.config.as_deref(), pretty),
        Command::ReverseProxy(a) => quick::reverse_proxy(&a),
        Command::FileServer(a) => quick::file_server(&a),
        Command::Respond(a) => quick::respond(&a),
        Command::Trust { config, storage } => {
            commands::trust(config.as_deref(), storage.as_deref())
        }
        Command::Untrust => commands::untrust(),
        Command::HashPassword { plaintext, cost } => commands::hash_password(plaintext, cost),
        Command::Completion { shell } => info::completion(shell),
        Command::Manpage { directory } => info::manpage(directory.as_deref()),
        Command::BuildInfo => info::build_info(),
        Command::Environ => info::environ(),
        Command::ListDirectives { all, json } => info::list_directives(all, json),
        Command::Version => {
            println!("dwaar {}", env!("CARGO_PKG_VERSION"));
            0
        }
    };
    std::process::exit(code);
}
