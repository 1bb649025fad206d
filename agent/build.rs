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

/// The toolchain pins (bpf-linker, LLVM major, dated nightly): `agent-ebpf/toolchain.toml`, the
/// one place they are written; xtask reads them with the same module.
#[path = "../agent-ebpf/toolchain.rs"]
mod toolchain;
use toolchain::Pins;

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
        Pins::path(&ebpf_dir),
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }

    let pins = Pins::read(&ebpf_dir)?;
    let toolchain = nightly_toolchain(&pins)?;
    check_rust_src(&toolchain)?;
    check_bpf_linker(&pins)?;

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
fn nightly_toolchain(pins: &Pins) -> Result<String, String> {
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
    for candidate in ["nightly", pins.nightly_pin.as_str()] {
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
            Some(v) if v.split('.').next() == Some(pins.llvm_major.as_str()) => {
                return Ok(candidate.to_owned());
            }
            Some(v) => seen.push(format!("{candidate} has LLVM {v}")),
            None => seen.push(format!("{candidate} does not run")),
        }
    }
    Err(format!(
        "no nightly toolchain with LLVM {} is installed ({}); {SETUP}",
        pins.llvm_major,
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

fn check_bpf_linker(pins: &Pins) -> Result<(), String> {
    let version = output(Command::new("bpf-linker").arg("--version"))
        .map_err(|_| format!("bpf-linker is not installed (or not on PATH); {SETUP}"))?;
    if version.split_whitespace().last() == Some(pins.bpf_linker.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "bpf-linker {} is needed, found `{}`; {SETUP}",
            pins.bpf_linker,
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
