//! One function per subcommand; each returns the process exit code.

use dwaar_config::{load_file, resolve_config_path, Loaded};
use std::path::Path;

fn load(flag: Option<&Path>) -> Result<(std::path::PathBuf, Loaded), i32> {
    let path = resolve_config_path(flag).map_err(|e| {
        eprintln!("error: {e}");
        1
    })?;
    match load_file(&path) {
        Ok(l) => {
            if !l.warnings.is_empty() {
                eprint!("{}", l.render_warnings());
            }
            Ok((path, l))
        }
        Err(e) => {
            eprint!("{e}");
            let n = e.error_count();
            eprintln!(
                "\n{} error{} in {}",
                n,
                if n == 1 { "" } else { "s" },
                path.display()
            );
            Err(1)
        }
    }
}

pub fn validate(flag: Option<&Path>) -> i32 {
    match load(flag) {
        Ok((path, l)) => {
            let routes: usize = l.config.sites.iter().map(|s| s.routes.len()).sum();
            println!(
                "{}: valid ({} site{}, {} route{}, {} file{})",
                path.display(),
                l.config.sites.len(),
                if l.config.sites.len() == 1 { "" } else { "s" },
                routes,
                if routes == 1 { "" } else { "s" },
                l.sources.files().len(),
                if l.sources.files().len() == 1 {
                    ""
                } else {
                    "s"
                },
            );
            0
        }
        Err(c) => c,
    }
}

pub fn adapt(flag: Option<&Path>, pretty: bool) -> i32 {
    match load(flag) {
        Ok((_, l)) => {
            let json = if pretty {
                serde_json::to_string_pretty(&l.config)
            } else {
                serde_json::to_string(&l.config)
            };
            match json {
                Ok(j) => {
                    println!("{j}");
                    0
                }
                Err(e) => {
                    eprintln!("error: cannot encode config: {e}");
                    1
                }
            }
        }
        Err(c) => c,
    }
}

pub fn fmt(file: Option<&Path>, overwrite: bool, check: bool) -> i32 {
    let path = match resolve_config_path(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return 1;
        }
    };
    let formatted = match dwaar_config::fmt::format(&text) {
        Ok(f) => f,
        Err(diags) => {
            let mut sm = dwaar_config::source::SourceMap::new();
            sm.add(dwaar_config::source::SourceFile::new(
                path.display().to_string(),
                Some(path.clone()),
                text,
            ));
            eprint!("{}", dwaar_config::diag::render_all(&diags, &sm));
            return 1;
        }
    };
    if check {
        if formatted != text {
            eprintln!(
                "{} is not formatted (run: dwaar fmt --overwrite {})",
                path.display(),
                path.display()
            );
            return 1;
        }
        return 0;
    }
    if overwrite {
        if formatted != text {
            if let Err(e) = std::fs::write(&path, &formatted) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return 1;
            }
        }
        return 0;
    }
    print!("{formatted}");
    0
}

pub fn run(flag: Option<&Path>, threads: Option<usize>, watch: bool) -> i32 {
    let (path, loaded) = match load(flag) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let level = if loaded.config.global.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .init();
    let abs = std::path::absolute(&path).unwrap_or(path);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the control runtime: {e}");
            return 1;
        }
    };
    let server = match dwaar_core::server::Server::start(dwaar_core::server::StartOptions {
        config: loaded.config,
        sources: loaded.sources,
        path: Some(abs),
        threads,
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    rt.block_on(server.run_control(watch));
    server.shutdown();
    0
}
