//! Commands that describe the binary itself: shell completions and manual pages (both
//! generated from the command-line definition, so they cannot drift from it), the build
//! facts, the environment, and the config language's vocabulary.

use crate::Cli;
use clap::CommandFactory;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

pub fn completion(shell: clap_complete::Shell) -> i32 {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "dwaar", &mut out);
    emit(&out)
}

pub fn manpage(directory: Option<&Path>) -> i32 {
    let cmd = Cli::command();
    let result = match directory {
        None => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(cmd).render(&mut out) {
                Ok(()) => return emit(&out),
                Err(e) => Err(e),
            }
        }
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| write_pages(&cmd, dir)),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: cannot write the manual page: {e}");
            1
        }
    }
}

/// `dwaar.1` and one `dwaar-<command>.1` per visible subcommand.
fn write_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(dir.join("dwaar.1"), page)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("dwaar-{}", sub.get_name());
        let sub = sub.clone().name(name.clone()).display_name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
    }
    Ok(())
}

pub fn build_info() -> i32 {
    let mut o = String::new();
    let _ = writeln!(o, "version: {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(o, "commit: {}", env!("DWAAR_BUILD_COMMIT"));
    let _ = writeln!(o, "rustc: {}", env!("DWAAR_BUILD_RUSTC"));
    let _ = writeln!(o, "target: {}", env!("DWAAR_BUILD_TARGET"));
    let _ = writeln!(
        o,
        "profile: {} (opt-level {})",
        env!("DWAAR_BUILD_PROFILE"),
        env!("DWAAR_BUILD_OPT_LEVEL")
    );
    let allocator = if cfg!(feature = "system-alloc") || cfg!(target_env = "msvc") {
        "system"
    } else if cfg!(feature = "jemalloc-stats") {
        "jemalloc (with statistics)"
    } else {
        "jemalloc"
    };
    let _ = writeln!(o, "allocator: {allocator}");
    let _ = writeln!(o, "libraries:");
    for dep in env!("DWAAR_BUILD_DEPS")
        .split(';')
        .filter(|d| !d.is_empty())
    {
        let _ = writeln!(o, "  {dep}");
    }
    emit(o.as_bytes())
}

/// Writes a command's whole output; a reader that went away (`| head`) is not an error.
pub(crate) fn emit(bytes: &[u8]) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            1
        }
    }
}

pub fn environ() -> i32 {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    vars.sort();
    let mut o = String::new();
    for (k, v) in vars {
        let _ = writeln!(o, "{k}={v}");
    }
    if let Ok(exe) = std::env::current_exe() {
        let _ = writeln!(o, "dwaar.exe={}", exe.display());
    }
    if let Ok(dir) = std::env::current_dir() {
        let _ = writeln!(o, "dwaar.cwd={}", dir.display());
    }
    let storage = dwaar_tls::storage::Storage::from_config(None);
    let _ = writeln!(o, "dwaar.storage={}", storage.root().display());
    let _ = writeln!(o, "runtime.os={}", std::env::consts::OS);
    let _ = writeln!(o, "runtime.arch={}", std::env::consts::ARCH);
    let _ = writeln!(
        o,
        "runtime.cpus={}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    emit(o.as_bytes())
}

pub fn list_directives(all: bool, json: bool) -> i32 {
    let v = dwaar_config::compile::vocabulary();
    if json {
        return match serde_json::to_string_pretty(&v) {
            Ok(s) => emit(format!("{s}\n").as_bytes()),
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        };
    }
    let mut o = String::new();
    let mut section = |title: &str, names: &[&str]| {
        let _ = writeln!(o, "{title}:");
        for n in names {
            let _ = writeln!(o, "  {n}");
        }
    };
    section("directives", &v.directives);
    section("global options", &v.global_options);
    section("matchers", &v.matchers);
    if all {
        section(
            "directives refused for now (Caddy has them)",
            &v.directives_not_yet,
        );
        section(
            "global options refused for now (Caddy has them)",
            &v.global_options_not_yet,
        );
    }
    emit(o.as_bytes())
}
