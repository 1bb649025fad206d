//! Reading one task's cgroup files: cgroup v2 (`cpu.stat`, `memory.*`, `pids.*`, `io.stat`,
//! `*.pressure`) and the v1 controllers of hybrid hosts (`cpuacct.*`, `cpu.stat`, `memory.*`,
//! `pids.*`, `blkio.throttle.*`).
//!
//! Every function takes the directory to read, so it is tested against a temp dir. A file the
//! kernel does not offer (an older kernel, a controller that is not enabled) leaves its figures
//! unset or zero; nothing here fails.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use strata_proto::{IoDeviceUsage, Pressure};

/// v1's way of saying "no limit": any value this large (the kernel writes `PAGE_COUNTER_MAX`
/// pages in bytes, about 2^63).
const V1_UNLIMITED: u64 = 1 << 60;

/// The functions below read a cgroup's limits (cpu.max, memory.max, ...) only when asked
/// (`limits`): the agent sets them at launch and they do not change, so the collector reads them
/// now and then and keeps them; unread limits are 0.
///
/// Reads cgroup files into one reused buffer (a scrape of a thousand tasks reads thousands of
/// files; none of them allocates). The files of one directory are opened relative to it: the
/// directory last read from stays open (`O_PATH`) until another is read or
/// [`Reader::close_dir`], so the kernel walks a task cgroup's long path once per directory
/// rather than once per file.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    buf: String,
    /// The directory last read from, and its `O_PATH` descriptor.
    dir: OsString,
    dir_fd: Option<OwnedFd>,
}

impl Reader {
    /// The content of the file `name` in `dir`, or `None` when it cannot be read.
    pub(crate) fn read(&mut self, dir: &Path, name: &str) -> Option<&str> {
        self.buf.clear();
        if self.dir.is_empty() || self.dir != dir.as_os_str() {
            self.close_dir();
            let fd = nix::fcntl::open(
                dir,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok()?;
            self.dir.push(dir.as_os_str());
            self.dir_fd = Some(fd);
        }
        let fd = nix::fcntl::openat(
            self.dir_fd.as_ref()?,
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        File::from(fd).read_to_string(&mut self.buf).ok()?;
        Some(&self.buf)
    }

    /// Closes the directory kept open (a cgroup is removed while it is, but lingers).
    pub(crate) fn close_dir(&mut self) {
        self.dir.clear();
        self.dir_fd = None;
    }

    /// A file holding one number; `max` (v2's "no limit") reads as `Some(0)`.
    pub(crate) fn number(&mut self, dir: &Path, name: &str) -> Option<u64> {
        let text = self.read(dir, name)?.trim();
        if text == "max" {
            return Some(0);
        }
        text.parse().ok()
    }
}

/// The value of `key` in a flat-keyed file (`key value` lines).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// CPU figures of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Cpu {
    pub user_ns: u64,
    pub system_ns: u64,
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
    /// The hard limit in cores; 0 = none.
    pub limit_cores: f64,
}

/// cgroup v2: `cpu.stat` (user_usec, system_usec, nr_periods, nr_throttled, throttled_usec) and
/// `cpu.max`.
pub(crate) fn cpu_v2(r: &mut Reader, dir: &Path, limits: bool) -> Option<Cpu> {
    let stat = r.read(dir, "cpu.stat")?;
    let mut cpu = Cpu {
        user_ns: keyed(stat, "user_usec")?.saturating_mul(1000),
        system_ns: keyed(stat, "system_usec")?.saturating_mul(1000),
        periods: keyed(stat, "nr_periods").unwrap_or(0),
        throttled_periods: keyed(stat, "nr_throttled").unwrap_or(0),
        throttled_ns: keyed(stat, "throttled_usec")
            .unwrap_or(0)
            .saturating_mul(1000),
        limit_cores: 0.0,
    };
    if limits {
        cpu.limit_cores = cpu_max_v2(r, dir);
    }
    Some(cpu)
}

/// `cpu.max` (`QUOTA PERIOD` or `max PERIOD`) in cores; 0 = none.
pub(crate) fn cpu_max_v2(r: &mut Reader, dir: &Path) -> f64 {
    let Some(text) = r.read(dir, "cpu.max") else {
        return 0.0;
    };
    let mut parts = text.split_whitespace();
    match (
        parts.next().and_then(|q| q.parse::<f64>().ok()),
        parts.next().and_then(|p| p.parse::<f64>().ok()),
    ) {
        (Some(quota), Some(period)) if period > 0.0 => quota / period,
        _ => 0.0,
    }
}

/// cgroup v1: user and system time from the cpuacct directory, throttling from the cpu
/// directory's `cpu.stat` (`throttled_time` in ns) and the limit from `cpu.cfs_quota_us` /
/// `cpu.cfs_period_us`.
///
/// `cpuacct.usage` is exact (nanoseconds charged by the scheduler) but `cpuacct.usage_user` and
/// `cpuacct.usage_sys` are sampled at timer ticks, so, as cgroup v2 does for its `user_usec` and
/// `system_usec`, the exact total is split in the sampled proportion.
pub(crate) fn cpu_v1(
    r: &mut Reader,
    cpu_dir: &Path,
    cpuacct_dir: &Path,
    limits: bool,
) -> Option<Cpu> {
    let user_ticks = r.number(cpuacct_dir, "cpuacct.usage_user")?;
    let system_ticks = r.number(cpuacct_dir, "cpuacct.usage_sys")?;
    // Saturating: corrupt or absurd counters must not overflow (user_ticks <= sampled holds).
    let sampled = user_ticks.saturating_add(system_ticks);
    let total = r.number(cpuacct_dir, "cpuacct.usage").unwrap_or(sampled);
    let user_ns = match sampled {
        0 => total,
        sampled => (u128::from(total) * u128::from(user_ticks) / u128::from(sampled)) as u64,
    };
    let mut cpu = Cpu {
        user_ns,
        system_ns: total - user_ns,
        ..Cpu::default()
    };
    if let Some(stat) = r.read(cpu_dir, "cpu.stat") {
        cpu.periods = keyed(stat, "nr_periods").unwrap_or(0);
        cpu.throttled_periods = keyed(stat, "nr_throttled").unwrap_or(0);
        cpu.throttled_ns = keyed(stat, "throttled_time").unwrap_or(0);
    }
    if limits {
        cpu.limit_cores = cpu_limit_v1(r, cpu_dir);
    }
    Some(cpu)
}

/// `cpu.cfs_quota_us / cpu.cfs_period_us` in cores; 0 = none (quota -1).
pub(crate) fn cpu_limit_v1(r: &mut Reader, cpu_dir: &Path) -> f64 {
    let quota = r
        .read(cpu_dir, "cpu.cfs_quota_us")
        .and_then(|t| t.trim().parse::<i64>().ok());
    let period = r.number(cpu_dir, "cpu.cfs_period_us");
    match (quota, period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => q as f64 / p as f64,
        _ => 0.0,
    }
}

/// Memory figures of a cgroup (the fields of `MemoryUsage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    pub current: u64,
    /// `None` where the kernel keeps no peak (v2 before 5.19).
    pub peak: Option<u64>,
    pub anon: u64,
    pub file: u64,
    pub kernel: u64,
    pub limit: u64,
    pub high: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub high_events: u64,
}

/// The keys of v2's `memory.stat` whose sum is the kernel memory, on kernels without the
/// `kernel` key (it came in 5.18).
const V2_KERNEL_KEYS: [&str; 7] = [
    "kernel_stack",
    "pagetables",
    "sec_pagetables",
    "percpu",
    "sock",
    "vmalloc",
    "slab",
];

/// cgroup v2: `memory.current`, `memory.peak`, `memory.stat` (anon, file, kernel),
/// `memory.max`, `memory.high` and `memory.events` (oom, oom_kill, high).
pub(crate) fn memory_v2(r: &mut Reader, dir: &Path, limits: bool) -> Option<Memory> {
    let mut m = Memory {
        current: r.number(dir, "memory.current")?,
        peak: r.number(dir, "memory.peak"),
        ..Memory::default()
    };
    if let Some(stat) = r.read(dir, "memory.stat") {
        m.anon = keyed(stat, "anon").unwrap_or(0);
        m.file = keyed(stat, "file").unwrap_or(0);
        m.kernel = keyed(stat, "kernel")
            .unwrap_or_else(|| V2_KERNEL_KEYS.iter().filter_map(|k| keyed(stat, k)).sum());
    }
    if limits {
        m.limit = r.number(dir, "memory.max").unwrap_or(0);
        m.high = r.number(dir, "memory.high").unwrap_or(0);
    }
    if let Some(events) = r.read(dir, "memory.events") {
        m.oom = keyed(events, "oom").unwrap_or(0);
        m.oom_kill = keyed(events, "oom_kill").unwrap_or(0);
        m.high_events = keyed(events, "high").unwrap_or(0);
    }
    Some(m)
}

/// cgroup v1: `memory.usage_in_bytes`, `memory.max_usage_in_bytes`, `memory.stat`
/// (`total_rss` as anon, `total_cache` as file), `memory.kmem.usage_in_bytes` as kernel,
/// `memory.limit_in_bytes`, `memory.soft_limit_in_bytes` as high, and `memory.oom_control`
/// (`oom_kill`, counted as both OOM events and OOM kills: v1 counts no other OOM event).
pub(crate) fn memory_v1(r: &mut Reader, dir: &Path, limits: bool) -> Option<Memory> {
    let mut m = Memory {
        current: r.number(dir, "memory.usage_in_bytes")?,
        peak: r.number(dir, "memory.max_usage_in_bytes"),
        ..Memory::default()
    };
    if let Some(stat) = r.read(dir, "memory.stat") {
        m.anon = keyed(stat, "total_rss")
            .or_else(|| keyed(stat, "rss"))
            .unwrap_or(0);
        m.file = keyed(stat, "total_cache")
            .or_else(|| keyed(stat, "cache"))
            .unwrap_or(0);
    }
    m.kernel = r.number(dir, "memory.kmem.usage_in_bytes").unwrap_or(0);
    if limits {
        let unlimited_is_zero = |v: u64| if v >= V1_UNLIMITED { 0 } else { v };
        m.limit = r
            .number(dir, "memory.limit_in_bytes")
            .map_or(0, unlimited_is_zero);
        m.high = r
            .number(dir, "memory.soft_limit_in_bytes")
            .map_or(0, unlimited_is_zero);
    }
    if let Some(control) = r.read(dir, "memory.oom_control") {
        m.oom_kill = keyed(control, "oom_kill").unwrap_or(0);
        m.oom = m.oom_kill;
    }
    Some(m)
}

/// `pids.current` and, with `limits`, `pids.max` (0 = unlimited); the same files on v1 and v2.
pub(crate) fn pids(r: &mut Reader, dir: &Path, limits: bool) -> Option<(u64, u64)> {
    let current = r.number(dir, "pids.current")?;
    let max = if limits {
        r.number(dir, "pids.max").unwrap_or(0)
    } else {
        0
    };
    Some((current, max))
}

/// cgroup v2 `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..` lines.
pub(crate) fn io_v2(r: &mut Reader, dir: &Path) -> Vec<IoDeviceUsage> {
    let Some(text) = r.read(dir, "io.stat") else {
        return Vec::new();
    };
    let mut devices = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(device) = fields.next() else {
            continue;
        };
        let mut d = IoDeviceUsage {
            device: device.to_owned(),
            ..IoDeviceUsage::default()
        };
        for field in fields {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => d.read_bytes_total = v,
                "wbytes" => d.write_bytes_total = v,
                "rios" => d.read_ops_total = v,
                "wios" => d.write_ops_total = v,
                _ => {}
            }
        }
        devices.push(d);
    }
    devices
}

/// cgroup v1 `blkio.throttle.io_service_bytes` and `blkio.throttle.io_serviced`:
/// `MAJ:MIN Read|Write|Sync|Async|Discard|Total N` lines (and a final `Total N`).
pub(crate) fn io_v1(r: &mut Reader, dir: &Path) -> Vec<IoDeviceUsage> {
    let mut devices: Vec<IoDeviceUsage> = Vec::new();
    for (file, bytes) in [
        ("blkio.throttle.io_service_bytes", true),
        ("blkio.throttle.io_serviced", false),
    ] {
        let Some(text) = r.read(dir, file) else {
            continue;
        };
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(device), Some(op), Some(value)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let index = match devices.iter().position(|d| d.device == device) {
                Some(i) => i,
                None => {
                    devices.push(IoDeviceUsage {
                        device: device.to_owned(),
                        ..IoDeviceUsage::default()
                    });
                    devices.len() - 1
                }
            };
            let d = &mut devices[index];
            match (op, bytes) {
                ("Read", true) => d.read_bytes_total = value,
                ("Write", true) => d.write_bytes_total = value,
                ("Read", false) => d.read_ops_total = value,
                ("Write", false) => d.write_ops_total = value,
                _ => {}
            }
        }
    }
    devices
}

/// A PSI file (`cpu.pressure`, `memory.pressure`, `io.pressure`):
/// `some avg10=0.12 avg60=.. avg300=.. total=USEC` and, except for cpu before 5.13, a `full`
/// line.
pub(crate) fn pressure(r: &mut Reader, dir: &Path, name: &str) -> Option<Pressure> {
    let text = r.read(dir, name)?;
    let line = |kind: &str| -> Option<(f64, f64)> {
        let rest = text.lines().find_map(|l| l.strip_prefix(kind))?;
        let mut avg10 = None;
        let mut total = None;
        for field in rest.split_whitespace() {
            match field.split_once('=') {
                Some(("avg10", v)) => avg10 = v.parse::<f64>().ok(),
                Some(("total", v)) => total = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        Some((avg10?, total? as f64 / 1e6))
    };
    let (some_avg10, some_seconds_total) = line("some ")?;
    let full = line("full ");
    Some(Pressure {
        some_avg10,
        some_seconds_total,
        full_avg10: full.map(|f| f.0),
        full_seconds_total: full.map(|f| f.1),
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    #[test]
    fn v2_cpu_memory_pids_and_io_are_read() {
        let d = dir_with(&[
            (
                "cpu.stat",
                "usage_usec 3500000\nuser_usec 3000000\nsystem_usec 500000\nnr_periods 40\n\
                 nr_throttled 7\nthrottled_usec 120000\nnr_bursts 0\nburst_usec 0\n",
            ),
            ("cpu.max", "150000 100000\n"),
            ("memory.current", "10485760\n"),
            ("memory.peak", "20971520\n"),
            (
                "memory.stat",
                "anon 8388608\nfile 1048576\nkernel 524288\nkernel_stack 16384\nslab 9\n",
            ),
            ("memory.max", "max\n"),
            ("memory.high", "33554432\n"),
            (
                "memory.events",
                "low 0\nhigh 3\nmax 9\noom 2\noom_kill 1\noom_group_kill 0\n",
            ),
            ("pids.current", "4\n"),
            ("pids.max", "max\n"),
            (
                "io.stat",
                "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n\
                 253:1 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n",
            ),
        ]);
        let mut r = Reader::default();
        let cpu = cpu_v2(&mut r, d.path(), true).unwrap();
        assert_eq!(
            cpu,
            Cpu {
                user_ns: 3_000_000_000,
                system_ns: 500_000_000,
                periods: 40,
                throttled_periods: 7,
                throttled_ns: 120_000_000,
                limit_cores: 1.5,
            }
        );
        let m = memory_v2(&mut r, d.path(), true).unwrap();
        assert_eq!(
            m,
            Memory {
                current: 10 << 20,
                peak: Some(20 << 20),
                anon: 8 << 20,
                file: 1 << 20,
                kernel: 512 << 10,
                limit: 0,
                high: 32 << 20,
                oom: 2,
                oom_kill: 1,
                high_events: 3,
            }
        );
        assert_eq!(pids(&mut r, d.path(), true), Some((4, 0)));
        assert_eq!(
            memory_v2(&mut r, d.path(), false).unwrap().high,
            0,
            "limits are read only when asked"
        );
        let io = io_v2(&mut r, d.path());
        assert_eq!(io.len(), 2);
        assert_eq!(
            io[0],
            IoDeviceUsage {
                device: "8:0".to_owned(),
                read_bytes_total: 4096,
                write_bytes_total: 8192,
                read_ops_total: 1,
                write_ops_total: 2,
            }
        );
        assert_eq!(io[1].device, "253:1");
    }

    #[test]
    fn v2_kernel_memory_is_summed_on_kernels_without_the_kernel_key() {
        let d = dir_with(&[
            ("memory.current", "100\n"),
            (
                "memory.stat",
                "anon 10\nfile 20\nkernel_stack 1\npagetables 2\npercpu 4\nsock 8\nvmalloc 16\nslab 32\nslab_reclaimable 30\n",
            ),
        ]);
        let mut r = Reader::default();
        let m = memory_v2(&mut r, d.path(), true).unwrap();
        assert_eq!(m.kernel, 63);
        assert_eq!(m.peak, None, "no memory.peak before 5.19");
        assert_eq!((m.limit, m.high, m.oom_kill), (0, 0, 0));
    }

    #[test]
    fn v1_cpu_memory_and_blkio_are_read() {
        let cpu = dir_with(&[
            (
                "cpu.stat",
                "nr_periods 10\nnr_throttled 3\nthrottled_time 45000000\n",
            ),
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ]);
        // Sampled 2 s : 0.5 s; exactly 2.25 s in all.
        let acct = dir_with(&[
            ("cpuacct.usage", "2250000000\n"),
            ("cpuacct.usage_user", "2000000000\n"),
            ("cpuacct.usage_sys", "500000000\n"),
        ]);
        let mut r = Reader::default();
        assert_eq!(
            cpu_v1(&mut r, cpu.path(), acct.path(), true).unwrap(),
            Cpu {
                user_ns: 1_800_000_000,
                system_ns: 450_000_000,
                periods: 10,
                throttled_periods: 3,
                throttled_ns: 45_000_000,
                limit_cores: 0.0,
            }
        );
        fs::write(cpu.path().join("cpu.cfs_quota_us"), "50000\n").unwrap();
        assert!((cpu_limit_v1(&mut r, cpu.path()) - 0.5).abs() < 1e-9);

        let mem = dir_with(&[
            ("memory.usage_in_bytes", "5242880\n"),
            ("memory.max_usage_in_bytes", "6291456\n"),
            (
                "memory.stat",
                "cache 1\nrss 2\ntotal_cache 4096\ntotal_rss 1048576\n",
            ),
            ("memory.kmem.usage_in_bytes", "65536\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.soft_limit_in_bytes", "9223372036854771712\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
        ]);
        let m = memory_v1(&mut r, mem.path(), true).unwrap();
        assert_eq!(
            m,
            Memory {
                current: 5 << 20,
                peak: Some(6 << 20),
                anon: 1 << 20,
                file: 4096,
                kernel: 64 << 10,
                limit: 0,
                high: 0,
                oom: 2,
                oom_kill: 2,
                high_events: 0,
            }
        );
        fs::write(mem.path().join("memory.limit_in_bytes"), "67108864\n").unwrap();
        assert_eq!(memory_v1(&mut r, mem.path(), true).unwrap().limit, 64 << 20);

        let blkio = dir_with(&[
            (
                "blkio.throttle.io_service_bytes",
                "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Discard 0\n8:0 Total 12288\nTotal 12288\n",
            ),
            (
                "blkio.throttle.io_serviced",
                "8:0 Read 1\n8:0 Write 3\n8:0 Total 4\nTotal 4\n",
            ),
        ]);
        assert_eq!(
            io_v1(&mut r, blkio.path()),
            vec![IoDeviceUsage {
                device: "8:0".to_owned(),
                read_bytes_total: 4096,
                write_bytes_total: 8192,
                read_ops_total: 1,
                write_ops_total: 3,
            }]
        );
    }

    #[test]
    fn pressure_lines_are_read_with_and_without_full() {
        let d = dir_with(&[
            (
                "memory.pressure",
                "some avg10=1.50 avg60=0.20 avg300=0.00 total=2500000\n\
                 full avg10=0.75 avg60=0.10 avg300=0.00 total=1000000\n",
            ),
            (
                "cpu.pressure",
                "some avg10=12.00 avg60=3.00 avg300=1.00 total=42\n",
            ),
        ]);
        let mut r = Reader::default();
        let m = pressure(&mut r, d.path(), "memory.pressure").unwrap();
        assert_eq!(
            m,
            Pressure {
                some_avg10: 1.5,
                some_seconds_total: 2.5,
                full_avg10: Some(0.75),
                full_seconds_total: Some(1.0),
            }
        );
        let c = pressure(&mut r, d.path(), "cpu.pressure").unwrap();
        assert_eq!(c.some_avg10, 12.0);
        assert_eq!(c.full_avg10, None);
        assert!(pressure(&mut r, d.path(), "io.pressure").is_none());
    }

    #[test]
    fn v1_cpu_counters_near_the_u64_limit_do_not_overflow() {
        // Found by the agent_cgroup_files fuzz target: the sampled sum overflowed.
        let dir = dir_with(&[
            ("cpuacct.usage_user", "18446744073709551615\n"),
            ("cpuacct.usage_sys", "1\n"),
        ]);
        let mut r = Reader::default();
        let cpu = cpu_v1(&mut r, dir.path(), dir.path(), false).expect("read");
        assert_eq!(cpu.user_ns + cpu.system_ns, u64::MAX);
        let dir = dir_with(&[
            ("cpuacct.usage", "10\n"),
            ("cpuacct.usage_user", "18446744073709551615\n"),
            ("cpuacct.usage_sys", "18446744073709551615\n"),
        ]);
        let cpu = cpu_v1(&mut r, dir.path(), dir.path(), false).expect("read");
        assert_eq!(cpu.user_ns + cpu.system_ns, 10);
    }

    #[test]
    fn missing_files_give_nothing_rather_than_errors() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Reader::default();
        assert!(cpu_v2(&mut r, d.path(), true).is_none());
        assert!(memory_v2(&mut r, d.path(), true).is_none());
        assert!(memory_v1(&mut r, d.path(), true).is_none());
        assert!(pids(&mut r, d.path(), true).is_none());
        assert!(io_v2(&mut r, d.path()).is_empty());
        assert!(io_v1(&mut r, d.path()).is_empty());
        assert_eq!(cpu_max_v2(&mut r, d.path()), 0.0);
    }
}
