//! Link options and build facts for the `dwaar` binary.
//!
//! Linking: on Linux with GNU ld 2.38+ and glibc 2.36+ the binary is linked with
//! `-z pack-relative-relocs` (DT_RELR): the position-independent executable keeps its
//! address-space randomisation, but its ~27,000 relative relocations shrink from a
//! 640 KB table that the loader reads at every start to a few kilobytes, which is
//! resident memory saved in every process (see docs/performance.md, "Memory").
//!
//! Code layout: release builds on x86_64 Linux, which Rust 1.90 and later link with its
//! own LLD, pass `link/symbol-order.txt` to the linker (`--symbol-ordering-file`): the
//! functions a serving process runs are placed side by side, so serving touches a few
//! megabytes of contiguous code instead of pages spread over the whole text section
//! (`scripts/symbol-order` writes the list; names it lacks are simply not ordered).
//!
//! Facts for `dwaar build-info`: the commit, the compiler, the target and profile, and
//! the versions of the libraries that decide behaviour (from the workspace's
//! `Cargo.lock`).

use std::path::Path;
use std::process::Command;

/// The dependencies `build-info` names, in the order it prints them.
const NOTABLE: &[&str] = &[
    "pingora-core",
    "rustls",
    "aws-lc-rs",
    "tokio",
    "h2",
    "quinn",
    "h3",
    "rusqlite",
    "tikv-jemallocator",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" && linker_packs_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    symbol_order(&os, &env);
    build_facts();
}

/// Orders the serving functions first (see the module docs) when the linker is LLD:
/// the default for x86_64 Linux from Rust 1.90, unless the build names another linker.
/// `DWAAR_SYMBOL_ORDER=0` leaves the layout to the linker.
fn symbol_order(os: &str, env: &str) {
    println!("cargo:rerun-if-env-changed=DWAAR_SYMBOL_ORDER");
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let own_linker = flags.contains("linker") || flags.contains("fuse-ld");
    let wanted = std::env::var("DWAAR_SYMBOL_ORDER").map_or(true, |v| v != "0");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let file = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("link/symbol-order.txt");
    if os == "linux"
        && env == "gnu"
        && arch == "x86_64"
        && release
        && wanted
        && !own_linker
        && rustc_links_with_lld()
        && file.exists()
    {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            file.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Rust 1.90 and later link x86_64 Linux binaries with their bundled LLD.
fn rustc_links_with_lld() -> bool {
    // "rustc 1.95.0 (...)"
    let minor = rustc_version()
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}

/// True when the system linker knows the option (and so, on Debian 12 and later, the C
/// library loading the binary understands DT_RELR too).
fn linker_packs_relocations() -> bool {
    Command::new("ld")
        .arg("--help")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("pack-relative-relocs"))
        .unwrap_or(false)
}

fn build_facts() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let root = Path::new(&manifest).join("../..");

    // The commit when building from a git checkout; rebuilt when HEAD moves (not on
    // every change of the work tree, which would relink on each `git status`).
    let commit =
        git(&root, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DWAAR_BUILD_COMMIT={commit}");
    let head_ref = git(&root, &["symbolic-ref", "-q", "HEAD"]);
    for f in [Some("HEAD".to_string()), head_ref].into_iter().flatten() {
        let p = root.join(".git").join(f);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }

    println!("cargo:rustc-env=DWAAR_BUILD_RUSTC={}", rustc_version());
    for key in ["TARGET", "PROFILE", "OPT_LEVEL"] {
        println!(
            "cargo:rustc-env=DWAAR_BUILD_{key}={}",
            std::env::var(key).unwrap_or_default()
        );
    }

    let lock = root.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let deps: Vec<String> = NOTABLE
        .iter()
        .filter_map(|name| locked_version(&text, name).map(|v| format!("{name} {v}")))
        .collect();
    println!("cargo:rustc-env=DWAAR_BUILD_DEPS={}", deps.join(";"));
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The version of the first `[[package]]` called `name` in a Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let v = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(v.trim_end_matches('"').to_string());
        }
    }
    None
}

/// The compiler's `rustc -V` line ("rustc 1.95.0 (...)"), empty when it cannot run.
fn rustc_version() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
