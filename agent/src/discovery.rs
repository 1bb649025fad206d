//! Discovery of what this host offers: cpus, memory, disk, a ports range, its hostname and the
//! kernel features the agent cares about (cgroup mode, BTF, kernel release).
//!
//! Invariants:
//! - Configured overrides always win, and a resource that is overridden is not probed at all
//!   (so an unreadable probe never blocks an agent whose operator said what to offer).
//! - Memory offered is MemTotal minus a reserve for the host (the larger of 10% and 512 MiB,
//!   never more than the total), and never more than the memory limit of the agent's own
//!   cgroup or any of its ancestors.
//! - Every function that reads kernel files takes the root it reads under (proc, cgroup mount,
//!   sys) as a parameter, so it is tested against fake trees in a temporary directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use strata_proto::{KernelFeatures, Resource, names};

/// The ports range offered when none is configured.
pub const DEFAULT_PORTS: (u64, u64) = (31000, 32000);

/// The smallest memory reserve kept for the host, in MiB.
const MIN_MEM_RESERVE_MIB: f64 = 512.0;

/// The share of memory kept for the host.
const MEM_RESERVE_FRACTION: f64 = 0.10;

/// cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages); anything at or
/// above this is treated as unlimited.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 60;

const MIB: f64 = 1024.0 * 1024.0;

/// Errors discovering the host's resources.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A kernel file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// /proc/meminfo (or the file given) has no usable MemTotal line.
    #[error("cannot find MemTotal in {path}: pass --mem to say how much memory to offer")]
    NoMemTotal {
        /// The file.
        path: PathBuf,
    },
    /// The number of usable cpus could not be determined.
    #[error("cannot count the usable cpus: {source}; pass --cpus to say how many to offer")]
    Cpus {
        /// The underlying error.
        source: io::Error,
    },
    /// The free space of the work dir's filesystem could not be determined.
    #[error("cannot statvfs {path}: {source}; pass --disk to say how much disk to offer")]
    Disk {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: nix::Error,
    },
    /// The host name could not be read or is not UTF-8.
    #[error("cannot read this host's name: {reason}; pass --hostname")]
    Hostname {
        /// What went wrong.
        reason: String,
    },
}

/// Where the kernel-facing files live; the real roots by default, fake trees in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoots {
    /// Usually `/proc`.
    pub proc: PathBuf,
    /// Usually `/sys/fs/cgroup`.
    pub cgroup: PathBuf,
    /// Usually `/sys`.
    pub sys: PathBuf,
    /// Usually `/run` (where systemd says it runs).
    pub run: PathBuf,
}

impl Default for HostRoots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            cgroup: PathBuf::from("/sys/fs/cgroup"),
            sys: PathBuf::from("/sys"),
            run: PathBuf::from("/run"),
        }
    }
}

/// Operator-configured values that replace discovered ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// The host name to register with.
    pub hostname: Option<String>,
    /// Cpus to offer.
    pub cpus: Option<f64>,
    /// Memory to offer, in MiB.
    pub mem_mib: Option<f64>,
    /// Disk to offer, in MiB.
    pub disk_mib: Option<f64>,
    /// Ports to offer (closed range).
    pub ports: Option<(u64, u64)>,
}

/// The resources this host offers.
#[derive(Debug, Clone, PartialEq)]
pub struct HostResources {
    /// Cpus (cores).
    pub cpus: f64,
    /// Memory in MiB.
    pub mem_mib: f64,
    /// Disk in MiB.
    pub disk_mib: f64,
    /// A closed ports range.
    pub ports: (u64, u64),
}

impl HostResources {
    /// The resources as protocol `Resource`s (cpus, mem, disk, ports).
    pub fn to_proto(&self) -> Vec<Resource> {
        vec![
            Resource::scalar(names::CPUS, self.cpus),
            Resource::scalar(names::MEM, self.mem_mib),
            Resource::scalar(names::DISK, self.disk_mib),
            Resource::ranges(names::PORTS, [self.ports]),
        ]
    }
}

/// Everything discovered about this host.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// The host name.
    pub hostname: String,
    /// What the host offers.
    pub resources: HostResources,
    /// The kernel features.
    pub kernel: KernelFeatures,
}

/// How cgroups are mounted under a cgroup root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Only the unified hierarchy, mounted at the root.
    V2,
    /// v1 controller hierarchies plus the unified hierarchy at `<root>/unified`.
    Hybrid,
    /// Only v1 controller hierarchies.
    V1,
    /// No cgroup hierarchy found.
    None,
}

impl CgroupMode {
    /// The name used in `KernelFeatures.cgroup_mode`: "v2", "hybrid", "v1" or "none".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::Hybrid => "hybrid",
            Self::V1 => "v1",
            Self::None => "none",
        }
    }
}

/// Discovers this host, probing only what `overrides` leaves open. `work_dir` must exist (its
/// filesystem's free space is the disk offered).
pub fn discover(
    roots: &HostRoots,
    work_dir: &Path,
    overrides: &Overrides,
) -> Result<Discovery, DiscoveryError> {
    let hostname = match &overrides.hostname {
        Some(h) => h.clone(),
        None => hostname()?,
    };
    let cpus = match overrides.cpus {
        Some(c) => c,
        None => cpus()?,
    };
    let mem_mib = match overrides.mem_mib {
        Some(m) => m,
        None => {
            let total = mem_total_bytes(&roots.proc)?;
            let limit = cgroup_memory_limit_bytes(&roots.proc, &roots.cgroup);
            usable_mem_mib(total, limit)
        }
    };
    let disk_mib = match overrides.disk_mib {
        Some(d) => d,
        None => disk_free_mib(work_dir)?,
    };
    Ok(Discovery {
        hostname,
        resources: HostResources {
            cpus,
            mem_mib,
            disk_mib,
            ports: overrides.ports.unwrap_or(DEFAULT_PORTS),
        },
        kernel: kernel_features(&roots.cgroup, &roots.sys),
    })
}

/// The cpus this process may run on (respects affinity masks and cgroup cpu quotas).
pub fn cpus() -> Result<f64, DiscoveryError> {
    let n =
        std::thread::available_parallelism().map_err(|source| DiscoveryError::Cpus { source })?;
    Ok(n.get() as f64)
}

/// MemTotal from `<proc>/meminfo`, in bytes.
pub fn mem_total_bytes(proc_root: &Path) -> Result<u64, DiscoveryError> {
    let path = proc_root.join("meminfo");
    let text = fs::read_to_string(&path).map_err(|source| DiscoveryError::Read {
        path: path.clone(),
        source,
    })?;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("MemTotal:")?;
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            let multiplier = match parts.next() {
                Some("kB") | Some("KB") | Some("kb") => 1024,
                None => 1,
                Some(_) => return None,
            };
            value.checked_mul(multiplier)
        })
        .ok_or(DiscoveryError::NoMemTotal { path })
}

/// The memory limit of this process's cgroup, the smallest one set on it or any ancestor, in
/// bytes; `None` when there is none (or it cannot be found: the agent then offers by
/// MemTotal alone). Reads `<proc>/self/cgroup`, then `memory.max` (v2) or
/// `memory.limit_in_bytes` (v1, under `<cgroup>/memory`).
pub fn cgroup_memory_limit_bytes(proc_root: &Path, cgroup_root: &Path) -> Option<u64> {
    let path = proc_root.join("self").join("cgroup");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot read the agent's cgroup");
            return None;
        }
    };
    let mut limit: Option<u64> = None;
    let mut consider = |value: Option<u64>| {
        if let Some(v) = value {
            limit = Some(limit.map_or(v, |l| l.min(v)));
        }
    };
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(cgroup_path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            // The unified (v2) hierarchy, mounted at the root on a v2 host.
            for dir in ancestors(cgroup_root, cgroup_path) {
                consider(read_limit(&dir.join("memory.max")));
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            for dir in ancestors(&cgroup_root.join("memory"), cgroup_path) {
                consider(read_limit(&dir.join("memory.limit_in_bytes")));
            }
        }
    }
    limit
}

/// `base/<path>` and each of its ancestors up to `base` itself.
fn ancestors(base: &Path, cgroup_path: &str) -> Vec<PathBuf> {
    let mut dirs = vec![base.to_path_buf()];
    let mut current = base.to_path_buf();
    for part in cgroup_path.split('/').filter(|p| !p.is_empty()) {
        if part == ".." || part == "." {
            break;
        }
        current.push(part);
        dirs.push(current.clone());
    }
    dirs
}

/// Reads one limit file: a number of bytes, `max` (v2) or a huge number (v1) for none.
fn read_limit(path: &Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    if text == "max" {
        return None;
    }
    let value: u64 = text.parse().ok()?;
    (value < V1_UNLIMITED_THRESHOLD).then_some(value)
}

/// The memory to offer, in MiB, from the host's total and its cgroup limit (both in bytes):
/// the total minus the larger of 10% and 512 MiB (never below 0), never above the limit,
/// in whole MiB.
pub fn usable_mem_mib(total_bytes: u64, cgroup_limit_bytes: Option<u64>) -> f64 {
    let total = total_bytes as f64 / MIB;
    let reserve = (total * MEM_RESERVE_FRACTION).max(MIN_MEM_RESERVE_MIB);
    let usable = (total - reserve).max(0.0);
    let usable = match cgroup_limit_bytes {
        Some(limit) => usable.min(limit as f64 / MIB),
        None => usable,
    };
    usable.floor()
}

/// The space available to unprivileged users on the filesystem holding `dir`, in MiB.
pub fn disk_free_mib(dir: &Path) -> Result<f64, DiscoveryError> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|source| DiscoveryError::Disk {
        path: dir.to_path_buf(),
        source,
    })?;
    let bytes = stat.blocks_available() as f64 * stat.fragment_size() as f64;
    Ok((bytes / MIB).floor())
}

/// This host's name.
pub fn hostname() -> Result<String, DiscoveryError> {
    let name = nix::unistd::gethostname().map_err(|e| DiscoveryError::Hostname {
        reason: e.to_string(),
    })?;
    name.into_string().map_err(|_| DiscoveryError::Hostname {
        reason: "it is not UTF-8".to_owned(),
    })
}

/// How cgroups are mounted under `cgroup_root` (usually `/sys/fs/cgroup`).
pub fn cgroup_mode(cgroup_root: &Path) -> CgroupMode {
    if cgroup_root.join("cgroup.controllers").is_file() {
        return CgroupMode::V2;
    }
    let has_v1 = fs::read_dir(cgroup_root)
        .map(|entries| {
            entries.flatten().any(|entry| {
                entry.file_name() != "unified" && entry.path().join("cgroup.procs").is_file()
            })
        })
        .unwrap_or(false);
    let has_unified = cgroup_root
        .join("unified")
        .join("cgroup.controllers")
        .is_file();
    match (has_v1, has_unified) {
        (true, true) => CgroupMode::Hybrid,
        (true, false) => CgroupMode::V1,
        // Only a unified hierarchy, but not at the root: treat it as v2.
        (false, true) => CgroupMode::V2,
        (false, false) => CgroupMode::None,
    }
}

/// The agent's own cgroup in the unified (v2) hierarchy, where its eBPF programs attach:
/// `<cgroup>/<path>` on a v2 host, `<cgroup>/unified/<path>` on a hybrid one, with `<path>` the
/// `0::` line of `<proc>/self/cgroup`. `None` when there is no unified hierarchy.
pub fn unified_cgroup_dir(proc_root: &Path, cgroup_root: &Path) -> Option<PathBuf> {
    let mount = match cgroup_mode(cgroup_root) {
        CgroupMode::V2 if cgroup_root.join("cgroup.controllers").is_file() => {
            cgroup_root.to_path_buf()
        }
        CgroupMode::V2 | CgroupMode::Hybrid => cgroup_root.join("unified"),
        CgroupMode::V1 | CgroupMode::None => return None,
    };
    let text = fs::read_to_string(proc_root.join("self").join("cgroup")).ok()?;
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let dir = ancestors(&mount, path).pop()?;
    dir.is_dir().then_some(dir)
}

/// Whether the kernel exposes its BTF (`<sys>/kernel/btf/vmlinux`), which CO-RE eBPF needs.
pub fn btf_available(sys_root: &Path) -> bool {
    sys_root.join("kernel").join("btf").join("vmlinux").exists()
}

/// The running kernel's release (`uname -r`); empty if uname fails.
pub fn kernel_release() -> String {
    match nix::sys::utsname::uname() {
        Ok(uts) => uts.release().to_string_lossy().into_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "uname failed; reporting an empty kernel release");
            String::new()
        }
    }
}

/// The kernel features reported at registration.
pub fn kernel_features(cgroup_root: &Path, sys_root: &Path) -> KernelFeatures {
    KernelFeatures {
        cgroup_mode: cgroup_mode(cgroup_root).as_str().to_owned(),
        btf: btf_available(sys_root),
        kernel_release: kernel_release(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn write(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn mem_total_is_parsed_from_meminfo() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("meminfo"),
            "MemFree:         1000 kB\nMemTotal:       16384000 kB\nMemAvailable: 5 kB\n",
        );
        assert_eq!(mem_total_bytes(dir.path()).unwrap(), 16_384_000 * 1024);
    }

    #[test]
    fn missing_mem_total_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("meminfo"), "MemFree: 1 kB\n");
        let err = mem_total_bytes(dir.path()).unwrap_err();
        assert!(matches!(err, DiscoveryError::NoMemTotal { .. }));
        assert!(err.to_string().contains("--mem"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = mem_total_bytes(empty.path()).unwrap_err();
        assert!(err.to_string().contains("meminfo"), "{err}");
    }

    #[test]
    fn usable_memory_keeps_a_reserve_and_respects_the_cgroup_limit() {
        // 16 GiB: 10% (1638.4 MiB) is more than 512 MiB.
        assert_eq!(
            usable_mem_mib(16 * GIB, None),
            (16384.0_f64 - 1638.4).floor()
        );
        // 2 GiB: 512 MiB is more than 10%.
        assert_eq!(usable_mem_mib(2 * GIB, None), 1536.0);
        // 256 MiB: the reserve eats everything, never below 0.
        assert_eq!(usable_mem_mib(GIB / 4, None), 0.0);
        // A cgroup limit below the usable memory wins.
        assert_eq!(usable_mem_mib(16 * GIB, Some(GIB)), 1024.0);
        // A cgroup limit above it changes nothing.
        assert_eq!(usable_mem_mib(2 * GIB, Some(8 * GIB)), 1536.0);
    }

    #[test]
    fn v1_memory_limit_is_the_smallest_along_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let cg = dir.path().join("cgroup");
        write(
            &proc.join("self/cgroup"),
            "5:cpu,cpuacct:/\n4:memory:/a/b\n0::/\n",
        );
        write(
            &cg.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(&cg.join("memory/a/memory.limit_in_bytes"), "536870912\n");
        write(&cg.join("memory/a/b/memory.limit_in_bytes"), "1073741824\n");
        assert_eq!(
            cgroup_memory_limit_bytes(&proc, &cg),
            Some(512 * 1024 * 1024)
        );
    }

    #[test]
    fn v1_unlimited_is_no_limit() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let cg = dir.path().join("cgroup");
        write(&proc.join("self/cgroup"), "4:memory:/x\n");
        write(
            &cg.join("memory/x/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        assert_eq!(cgroup_memory_limit_bytes(&proc, &cg), None);
    }

    #[test]
    fn v2_memory_max_is_read_and_max_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let cg = dir.path().join("cgroup");
        write(
            &proc.join("self/cgroup"),
            "0::/system.slice/strata.service\n",
        );
        write(&cg.join("system.slice/strata.service/memory.max"), "max\n");
        assert_eq!(cgroup_memory_limit_bytes(&proc, &cg), None);
        write(&cg.join("system.slice/memory.max"), "2147483648\n");
        assert_eq!(cgroup_memory_limit_bytes(&proc, &cg), Some(2 * GIB));
    }

    #[test]
    fn no_cgroup_file_means_no_limit() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            cgroup_memory_limit_bytes(&dir.path().join("proc"), &dir.path().join("cg")),
            None
        );
    }

    #[test]
    fn cgroup_mode_is_detected_from_the_mounts() {
        let v2 = tempfile::tempdir().unwrap();
        write(&v2.path().join("cgroup.controllers"), "cpu memory io\n");
        assert_eq!(cgroup_mode(v2.path()), CgroupMode::V2);

        let hybrid = tempfile::tempdir().unwrap();
        write(&hybrid.path().join("memory/cgroup.procs"), "1\n");
        write(&hybrid.path().join("cpu/cgroup.procs"), "1\n");
        write(&hybrid.path().join("unified/cgroup.controllers"), "\n");
        assert_eq!(cgroup_mode(hybrid.path()), CgroupMode::Hybrid);

        let v1 = tempfile::tempdir().unwrap();
        write(&v1.path().join("memory/cgroup.procs"), "1\n");
        assert_eq!(cgroup_mode(v1.path()), CgroupMode::V1);

        let none = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_mode(none.path()), CgroupMode::None);
        assert_eq!(cgroup_mode(&none.path().join("absent")), CgroupMode::None);
        assert_eq!(CgroupMode::Hybrid.as_str(), "hybrid");
    }

    #[test]
    fn unified_cgroup_dir_follows_the_mode_and_own_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let proc_root = dir.path().join("proc");
        write(
            &proc_root.join("self/cgroup"),
            "4:memory:/m\n0::/agent.service\n",
        );
        // Hybrid: a v1 controller plus the unified hierarchy under unified/.
        let hybrid = dir.path().join("hybrid");
        write(&hybrid.join("memory/cgroup.procs"), "");
        write(&hybrid.join("unified/cgroup.controllers"), "");
        write(&hybrid.join("unified/agent.service/cgroup.procs"), "");
        assert_eq!(
            unified_cgroup_dir(&proc_root, &hybrid),
            Some(hybrid.join("unified/agent.service"))
        );
        // Pure v2.
        let v2 = dir.path().join("v2");
        write(&v2.join("cgroup.controllers"), "");
        write(&v2.join("agent.service/cgroup.procs"), "");
        assert_eq!(
            unified_cgroup_dir(&proc_root, &v2),
            Some(v2.join("agent.service"))
        );
        // v1 only: nowhere to attach.
        let v1 = dir.path().join("v1");
        write(&v1.join("memory/cgroup.procs"), "");
        assert_eq!(unified_cgroup_dir(&proc_root, &v1), None);
    }

    #[test]
    fn btf_is_detected_from_sys() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!btf_available(dir.path()));
        write(&dir.path().join("kernel/btf/vmlinux"), "");
        assert!(btf_available(dir.path()));
    }

    #[test]
    fn discovery_probes_the_host_and_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let roots = HostRoots {
            proc: dir.path().join("proc"),
            cgroup: dir.path().join("cgroup"),
            sys: dir.path().join("sys"),
            run: dir.path().join("run"),
        };
        write(&roots.proc.join("meminfo"), "MemTotal: 4194304 kB\n");
        write(&roots.proc.join("self/cgroup"), "0::/agent\n");
        write(&roots.cgroup.join("cgroup.controllers"), "memory\n");
        write(&roots.cgroup.join("agent/memory.max"), "1073741824\n");
        write(&roots.sys.join("kernel/btf/vmlinux"), "");
        let d = discover(&roots, dir.path(), &Overrides::default()).unwrap();
        assert!(!d.hostname.is_empty());
        assert!(d.resources.cpus >= 1.0);
        assert_eq!(d.resources.mem_mib, 1024.0);
        assert!(d.resources.disk_mib > 0.0);
        assert_eq!(d.resources.ports, DEFAULT_PORTS);
        assert_eq!(d.kernel.cgroup_mode, "v2");
        assert!(d.kernel.btf);
        assert!(!d.kernel.kernel_release.is_empty());
    }

    #[test]
    fn overrides_win_and_skip_the_probes() {
        let dir = tempfile::tempdir().unwrap();
        // No meminfo at all: memory is overridden, so it is never read.
        let roots = HostRoots {
            proc: dir.path().join("proc"),
            cgroup: dir.path().join("cgroup"),
            sys: dir.path().join("sys"),
            run: dir.path().join("run"),
        };
        let overrides = Overrides {
            hostname: Some("node-7".to_owned()),
            cpus: Some(3.5),
            mem_mib: Some(2048.0),
            disk_mib: Some(100.0),
            ports: Some((40000, 40010)),
        };
        let d = discover(&roots, &dir.path().join("absent"), &overrides).unwrap();
        assert_eq!(d.hostname, "node-7");
        assert_eq!(
            d.resources,
            HostResources {
                cpus: 3.5,
                mem_mib: 2048.0,
                disk_mib: 100.0,
                ports: (40000, 40010),
            }
        );
        assert_eq!(d.kernel.cgroup_mode, "none");
        assert!(!d.kernel.btf);
        let proto = d.resources.to_proto();
        assert_eq!(strata_proto::scalar_sum(&proto, names::CPUS), 3.5);
        assert_eq!(proto[3].ranges[0].begin, 40000);
    }

    #[test]
    fn disk_of_a_missing_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = disk_free_mib(&dir.path().join("absent")).unwrap_err();
        assert!(err.to_string().contains("--disk"), "{err}");
    }
}
