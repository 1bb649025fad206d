//! The per-task device allow-list: a `cgroup_device` program (`agent-ebpf/src/device.rs`)
//! loaded once and attached to each task's cgroup, with the task's rules in a map keyed by
//! cgroup id ([`DeviceControl`]).

use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use aya::include_bytes_aligned;
use aya::maps::MapData;
use aya::programs::{CgroupAttachMode, ProgramError};
use strata_agent_common::CgroupId;

use super::{EbpfError, cgroup_id, embedded, error_chain, permission_hint};

/// The device-control object built by `build.rs` from `agent-ebpf/src/device.rs` (empty when
/// built without it).
pub(super) static DEVICE_OBJECT: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/strata-device-ebpf"));

/// One device a task may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// [`strata_agent_common::DEVICE_CHAR`] or [`strata_agent_common::DEVICE_BLOCK`].
    pub kind: u32,
    /// The major number.
    pub major: u32,
    /// The minor number, or [`strata_agent_common::DEVICE_ANY_MINOR`].
    pub minor: u32,
    /// Allowed accesses (read, write, mknod bits).
    pub access: u32,
}

impl DeviceRule {
    const fn char_rwm(major: u32, minor: u32) -> Self {
        Self {
            kind: strata_agent_common::DEVICE_CHAR,
            major,
            minor,
            access: strata_agent_common::DEVICE_ACC_READ
                | strata_agent_common::DEVICE_ACC_WRITE
                | strata_agent_common::DEVICE_ACC_MKNOD,
        }
    }

    /// The rule for the device node at `path` (read, write and mknod).
    pub fn for_node(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::FileTypeExt as _;
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot use device {}: {e}", path.display()))?;
        let kind = if meta.file_type().is_char_device() {
            strata_agent_common::DEVICE_CHAR
        } else if meta.file_type().is_block_device() {
            strata_agent_common::DEVICE_BLOCK
        } else {
            return Err(format!("{} is not a device node", path.display()));
        };
        let rdev = meta.rdev();
        Ok(Self {
            kind,
            major: nix::sys::stat::major(rdev) as u32,
            minor: nix::sys::stat::minor(rdev) as u32,
            ..Self::char_rwm(0, 0)
        })
    }
}

/// The devices every task may use: null, zero, full, random, urandom, tty, ptmx and pts.
pub const STANDARD_DEVICES: [DeviceRule; 8] = [
    DeviceRule::char_rwm(1, 3),
    DeviceRule::char_rwm(1, 5),
    DeviceRule::char_rwm(1, 7),
    DeviceRule::char_rwm(1, 8),
    DeviceRule::char_rwm(1, 9),
    DeviceRule::char_rwm(5, 0),
    DeviceRule::char_rwm(5, 2),
    DeviceRule::char_rwm(136, strata_agent_common::DEVICE_ANY_MINOR),
];

type DeviceMap = aya::maps::HashMap<MapData, strata_agent_common::DeviceKey, u32>;

/// Per-task device control: the cgroup_device program attached to each task's cgroup (unified
/// hierarchy) and the rules map. A task's rules and attachment go when [`DeviceControl::forget`]
/// is called or this value is dropped (the agent re-applies them after a restart).
pub struct DeviceControl {
    object: aya::Ebpf,
    rules: DeviceMap,
    /// Per cgroup id: the attachment and the rules written.
    tasks: std::collections::HashMap<
        CgroupId,
        (
            aya::programs::cgroup_device::CgroupDeviceLinkId,
            Vec<strata_agent_common::DeviceKey>,
        ),
    >,
}

impl fmt::Debug for DeviceControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceControl")
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl DeviceControl {
    /// Loads the device program.
    pub fn load() -> Result<Self, EbpfError> {
        let load_err = |e: &(dyn std::error::Error + 'static)| EbpfError::LoadObject {
            detail: error_chain(e),
            hint: permission_hint(e),
        };
        let mut object = aya::Ebpf::load(embedded(DEVICE_OBJECT)?).map_err(|e| load_err(&e))?;
        let program: &mut aya::programs::CgroupDevice = object
            .program_mut(strata_agent_common::PROG_DEVICE)
            .ok_or_else(|| EbpfError::NothingLoaded {
                failures: vec![format!(
                    "{}: missing from the eBPF object",
                    strata_agent_common::PROG_DEVICE
                )],
            })?
            .try_into()
            .map_err(|e: ProgramError| load_err(&e))?;
        program.load().map_err(|e| load_err(&e))?;
        let map = object
            .take_map(strata_agent_common::MAP_DEVICE_RULES)
            .ok_or_else(|| EbpfError::NothingLoaded {
                failures: vec![format!(
                    "{}: missing from the eBPF object",
                    strata_agent_common::MAP_DEVICE_RULES
                )],
            })?;
        let rules = DeviceMap::try_from(map).map_err(|e| load_err(&e))?;
        Ok(Self {
            object,
            rules,
            tasks: std::collections::HashMap::new(),
        })
    }

    /// Writes the rules of the cgroup at `cgroup_dir` (the standard devices plus `extra`) and
    /// attaches the program there. Call it before the task's first process starts.
    pub fn allow(
        &mut self,
        cgroup_dir: &Path,
        extra: &[DeviceRule],
    ) -> Result<CgroupId, EbpfError> {
        let id = cgroup_id(cgroup_dir)?;
        self.forget(id);
        let mut keys = Vec::new();
        for rule in STANDARD_DEVICES.iter().chain(extra) {
            let key = strata_agent_common::device_key(id, rule.kind, rule.major, rule.minor);
            self.rules
                .insert(key, rule.access, 0)
                .map_err(|source| EbpfError::ReadMap {
                    map: strata_agent_common::MAP_DEVICE_RULES,
                    cgroup_id: id,
                    source,
                })?;
            keys.push(key);
        }
        let cgroup = File::open(cgroup_dir).map_err(|source| EbpfError::Cgroup {
            path: cgroup_dir.to_path_buf(),
            source,
        })?;
        let program: &mut aya::programs::CgroupDevice = self
            .object
            .program_mut(strata_agent_common::PROG_DEVICE)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| EbpfError::Device {
                cgroup: cgroup_dir.to_path_buf(),
                reason: "the program is missing from the eBPF object".to_owned(),
            })?;
        let link = program
            // Through a bpf_link (Linux 5.7+), which runs alongside other programs at the cgroup.
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| EbpfError::Device {
                cgroup: cgroup_dir.to_path_buf(),
                reason: format!("{}{}", error_chain(&e), permission_hint(&e)),
            })?;
        self.tasks.insert(id, (link, keys));
        Ok(id)
    }

    /// Detaches the program from the cgroup `id` and removes its rules.
    pub fn forget(&mut self, id: CgroupId) {
        if let Some((link, keys)) = self.tasks.remove(&id) {
            if let Ok(program) = self
                .object
                .program_mut(strata_agent_common::PROG_DEVICE)
                .ok_or(())
                .and_then(|p| <&mut aya::programs::CgroupDevice>::try_from(p).map_err(|_| ()))
            {
                let _ = program.detach(link);
            }
            for key in keys {
                let _ = self.rules.remove(&key);
            }
        }
    }
}
