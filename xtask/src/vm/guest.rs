//! The guest: the static test binaries, the initramfs and its init, booting qemu.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::kernel::{LockEntry, vm_dir};
use crate::setup::MUSL_TARGET;
use crate::util::{self, workspace_root};

/// The package holding the tests, and its helper binary.
const TESTS_PACKAGE: &str = "strata-vm-tests";
const HELPER: &str = "strata-vm-helper";
/// The line the init prints when the guest's userland starts.
const BOOTED_MARKER: &str = "STRATA-VM-BOOTED:";
/// The line the init prints last, with the tests' exit status.
const RESULT_MARKER: &str = "STRATA-VM-RESULT:";
/// Set to 1 to boot with KVM instead of TCG (the development machines' KVM cannot boot a kernel).
const KVM_ENV: &str = "STRATA_VM_KVM";

/// The guest's init: mounts, enables the cgroup controllers, runs the tests, reports, powers off.
const INIT: &str = r#"#!/bin/busybox sh
# The init of Strata's VM test guest (written by `cargo xtask vm-test`).
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# cgroup2 is the only hierarchy (the kernel runs with cgroup_no_v1=all).
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
echo "STRATA-VM-BOOTED: kernel $(uname -r), $(cut -d' ' -f1 /proc/uptime) s after boot"
# The network modules (veth, fq, htb, clsact, cls_bpf, the bridge, nf_tables NAT): built as
# modules by Debian. Loaded in passes, each module once, until a pass loads none (a module whose
# dependencies are not loaded yet fails and is tried again in the next pass); what is left
# unloaded is named.
for pass in 1 2 3 4 5 6; do
  loaded=0
  for m in /modules/*.ko; do
    n=$(basename "$m" .ko | tr - _)
    [ -e "$m" ] && ! grep -q "^$n " /proc/modules && insmod "$m" 2>/dev/null && loaded=1
  done
  [ $loaded = 0 ] && break
done
for m in /modules/*.ko; do
  n=$(basename "$m" .ko | tr - _)
  [ -e "$m" ] && ! grep -q "^$n " /proc/modules && echo "STRATA-VM: cannot load module $m"
done
ip link set lo up
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || echo "STRATA-VM: cannot enable the $c controller"
done
echo "STRATA-VM: cgroup controllers enabled: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
# A cgroup that lives for the whole run keeps the cpuset static keys on: otherwise every test
# cgroup created or removed below the root flips them, and TCG sometimes trips on the kernel's
# live text patching (a stray int3 oops in the page allocator).
mkdir -p /sys/fs/cgroup/strata-vm-pin
# Backtraces for panics, not for the tests' anyhow errors (their message is the point).
export STRATA_VM_GUEST=1 STRATA_VM_HELPER=/bin/strata-vm-helper RUST_BACKTRACE=1 RUST_LIB_BACKTRACE=0 HOME=/tmp TMPDIR=/tmp
set --
while IFS= read -r arg; do set -- "$@" "$arg"; done < /strata/args
status=0
for t in /tests/*; do
  echo "STRATA-VM: running $t --ignored --test-threads=1 --show-output $*"
  "$t" --ignored --test-threads=1 --show-output "$@"
  rc=$?
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
done
echo "STRATA-VM-RESULT: $status"
sync
poweroff -f
"#;

/// The static binaries that go into the guest besides busybox.
#[derive(Debug)]
pub struct TestBinaries {
    /// The integration test binaries, by name.
    pub tests: Vec<(String, PathBuf)>,
    /// `strata-vm-helper`: the tests' workload.
    pub helper: PathBuf,
    /// The real `strata` and `strata-agent` binaries (`/bin` in the guest), for the tests that
    /// start `strata local` the way a user does.
    pub programs: Vec<(String, PathBuf)>,
}

/// The packages whose binaries go into the guest's `/bin`, and those binaries.
const PROGRAMS: [(&str, &str); 2] = [("strata", "strata"), ("strata-agent", "strata-agent")];

/// One compiled artifact cargo reported: its target's name, kinds, whether it is a test
/// build, and the executable.
struct Artifact {
    name: String,
    kinds: Vec<serde_json::Value>,
    test: bool,
    exe: PathBuf,
}

/// Runs cargo with `args` for the musl target in the VM suite's own target dir, and returns
/// the executables it built.
fn cargo_musl(args: &[&str]) -> Result<Vec<Artifact>> {
    let root = workspace_root();
    // util::cargo(): the tests load the agent's eBPF programs, so the build must have them.
    let mut cmd = util::cargo();
    cmd.args(args)
        .args([
            "--target",
            MUSL_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        // Its own target dir: no lock contention with host builds, and its own profile settings
        // (no debug info: smaller binaries for the initramfs; panics still say file and line).
        .env("CARGO_TARGET_DIR", root.join("target").join("vm-tests"))
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        // ring (rustls' crypto) compiles C and assembly: the host's gcc makes objects the
        // static musl link takes (no musl-gcc needed; its sources use no libc headers' ABI).
        .env("CC_x86_64_unknown_linux_musl", "gcc")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "cargo {} for {MUSL_TARGET} failed ({}; the compiler's messages are above; if the \
         target is missing, run `cargo xtask setup`)",
        args.join(" "),
        out.status
    );
    let mut built = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        built.push(Artifact {
            name: msg["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            kinds: msg["target"]["kind"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            test: msg["profile"]["test"].as_bool() == Some(true),
            exe: PathBuf::from(exe),
        });
    }
    Ok(built)
}

/// Builds the tests, the helper and the real binaries, static, for the guest.
pub fn build_tests() -> Result<TestBinaries> {
    let started = Instant::now();
    eprintln!("vm-test: building {TESTS_PACKAGE}, strata and strata-agent for {MUSL_TARGET}");
    let mut tests = Vec::new();
    let mut helper = None;
    for a in cargo_musl(&["test", "--package", TESTS_PACKAGE, "--no-run"])? {
        if a.test && a.kinds.iter().any(|k| k == "test") {
            tests.push((a.name, a.exe));
        } else if !a.test && a.name == HELPER {
            helper = Some(a.exe);
        }
    }
    ensure!(
        !tests.is_empty(),
        "cargo built no integration test binary of {TESTS_PACKAGE}"
    );
    let helper = helper.with_context(|| format!("cargo built no {HELPER} binary"))?;
    let mut build = vec!["build"];
    for (package, bin) in PROGRAMS {
        build.extend(["--package", package, "--bin", bin]);
    }
    let mut programs = Vec::new();
    for a in cargo_musl(&build)? {
        if PROGRAMS.iter().any(|(_, bin)| *bin == a.name) {
            programs.push((a.name, a.exe));
        }
    }
    for (_, bin) in PROGRAMS {
        ensure!(
            programs.iter().any(|(name, _)| name == bin),
            "cargo built no {bin} binary for {MUSL_TARGET}"
        );
    }
    eprintln!(
        "vm-test: built {} test binar{}, the helper and {} programs in {:.1} s",
        tests.len(),
        if tests.len() == 1 { "y" } else { "ies" },
        programs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(TestBinaries {
        tests,
        helper,
        programs,
    })
}

#[derive(Debug)]
pub struct Initramfs {
    dir: PathBuf,
    /// The image (`initramfs.cpio.gz`).
    pub image: PathBuf,
}

impl Drop for Initramfs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Packs busybox, the init, the test binaries, the helper and the kernel's network modules
/// (`modules`, see [`super::kernel::modules`]) into an initramfs.
pub fn initramfs(bins: &TestBinaries, modules: &Path, filters: &[String]) -> Result<Initramfs> {
    let work = vm_dir()
        .join("initramfs")
        .join(format!("run-{}", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let stage = work.join("root");
    for dir in ["bin", "tests", "strata", "modules"] {
        fs::create_dir_all(stage.join(dir))
            .with_context(|| format!("creating {}", stage.join(dir).display()))?;
    }
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.is_file(),
        "{} is missing: run `cargo xtask setup` (it installs busybox-static)",
        busybox.display()
    );
    copy(busybox, &stage.join("bin/busybox"))?;
    copy(&bins.helper, &stage.join("bin").join(HELPER))?;
    for (name, exe) in &bins.programs {
        copy(exe, &stage.join("bin").join(name))?;
    }
    // A user database as on a real host: `strata local` runs tasks as `nobody` by default.
    fs::create_dir_all(stage.join("etc")).context("creating the guest's /etc")?;
    fs::write(
        stage.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .context("writing the guest's /etc/passwd")?;
    fs::write(stage.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .context("writing the guest's /etc/group")?;
    for entry in fs::read_dir(modules).with_context(|| format!("reading {}", modules.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", modules.display()))?
            .path();
        if let Some(name) = path.file_name() {
            copy(&path, &stage.join("modules").join(name))?;
        }
    }
    copy_with_libraries(Path::new(TC), &stage)?;
    for (name, exe) in &bins.tests {
        copy(exe, &stage.join("tests").join(name))?;
    }
    let init = stage.join("init");
    fs::write(&init, INIT).with_context(|| format!("writing {}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", init.display()))?;
    let mut args = String::new();
    for f in filters {
        ensure!(
            !f.contains('\n'),
            "a test filter cannot contain a newline: {f:?}"
        );
        args.push_str(f);
        args.push('\n');
    }
    fs::write(stage.join("strata/args"), args).context("writing the guest's arguments")?;

    let image = work.join("initramfs.cpio.gz");
    let status = Command::new("sh")
        .args([
            "-c",
            "cd \"$1\" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > \"$2\"",
            "sh",
        ])
        .arg(&stage)
        .arg(&image)
        .status()
        .context("running cpio and gzip")?;
    ensure!(
        status.success(),
        "packing the initramfs failed ({status}): are cpio and gzip installed? run `cargo xtask setup`"
    );
    fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    Ok(Initramfs { dir: work, image })
}

/// iproute2's `tc`, which `cargo xtask bench network` uses in the guest for its htb comparison
/// (busybox's tc cannot add classes or filters).
const TC: &str = "/usr/sbin/tc";

/// Copies a dynamically linked host binary into the initramfs at the same path, with the shared
/// libraries `ldd` lists for it (and the dynamic loader). Nothing when the binary is missing.
fn copy_with_libraries(binary: &Path, stage: &Path) -> Result<()> {
    if !binary.is_file() {
        eprintln!(
            "vm-test: {} is not on this machine: the guest has no iproute2 tc (install iproute2)",
            binary.display()
        );
        return Ok(());
    }
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut files = vec![binary.to_path_buf()];
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push(PathBuf::from(p));
        }
    }
    for file in files {
        let rel = file.strip_prefix("/").unwrap_or(&file);
        let to = stage.join(rel);
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        copy(&file, &to)?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Boots `vmlinux` with `initramfs`, streams the console, and fails unless the tests pass.
pub fn boot(entry: &LockEntry, vmlinux: &Path, initramfs: &Path, timeout_secs: u64) -> Result<()> {
    let kvm = std::env::var(KVM_ENV).is_ok_and(|v| v == "1");
    let qemu = crate::setup::qemu();
    let mut cmd = Command::new(&qemu.binary);
    for dir in &qemu.firmware {
        cmd.arg("-L").arg(dir);
    }
    if kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg", "-cpu", "max"]);
    }
    cmd.args([
        "-m",
        "1G",
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
    ])
    .arg(vmlinux)
    .arg("-initrd")
    .arg(initramfs)
    .args([
        "-append",
        "console=ttyS0 panic=-1 cgroup_no_v1=all quiet loglevel=1 rdinit=/init",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());

    eprintln!(
        "vm-test: kernel {}: booting {} {} ({}, {} s limit)",
        entry.kernel,
        entry.package,
        entry.version,
        if kvm { "KVM" } else { "TCG" },
        timeout_secs
    );
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "starting {}: run `cargo xtask setup` (it installs qemu)",
            qemu.binary.display()
        )
    })?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
            if text.starts_with(BOOTED_MARKER) {
                let _ = tx.send(Marker::Booted(Instant::now()));
            } else if let Some(rest) = text.strip_prefix(RESULT_MARKER) {
                let _ = tx.send(Marker::Result(rest.trim().parse::<i32>().ok()));
            }
        }
    });

    let deadline = started + Duration::from_secs(timeout_secs);
    let exited = loop {
        if child.try_wait().context("waiting for qemu")?.is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    let total = started.elapsed();
    let mut booted = None;
    let mut result = None;
    for m in rx.try_iter() {
        match m {
            Marker::Booted(at) => booted = Some(at.duration_since(started)),
            Marker::Result(code) => result = Some(code),
        }
    }
    if !exited {
        bail!(
            "kernel {}: the guest did not finish within {timeout_secs} s and was killed (hung? \
             its last output is above; raise the limit with --timeout)",
            entry.kernel
        );
    }
    eprintln!(
        "vm-test: kernel {}: guest userland up after {}, whole run {:.1} s",
        entry.kernel,
        booted.map_or_else(
            || "(never)".to_owned(),
            |b| format!("{:.1} s", b.as_secs_f64())
        ),
        total.as_secs_f64()
    );
    match result {
        Some(Some(0)) => Ok(()),
        Some(Some(code)) => bail!(
            "kernel {}: the vm tests failed (exit status {code}); their output is above",
            entry.kernel
        ),
        Some(None) => bail!(
            "kernel {}: the guest printed a malformed result line",
            entry.kernel
        ),
        None => bail!(
            "kernel {}: the guest stopped without reporting a result (kernel panic, or the init \
             failed; its output is above)",
            entry.kernel
        ),
    }
}

enum Marker {
    Booted(Instant),
    Result(Option<i32>),
}
