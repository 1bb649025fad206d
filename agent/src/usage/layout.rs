//! Where the task cgroups are: the agent's roots per hierarchy ([`Layout`]: one root on pure
//! v2, the v1 controllers' and the unified one on hybrid hosts), and one task's directories
//! under them ([`TaskDirs`]).

use std::path::{Path, PathBuf};

use super::TaskRef;
use crate::cgroup::CgroupBackend;
use crate::discovery::CgroupMode;

/// Where the task cgroups are, per hierarchy. A task's cgroup is `<root>/containers/<fw>/<task>`
/// under each root (see [`crate::cgroup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2: one root holds every controller.
    V2 {
        /// The agent's cgroup root.
        root: PathBuf,
    },
    /// A hybrid host: the v1 controllers' roots and the unified one.
    Hybrid(HybridRoots),
}

/// The agent's cgroup roots on a hybrid host; `None` for a hierarchy it has none in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HybridRoots {
    /// The v1 memory controller.
    pub memory: Option<PathBuf>,
    /// The v1 cpu controller.
    pub cpu: Option<PathBuf>,
    /// The v1 cpuacct controller (the cpu root when they share a hierarchy).
    pub cpuacct: Option<PathBuf>,
    /// The v1 pids controller.
    pub pids: Option<PathBuf>,
    /// The v1 blkio controller.
    pub blkio: Option<PathBuf>,
    /// The unified (v2) hierarchy: the task's identity for eBPF, and PSI.
    pub unified: Option<PathBuf>,
}

impl Layout {
    /// The agent's root as a path of the unified hierarchy, as `/proc/PID/cgroup`'s `0::` line
    /// names cgroups (`/strata-ab12`); `None` without a unified root.
    #[must_use]
    pub fn tasks_root(&self, cgroup_mount: &Path) -> Option<String> {
        let (root, mount) = match self {
            Self::V2 { root } => (root, cgroup_mount.to_path_buf()),
            Self::Hybrid(h) => (h.unified.as_ref()?, cgroup_mount.join("unified")),
        };
        let rel = root.strip_prefix(&mount).ok()?;
        Some(format!("/{}", rel.display()))
    }

    /// The layout of a cgroup backend's roots: each root is named after its hierarchy's mount
    /// directory under `cgroup_mount` (`memory`, `cpu,cpuacct`, `unified`, ...).
    #[must_use]
    pub fn of_backend(backend: &dyn CgroupBackend, cgroup_mount: &Path) -> Option<Self> {
        Self::from_roots(backend.mode(), &backend.roots(), cgroup_mount)
    }

    /// See [`Layout::of_backend`].
    #[must_use]
    pub fn from_roots(mode: CgroupMode, roots: &[PathBuf], cgroup_mount: &Path) -> Option<Self> {
        match mode {
            CgroupMode::V2 => roots.first().map(|root| Self::V2 { root: root.clone() }),
            CgroupMode::Hybrid => {
                let mut h = HybridRoots::default();
                for root in roots {
                    let Ok(rel) = root.strip_prefix(cgroup_mount) else {
                        continue;
                    };
                    let Some(mount) = rel.components().next() else {
                        continue;
                    };
                    let mount = mount.as_os_str().to_string_lossy();
                    for controller in mount.split(',') {
                        let slot = match controller {
                            "memory" => &mut h.memory,
                            "cpu" => &mut h.cpu,
                            "cpuacct" => &mut h.cpuacct,
                            "pids" => &mut h.pids,
                            "blkio" => &mut h.blkio,
                            "unified" => &mut h.unified,
                            _ => continue,
                        };
                        *slot = Some(root.clone());
                    }
                }
                if h.cpuacct.is_none() {
                    h.cpuacct.clone_from(&h.cpu);
                }
                Some(Self::Hybrid(h))
            }
            CgroupMode::V1 | CgroupMode::None => None,
        }
    }
}

/// A task's cgroup directories, per hierarchy.
#[derive(Debug, Clone, Default)]
pub(super) struct TaskDirs {
    /// The directory that decides whether the cgroup exists (v2: its only one; hybrid: memory).
    pub(super) main: PathBuf,
    /// The unified (v2) directory: the task's eBPF identity, and PSI.
    pub(super) unified: Option<PathBuf>,
    /// Hybrid hosts' v1 directories (unset on v2 hosts, where `main` holds every controller).
    pub(super) cpu: Option<PathBuf>,
    pub(super) cpuacct: Option<PathBuf>,
    pub(super) memory: Option<PathBuf>,
    pub(super) pids: Option<PathBuf>,
    pub(super) blkio: Option<PathBuf>,
}

impl TaskDirs {
    pub(super) fn of(layout: &Layout, task: &TaskRef) -> Option<Self> {
        let rel = crate::cgroup::task_rel(&task.framework_id, &task.task_id).ok()?;
        let at = |root: &Option<PathBuf>| root.as_ref().map(|r| r.join(&rel));
        Some(match layout {
            Layout::V2 { root } => Self {
                main: root.join(&rel),
                unified: Some(root.join(&rel)),
                ..Self::default()
            },
            Layout::Hybrid(h) => Self {
                main: at(&h.memory).or_else(|| at(&h.unified))?,
                unified: at(&h.unified),
                cpu: at(&h.cpu),
                cpuacct: at(&h.cpuacct),
                memory: at(&h.memory),
                pids: at(&h.pids),
                blkio: at(&h.blkio),
            },
        })
    }
}
