//! `cargo xtask setup`: installs the build's and the tests' prerequisites, idempotently.
//!
//! Every step first checks whether its piece is already there and does nothing if so, so a second
//! run takes a second or two. What it installs:
//!
//! - Debian packages ([`APT_PACKAGES`]): qemu and the initramfs tools for `cargo xtask vm-test`.
//! - The musl target for the pinned toolchain (static test binaries for the qemu guest).
//! - A nightly toolchain with `rust-src` (the eBPF programs are built with `-Z build-std=core`)
//!   and `clippy` (`cargo xtask test` lints the eBPF crate with it): [`EBPF_NIGHTLY_COMPONENTS`].
//! - `bpf-linker`, which links the eBPF object.
//! - `cargo-fuzz` ([`CARGO_FUZZ_VERSION`]), which builds and runs the fuzz targets in `fuzz/`.
//! - A Python venv at `target/mesos-venv` with pymesos ([`PYMESOS_VERSION`]), the third-party
//!   Mesos scheduler library `cli/tests/it/mesos_pymesos.rs` runs against `strata local`.
//! - Debian's `chromium` (in [`APT_PACKAGES`]) and a Python venv at `target/ui-venv` with
//!   Playwright for Python ([`PLAYWRIGHT_VERSION`]), which `cli/tests/it/ui_browser.rs` drives
//!   the dashboard with. Playwright's own browser downloads are never run: the test points
//!   it at /usr/bin/chromium.
//!
//! The eBPF toolchain's versions (bpf-linker, LLVM major, dated nightly) are pinned in
//! `agent-ebpf/toolchain.toml` ([`ebpf_pins`]), which agent/build.rs reads too.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::ebpf_toolchain::Pins;
use crate::util::{self, workspace_root};

/// Debian packages the build and the tests need.
///
/// qemu-system-x86 boots the test kernels; busybox-static is the guest's userland; cpio and gzip
/// pack the initramfs; xz-utils, lz4 and zstd decompress kernel images; kmod has depmod.
pub const APT_PACKAGES: &[&str] = &[
    "busybox-static",
    "ca-certificates",
    // chromium: the dashboard's browser tests (cli/tests/it/ui_browser.rs), headless.
    "chromium",
    "cpio",
    // crun and runc: the container runtimes `cargo xtask bench launch` compares the agent with.
    "crun",
    // etcd: the allocators' registry and leader election in HA mode (strata-etcd's tests run
    // a real member).
    "etcd-server",
    "gzip",
    "kmod",
    "lz4",
    "qemu-system-x86",
    "runc",
    // systemd-analyze, to verify the unit scripts/install-agent.sh installs.
    "systemd",
    "xz-utils",
    "zstd",
];

/// The Rust target of the static test binaries that run inside the qemu guest.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The eBPF crate's directory, relative to the workspace root.
pub const EBPF_DIR: &str = "agent-ebpf";

/// The components of the eBPF build's nightly: the core library's source (`-Z build-std=core`)
/// and clippy (`cargo xtask test` lints the eBPF crate).
pub const EBPF_NIGHTLY_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

/// The eBPF build's toolchain pins, from `agent-ebpf/toolchain.toml`.
pub fn ebpf_pins() -> Result<Pins> {
    Pins::read(&workspace_root().join(EBPF_DIR)).map_err(anyhow::Error::msg)
}

/// Arguments of `cargo xtask setup`.
#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Only report what is missing; install nothing (exits non-zero when something is missing).
    #[arg(long)]
    pub check: bool,
}

/// Installs what is missing.
pub fn run(args: &SetupArgs) -> Result<()> {
    let started = Instant::now();
    let mut missing = Vec::new();

    let apt_missing = missing_apt_packages()?;
    if apt_missing.is_empty() {
        println!(
            "setup: apt packages: all present ({})",
            APT_PACKAGES.join(" ")
        );
    } else if args.check {
        missing.push(format!("apt packages: {}", apt_missing.join(" ")));
    } else {
        install_apt_packages(&apt_missing)?;
    }
    if let Some(qemu) = private_qemu_ready() {
        println!("setup: qemu: private copy {}", qemu.binary.display());
    }

    let pins = ebpf_pins()?;
    let toolchain = pinned_toolchain()?;
    if rustup_lines(&["target", "list", "--installed", "--toolchain", &toolchain])?
        .iter()
        .any(|t| t == MUSL_TARGET)
    {
        println!("setup: rust target {MUSL_TARGET} ({toolchain}): present");
    } else if args.check {
        missing.push(format!("rust target {MUSL_TARGET} for {toolchain}"));
    } else {
        println!("setup: rust target {MUSL_TARGET} ({toolchain}): installing");
        util::run(Command::new("rustup").args([
            "target",
            "add",
            "--toolchain",
            &toolchain,
            MUSL_TARGET,
        ]))?;
    }

    match ebpf_nightly(&pins)? {
        Some(nightly) => {
            for component in EBPF_NIGHTLY_COMPONENTS {
                if has_component(&nightly, component)? {
                    println!("setup: {nightly} with {component}: present");
                } else if args.check {
                    missing.push(format!("{component} for {nightly}"));
                } else {
                    println!("setup: {component} for {nightly}: installing");
                    util::run(Command::new("rustup").args([
                        "component",
                        "add",
                        component,
                        "--toolchain",
                        &nightly,
                    ]))?;
                }
            }
        }
        None if args.check => missing.push(format!(
            "a nightly toolchain with LLVM {} ({})",
            pins.llvm_major, pins.nightly_pin
        )),
        None => {
            println!(
                "setup: {}: installing (the eBPF build's nightly)",
                pins.nightly_pin
            );
            util::run(Command::new("rustup").args([
                "toolchain",
                "install",
                &pins.nightly_pin,
                "--profile",
                "minimal",
                "--component",
                &EBPF_NIGHTLY_COMPONENTS.join(","),
            ]))?;
        }
    }

    match bpf_linker_version() {
        Some(v) if v == pins.bpf_linker => println!("setup: bpf-linker {v}: present"),
        found if args.check => missing.push(format!(
            "bpf-linker {} (found {})",
            pins.bpf_linker,
            found.as_deref().unwrap_or("none")
        )),
        found => {
            if let Some(v) = found {
                println!(
                    "setup: bpf-linker {v} found, {} wanted: reinstalling",
                    pins.bpf_linker
                );
            }
            println!(
                "setup: bpf-linker {}: installing (about 3 minutes)",
                pins.bpf_linker
            );
            let t = Instant::now();
            util::run(Command::new("cargo").args([
                "install",
                "--locked",
                "--force",
                &format!("bpf-linker@{}", pins.bpf_linker),
            ]))?;
            println!("setup: bpf-linker installed in {:.0?}", t.elapsed());
        }
    }

    if let Some(missing_fuzz) = ensure_cargo_fuzz(args.check)? {
        missing.push(missing_fuzz);
    }

    if mesos_venv_ready() {
        println!("setup: pymesos {PYMESOS_VERSION} venv: present");
    } else if args.check {
        missing.push(format!(
            "pymesos {PYMESOS_VERSION} in {}",
            mesos_venv().display()
        ));
    } else {
        install_mesos_venv()?;
    }

    if ui_venv_ready() {
        println!("setup: playwright {PLAYWRIGHT_VERSION} venv: present");
    } else if args.check {
        missing.push(format!(
            "playwright {PLAYWRIGHT_VERSION} in {}",
            ui_venv().display()
        ));
    } else {
        install_ui_venv()?;
    }

    if !missing.is_empty() {
        bail!(
            "missing: {}; run `cargo xtask setup` to install them",
            missing.join("; ")
        );
    }
    println!("setup: done in {:.1?}", started.elapsed());
    Ok(())
}

/// The toolchain rust-toolchain.toml pins (`channel = "..."`).
pub fn pinned_toolchain() -> Result<String> {
    let path = workspace_root().join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("no `channel = \"...\"` line in {}", path.display()))
}

fn missing_apt_packages() -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for pkg in APT_PACKAGES {
        let present =
            dpkg_installed(pkg)? || (*pkg == QEMU_PACKAGE && private_qemu_ready().is_some());
        if !present {
            missing.push((*pkg).to_owned());
        }
    }
    Ok(missing)
}

fn dpkg_installed(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query: is this a Debian machine?")?;
    Ok(String::from_utf8_lossy(&out.stdout).starts_with("ii"))
}

/// `apt-get ARGS`, through sudo when not root, never asking questions.
fn apt_get(args: &[&str]) -> Command {
    let mut cmd = if is_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Installs `pkgs` without ever removing an installed package: apt's plan is simulated first.
/// When only Debian's qemu-system-x86 would remove something (typically a newer qemu-utils
/// from backports, which breaks Debian 12's qemu-system-common), the other packages and
/// qemu's libraries are installed and qemu itself is unpacked privately under `.vm/qemu`;
/// any other removal is refused with a message naming it.
fn install_apt_packages(pkgs: &[String]) -> Result<()> {
    util::run(&mut apt_get(&["-q", "update"])).context(
        "apt-get update failed: run `cargo xtask setup` as root, or with sudo available",
    )?;
    let removed = apt_removals(pkgs)?;
    if removed.is_empty() {
        return apt_install(pkgs);
    }
    let rest: Vec<String> = pkgs
        .iter()
        .filter(|p| *p != QEMU_PACKAGE)
        .cloned()
        .collect();
    if rest.len() < pkgs.len() {
        let mut with_libs = rest.clone();
        with_libs.extend(private_qemu_libraries()?);
        if apt_removals(&with_libs)?.is_empty() {
            println!(
                "setup: installing {QEMU_PACKAGE} would remove {}: keeping them, and unpacking \
                 qemu privately under {} instead",
                removed.join(" "),
                private_qemu_dir().display()
            );
            apt_install(&with_libs)?;
            return install_private_qemu();
        }
    }
    bail!(
        "installing {} would remove installed packages ({}); setup never removes packages: \
         install these yourself in a way that keeps them (for example from the release the \
         installed ones came from), then run `cargo xtask setup` again",
        pkgs.join(" "),
        removed.join(" ")
    )
}

fn apt_install(pkgs: &[String]) -> Result<()> {
    if pkgs.is_empty() {
        return Ok(());
    }
    println!("setup: apt packages: installing {}", pkgs.join(" "));
    let mut args = vec![
        "-q",
        "-y",
        "--no-install-recommends",
        "--no-remove",
        "install",
    ];
    args.extend(pkgs.iter().map(String::as_str));
    util::run(&mut apt_get(&args)).with_context(|| {
        format!(
            "apt-get install {} failed: run `cargo xtask setup` as root, or with sudo available",
            pkgs.join(" ")
        )
    })
}

/// The installed packages apt would remove to install `pkgs` (a simulation; changes nothing).
fn apt_removals(pkgs: &[String]) -> Result<Vec<String>> {
    let mut args = vec!["-s", "-q", "-y", "--no-install-recommends", "install"];
    args.extend(pkgs.iter().map(String::as_str));
    let out = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get -s (a simulated install)")?;
    if !out.status.success() {
        bail!(
            "apt-get cannot install {}: {}",
            pkgs.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(removals_in(&String::from_utf8_lossy(&out.stdout)))
}

/// The package names of the `Remv NAME [VERSION]` lines of `apt-get -s` output.
fn removals_in(simulation: &str) -> Vec<String> {
    simulation
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The Debian package that boots the test kernels.
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// The packages unpacked into the private qemu: the emulator and its firmware.
const PRIVATE_QEMU_PACKAGES: &[&str] = &[
    QEMU_PACKAGE,
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "ipxe-qemu",
];

/// Where a private qemu is unpacked (gitignored, beside the test kernels).
pub fn private_qemu_dir() -> PathBuf {
    workspace_root().join(".vm").join("qemu")
}

/// A qemu to boot the test kernels with.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// The `qemu-system-x86_64` binary.
    pub binary: PathBuf,
    /// Firmware directories to pass with `-L` (empty for the system's qemu).
    pub firmware: Vec<PathBuf>,
}

/// The private qemu, when it is unpacked and runs.
fn private_qemu_ready() -> Option<Qemu> {
    let root = private_qemu_dir().join("root");
    let qemu = Qemu {
        binary: root.join("usr/bin/qemu-system-x86_64"),
        firmware: ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"]
            .iter()
            .map(|d| root.join(d))
            .collect(),
    };
    Command::new(&qemu.binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then_some(qemu)
}

/// The qemu the VM suite boots with: the system's when installed, else the private copy.
pub fn qemu() -> Qemu {
    private_qemu_ready()
        .filter(|_| !dpkg_installed(QEMU_PACKAGE).unwrap_or(false))
        .unwrap_or_else(|| Qemu {
            binary: PathBuf::from("qemu-system-x86_64"),
            firmware: Vec::new(),
        })
}

/// The libraries the private qemu's binaries link with: the first alternative of each
/// dependency of [`PRIVATE_QEMU_PACKAGES`] that is not itself one of them.
fn private_qemu_libraries() -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(PRIVATE_QEMU_PACKAGES)
        .output()
        .context("running apt-cache show")?;
    if !out.status.success() {
        bail!(
            "apt-cache show {} failed: {}",
            PRIVATE_QEMU_PACKAGES.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(dependencies_in(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|d| !PRIVATE_QEMU_PACKAGES.contains(&d.as_str()))
        .collect())
}

/// The package names in the `Depends:` fields of `apt-cache show` output: the first
/// alternative of each, without version or architecture, each once.
fn dependencies_in(show: &str) -> Vec<String> {
    let mut deps: Vec<String> = Vec::new();
    for field in show.lines().filter_map(|l| l.strip_prefix("Depends:")) {
        for dep in field.split(',') {
            let first = dep.split('|').next().unwrap_or_default();
            let name = first
                .split(['(', ' '])
                .find(|s| !s.is_empty())
                .unwrap_or_default();
            let name = name.split(':').next().unwrap_or_default();
            if !name.is_empty() && !deps.iter().any(|d| d == name) {
                deps.push(name.to_owned());
            }
        }
    }
    deps
}

/// Downloads [`PRIVATE_QEMU_PACKAGES`] with `apt-get download` and unpacks them under
/// [`private_qemu_dir`]; the system's packages are not touched.
fn install_private_qemu() -> Result<()> {
    let dir = private_qemu_dir();
    let debs = dir.join("debs");
    let root = dir.join("root");
    for d in [&debs, &root] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    util::run(
        Command::new("apt-get")
            // The download directory belongs to this user, not to apt's sandbox user.
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .args(PRIVATE_QEMU_PACKAGES)
            .current_dir(&debs),
    )
    .context("cannot download qemu's packages with apt-get download")?;
    for entry in std::fs::read_dir(&debs).with_context(|| format!("reading {}", debs.display()))? {
        let deb = entry?.path();
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
            .with_context(|| format!("cannot unpack {}", deb.display()))?;
    }
    match private_qemu_ready() {
        Some(qemu) => {
            println!("setup: qemu unpacked: {}", qemu.binary.display());
            Ok(())
        }
        None => bail!(
            "the qemu unpacked under {} does not run (a missing library?): run {} --version \
             to see why",
            root.display(),
            root.join("usr/bin/qemu-system-x86_64").display()
        ),
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn rustup_lines(args: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("rustup")
        .args(args)
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .context("running rustup: install it from https://rustup.rs")?;
    if !out.status.success() {
        bail!(
            "rustup {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect())
}

fn has_component(toolchain: &str, component: &str) -> Result<bool> {
    Ok(
        rustup_lines(&["component", "list", "--installed", "--toolchain", toolchain])?
            .iter()
            .any(|c| c.starts_with(component)),
    )
}

/// The nightly toolchain the eBPF build uses: `nightly` when its LLVM is the pinned major,
/// else the pinned dated nightly when installed; `None` when neither is usable.
pub fn ebpf_nightly(pins: &Pins) -> Result<Option<String>> {
    let installed = rustup_lines(&["toolchain", "list"])?;
    for candidate in ["nightly", pins.nightly_pin.as_str()] {
        let present = installed.iter().any(|t| {
            t.split_whitespace().next() == Some(&format!("{candidate}-x86_64-unknown-linux-gnu"))
        });
        if present && llvm_major(candidate).as_deref() == Some(pins.llvm_major.as_str()) {
            return Ok(Some(candidate.to_owned()));
        }
    }
    Ok(None)
}

fn llvm_major(toolchain: &str) -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
}

fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .map(str::to_owned)
}

/// The cargo-fuzz release that builds and runs the fuzz targets (`cargo xtask fuzz`).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz_version() -> Option<String> {
    let out = Command::new("cargo-fuzz").arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .map(str::to_owned)
}

/// Installs cargo-fuzz [`CARGO_FUZZ_VERSION`] when it is missing or another release (with
/// `check`, only says so: `Some(what is missing)`).
pub fn ensure_cargo_fuzz(check: bool) -> Result<Option<String>> {
    match cargo_fuzz_version() {
        Some(v) if v == CARGO_FUZZ_VERSION => {
            println!("setup: cargo-fuzz {v}: present");
            Ok(None)
        }
        found if check => Ok(Some(format!(
            "cargo-fuzz {CARGO_FUZZ_VERSION} (found {})",
            found.as_deref().unwrap_or("none")
        ))),
        found => {
            if let Some(v) = found {
                println!("setup: cargo-fuzz {v} found, {CARGO_FUZZ_VERSION} wanted: reinstalling");
            }
            println!("setup: cargo-fuzz {CARGO_FUZZ_VERSION}: installing (about a minute)");
            let t = Instant::now();
            util::run(Command::new("cargo").args([
                "install",
                "--locked",
                "--force",
                &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            ]))?;
            println!("setup: cargo-fuzz installed in {:.0?}", t.elapsed());
            Ok(None)
        }
    }
}

/// The pymesos release the Mesos compatibility test runs (it speaks the v1 scheduler HTTP API).
pub const PYMESOS_VERSION: &str = "0.3.15";

/// pymesos' dependencies, pinned. http-parser is installed apart: see [`install_mesos_venv`].
const PYMESOS_DEPS: &[&str] = &["six==1.17.0", "addict==2.4.0", "kazoo==2.11.0"];
const HTTP_PARSER: &str = "http-parser==0.9.0";

/// The venv with pymesos, `target/mesos-venv` (the test looks for it there).
pub fn mesos_venv() -> PathBuf {
    workspace_root().join("target").join("mesos-venv")
}

fn mesos_venv_ready() -> bool {
    let python = mesos_venv().join("bin").join("python");
    Command::new(python)
        .args([
            "-c",
            &format!(
                "import importlib.metadata as m, pymesos, http_parser.http; \
                 assert m.version('pymesos') == '{PYMESOS_VERSION}'"
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates the venv and installs pymesos from PyPI, unmodified. Its dependency http-parser
/// 0.9.0 ships only an sdist whose C extension (Cython output of 2013) no longer compiles
/// on Python 3.8+; the package's own fallback is its pure-Python parser
/// (`http_parser/http.py` imports `pyparser` when the extension is absent, and pymesos'
/// process.py handles that parser explicitly), so its Python modules are copied from the
/// sdist into the venv without the extension.
fn install_mesos_venv() -> Result<()> {
    let venv = mesos_venv();
    println!(
        "setup: pymesos {PYMESOS_VERSION} venv: installing into {}",
        venv.display()
    );
    let t = Instant::now();
    util::run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context(
        "cannot create a Python venv: install python3 with the venv module (apt-get install \
         python3-venv)",
    )?;
    let python = venv.join("bin").join("python");
    let pip = |args: &[&str]| {
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "pip", "--disable-pip-version-check", "-q"]);
        cmd.args(args);
        cmd
    };
    let mut install = vec!["install", "--no-deps"];
    let pymesos = format!("pymesos=={PYMESOS_VERSION}");
    install.push(&pymesos);
    install.extend(PYMESOS_DEPS);
    util::run(&mut pip(&install)).context("cannot install pymesos from PyPI")?;
    let sdist = venv.join("sdist");
    let sdist_str = sdist.to_string_lossy().into_owned();
    util::run(&mut pip(&[
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        HTTP_PARSER,
        "-d",
        &sdist_str,
    ]))
    .context("cannot download http-parser from PyPI")?;
    let copy = r#"
import glob, os, sys, sysconfig, tarfile
site = sysconfig.get_paths()["purelib"]
[src] = glob.glob(os.path.join(sys.argv[1], "http-parser-*.tar.gz"))
with tarfile.open(src) as t:
    for m in t.getmembers():
        parts = m.name.split("/")
        if len(parts) == 3 and parts[1] == "http_parser" and parts[2].endswith(".py"):
            os.makedirs(os.path.join(site, "http_parser"), exist_ok=True)
            with open(os.path.join(site, "http_parser", parts[2]), "wb") as f:
                f.write(t.extractfile(m).read())
"#;
    util::run(Command::new(&python).args(["-c", copy, &sdist_str]))
        .context("cannot install http-parser's Python modules into the venv")?;
    if !mesos_venv_ready() {
        bail!(
            "pymesos is installed in {} but does not import: remove that directory and run \
             `cargo xtask setup` again",
            venv.display()
        );
    }
    println!("setup: pymesos installed in {:.0?}", t.elapsed());
    Ok(())
}

/// Playwright for Python, pinned: the dashboard's browser tests drive chromium with it.
pub const PLAYWRIGHT_VERSION: &str = "1.65.3";

/// The venv with Playwright, `target/ui-venv` (the browser test looks for it there).
pub fn ui_venv() -> PathBuf {
    workspace_root().join("target").join("ui-venv")
}

fn ui_venv_ready() -> bool {
    let python = ui_venv().join("bin").join("python");
    Command::new(python)
        .args([
            "-c",
            &format!(
                "import importlib.metadata as m, playwright.sync_api; \
                 assert m.version('playwright') == '{PLAYWRIGHT_VERSION}'"
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates the venv and installs Playwright from PyPI (its driver comes in the wheel; its
/// browser download, `playwright install`, is not run: the tests use Debian's chromium).
fn install_ui_venv() -> Result<()> {
    let venv = ui_venv();
    println!(
        "setup: playwright {PLAYWRIGHT_VERSION} venv: installing into {}",
        venv.display()
    );
    let t = Instant::now();
    util::run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context(
        "cannot create a Python venv: install python3 with the venv module (apt-get install \
         python3-venv)",
    )?;
    let python = venv.join("bin").join("python");
    util::run(Command::new(&python).args([
        "-m",
        "pip",
        "--disable-pip-version-check",
        "-q",
        "install",
        &format!("playwright=={PLAYWRIGHT_VERSION}"),
    ]))
    .context("cannot install playwright from PyPI")?;
    if !ui_venv_ready() {
        bail!(
            "playwright is installed in {} but does not import: remove that directory and run \
             `cargo xtask setup` again",
            venv.display()
        );
    }
    println!("setup: playwright installed in {:.0?}", t.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_are_read_from_a_simulated_install() {
        let sim = "NOTE: This is only a simulation!\n\
                   Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\n\
                   Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])\n\
                   Conf qemu-system-common (1:7.2+dfsg-7+deb12u18+b2 Debian:12.14/oldstable [amd64])\n";
        assert_eq!(removals_in(sim), vec!["qemu-utils".to_owned()]);
        assert!(removals_in("Inst cpio (2.13)\nConf cpio (2.13)\n").is_empty());
    }

    #[test]
    fn dependencies_take_the_first_alternative_without_versions() {
        let show = "Package: qemu-system-x86\n\
                    Depends: libaio1 (>= 0.3.93), libc6 (>= 2.34), qemu-system-common (= 1:7.2), seabios, ipxe-qemu | ipxe-qemu-256k, libfoo:any\n\
                    Package: qemu-system-common\n\
                    Depends: libc6 (>= 2.34), libcap-ng0\n";
        assert_eq!(
            dependencies_in(show),
            [
                "libaio1",
                "libc6",
                "qemu-system-common",
                "seabios",
                "ipxe-qemu",
                "libfoo",
                "libcap-ng0"
            ]
        );
    }
}
