//! Builds the kernel-side eBPF programs (`agent-ebpf`) with aya-build and leaves the object in
//! `$OUT_DIR/strata-agent-ebpf`, which `src/ebpf.rs` embeds.
//!
//! Needs a nightly toolchain with `rust-src` (the programs are built with `-Z build-std=core` for
//! `bpfel-unknown-none`) and `bpf-linker`; `cargo xtask setup` installs both. When one is missing
//! the build fails with a message that says so and names that command.

use std::env;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// The eBPF crate's package name and directory (relative to this crate).
const EBPF_PACKAGE: &str = "strata-agent-ebpf";
const EBPF_DIR: &str = "../agent-ebpf";
const COMMON_DIR: &str = "../agent-common";

/// bpf-linker 0.10.x links with rustc's own LLVM; it works with LLVM 22 nightlies.
const BPF_LINKER_VERSION: &str = "0.10.4";
const EBPF_LLVM_MAJOR: &str = "22";
/// Used when the machine's `nightly` has another LLVM. Keep in sync with xtask/src/setup.rs.
const EBPF_NIGHTLY_PIN: &str = "nightly-2026-05-19";

const SETUP: &str = "run `cargo xtask setup` to install the eBPF toolchain";

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: cannot build the agent's eBPF programs: {message}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<(), String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?);
    let dir = |rel: &str| {
        let path = manifest_dir.join(rel);
        path.canonicalize()
            .map_err(|e| format!("cannot find {}: {e}", path.display()))
    };
    let ebpf_dir = dir(EBPF_DIR)?;
    let common_dir = dir(COMMON_DIR)?;
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }

    let toolchain = nightly_toolchain()?;
    check_rust_src(&toolchain)?;
    check_bpf_linker()?;

    // aya-build runs `cargo build --package strata-agent-ebpf` in the current directory; the
    // eBPF crate is its own workspace (the host workspace excludes it), so run it there.
    env::set_current_dir(&ebpf_dir)
        .map_err(|e| format!("cannot enter {}: {e}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .map_err(|e| format!("{e:#} (the compiler's messages are above, as warnings)"))?;

    let object =
        PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?).join(EBPF_PACKAGE);
    if !object.is_file() {
        return Err(format!(
            "the eBPF build produced no {} (is AYA_BUILD_SKIP set? the agent needs the object)",
            object.display()
        ));
    }
    Ok(())
}

/// `nightly` when its LLVM is the one bpf-linker works with, else the pinned dated nightly.
fn nightly_toolchain() -> Result<String, String> {
    let list = output(Command::new("rustup").args(["toolchain", "list"])).map_err(|e| {
        format!("rustup is not available ({e}); install it from https://rustup.rs, then {SETUP}")
    })?;
    let host = env::var("HOST").map_err(|_| "HOST is not set".to_owned())?;
    let installed = |name: &str| {
        let full = format!("{name}-{host}");
        list.lines()
            .filter_map(|l| l.split_whitespace().next())
            .any(|t| t == name || t == full)
    };
    let mut seen = Vec::new();
    for candidate in ["nightly", EBPF_NIGHTLY_PIN] {
        if !installed(candidate) {
            continue;
        }
        let llvm = output(Command::new("rustup").args(["run", candidate, "rustc", "-vV"]))
            .ok()
            .and_then(|v| {
                v.lines()
                    .find_map(|l| l.strip_prefix("LLVM version: ").map(str::to_owned))
            });
        match llvm {
            Some(v) if v.split('.').next() == Some(EBPF_LLVM_MAJOR) => {
                return Ok(candidate.to_owned());
            }
            Some(v) => seen.push(format!("{candidate} has LLVM {v}")),
            None => seen.push(format!("{candidate} does not run")),
        }
    }
    Err(format!(
        "no nightly toolchain with LLVM {EBPF_LLVM_MAJOR} is installed ({}); {SETUP}",
        if seen.is_empty() {
            "none found".to_owned()
        } else {
            seen.join(", ")
        }
    ))
}

fn check_rust_src(toolchain: &str) -> Result<(), String> {
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    if components.lines().any(|c| c.starts_with("rust-src")) {
        Ok(())
    } else {
        Err(format!(
            "the rust-src component of {toolchain} is not installed; {SETUP}"
        ))
    }
}

fn check_bpf_linker() -> Result<(), String> {
    let version = output(Command::new("bpf-linker").arg("--version"))
        .map_err(|_| format!("bpf-linker is not installed (or not on PATH); {SETUP}"))?;
    if version.split_whitespace().last() == Some(BPF_LINKER_VERSION) {
        Ok(())
    } else {
        Err(format!(
            "bpf-linker {BPF_LINKER_VERSION} is needed, found `{}`; {SETUP}",
            version.trim()
        ))
    }
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
