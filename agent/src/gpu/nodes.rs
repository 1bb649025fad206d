//! NVIDIA's device nodes and what a task given GPUs needs: the majors, read from
//! `<proc>/devices` (the uvm major is dynamic, and no major is hard-coded), the device rules of
//! its cgroup device program, and its environment.
//!
//! A task given GPUs may use its own `/dev/nvidiaN` (major of `nvidia`/`nvidia-frontend`,
//! minor = NVML's minor number), `/dev/nvidiactl` (same major, minor 255), `/dev/nvidia-uvm`
//! and `/dev/nvidia-uvm-tools` (major of `nvidia-uvm`, minors 0 and 1). Nothing else of
//! NVIDIA's: not other GPUs, not `/dev/nvidia-modeset` (minor 254), not `/dev/nvidia-caps/*`
//! (MIG capabilities). A task without GPUs gets none of them.

use std::path::{Path, PathBuf};

use strata_agent_common::{DEVICE_ACC_MKNOD, DEVICE_ACC_READ, DEVICE_ACC_WRITE, DEVICE_CHAR};

use super::GpuDevice;
use crate::ebpf::DeviceRule;

/// The minor number of `/dev/nvidiactl`.
pub const NVIDIACTL_MINOR: u32 = 255;
/// The minor numbers of `/dev/nvidia-uvm` and `/dev/nvidia-uvm-tools`.
pub const UVM_MINORS: [u32; 2] = [0, 1];

/// The most bytes of `/proc/devices` read (it is a few hundred).
const MAX_PROC_DEVICES: u64 = 64 * 1024;

/// Errors finding NVIDIA's majors.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    /// `/proc/devices` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The driver registered no `nvidia` character device.
    #[error(
        "{path} lists no nvidia character device: the NVIDIA kernel module is not loaded (modprobe nvidia), so tasks cannot be given GPUs"
    )]
    NoDriver {
        /// The file.
        path: PathBuf,
    },
}

/// The majors of NVIDIA's character devices on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuNodes {
    /// `/dev/nvidiaN` and `/dev/nvidiactl`.
    pub nvidia: u32,
    /// `/dev/nvidia-uvm` and `/dev/nvidia-uvm-tools`; `None` until nvidia-uvm is loaded.
    pub uvm: Option<u32>,
}

/// The character device majors named in `/proc/devices` text.
fn char_majors(text: &str) -> impl Iterator<Item = (u32, &str)> {
    text.lines()
        .skip_while(|l| l.trim() != "Character devices:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.ends_with(':'))
        .filter_map(|l| {
            let (major, name) = l.trim().split_once(char::is_whitespace)?;
            Some((major.parse().ok()?, name.trim()))
        })
}

impl GpuNodes {
    /// Reads the majors from `<proc_root>/devices`.
    pub fn read(proc_root: &Path) -> Result<Self, NodesError> {
        use std::io::Read as _;
        let path = proc_root.join("devices");
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_PROC_DEVICES).read_to_string(&mut text))
            .map_err(|source| NodesError::Read {
                path: path.clone(),
                source,
            })?;
        Self::parse(&text).ok_or(NodesError::NoDriver { path })
    }

    /// The majors in `/proc/devices` text; `None` without an `nvidia` device.
    pub fn parse(text: &str) -> Option<Self> {
        let mut nvidia = None;
        let mut uvm = None;
        for (major, name) in char_majors(text) {
            match name {
                // `nvidia-frontend` on older drivers, `nvidia` on newer ones.
                "nvidia" | "nvidia-frontend" => nvidia = Some(major),
                "nvidia-uvm" => uvm = Some(major),
                _ => {}
            }
        }
        Some(Self {
            nvidia: nvidia?,
            uvm,
        })
    }

    /// The device rules of a task given `gpus` (none for a task without GPUs).
    pub fn rules(&self, gpus: &[GpuDevice]) -> Vec<DeviceRule> {
        if gpus.is_empty() {
            return Vec::new();
        }
        let rule = |major, minor| DeviceRule {
            kind: DEVICE_CHAR,
            major,
            minor,
            access: DEVICE_ACC_READ | DEVICE_ACC_WRITE | DEVICE_ACC_MKNOD,
        };
        let mut rules: Vec<DeviceRule> = gpus.iter().map(|g| rule(self.nvidia, g.minor)).collect();
        rules.push(rule(self.nvidia, NVIDIACTL_MINOR));
        if let Some(uvm) = self.uvm {
            rules.extend(UVM_MINORS.map(|minor| rule(uvm, minor)));
        }
        rules
    }
}

/// The environment of a task given `gpus`: `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES`
/// name them by UUID, in index order. UUIDs rather than indexes: CUDA numbers devices fastest
/// first unless `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so an NVML index can name another device in
/// CUDA, while a UUID is the same device in NVML, CUDA and nvidia-smi. Empty without GPUs.
pub fn environment(gpus: &[GpuDevice]) -> Vec<(String, String)> {
    if gpus.is_empty() {
        return Vec::new();
    }
    let uuids = gpus
        .iter()
        .map(|g| g.uuid.as_str())
        .collect::<Vec<_>>()
        .join(",");
    vec![
        ("CUDA_VISIBLE_DEVICES".to_owned(), uuids.clone()),
        ("NVIDIA_VISIBLE_DEVICES".to_owned(), uuids),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fake::fake_device;

    /// A `/proc/devices` with NVIDIA's majors as on the GPU machine (195, uvm 238, caps 241).
    const GPU_HOST: &str = "Character devices:\n  1 mem\n  4 /dev/vc/0\n  5 /dev/tty\n195 nvidia\n195 nvidiactl\n238 nvidia-uvm\n241 nvidia-caps\n\nBlock devices:\n195 notnvidia\n  8 sd\n";

    #[test]
    fn majors_come_from_proc_devices() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("devices"), GPU_HOST).unwrap();
        assert_eq!(
            GpuNodes::read(dir.path()).unwrap(),
            GpuNodes {
                nvidia: 195,
                uvm: Some(238)
            }
        );
        // Another host numbers uvm differently; older drivers say nvidia-frontend.
        let other = "Character devices:\n195 nvidia-frontend\n509 nvidia-uvm\n\nBlock devices:\n";
        assert_eq!(
            GpuNodes::parse(other),
            Some(GpuNodes {
                nvidia: 195,
                uvm: Some(509)
            })
        );
    }

    #[test]
    fn no_driver_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("devices"),
            "Character devices:\n  1 mem\n\nBlock devices:\n195 nvidia\n",
        )
        .unwrap();
        let e = GpuNodes::read(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("NVIDIA kernel module is not loaded"),
            "{e}"
        );
        let e = GpuNodes::read(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }

    #[test]
    fn a_task_gets_its_own_gpus_the_control_device_and_uvm() {
        let nodes = GpuNodes::parse(GPU_HOST).unwrap();
        assert!(nodes.rules(&[]).is_empty());
        let mut second = fake_device(1);
        second.minor = 3;
        let pairs: Vec<(u32, u32)> = nodes
            .rules(&[second])
            .iter()
            .map(|r| {
                assert_eq!(r.kind, DEVICE_CHAR);
                (r.major, r.minor)
            })
            .collect();
        assert_eq!(pairs, [(195, 3), (195, 255), (238, 0), (238, 1)]);
        // Without nvidia-uvm loaded: the GPU and the control device only.
        let no_uvm = GpuNodes {
            nvidia: 195,
            uvm: None,
        };
        assert_eq!(no_uvm.rules(&[fake_device(0)]).len(), 2);
    }

    #[test]
    fn the_environment_names_gpus_by_uuid() {
        assert!(environment(&[]).is_empty());
        assert_eq!(
            environment(&[fake_device(0), fake_device(2)]),
            [
                (
                    "CUDA_VISIBLE_DEVICES".to_owned(),
                    "GPU-fake-0,GPU-fake-2".to_owned()
                ),
                (
                    "NVIDIA_VISIBLE_DEVICES".to_owned(),
                    "GPU-fake-0,GPU-fake-2".to_owned()
                ),
            ]
        );
    }
}
