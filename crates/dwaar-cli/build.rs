//! Link options for the `dwaar` binary.
//!
//! On Linux with GNU ld 2.38+ and glibc 2.36+ the binary is linked with
//! `-z pack-relative-relocs` (DT_RELR): the position-independent executable keeps its
//! address-space randomisation, but its ~27,000 relative relocations shrink from a
//! 640 KB table that the loader reads at every start to a few kilobytes, which is
//! resident memory saved in every process (see docs/performance.md, "Memory").

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" && linker_packs_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
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
