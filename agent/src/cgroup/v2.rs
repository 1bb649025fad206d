//! The pure cgroup v2 backend: every controller in the one hierarchy at the cgroup mount.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    CPU_PERIOD_US, CgroupBackend, CgroupError, CpuStats, DESTROY_LIMIT, DEVICE_KEEPER_DIR, Host,
    Limits, MemoryOom, RootPlacement, TASKS_DIR, TaskCgroup, backoff, cpu_quota_us, cpu_weight,
    create_again_if_level_removed, describe_pids, io_err, keyed, mkdir_all, read_pids, read_u64,
    remove_dirs_now, remove_framework_level, remove_tree, rmdir_when_empty, root_in, write,
    write_optional,
};
use crate::discovery::CgroupMode;

/// The controllers the agent enables for task cgroups on v2, when the kernel offers them.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// The controllers without which task limits are not enforced: setting up fails without them.
const V2_REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];

/// The leaf the agent moves itself into when its own cgroup must pass controllers down.
pub const AGENT_LEAF: &str = "agent";

/// Pure cgroup v2: every controller in the hierarchy mounted at the cgroup root.
#[derive(Debug)]
pub struct V2Backend {
    root: PathBuf,
    /// The controllers enabled for the tasks.
    controllers: Vec<String>,
}

impl V2Backend {
    pub(super) fn new(
        mount: &Path,
        host: &Host<'_>,
        placement: &RootPlacement,
    ) -> Result<Self, CgroupError> {
        let own_path = host.own.unified().ok_or_else(|| CgroupError::OwnCgroup {
            path: host.proc_root.join("self/cgroup"),
            reason: "it has no unified (0::) line".to_owned(),
        })?;
        let placed = root_in(mount, own_path, host.delegated, placement)?;
        let offered = fs::read_to_string(mount.join("cgroup.controllers"))
            .map_err(io_err("read", &mount.join("cgroup.controllers")))?;
        let wanted: Vec<&str> = V2_CONTROLLERS
            .into_iter()
            .filter(|c| offered.split_whitespace().any(|o| o == *c))
            .collect();
        let root_existed = placed.root.is_dir();
        let tasks = placed.root.join(TASKS_DIR);
        mkdir_all(&tasks)?;
        let chain = Chain {
            proc_root: host.proc_root,
            own_dir: &super::under(mount, own_path),
            root: &placed.root,
        };
        let reasons = chain.enable(&placed.base, &wanted)?;
        let enabled = subtree_control(&tasks);
        let missing: Vec<&str> = V2_REQUIRED
            .into_iter()
            .filter(|c| !enabled.iter().any(|e| e == c))
            .collect();
        if !missing.is_empty() {
            // Leave nothing behind that this attempt made.
            let _ = fs::remove_dir(&tasks);
            if !root_existed {
                let _ = fs::remove_dir(&placed.root);
            }
            return Err(CgroupError::ControllersUnavailable {
                root: placed.root.clone(),
                missing: missing.join(", "),
                reasons: if !reasons.is_empty() {
                    reasons.join("; ")
                } else if missing.iter().any(|c| !wanted.contains(c)) {
                    format!(
                        "the hierarchy at {} does not offer them (its cgroup.controllers: {})",
                        mount.display(),
                        offered.trim()
                    )
                } else {
                    format!(
                        "they are not in {} after enabling them",
                        tasks.join("cgroup.subtree_control").display()
                    )
                },
            });
        }
        for reason in &reasons {
            tracing::warn!(root = %placed.root.display(), %reason, "an optional cgroup controller is not enabled: its limits are not enforced");
        }
        Ok(Self {
            root: placed.root,
            controllers: enabled,
        })
    }

    /// The controllers enabled for the task cgroups.
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }
}

/// The controllers in `<dir>/cgroup.subtree_control` (none when it cannot be read).
fn subtree_control(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.subtree_control"))
        .map(|text| text.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Enabling controllers on the way from a base cgroup down to `<root>/containers`.
struct Chain<'a> {
    proc_root: &'a Path,
    /// This process's own cgroup (it may move itself out of it, down into `<root>/agent`).
    own_dir: &'a Path,
    root: &'a Path,
}

impl Chain<'_> {
    /// Enables `wanted` in every `cgroup.subtree_control` from `base` down to
    /// `<root>/containers`, where missing. A cgroup on the way that holds processes is left
    /// alone (cgroup v2 enables controllers only in cgroups without processes of their own),
    /// unless this process is its only one: then it moves itself down into `<root>/agent`
    /// first. Returns why each controller that could not be enabled was not.
    fn enable(&self, base: &Path, wanted: &[&str]) -> Result<Vec<String>, CgroupError> {
        let tasks = self.root.join(TASKS_DIR);
        let mut chain: Vec<PathBuf> = tasks
            .ancestors()
            .take_while(|d| d.starts_with(base))
            .map(Path::to_path_buf)
            .collect();
        chain.reverse();
        let me = std::process::id() as i32;
        let mut reasons = Vec::new();
        for dir in &chain {
            let have = subtree_control(dir);
            let missing: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|c| !have.iter().any(|h| h == c))
                .collect();
            if missing.is_empty() {
                continue;
            }
            // The hierarchy's root may hold processes; any other cgroup may not.
            let is_mount_root = !dir.join("cgroup.type").exists();
            if !is_mount_root {
                let pids = read_pids(&dir.join("cgroup.procs"))?;
                if pids == [me] && dir == self.own_dir {
                    let leaf = self.root.join(AGENT_LEAF);
                    mkdir_all(&leaf)?;
                    write(&leaf.join("cgroup.procs"), &me.to_string())?;
                    tracing::info!(from = %dir.display(), leaf = %leaf.display(),
                        "moved the agent down into its own leaf cgroup, so that its cgroup can pass controllers down");
                } else if !pids.is_empty() {
                    reasons.push(format!(
                        "{} cannot pass {} down: other processes are in it ({}), and cgroup v2 enables controllers only in cgroups without processes of their own",
                        dir.display(),
                        missing.join(", "),
                        describe_pids(self.proc_root, &pids)
                    ));
                    // Nothing below can get what this one lacks.
                    return Ok(reasons);
                }
            }
            for c in missing {
                if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                    reasons.push(format!(
                        "cannot enable {c} in {}: {}",
                        dir.display(),
                        why_not_enabled(&e)
                    ));
                }
            }
        }
        Ok(reasons)
    }
}

/// What a failed write of `+controller` to `cgroup.subtree_control` means.
fn why_not_enabled(e: &io::Error) -> String {
    let why = match e.raw_os_error() {
        Some(nix::libc::EBUSY) => "the cgroup holds processes",
        Some(nix::libc::EOPNOTSUPP) => "it is a threaded cgroup, or below one",
        Some(nix::libc::ENOENT) => "its parent does not pass that controller down",
        Some(nix::libc::EACCES | nix::libc::EPERM) => {
            "permission denied: run the agent as root, or in a cgroup delegated to its user"
        }
        _ => "",
    };
    if why.is_empty() {
        e.to_string()
    } else {
        format!("{why} ({e})")
    }
}

impl V2Backend {
    /// One try at making the task cgroup `rel` (and its framework level) with `limits`.
    fn create_once(&self, rel: &Path, limits: &Limits) -> Result<Box<dyn TaskCgroup>, CgroupError> {
        let dir = self.root.join(rel);
        // Intermediate levels (containers/<framework>) pass the controllers down. Checked on
        // every launch, not only when the level is made: another launch may have made it a
        // moment ago and not yet enabled them.
        let mut parent = self.root.join(TASKS_DIR);
        if let Some(parent_rel) = rel.parent() {
            for part in parent_rel.components().skip(1) {
                parent.push(part);
                mkdir_all(&parent)?;
                let have = subtree_control(&parent);
                for c in &self.controllers {
                    if !have.contains(c) {
                        let control = parent.join("cgroup.subtree_control");
                        fs::write(&control, format!("+{c}"))
                            .map_err(io_err(format!("write \"+{c}\" to"), &control))?;
                    }
                }
            }
        }
        let created = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err("create", &dir)(e)),
        };
        let cg = V2Cgroup { dir };
        if let Err(e) = cg.apply(limits) {
            if created {
                let _ = fs::remove_dir(&cg.dir);
            }
            return Err(e);
        }
        Ok(Box::new(cg))
    }
}

impl CgroupBackend for V2Backend {
    fn mode(&self) -> CgroupMode {
        CgroupMode::V2
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![self.root.clone()]
    }

    fn create(&self, rel: &Path, limits: &Limits) -> Result<Box<dyn TaskCgroup>, CgroupError> {
        create_again_if_level_removed(&[self.root.join(rel)], || self.create_once(rel, limits))
    }

    fn open(&self, rel: &Path) -> Option<Box<dyn TaskCgroup>> {
        let dir = self.root.join(rel);
        dir.join("cgroup.procs")
            .is_file()
            .then(|| Box::new(V2Cgroup { dir }) as Box<dyn TaskCgroup>)
    }

    fn destroy_root(&self) -> Result<(), CgroupError> {
        // The agent's own leaf is left to the caller: a process cannot leave its cgroup upwards.
        remove_tree(&self.root.join(TASKS_DIR), Some("cgroup.kill"))?;
        remove_tree(&self.root.join(DEVICE_KEEPER_DIR), Some("cgroup.kill"))?;
        let leaf = self.root.join(AGENT_LEAF);
        if read_pids(&leaf.join("cgroup.procs"))?.is_empty() {
            let _ = fs::remove_dir(&leaf);
            let _ = fs::remove_dir(&self.root);
        }
        Ok(())
    }

    fn unified_root(&self) -> Option<PathBuf> {
        Some(self.root.clone())
    }
}

/// A task's cgroup on a pure v2 host.
#[derive(Debug)]
struct V2Cgroup {
    dir: PathBuf,
}

impl V2Cgroup {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(cpus) = limits.cpus {
            write_optional(&self.file("cpu.weight"), &cpu_weight(cpus).to_string())?;
            // io.weight is 1..=10000 like cpu.weight; 100 is the default.
            write_optional(
                &self.file("io.weight"),
                &format!("default {}", (cpus * 100.0).round().clamp(1.0, 10_000.0)),
            )?;
        }
        let max = limits.cpu_limit.map_or_else(
            || format!("max {CPU_PERIOD_US}"),
            |c| format!("{} {CPU_PERIOD_US}", cpu_quota_us(c)),
        );
        write_optional(&self.file("cpu.max"), &max)?;
        if let Some(soft) = limits.mem_soft_bytes {
            write_optional(&self.file("memory.high"), &soft.to_string())?;
        }
        if let Some(mem) = limits.mem_bytes {
            write_optional(&self.file("memory.max"), &mem.to_string())?;
        }
        write_optional(&self.file("memory.swap.max"), "0")?;
        write_optional(&self.file("memory.oom.group"), "1")?;
        if let Some(pids) = limits.pids_max {
            write_optional(&self.file("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    fn populated(&self) -> bool {
        keyed(&self.file("cgroup.events"), "populated").is_none_or(|p| p != 0)
    }

    fn wait_unpopulated(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + DESTROY_LIMIT;
        let mut attempt = 0;
        while self.populated() {
            if Instant::now() >= deadline {
                return Err(CgroupError::NotEmpty {
                    path: self.dir.clone(),
                    limit: DESTROY_LIMIT,
                    pids: self.pids().unwrap_or_default(),
                });
            }
            backoff(&mut attempt);
        }
        Ok(())
    }
}

impl TaskCgroup for V2Cgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.file("cgroup.procs")]
    }

    fn unified_dir(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }

    fn path(&self) -> PathBuf {
        self.dir.clone()
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.file("cgroup.procs"))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        match fs::write(self.file("cgroup.kill"), "1") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.dir.is_dir() => {
                // Before Linux 5.14: freeze, kill each process, thaw.
                let _ = fs::write(self.file("cgroup.freeze"), "1");
                for pid in self.pids()? {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = fs::write(self.file("cgroup.freeze"), "0");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("write \"1\" to", &self.file("cgroup.kill"))(e)),
        }
        self.wait_unpopulated()
    }

    fn memory_oom(&self) -> Option<MemoryOom> {
        let events = self.file("memory.events");
        let oom_kills = keyed(&events, "oom_kill")?;
        (oom_kills > 0).then(|| MemoryOom {
            limit_bytes: read_u64(&self.file("memory.max")),
            peak_bytes: read_u64(&self.file("memory.peak")),
            oom_kills,
        })
    }

    fn cpu_stats(&self) -> Result<CpuStats, CgroupError> {
        let stat = self.file("cpu.stat");
        if !stat.is_file() {
            return Err(io_err("read", &stat)(io::ErrorKind::NotFound.into()));
        }
        Ok(CpuStats {
            usage_us: keyed(&stat, "usage_usec").unwrap_or(0),
            nr_throttled: keyed(&stat, "nr_throttled").unwrap_or(0),
            throttled_us: keyed(&stat, "throttled_usec").unwrap_or(0),
        })
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        if !self.dir.exists() {
            return Ok(());
        }
        if self.populated() {
            self.kill_all()?;
        }
        rmdir_when_empty(&self.dir, &self.file("cgroup.procs"))?;
        remove_framework_level(&self.dir);
        Ok(())
    }

    fn try_remove(&self) -> bool {
        remove_dirs_now([self.dir.clone()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real cgroup v2 directory below this process's own unified cgroup, removed on drop;
    /// `None` without root or a unified hierarchy.
    fn own_unified_dir(name: &str) -> Option<PathBuf> {
        let own =
            crate::discovery::unified_cgroup_dir(Path::new("/proc"), Path::new("/sys/fs/cgroup"))?;
        let dir = own.join(name);
        fs::create_dir(&dir).ok()?;
        Some(dir)
    }

    #[test]
    fn a_task_cgroup_whose_limits_cannot_be_written_is_removed_as_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create cgroups");
            return;
        }
        let Some(root) = own_unified_dir(&format!("strata-test-limits-{}", std::process::id()))
        else {
            eprintln!("skipped: no unified cgroup hierarchy this process can write");
            return;
        };
        let backend = V2Backend {
            root: root.clone(),
            controllers: Vec::new(),
        };
        let limits = Limits {
            cpus: Some(1.0),
            mem_bytes: Some(64 << 20),
            ..Limits::default()
        };
        let rel = Path::new(TASKS_DIR).join("fw").join("t");
        let result = backend.create(&rel, &limits);
        let left = root.join(&rel).exists();
        let cpu_offered = fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
        let _ = remove_tree(&root, None);
        if cpu_offered {
            eprintln!("skipped: the cpu controller is there, so the limits can be written");
            return;
        }
        // cgroupfs refuses to create a file it does not offer (cpu.weight without the cpu
        // controller): the write fails, and the cgroup made for it goes.
        let err = result.map(drop).unwrap_err();
        assert!(err.to_string().contains("cpu.weight"), "{err}");
        assert!(!left, "the task cgroup was left behind");
    }
}
