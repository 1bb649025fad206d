//! The hybrid backend: v1 controller hierarchies enforce, the unified hierarchy identifies.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    CPU_PERIOD_US, CgroupBackend, CgroupError, CpuStats, Host, Limits, MemoryOom, RootPlacement,
    TASKS_DIR, TaskCgroup, cpu_quota_us, cpu_shares, create_again_if_level_removed, io_err, keyed,
    mkdir_all, read_pids, read_u64, remove_dirs_now, remove_framework_level, remove_tree,
    rmdir_when_empty, root_in, wait_empty, write, write_optional,
};
use crate::discovery::CgroupMode;

/// The v1 controllers the hybrid backend uses; the first three are required.
const HYBRID_REQUIRED: [&str; 3] = ["memory", "cpu", "pids"];
const HYBRID_OPTIONAL: [&str; 2] = ["cpuacct", "freezer"];

/// Hybrid hosts: v1 controllers enforce, the unified hierarchy identifies.
#[derive(Debug)]
pub struct HybridBackend {
    memory: PathBuf,
    cpu: PathBuf,
    pids: PathBuf,
    /// `None` when cpuacct shares the cpu hierarchy or is missing.
    cpuacct: Option<PathBuf>,
    freezer: Option<PathBuf>,
    unified: Option<PathBuf>,
}

impl HybridBackend {
    pub(super) fn new(
        cgroup_root: &Path,
        host: &Host<'_>,
        placement: &RootPlacement,
    ) -> Result<Self, CgroupError> {
        let own = host.own;
        let mut seen: Vec<String> = Vec::new();
        let mut root_for = |controller: &str| -> Result<Option<PathBuf>, CgroupError> {
            let Some((controllers, path)) = own.v1(controller) else {
                return Ok(None);
            };
            let mount_name = controllers.join(",");
            if seen.contains(&mount_name) {
                return Ok(None);
            }
            seen.push(mount_name.clone());
            let mut mount = cgroup_root.join(&mount_name);
            if !mount.is_dir() {
                mount = cgroup_root.join(controller);
            }
            if !mount.join("cgroup.procs").is_file() {
                return Ok(None);
            }
            let root = root_in(&mount, path, host.delegated, placement)?.root;
            mkdir_all(&root.join(TASKS_DIR))?;
            Ok(Some(root))
        };
        let mut required = Vec::new();
        for c in HYBRID_REQUIRED {
            required.push(root_for(c)?.ok_or_else(|| CgroupError::Unsupported {
                reason: format!(
                    "the v1 {c} controller is not mounted under {}",
                    cgroup_root.display()
                ),
            })?);
        }
        let cpuacct = root_for(HYBRID_OPTIONAL[0])?;
        let freezer = root_for(HYBRID_OPTIONAL[1])?;
        let unified = match own.unified() {
            Some(path) if cgroup_root.join("unified/cgroup.procs").is_file() => {
                let root = root_in(
                    &cgroup_root.join("unified"),
                    path,
                    host.delegated,
                    placement,
                )?
                .root;
                mkdir_all(&root.join(TASKS_DIR))?;
                Some(root)
            }
            _ => None,
        };
        let [memory, cpu, pids] =
            <[PathBuf; 3]>::try_from(required).map_err(|_| CgroupError::Unsupported {
                reason: "internal: controller list".to_owned(),
            })?;
        Ok(Self {
            memory,
            cpu,
            pids,
            cpuacct,
            freezer,
            unified,
        })
    }

    fn all_roots(&self) -> Vec<PathBuf> {
        let mut roots = vec![self.memory.clone(), self.cpu.clone(), self.pids.clone()];
        roots.extend(self.cpuacct.iter().cloned());
        roots.extend(self.freezer.iter().cloned());
        roots.extend(self.unified.iter().cloned());
        roots
    }

    fn at(&self, rel: &Path) -> HybridCgroup {
        HybridCgroup {
            memory: self.memory.join(rel),
            cpu: self.cpu.join(rel),
            pids: self.pids.join(rel),
            cpuacct: self.cpuacct.as_ref().map(|r| r.join(rel)),
            freezer: self.freezer.as_ref().map(|r| r.join(rel)),
            unified: self.unified.as_ref().map(|r| r.join(rel)),
        }
    }
}

impl HybridBackend {
    /// One try at making the task cgroup `rel` (and its framework level) in every hierarchy
    /// with `limits`.
    fn create_once(&self, rel: &Path, limits: &Limits) -> Result<Box<dyn TaskCgroup>, CgroupError> {
        let cg = self.at(rel);
        let mut created = Vec::new();

        for dir in cg.dirs() {
            if !dir.is_dir() {
                created.push(dir.clone());
            }
            mkdir_all(&dir)?;
        }
        if let Err(e) = cg.apply(limits) {
            for dir in created {
                let _ = fs::remove_dir(dir);
            }
            return Err(e);
        }
        Ok(Box::new(cg))
    }
}

impl CgroupBackend for HybridBackend {
    fn mode(&self) -> CgroupMode {
        CgroupMode::Hybrid
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.all_roots()
    }

    fn create(&self, rel: &Path, limits: &Limits) -> Result<Box<dyn TaskCgroup>, CgroupError> {
        create_again_if_level_removed(&self.at(rel).dirs(), || self.create_once(rel, limits))
    }

    fn open(&self, rel: &Path) -> Option<Box<dyn TaskCgroup>> {
        let cg = self.at(rel);
        cg.memory
            .join("cgroup.procs")
            .is_file()
            .then(|| Box::new(cg) as Box<dyn TaskCgroup>)
    }

    fn destroy_root(&self) -> Result<(), CgroupError> {
        for root in self.all_roots() {
            remove_tree(&root, None)?;
        }
        Ok(())
    }

    fn unified_root(&self) -> Option<PathBuf> {
        self.unified.clone()
    }
}

/// A task's cgroup on a hybrid host: one directory per hierarchy.
#[derive(Debug)]
struct HybridCgroup {
    memory: PathBuf,
    cpu: PathBuf,
    pids: PathBuf,
    cpuacct: Option<PathBuf>,
    freezer: Option<PathBuf>,
    unified: Option<PathBuf>,
}

impl HybridCgroup {
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.memory.clone(), self.cpu.clone(), self.pids.clone()];
        dirs.extend(self.freezer.iter().cloned());
        // cpuacct and unified last and together: a task's CPU time is charged to its cpuacct
        // group by the kernel and to its unified cgroup by eBPF, so the two figures agree
        // when the task joins both with nothing in between (see ebpf).
        dirs.extend(self.cpuacct.iter().cloned());
        dirs.extend(self.unified.iter().cloned());
        dirs
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(cpus) = limits.cpus {
            write(&self.cpu.join("cpu.shares"), &cpu_shares(cpus).to_string())?;
        }
        write_optional(
            &self.cpu.join("cpu.cfs_period_us"),
            &CPU_PERIOD_US.to_string(),
        )?;
        let quota = limits
            .cpu_limit
            .map_or_else(|| "-1".to_owned(), |c| cpu_quota_us(c).to_string());
        write_optional(&self.cpu.join("cpu.cfs_quota_us"), &quota)?;
        if let Some(mem) = limits.mem_bytes {
            write(&self.memory.join("memory.limit_in_bytes"), &mem.to_string())?;
            // Swap off: memory+swap limited to memory alone (where swap is accounted).
            write_optional(
                &self.memory.join("memory.memsw.limit_in_bytes"),
                &mem.to_string(),
            )?;
        }
        if let Some(soft) = limits.mem_soft_bytes {
            write_optional(
                &self.memory.join("memory.soft_limit_in_bytes"),
                &soft.to_string(),
            )?;
        }
        // Not every v1 kernel lets a non-root cgroup change swappiness; best effort.
        if let Err(e) = fs::write(self.memory.join("memory.swappiness"), "0") {
            tracing::debug!(error = %e, "cannot set memory.swappiness to 0");
        }
        let pids = limits
            .pids_max
            .map_or_else(|| "max".to_owned(), |p| p.to_string());
        write(&self.pids.join("pids.max"), &pids)?;
        Ok(())
    }

    fn freeze(&self, state: &str) {
        let Some(freezer) = &self.freezer else {
            return;
        };
        if fs::write(freezer.join("freezer.state"), state).is_err() {
            return;
        }
        if state == "FROZEN" {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                let now = fs::read_to_string(freezer.join("freezer.state")).unwrap_or_default();
                if now.trim() == "FROZEN" {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl TaskCgroup for HybridCgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn unified_dir(&self) -> Option<PathBuf> {
        self.unified.clone()
    }

    fn path(&self) -> PathBuf {
        self.memory.clone()
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.memory.join("cgroup.procs"))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        // Freeze so nothing forks while being killed; SIGKILL reaches frozen tasks.
        for _ in 0..100 {
            self.freeze("FROZEN");
            let pids = self.pids()?;
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            self.freeze("THAWED");
            if pids.is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(1));
            if self.pids()?.is_empty() {
                break;
            }
        }
        wait_empty(&self.memory, &self.memory.join("cgroup.procs"))
    }

    fn memory_oom(&self) -> Option<MemoryOom> {
        let oom_kills = keyed(&self.memory.join("memory.oom_control"), "oom_kill")?;
        (oom_kills > 0).then(|| MemoryOom {
            limit_bytes: read_u64(&self.memory.join("memory.limit_in_bytes"))
                .filter(|l| *l < 1 << 60),
            peak_bytes: read_u64(&self.memory.join("memory.max_usage_in_bytes")),
            oom_kills,
        })
    }

    fn cpu_stats(&self) -> Result<CpuStats, CgroupError> {
        let acct = self
            .cpuacct
            .as_ref()
            .unwrap_or(&self.cpu)
            .join("cpuacct.usage");
        let usage_ns = read_u64(&acct)
            .ok_or_else(|| io_err("read", &acct)(io::Error::other("missing or not a number")))?;
        let stat = self.cpu.join("cpu.stat");
        Ok(CpuStats {
            usage_us: usage_ns / 1000,
            nr_throttled: keyed(&stat, "nr_throttled").unwrap_or(0),
            throttled_us: keyed(&stat, "throttled_time").unwrap_or(0) / 1000,
        })
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        if !self.pids()?.is_empty() {
            self.kill_all()?;
        }
        for dir in self.dirs() {
            rmdir_when_empty(&dir, &dir.join("cgroup.procs"))?;
            remove_framework_level(&dir);
        }
        Ok(())
    }

    fn try_remove(&self) -> bool {
        remove_dirs_now(self.dirs())
    }
}
