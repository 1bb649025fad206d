//! Builds the kernel-side eBPF programs (`agent-ebpf`) with aya-build and leaves the objects in
//! `$OUT_DIR` ([`OBJECTS`]), which `src/ebpf.rs` and `src/profile.rs` embed.
//!
//! Needs a nightly toolchain with `rust-src` (the programs are built with `-Z build-std=core` for
//! `bpfel-unknown-none`) and `bpf-linker`, at the versions pinned in `agent-ebpf/toolchain.toml`;
//! `cargo xtask setup` installs them.
//!
//! When that toolchain is missing (or `AYA_BUILD_SKIP=1`), the objects are **empty
//! placeholders** and one `cargo::warning` says so: `cargo check`, clippy and unit tests of
//! everything that depends on the agent then need only the stable toolchain. Such an agent's
//! eBPF loaders fail with a message that names the cause (`ebpf::NOT_BUILT`). A build for real
//! use sets [`REQUIRE_ENV`] (`STRATA_REQUIRE_EBPF=1`; every cargo that `cargo xtask test`,
//! `vm-test`, `bench` and `local` run has it): then a missing toolchain fails the build with a
//! message that says what is missing and names `cargo xtask setup`.
//!
//! `AYA_BUILD_SKIP=1 cargo check` shows a placeholder build on a machine that has the toolchain.
//! A placeholder build reruns when [`REQUIRE_ENV`] or `PATH` changes, or when a toolchain or a
//! binary is installed with rustup or cargo, so the real programs replace the placeholders as
//! soon as the toolchain is there. A real build reruns only when the eBPF sources change.

use std::env;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// The eBPF crate's package name and directory (relative to this crate).
const EBPF_PACKAGE: &str = "strata-agent-ebpf";
const EBPF_DIR: &str = "../agent-ebpf";
const COMMON_DIR: &str = "../agent-common";

/// The objects the agent embeds: one per binary of the eBPF crate.
const OBJECTS: [&str; 5] = [
    "strata-agent-ebpf",
    "strata-device-ebpf",
    "strata-egress-ebpf",
    "strata-ports-ebpf",
    "strata-profile-ebpf",
];

/// aya-build's own switch to skip the eBPF build; honoured here as "use the placeholders".
const SKIP_ENV: &str = "AYA_BUILD_SKIP";

/// The toolchain pins (bpf-linker, LLVM major, dated nightly): `agent-ebpf/toolchain.toml`, the
/// one place they are written; xtask reads them with the same module.
#[path = "../agent-ebpf/toolchain.rs"]
mod toolchain;
use toolchain::{Pins, REQUIRE_ENV};

const SETUP: &str = "run `cargo xtask setup` to install the eBPF toolchain";

/// Why the programs were not built.
enum Failure {
    /// The eBPF toolchain is missing: placeholders will do, unless [`REQUIRE_ENV`] is set.
    Toolchain(String),
    /// [`SKIP_ENV`] asks for no eBPF build: placeholders, unless [`REQUIRE_ENV`] is set.
    Skipped,
    /// Anything else (the programs do not compile, a file is unreadable): always an error.
    Build(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::Build(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Self::Build(message.to_owned())
    }
}

fn main() -> ExitCode {
    let required = is_set(env::var(REQUIRE_ENV).ok().as_deref());
    let error = match build() {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Skipped) if !required => match placeholders(&format!("{SKIP_ENV} is set")) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => e,
        },
        Err(Failure::Toolchain(why)) if !required => match placeholders(&why) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => e,
        },
        Err(Failure::Skipped) => format!(
            "{SKIP_ENV} is set, but {REQUIRE_ENV} asks for the real eBPF programs: unset one of \
             them"
        ),
        Err(Failure::Toolchain(why)) => format!(
            "{why}; {SETUP} ({REQUIRE_ENV} is set: this build needs the real eBPF programs, \
             not placeholders)"
        ),
        Err(Failure::Build(why)) => why,
    };
    eprintln!("error: cannot build the agent's eBPF programs: {error}");
    ExitCode::FAILURE
}

/// Whether a [`REQUIRE_ENV`] (or `AYA_BUILD_SKIP`) value is set: not empty, `0` or `false`.
fn is_set(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
    })
}

fn out_dir() -> Result<PathBuf, String> {
    env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| "OUT_DIR is not set".to_owned())
}

fn build() -> Result<(), Failure> {
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
        ebpf_dir.join("toolchain.rs"),
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    println!("cargo::rerun-if-env-changed={SKIP_ENV}");

    let pins = Pins::read(&ebpf_dir)?;
    if is_set(env::var(SKIP_ENV).ok().as_deref()) {
        return Err(Failure::Skipped);
    }
    let toolchain = nightly_toolchain(&pins).map_err(Failure::Toolchain)?;
    check_rust_src(&toolchain).map_err(Failure::Toolchain)?;
    check_bpf_linker(&pins).map_err(Failure::Toolchain)?;

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

    // Every object must be real: an empty one is a placeholder left by an earlier build.
    let out_dir = out_dir()?;
    for name in OBJECTS {
        let object = out_dir.join(name);
        if !std::fs::metadata(&object).is_ok_and(|m| m.is_file() && m.len() > 0) {
            return Err(Failure::Build(format!(
                "the eBPF build produced no {} (the agent needs every object)",
                object.display()
            )));
        }
    }
    Ok(())
}

/// Leaves empty objects for the agent to embed, says so in one warning, and asks cargo to run
/// this script again when the toolchain may have become available.
fn placeholders(why: &str) -> Result<(), String> {
    let out_dir = out_dir()?;
    for name in OBJECTS {
        let object = out_dir.join(name);
        std::fs::write(&object, b"")
            .map_err(|e| format!("cannot write the placeholder {}: {e}", object.display()))?;
    }
    println!("cargo::rerun-if-env-changed={REQUIRE_ENV}");
    for var in ["PATH", "RUSTUP_HOME", "CARGO_HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    for path in toolchain_markers() {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
    println!(
        "cargo::warning=strata-agent is built without its eBPF programs ({why}): it runs without \
         eBPF accounting, device control and profiling; run `cargo xtask setup`, then rebuild \
         (set {REQUIRE_ENV}=1 to make this an error)"
    );
    Ok(())
}

/// Small files and directories that change when the eBPF toolchain is installed: cargo's bin
/// directory (bpf-linker), rustup's record of installed toolchains, and the component lists of
/// the installed nightlies (rust-src). Only existing paths: cargo reruns a script whose watched
/// path is missing on every build.
fn toolchain_markers() -> Vec<PathBuf> {
    let home = env::var_os("HOME").map(PathBuf::from);
    let under_home = |var: &str, dir: &str| {
        env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(dir)))
    };
    let mut markers = Vec::new();
    if let Some(cargo_home) = under_home("CARGO_HOME", ".cargo") {
        markers.push(cargo_home.join("bin"));
    }
    if let Some(rustup_home) = under_home("RUSTUP_HOME", ".rustup") {
        markers.push(rustup_home.join("update-hashes"));
        let toolchains = rustup_home.join("toolchains");
        if let Ok(entries) = std::fs::read_dir(&toolchains) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("nightly") {
                    markers.push(entry.path().join("lib/rustlib/components"));
                }
            }
        }
    }
    markers.retain(|p| p.exists());
    markers
}

/// `nightly` when its LLVM is the one bpf-linker works with, else the pinned dated nightly.
fn nightly_toolchain(pins: &Pins) -> Result<String, String> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))
        .map_err(|e| format!("rustup is not available ({e}); install it from https://rustup.rs"))?;
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
        "no nightly toolchain with LLVM {} is installed ({})",
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
            "the rust-src component of {toolchain} is not installed"
        ))
    }
}

fn check_bpf_linker(pins: &Pins) -> Result<(), String> {
    let version = output(Command::new("bpf-linker").arg("--version"))
        .map_err(|_| "bpf-linker is not installed (or not on PATH)".to_owned())?;
    if version.split_whitespace().last() == Some(pins.bpf_linker.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "bpf-linker {} is needed, found `{}`",
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
