//! Port enforcement for host-network tasks: the `cgroup/bind4`, `bind6`, `post_bind4` and
//! `post_bind6` programs of `agent-ebpf/src/ports.rs`, attached once at the tasks' root cgroup,
//! and the map of each task's ports ([`PortControl`]).
//!
//! Why one attachment at the root rather than one per task (as the device program does): the
//! programs look the calling thread's task up by cgroup id anyway, a bind is rare enough that
//! the lookup costs nothing that matters, and one attachment means no per-launch attach and
//! detach (nor the kernel's static-key flip when the last per-task program goes). The map is
//! the only per-task state: the agent writes a task's ranges before its first process starts
//! and removes them when its cgroup is removed. The map lives as long as the agent: it is not
//! pinned, so a restarted agent starts with an empty one and writes the recovered tasks' ranges
//! again (nothing stale can survive a restart, nor `--remove-cgroups`); while the agent is down,
//! its tasks' ports are not enforced (the programs go with the agent's links).
//!
//! What is not covered: `connect()` and `sendto()` on an unbound socket pick their local port
//! without a bind hook (autobind), from `net.ipv4.ip_local_port_range`; see
//! [`ephemeral_overlap`].

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use aya::include_bytes_aligned;
use aya::maps::{Array, HashMap, MapData, MapError};
use aya::programs::{
    CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, cgroup_sock::CgroupSockLinkId,
    cgroup_sock_addr::CgroupSockAddrLinkId,
};
use strata_agent_common::{
    CgroupId, MAP_MANAGED_PORTS, MAP_TASK_PORTS, MAX_PORT_RANGES, PROG_BIND4, PROG_BIND6,
    PROG_POST_BIND4, PROG_POST_BIND6, PortRangeError, PortRanges, encode_port_ranges,
};

use super::{EbpfError, cgroup_id, embedded, error_chain, permission_hint};

/// The port-control object built by `build.rs` from `agent-ebpf/src/ports.rs` (empty when built
/// without it).
pub(super) static PORTS_OBJECT: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/strata-ports-ebpf"));

/// Errors of port enforcement.
#[derive(Debug, thiserror::Error)]
pub enum PortControlError {
    /// The object is missing or cannot be loaded (see [`EbpfError`]).
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// A program could not be loaded or attached: this kernel (or these rights) cannot enforce
    /// ports.
    #[error("cannot {action} port program {program} at {cgroup}: {reason}")]
    Program {
        /// What failed: "load" or "attach".
        action: &'static str,
        /// The program's name.
        program: &'static str,
        /// The cgroup it was meant for.
        cgroup: PathBuf,
        /// The loader's error and what is missing.
        reason: String,
    },
    /// A task's ports cannot be encoded.
    #[error("task {task_id}: {reason}")]
    Ranges {
        /// The task.
        task_id: String,
        /// What is wrong with its ports.
        reason: String,
    },
    /// A map could not be written.
    #[error("cannot write eBPF map {map} for cgroup {cgroup}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The cgroup whose entry was written.
        cgroup: PathBuf,
        /// The loader's error.
        source: MapError,
    },
}

/// The port ranges a task may bind, encoded for the map; `task_id` gives the error its context.
pub fn task_port_ranges(
    task_id: &str,
    ranges: &[(u64, u64)],
) -> Result<PortRanges, PortControlError> {
    encode_port_ranges(ranges).map_err(|e| PortControlError::Ranges {
        task_id: task_id.to_owned(),
        reason: match e {
            PortRangeError::Invalid { first, last } => {
                format!("invalid ports range [{first}-{last}]: ports go from 1 to 65535")
            }
            PortRangeError::TooMany { ranges } => format!(
                "its ports resource has {ranges} separate ranges, and port enforcement holds at \
                 most {MAX_PORT_RANGES} per task: ask for fewer, contiguous ports"
            ),
        },
    })
}

/// The agent's managed ports and the kernel's ephemeral (autobind) range, when they overlap:
/// `(first, last)` of `/proc/sys/net/ipv4/ip_local_port_range` under `proc_root`. `None` when
/// they do not overlap or the file cannot be read.
pub fn ephemeral_overlap(proc_root: &Path, managed: &[(u64, u64)]) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(proc_root.join("sys/net/ipv4/ip_local_port_range")).ok()?;
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(first)), Some(Ok(last))) = (words.next(), words.next()) else {
        return None;
    };
    managed
        .iter()
        .any(|&(lo, hi)| lo <= last && first <= hi)
        .then_some((first, last))
}

type TaskMap = HashMap<MapData, CgroupId, PortRanges>;

/// The port programs, attached at the tasks' root, and the map of the tasks' ports.
pub struct PortControl {
    /// Owns the programs; kept alive with the links so they stay attached.
    _object: aya::Ebpf,
    _links: (Vec<CgroupSockAddrLinkId>, Vec<CgroupSockLinkId>),
    root: PathBuf,
    tasks: TaskMap,
}

impl fmt::Debug for PortControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortControl")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl PortControl {
    /// Loads the programs, writes the managed ports and attaches the programs at `tasks_root`
    /// (a cgroup v2 directory holding every task cgroup). Fails, saying why, when this kernel
    /// has no cgroup bind hooks or the agent lacks the rights: ports are then not enforced.
    pub fn load(tasks_root: &Path, managed: &[(u64, u64)]) -> Result<Self, PortControlError> {
        let load_err = |e: &(dyn std::error::Error + 'static)| EbpfError::LoadObject {
            detail: error_chain(e),
            hint: permission_hint(e),
        };
        let mut object = aya::Ebpf::load(embedded(PORTS_OBJECT)?).map_err(|e| load_err(&e))?;
        let managed_ranges = task_port_ranges("(the agent's own offered ports)", managed)?;
        let map_missing = |map: &'static str| PortControlError::Map {
            map,
            cgroup: tasks_root.to_path_buf(),
            source: MapError::InvalidName {
                name: map.to_owned(),
            },
        };
        let mut managed_map: Array<MapData, PortRanges> = object
            .take_map(MAP_MANAGED_PORTS)
            .ok_or_else(|| map_missing(MAP_MANAGED_PORTS))?
            .try_into()
            .map_err(|source| PortControlError::Map {
                map: MAP_MANAGED_PORTS,
                cgroup: tasks_root.to_path_buf(),
                source,
            })?;
        managed_map
            .set(0, managed_ranges, 0)
            .map_err(|source| PortControlError::Map {
                map: MAP_MANAGED_PORTS,
                cgroup: tasks_root.to_path_buf(),
                source,
            })?;
        let tasks: TaskMap = object
            .take_map(MAP_TASK_PORTS)
            .ok_or_else(|| map_missing(MAP_TASK_PORTS))?
            .try_into()
            .map_err(|source| PortControlError::Map {
                map: MAP_TASK_PORTS,
                cgroup: tasks_root.to_path_buf(),
                source,
            })?;
        let cgroup = File::open(tasks_root).map_err(|source| EbpfError::Cgroup {
            path: tasks_root.to_path_buf(),
            source,
        })?;
        let program_err =
            |action, program, e: &(dyn std::error::Error + 'static)| PortControlError::Program {
                action,
                program,
                cgroup: tasks_root.to_path_buf(),
                reason: format!("{}{}", error_chain(e), permission_hint(e)),
            };
        let mut addr_links = Vec::with_capacity(2);
        for name in [PROG_BIND4, PROG_BIND6] {
            let program: &mut CgroupSockAddr = object
                .program_mut(name)
                .ok_or_else(|| program_err("find", name, &io::Error::other("not in the object")))?
                .try_into()
                .map_err(|e: ProgramError| program_err("load", name, &e))?;
            program.load().map_err(|e| program_err("load", name, &e))?;
            // Through a bpf_link (Linux 5.7+): runs alongside other programs at the cgroup.
            addr_links.push(
                program
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(|e| program_err("attach", name, &e))?,
            );
        }
        let mut sock_links = Vec::with_capacity(2);
        for name in [PROG_POST_BIND4, PROG_POST_BIND6] {
            let program: &mut CgroupSock = object
                .program_mut(name)
                .ok_or_else(|| program_err("find", name, &io::Error::other("not in the object")))?
                .try_into()
                .map_err(|e: ProgramError| program_err("load", name, &e))?;
            program.load().map_err(|e| program_err("load", name, &e))?;
            sock_links.push(
                program
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(|e| program_err("attach", name, &e))?,
            );
        }
        Ok(Self {
            _object: object,
            _links: (addr_links, sock_links),
            root: tasks_root.to_path_buf(),
            tasks,
        })
    }

    /// The cgroup the programs are attached at.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes the ports the task in `cgroup_dir` may bind. Call it before the task's first
    /// process starts.
    pub fn allow(
        &mut self,
        cgroup_dir: &Path,
        ports: PortRanges,
    ) -> Result<CgroupId, PortControlError> {
        let id = cgroup_id(cgroup_dir)?;
        self.tasks
            .insert(id, ports, 0)
            .map_err(|source| PortControlError::Map {
                map: MAP_TASK_PORTS,
                cgroup: cgroup_dir.to_path_buf(),
                source,
            })?;
        Ok(id)
    }

    /// Removes the entry of the cgroup `id` (its task ended).
    pub fn forget(&mut self, id: CgroupId) {
        let _ = self.tasks.remove(&id);
    }

    /// The cgroup ids that have an entry (for tests and diagnostics).
    #[must_use]
    pub fn entries(&self) -> Vec<CgroupId> {
        self.tasks.keys().filter_map(Result::ok).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_ranges_refuse_the_task_with_what_to_do() {
        let ranges: Vec<(u64, u64)> = (0..20).map(|i| (31000 + 2 * i, 31000 + 2 * i)).collect();
        let err = task_port_ranges("web-1", &ranges).expect_err("20 ranges do not fit");
        let text = err.to_string();
        assert!(text.contains("web-1"), "{text}");
        assert!(text.contains("20 separate ranges"), "{text}");
        assert!(text.contains("at most 16"), "{text}");
        let err = task_port_ranges("web-1", &[(0, 5)]).expect_err("port 0");
        assert!(err.to_string().contains("[0-5]"), "{err}");
        let ok = task_port_ranges("web-1", &ranges[..16]).expect("16 fit");
        assert!(strata_agent_common::port_in(&ok, 31000));
    }

    #[test]
    fn the_ephemeral_range_is_compared_with_the_managed_ports() {
        let proc_root = tempfile::tempdir().expect("tempdir");
        let dir = proc_root.path().join("sys/net/ipv4");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("ip_local_port_range"), "32768\t60999\n").expect("write");
        assert_eq!(ephemeral_overlap(proc_root.path(), &[(31000, 32000)]), None);
        assert_eq!(
            ephemeral_overlap(proc_root.path(), &[(31000, 32768)]),
            Some((32768, 60999))
        );
        assert_eq!(
            ephemeral_overlap(proc_root.path(), &[(1000, 2000), (60999, 61000)]),
            Some((32768, 60999))
        );
        assert_eq!(
            ephemeral_overlap(Path::new("/nonexistent"), &[(1, 65535)]),
            None
        );
    }

    /// On this host's unified hierarchy (root needed, else skipped): the programs load and attach
    /// below this process's own cgroup, and entries come and go.
    #[test]
    fn programs_attach_below_our_cgroup_and_entries_come_and_go() {
        let Some(dir) = crate::ebpf::own_unified_cgroup() else {
            eprintln!("skipped: no cgroup v2 directory of this process's own");
            return;
        };
        let root = dir.join(format!("strata-ports-test-{}", std::process::id()));
        if std::fs::create_dir(&root).is_err() {
            eprintln!("skipped: cannot create a cgroup below {}", dir.display());
            return;
        }
        // Removed even when an assertion fails (the programs detach first: `control` is
        // declared after the guard, so it is dropped before it).
        let _guard = RemoveDir(root.clone());
        let mut control = match PortControl::load(&root, &[(31000, 32000)]) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: cannot load the port programs here: {e}");
                return;
            }
        };
        let id = control
            .allow(
                &root,
                task_port_ranges("t", &[(31000, 31001)]).expect("fits"),
            )
            .expect("entry written");
        assert_eq!(control.entries(), vec![id]);
        control.forget(id);
        assert!(control.entries().is_empty());
    }

    struct RemoveDir(PathBuf);

    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}
