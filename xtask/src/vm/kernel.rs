//! The guest kernels: the lock file, fetching Debian's kernel packages, extracting a `vmlinux`.
//!
//! `vm-tests/kernels.lock` names, per kernel series, the Debian suite, the binary package, its
//! exact version and its sha256. Packages are fetched with `apt-get download` through a private
//! apt configuration under `.vm/apt` (its own sources list with just the suites the lock names,
//! its own lists and cache), so the machine's apt sources are neither used nor changed. Debian
//! keeps only each suite's current kernel in its archive: when the locked version is gone, the
//! error says to run `cargo xtask vm-test --relock` and commit the new lock file.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};

use crate::setup::is_root;
use crate::util::workspace_root;

/// The kernel series `--relock` resolves, and the Debian suite each comes from.
const SUITES: &[(&str, &str)] = &[("6.1", "bookworm"), ("6.12", "trixie")];
/// Debian's archive; `STRATA_DEBIAN_MIRROR` overrides it.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const LOCK_PATH: &str = "vm-tests/kernels.lock";

/// One locked kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockEntry {
    /// The series, e.g. `6.1`.
    pub kernel: String,
    /// The Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// The binary package, e.g. `linux-image-6.1.0-50-amd64`.
    pub package: String,
    /// Its exact version.
    pub version: String,
    /// The sha256 of the .deb.
    pub sha256: String,
}

/// The lock file's entries.
#[derive(Debug)]
pub struct Lock {
    /// In file order.
    pub entries: Vec<LockEntry>,
}

impl Lock {
    /// Reads and checks `vm-tests/kernels.lock`.
    pub fn read() -> Result<Self> {
        let path = workspace_root().join(LOCK_PATH);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: run `cargo xtask vm-test --relock` to create it",
                path.display()
            )
        })?;
        Self::parse(&path, &text)
    }

    /// Parses the lock file's text (`path` is for messages).
    fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let [kernel, suite, package, version, sha256] = f[..] else {
                bail!(
                    "{}:{}: expected `kernel suite package version sha256`, got {line:?}",
                    path.display(),
                    n + 1
                );
            };
            ensure!(
                sha256.len() == 64 && sha256.chars().all(|c| c.is_ascii_hexdigit()),
                "{}:{}: {sha256:?} is not a sha256",
                path.display(),
                n + 1
            );
            entries.push(LockEntry {
                kernel: kernel.to_owned(),
                suite: suite.to_owned(),
                package: package.to_owned(),
                version: version.to_owned(),
                sha256: sha256.to_ascii_lowercase(),
            });
        }
        ensure!(!entries.is_empty(), "{} locks no kernel", path.display());
        Ok(Self { entries })
    }

    /// The entry of one kernel series.
    pub fn get(&self, kernel: &str) -> Result<&LockEntry> {
        self.entries
            .iter()
            .find(|e| e.kernel == kernel)
            .with_context(|| {
                format!(
                    "no kernel {kernel:?} in {LOCK_PATH} (it has: {})",
                    self.entries
                        .iter()
                        .map(|e| e.kernel.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    fn write(&self) -> Result<()> {
        let mut text = String::from(
            "# The Debian kernel packages `cargo xtask vm-test` boots; their sha256 is checked on \
             every download.\n# Written by `cargo xtask vm-test --relock`: commit it. Debian \
             keeps only each suite's current kernel,\n# so relock when a locked version \
             disappears.\n",
        );
        let rows: Vec<[&str; 5]> =
            std::iter::once(["# kernel", "suite", "package", "version", "sha256"])
                .chain(self.entries.iter().map(|e| {
                    [
                        e.kernel.as_str(),
                        e.suite.as_str(),
                        e.package.as_str(),
                        e.version.as_str(),
                        e.sha256.as_str(),
                    ]
                }))
                .collect();
        let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
        let widths = [width(0), width(1), width(2), width(3)];
        for r in &rows {
            let _ = writeln!(
                text,
                "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3]
            );
        }
        let path = workspace_root().join(LOCK_PATH);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// The cache directory (`.vm/` at the workspace root, gitignored).
pub fn vm_dir() -> PathBuf {
    workspace_root().join(".vm")
}

/// Resolves each suite's current kernel, downloads it and rewrites the lock file.
pub fn relock() -> Result<Lock> {
    let suites: Vec<&str> = SUITES.iter().map(|(_, s)| *s).collect();
    let apt = PrivateApt::new(&suites)?;
    apt.update()?;
    let mut entries = Vec::new();
    for (kernel, suite) in SUITES {
        let package = apt.image_package(suite)?;
        let version = apt.version(&package, suite)?;
        let mut entry = LockEntry {
            kernel: (*kernel).to_owned(),
            suite: (*suite).to_owned(),
            package,
            version,
            sha256: String::new(),
        };
        let deb = apt.download(&entry)?;
        entry.sha256 = sha256(&deb)?;
        let cached = deb_path(&entry)?;
        fs::rename(&deb, &cached).with_context(|| format!("moving {}", deb.display()))?;
        eprintln!(
            "vm-test: kernel {kernel}: {} {} (sha256 {})",
            entry.package, entry.version, entry.sha256
        );
        entries.push(entry);
    }
    let lock = Lock { entries };
    lock.write()?;
    eprintln!("vm-test: wrote {LOCK_PATH}: commit it");
    Ok(lock)
}

/// Where the locked .deb is cached (the directory is created).
fn deb_path(e: &LockEntry) -> Result<PathBuf> {
    let dir = vm_dir().join("kernels");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(format!("{}_{}.deb", e.package, e.version)))
}

/// The kernel's uncompressed `vmlinux`, from the cache or fetched and extracted.
pub fn vmlinux(e: &LockEntry) -> Result<PathBuf> {
    let dir = vm_dir()
        .join("kernels")
        .join(format!("{}_{}", e.package, e.version));
    let vmlinux = dir.join("vmlinux");
    if vmlinux.is_file() {
        return Ok(vmlinux);
    }
    let deb = fetch(e)?;
    let started = Instant::now();
    let tmp = dir.join("extract");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let status = Command::new("sh")
        .args([
            "-c",
            "dpkg-deb --fsys-tarfile \"$1\" | tar -xf - -C \"$2\" --wildcards './boot/vmlinuz-*'",
            "sh",
        ])
        .arg(&deb)
        .arg(&tmp)
        .status()
        .context("running dpkg-deb and tar")?;
    ensure!(
        status.success(),
        "cannot extract the kernel image from {} ({status})",
        deb.display()
    );
    let vmlinuz = fs::read_dir(tmp.join("boot"))
        .with_context(|| format!("{} has no boot/", deb.display()))?
        .filter_map(|d| d.ok().map(|d| d.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    let image = decompress(&vmlinuz)?;
    let partial = dir.join("vmlinux.partial");
    fs::write(&partial, &image).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &vmlinux).with_context(|| format!("writing {}", vmlinux.display()))?;
    fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    eprintln!(
        "vm-test: kernel {}: extracted {} in {:.1} s",
        e.kernel,
        vmlinux.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(vmlinux)
}

/// The kernel modules the guest loads at boot (the Debian kernels build them as modules): veth
/// pairs, the fq and htb qdiscs, clsact (sch_ingress), tc BPF filters (cls_bpf) and u32 filters
/// (cls_u32, for the htb comparison), for the network tests and `cargo xtask bench network`, and
/// the bridge (with llc and stp, which it needs: the guest loads them first) for bridge
/// networking; nf_tables NAT for bridge tasks' masquerading and port mappings (nf_tables,
/// nf_conntrack, nf_nat and the nft expressions the agent uses, with what they need: crc32c
/// for libcrc32c). The guest loads them in passes until none more loads, so their order here
/// does not matter.
pub const GUEST_MODULES: [&str; 22] = [
    "veth",
    "sch_fq",
    "sch_htb",
    "sch_ingress",
    "cls_bpf",
    "cls_u32",
    "llc",
    "stp",
    "bridge",
    "crc32c_generic",
    "libcrc32c",
    "nfnetlink",
    "nf_tables",
    "nf_defrag_ipv4",
    "nf_defrag_ipv6",
    "nf_conntrack",
    "nf_nat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_fib",
    "nft_fib_ipv4",
];

/// A directory with [`GUEST_MODULES`] of the kernel, uncompressed (`<name>.ko`), from the cache
/// or extracted from the package.
pub fn modules(e: &LockEntry) -> Result<PathBuf> {
    let dir = vm_dir()
        .join("kernels")
        .join(format!("{}_{}", e.package, e.version))
        .join("modules");
    if GUEST_MODULES
        .iter()
        .all(|m| dir.join(format!("{m}.ko")).is_file())
    {
        return Ok(dir);
    }
    let deb = fetch(e)?;
    let tmp = dir.with_extension("extract");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let patterns: Vec<String> = GUEST_MODULES.iter().map(|m| format!("*/{m}.ko*")).collect();
    let status = Command::new("sh")
        .args([
            "-c",
            "deb=\"$1\"; dir=\"$2\"; shift 2; dpkg-deb --fsys-tarfile \"$deb\" | tar -xf - -C \"$dir\" --wildcards \"$@\"",
            "sh",
        ])
        .arg(&deb)
        .arg(&tmp)
        .args(&patterns)
        .status()
        .context("running dpkg-deb and tar")?;
    ensure!(
        status.success(),
        "cannot extract the modules {GUEST_MODULES:?} from {} ({status})",
        deb.display()
    );
    for m in GUEST_MODULES {
        let found = find_file(&tmp, &format!("{m}.ko"))?
            .with_context(|| format!("{} has no {m}.ko", deb.display()))?;
        let out = dir.join(format!("{m}.ko"));
        if found.extension().is_some_and(|x| x == "xz") {
            let status = Command::new("sh")
                .args(["-c", "xz -dc \"$1\" > \"$2\"", "sh"])
                .arg(&found)
                .arg(&out)
                .status()
                .context("running xz")?;
            ensure!(
                status.success(),
                "cannot decompress {} ({status})",
                found.display()
            );
        } else {
            fs::copy(&found, &out)
                .with_context(|| format!("copying {} to {}", found.display(), out.display()))?;
        }
    }
    fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    Ok(dir)
}

/// The first file under `dir` whose name is `stem` or `stem.xz`.
fn find_file(dir: &Path, stem: &str) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, stem)? {
                return Ok(Some(found));
            }
        } else if path.file_name().is_some_and(|n| {
            n.to_string_lossy() == stem || n.to_string_lossy() == format!("{stem}.xz")
        }) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The locked .deb, from the cache or downloaded; its sha256 is checked either way.
fn fetch(e: &LockEntry) -> Result<PathBuf> {
    let cached = deb_path(e)?;
    if cached.is_file() {
        if sha256(&cached)? == e.sha256 {
            return Ok(cached);
        }
        eprintln!(
            "vm-test: {} does not match the locked sha256: downloading it again",
            cached.display()
        );
        fs::remove_file(&cached).with_context(|| format!("removing {}", cached.display()))?;
    }
    let started = Instant::now();
    let apt = PrivateApt::new(&[e.suite.as_str()])?;
    let deb = match apt.download(e) {
        Ok(deb) => deb,
        Err(first) => {
            // The lists may be stale (or absent): refresh them once and retry.
            apt.update()?;
            apt.download(e).map_err(|_| first)?
        }
    };
    let got = sha256(&deb)?;
    if got != e.sha256 {
        let _ = fs::remove_file(&deb);
        bail!(
            "{} {} from Debian has sha256 {got}, but {LOCK_PATH} says {}: refusing it (if Debian \
             rebuilt the package, check why, then run `cargo xtask vm-test --relock`)",
            e.package,
            e.version,
            e.sha256
        );
    }
    fs::rename(&deb, &cached).with_context(|| format!("moving {}", deb.display()))?;
    eprintln!(
        "vm-test: kernel {}: downloaded {} {} ({} MB, sha256 verified) in {:.1} s",
        e.kernel,
        e.package,
        e.version,
        fs::metadata(&cached)
            .map(|m| m.len() / 1_000_000)
            .unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    Ok(cached)
}

/// The sha256 of a file, as lower-case hex (coreutils' sha256sum).
fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    ensure!(
        out.status.success(),
        "sha256sum {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// The compressed payloads a bzImage may carry, by magic bytes, and how to decompress them.
/// Decompressors stop at the end of the payload (xz: `--single-stream`) or complain about what
/// follows it; the output is accepted when it is an ELF image, whatever their exit status.
const COMPRESSIONS: &[(&[u8], &str, &[&str])] = &[
    (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
    (b"\x28\xb5\x2f\xfd", "zstd", &["-dcq"]),
    (b"\x02\x21\x4c\x18", "lz4", &["-dcq"]),
    (b"\x1f\x8b\x08", "gzip", &["-dcq"]),
];

/// Finds the compressed kernel inside a bzImage and decompresses it to an ELF `vmlinux`, which
/// qemu boots directly (no decompression inside the slow emulated guest).
fn decompress(vmlinuz: &Path) -> Result<Vec<u8>> {
    let data = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let mut candidates: Vec<(usize, &str, &[&str])> = COMPRESSIONS
        .iter()
        .filter_map(|(magic, tool, args)| {
            data.windows(magic.len())
                .position(|w| w == *magic)
                .map(|at| (at, *tool, *args))
        })
        .collect();
    candidates.sort_by_key(|c| c.0);
    let mut tried = Vec::new();
    for (at, tool, args) in candidates {
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {tool}: run `cargo xtask setup`"))?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let payload = data[at..].to_vec();
        let writer = std::thread::spawn(move || {
            // The decompressor may stop reading at the payload's end: ignore the broken pipe.
            let _ = stdin.write_all(&payload);
        });
        let out = child
            .wait_with_output()
            .with_context(|| format!("running {tool}"))?;
        let _ = writer.join();
        if out.stdout.len() > 1_000_000 && out.stdout.starts_with(b"\x7fELF") {
            return Ok(out.stdout);
        }
        tried.push(format!("{tool} at offset {at}"));
    }
    bail!(
        "found no compressed ELF kernel in {} (tried: {})",
        vmlinuz.display(),
        if tried.is_empty() {
            "no known magic found".to_owned()
        } else {
            tried.join(", ")
        }
    )
}

/// apt-get and apt-cache with a private configuration under `.vm/apt`.
struct PrivateApt {
    options: Vec<String>,
    download_dir: PathBuf,
}

impl PrivateApt {
    fn new(suites: &[&str]) -> Result<Self> {
        let root = vm_dir().join("apt");
        let mirror =
            std::env::var("STRATA_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
        for dir in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "lists/partial",
            "cache/archives/partial",
            "download",
        ] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        let mut sources = String::new();
        let mut all: Vec<&str> = SUITES.iter().map(|(_, s)| *s).collect();
        all.extend(suites);
        all.sort_unstable();
        all.dedup();
        for suite in all {
            let _ = writeln!(sources, "deb [signed-by={KEYRING}] {mirror} {suite} main");
        }
        let list = root.join("etc/sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&list, &sources).with_context(|| format!("writing {}", list.display()))?;
        }
        let p = |sub: &str| root.join(sub).display().to_string();
        let mut options = vec![
            format!("Dir::Etc::SourceList={}", p("etc/sources.list")),
            format!("Dir::Etc::SourceParts={}", p("etc/sources.list.d")),
            format!("Dir::Etc::Preferences={}", p("etc/preferences")),
            format!("Dir::Etc::PreferencesParts={}", p("etc/preferences.d")),
            format!("Dir::State::Lists={}", p("lists")),
            format!("Dir::Cache={}", p("cache")),
            "Dir::State::status=/dev/null".to_owned(),
            "Acquire::Languages=none".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
        ];
        if is_root() {
            // The private directories belong to root: download as root, not as _apt.
            options.push("APT::Sandbox::User=root".to_owned());
        }
        Ok(Self {
            options,
            download_dir: root.join("download"),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd
    }

    fn update(&self) -> Result<()> {
        let started = Instant::now();
        let status = self
            .command("apt-get")
            .args(["-qq", "update"])
            .status()
            .context("running apt-get: is this a Debian machine?")?;
        ensure!(
            status.success(),
            "apt-get update (private lists under .vm/apt) failed: {status}; is Debian's archive \
             reachable?"
        );
        eprintln!(
            "vm-test: updated the private apt lists in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn query(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        ensure!(
            out.status.success(),
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The kernel image package `linux-image-amd64` depends on in `suite`.
    fn image_package(&self, suite: &str) -> Result<String> {
        let deps = self.query(
            "apt-cache",
            &["depends", &format!("linux-image-amd64/{suite}")],
        )?;
        deps.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(str::to_owned)
            .with_context(|| format!("linux-image-amd64 in {suite} depends on no linux-image-*"))
    }

    fn version(&self, package: &str, suite: &str) -> Result<String> {
        let show = self.query("apt-cache", &["show", &format!("{package}/{suite}")])?;
        show.lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .map(str::to_owned)
            .with_context(|| format!("apt-cache show {package} printed no version"))
    }

    /// Downloads `package=version` into the private download directory.
    fn download(&self, e: &LockEntry) -> Result<PathBuf> {
        for old in fs::read_dir(&self.download_dir)
            .with_context(|| format!("reading {}", self.download_dir.display()))?
            .flatten()
        {
            let _ = fs::remove_file(old.path());
        }
        let spec = format!("{}={}", e.package, e.version);
        let out = self
            .command("apt-get")
            .args(["-qq", "download", &spec])
            .current_dir(&self.download_dir)
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            bail!(
                "cannot download {spec} from Debian ({}): Debian keeps only the current kernel of \
                 each suite; run `cargo xtask vm-test --relock` and commit {LOCK_PATH}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        fs::read_dir(&self.download_dir)
            .with_context(|| format!("reading {}", self.download_dir.display()))?
            .flatten()
            .map(|d| d.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {spec} left no .deb"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_lock_file_parses_and_has_both_kernels() {
        let lock = Lock::read().expect("vm-tests/kernels.lock parses");
        for kernel in ["6.1", "6.12"] {
            let e = lock.get(kernel).expect("locked");
            assert!(e.package.starts_with("linux-image-"), "{e:?}");
        }
        let err = lock.get("5.10").expect_err("not locked");
        assert!(err.to_string().contains("6.1, 6.12"), "{err}");
    }

    #[test]
    fn malformed_lock_lines_are_refused_with_their_line_number() {
        let err = Lock::parse(Path::new("k.lock"), "# c\n6.1 bookworm linux-image-x 1.0\n")
            .expect_err("four fields");
        assert!(err.to_string().contains("k.lock:2"), "{err}");
        let err = Lock::parse(Path::new("k.lock"), "6.1 bookworm linux-image-x 1.0 abc\n")
            .expect_err("not a sha256");
        assert!(err.to_string().contains("not a sha256"), "{err}");
    }

    #[test]
    fn a_compressed_elf_is_found_behind_a_header() {
        let dir = std::env::temp_dir().join(format!("xtask-decompress-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..1_200_000u32).map(|i| (i % 251) as u8));
        let raw = dir.join("elf");
        fs::write(&raw, &elf).expect("write");
        let xz = Command::new("xz")
            .args(["-c", "-0"])
            .arg(&raw)
            .output()
            .expect("xz runs (cargo xtask setup installs xz-utils)");
        assert!(xz.status.success());
        // A bzImage: a setup header, the compressed kernel, then trailing data.
        let mut image = vec![0u8; 4096];
        image.extend(&xz.stdout);
        image.extend([0xffu8; 512]);
        let vmlinuz = dir.join("vmlinuz");
        fs::write(&vmlinuz, &image).expect("write");
        let got = decompress(&vmlinuz).expect("decompresses");
        let _ = fs::remove_dir_all(&dir);
        assert!(got == elf, "the decompressed image differs");
    }
}
