//! GPUs: discovered through NVML, assigned to tasks as whole devices, isolated by the task's
//! device program and accounted per task.
//!
//! - [`GpuBackend`] is what the agent asks of NVML: the devices, the processes running on a
//!   device with their memory, the processes' utilisation samples, and a device's own figures.
//!   [`nvml::NvmlBackend`] is the real one (NVML loaded at run time, so a build or host without
//!   the driver works unchanged); [`fake::FakeBackend`] is configured by tests.
//! - [`discover`] picks the devices `--gpus` names; the agent offers their count as the scalar
//!   `gpus` and their model as the attribute `gpu_model`.
//! - [`Assignments`] gives a task asking for `gpus` the lowest free indexes, re-attaches a
//!   restarted agent's assignments from the tasks' checkpoints and frees them when a task ends.
//! - [`nodes`] reads NVIDIA's majors from `/proc/devices` and makes a task's device rules and
//!   environment; [`usage`] maps NVML's processes to tasks through their cgroups.
//!
//! Invariants:
//! - A device is assigned to at most one task; a task gets all it asks for or none.
//! - Only whole GPUs are assigned; devices in MIG mode are not offered (their instances
//!   would need device nodes and accounting of their own).

pub mod fake;
pub mod nodes;
pub mod nvml;
pub mod usage;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use strata_common::parse::GpuSelection;

/// The agent attribute naming the model of its GPUs.
pub const GPU_MODEL_ATTRIBUTE: &str = "gpu_model";

/// The most GPUs one agent handles (more are not offered).
pub const MAX_GPUS: usize = 64;

/// The longest UUID or model name taken from NVML (NVML's own buffers are 96 bytes).
const MAX_NAME: usize = 96;

/// Errors discovering, assigning or reading GPUs.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVML could not be loaded or initialised.
    #[error(
        "cannot load NVML ({reason}): install the NVIDIA driver, or start the agent with --gpus none"
    )]
    Unavailable {
        /// What NVML or the loader said.
        reason: String,
    },
    /// An NVML call failed.
    #[error("NVML {call} failed for GPU {index}: {reason}")]
    Call {
        /// The NVML function.
        call: &'static str,
        /// The device's index.
        index: u32,
        /// What NVML said.
        reason: String,
    },
    /// `--gpus` names an index NVML does not have.
    #[error(
        "--gpus names GPU {index}, but NVML finds {found} GPU(s) (indexes 0-{last}): name existing indexes, or use --gpus auto"
    )]
    NoSuchIndex {
        /// The index asked for.
        index: u32,
        /// How many NVML finds.
        found: usize,
        /// The highest index, saturating.
        last: usize,
    },
    /// A task asks for a number of GPUs that is not a whole number.
    #[error("task {task_id:?} asks for {asked} gpus: only whole GPUs are assigned (1, 2, ...)")]
    NotWhole {
        /// The task.
        task_id: String,
        /// What it asked for.
        asked: f64,
    },
    /// A task asks for more GPUs than are free.
    #[error(
        "task {task_id:?} asks for {asked} GPU(s) but only {free} of this agent's {total} are free{busy}"
    )]
    NotEnough {
        /// The task.
        task_id: String,
        /// What it asked for.
        asked: usize,
        /// Free now.
        free: usize,
        /// The agent's GPUs.
        total: usize,
        /// `: GPU 0 is task "a"'s, ...` or empty.
        busy: String,
    },
    /// A recovered assignment names a GPU this agent does not have, or one another task holds.
    #[error("cannot re-attach GPU {uuid} to task {task_id:?}: {reason}")]
    Reattach {
        /// The task.
        task_id: String,
        /// The GPU's UUID.
        uuid: String,
        /// Why not.
        reason: String,
    },
}

/// One GPU as NVML describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuDevice {
    /// NVML's index (PCI bus order).
    pub index: u32,
    /// `GPU-...`: stable across reboots and the same in NVML, CUDA and nvidia-smi.
    pub uuid: String,
    /// The product name, like `NVIDIA H200`.
    pub model: String,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// The minor number of its `/dev/nvidiaN` node.
    pub minor: u32,
    /// Whether MIG mode is on (such devices are not offered).
    pub mig_enabled: bool,
}

/// A process with a context on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    /// Its pid in the host's pid namespace.
    pub pid: u32,
    /// GPU memory it uses, when NVML knows.
    pub used_memory_bytes: Option<u64>,
}

/// A process's utilisation of a GPU over NVML's last sample period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    /// Its host pid.
    pub pid: u32,
    /// When the sample was taken (microseconds, NVML's clock).
    pub timestamp_us: u64,
    /// Percent of the time a kernel of this process ran on the SMs.
    pub sm_percent: u32,
    /// Percent of the time its memory was read or written.
    pub memory_percent: u32,
}

/// A device's own figures (each `None` where the device or driver does not say).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceStatus {
    /// Percent of the last sample period a kernel ran.
    pub gpu_percent: Option<u32>,
    /// Percent of the last sample period memory was read or written.
    pub memory_percent: Option<u32>,
    /// Memory in use, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Power draw in milliwatts.
    pub power_milliwatts: Option<u32>,
    /// Die temperature in degrees Celsius.
    pub temperature_celsius: Option<u32>,
    /// SM clock in MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock in MHz.
    pub memory_clock_mhz: Option<u32>,
    /// NVML's clock throttle reasons bit mask (0: not throttled).
    pub throttle_reasons: Option<u64>,
    /// Corrected ECC errors since the driver loaded.
    pub ecc_corrected_total: Option<u64>,
    /// Uncorrected ECC errors since the driver loaded.
    pub ecc_uncorrected_total: Option<u64>,
}

/// What the agent asks of NVML (or of a fake in tests). Every call is one device's.
pub trait GpuBackend: Send + Sync + fmt::Debug {
    /// Every device, by index.
    fn devices(&self) -> Result<Vec<GpuDevice>, GpuError>;
    /// The processes with a compute context on device `index`.
    fn processes(&self, index: u32) -> Result<Vec<GpuProcess>, GpuError>;
    /// The utilisation samples of device `index`'s processes taken after `since_us` (0: all
    /// NVML keeps).
    fn process_samples(&self, index: u32, since_us: u64) -> Result<Vec<ProcessSample>, GpuError>;
    /// Device `index`'s own figures.
    fn status(&self, index: u32) -> Result<DeviceStatus, GpuError>;
}

/// The GPUs an agent offers and the backend that found them.
#[derive(Debug, Clone, Default)]
pub struct Gpus {
    /// NVML (or a fake); `None` with `--gpus none` or where NVML cannot be loaded.
    pub backend: Option<Arc<dyn GpuBackend>>,
    /// The devices offered, by index.
    pub devices: Vec<GpuDevice>,
}

impl Gpus {
    /// The model names offered, distinct, joined by `,` (the `gpu_model` attribute); `None`
    /// without GPUs.
    pub fn model_attribute(&self) -> Option<String> {
        let mut models: Vec<&str> = Vec::new();
        for d in &self.devices {
            if !models.contains(&d.model.as_str()) {
                models.push(&d.model);
            }
        }
        (!models.is_empty()).then(|| models.join(","))
    }
}

/// The GPUs `selection` names, found through the backend `load` gives. `auto` without NVML
/// logs one line and finds none; a list naming GPUs that NVML cannot show is an error. Devices
/// in MIG mode are left out with a warning.
pub fn discover(
    selection: &GpuSelection,
    load: impl FnOnce() -> Result<Arc<dyn GpuBackend>, GpuError>,
) -> Result<Gpus, GpuError> {
    if *selection == GpuSelection::None {
        tracing::info!("no GPUs offered (--gpus none)");
        return Ok(Gpus::default());
    }
    let found = load().and_then(|backend| Ok((backend.devices()?, backend)));
    let (all, backend) = match (found, selection) {
        (Ok(found), _) => found,
        (Err(e), GpuSelection::Auto) => {
            tracing::info!(reason = %e, "no GPUs offered: NVML is not available on this host");
            return Ok(Gpus::default());
        }
        (Err(e), _) => return Err(e),
    };
    let chosen: Vec<GpuDevice> = match selection {
        GpuSelection::List(indexes) => indexes
            .iter()
            .map(|&index| {
                all.iter()
                    .find(|d| d.index == index)
                    .cloned()
                    .ok_or(GpuError::NoSuchIndex {
                        index,
                        found: all.len(),
                        last: all.len().saturating_sub(1),
                    })
            })
            .collect::<Result<_, _>>()?,
        _ => all,
    };
    let mut devices: Vec<GpuDevice> = chosen
        .into_iter()
        .filter(|d| {
            if d.mig_enabled {
                tracing::warn!(index = d.index, uuid = %d.uuid, "GPU not offered: MIG mode is on, and MIG instances are not supported yet");
            }
            !d.mig_enabled
        })
        .collect();
    devices.sort_by_key(|d| d.index);
    devices.truncate(MAX_GPUS);
    for d in &devices {
        tracing::info!(index = d.index, uuid = %d.uuid, model = %d.model, memory_mib = d.memory_bytes >> 20, minor = d.minor, "GPU offered");
    }
    Ok(Gpus {
        backend: Some(backend),
        devices,
    })
}

/// `text` cut to [`MAX_NAME`] bytes (at a char boundary), for names NVML returns.
pub(crate) fn bounded(mut text: String) -> String {
    if text.len() > MAX_NAME {
        let mut end = MAX_NAME;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Which task holds each GPU: lowest free index first, all or nothing, freed when the task
/// ends. Keyed by `(framework id, task id)`.
#[derive(Debug, Clone, Default)]
pub struct Assignments {
    devices: Vec<GpuDevice>,
    owners: BTreeMap<u32, (String, String)>,
}

impl Assignments {
    /// No GPU assigned yet among `devices`.
    pub fn new(devices: Vec<GpuDevice>) -> Self {
        Self {
            devices,
            owners: BTreeMap::new(),
        }
    }

    /// The agent's GPUs.
    pub fn devices(&self) -> &[GpuDevice] {
        &self.devices
    }

    /// The GPUs task `(framework_id, task_id)` holds, by index.
    pub fn of(&self, framework_id: &str, task_id: &str) -> Vec<GpuDevice> {
        self.devices
            .iter()
            .filter(|d| {
                self.owners
                    .get(&d.index)
                    .is_some_and(|(f, t)| f == framework_id && t == task_id)
            })
            .cloned()
            .collect()
    }

    /// Assigns `asked` GPUs (the task's `gpus` resource; 0 or NaN: none) to the task, the
    /// lowest free indexes; all or none.
    pub fn assign(
        &mut self,
        framework_id: &str,
        task_id: &str,
        asked: f64,
    ) -> Result<Vec<GpuDevice>, GpuError> {
        if asked.is_nan() || asked == 0.0 {
            return Ok(Vec::new());
        }
        if !(asked.is_finite() && asked > 0.0 && asked.fract() == 0.0) {
            return Err(GpuError::NotWhole {
                task_id: task_id.to_owned(),
                asked,
            });
        }
        let held = self.of(framework_id, task_id);
        if !held.is_empty() {
            return Ok(held);
        }
        let free: Vec<&GpuDevice> = self
            .devices
            .iter()
            .filter(|d| !self.owners.contains_key(&d.index))
            .collect();
        let wanted = asked as usize;
        if free.len() < wanted {
            let busy: Vec<String> = self
                .owners
                .iter()
                .take(8)
                .map(|(index, (_, t))| {
                    format!(
                        "GPU {index} is task {:?}'s",
                        strata_proto::ids::shorten(t, 64)
                    )
                })
                .collect();
            return Err(GpuError::NotEnough {
                task_id: task_id.to_owned(),
                asked: wanted,
                free: free.len(),
                total: self.devices.len(),
                busy: if busy.is_empty() {
                    String::new()
                } else {
                    format!(": {}", busy.join(", "))
                },
            });
        }
        let chosen: Vec<GpuDevice> = free.into_iter().take(wanted).cloned().collect();
        for d in &chosen {
            self.owners
                .insert(d.index, (framework_id.to_owned(), task_id.to_owned()));
        }
        Ok(chosen)
    }

    /// Gives the task back the GPUs (by UUID) its checkpoint says it held before the agent
    /// restarted. A UUID this agent no longer has, or that another task holds, is an error and
    /// assigns nothing.
    pub fn reattach(
        &mut self,
        framework_id: &str,
        task_id: &str,
        uuids: &[String],
    ) -> Result<Vec<GpuDevice>, GpuError> {
        let mut chosen = Vec::new();
        for uuid in uuids {
            let fail = |reason: String| GpuError::Reattach {
                task_id: task_id.to_owned(),
                uuid: uuid.clone(),
                reason,
            };
            let device = self
                .devices
                .iter()
                .find(|d| &d.uuid == uuid)
                .ok_or_else(|| fail("this agent does not offer it now".to_owned()))?;
            if let Some((f, t)) = self.owners.get(&device.index)
                && (f != framework_id || t != task_id)
            {
                return Err(fail(format!(
                    "task {:?} holds it",
                    strata_proto::ids::shorten(t, 64)
                )));
            }
            chosen.push(device.clone());
        }
        for d in &chosen {
            self.owners
                .insert(d.index, (framework_id.to_owned(), task_id.to_owned()));
        }
        Ok(chosen)
    }

    /// Frees the task's GPUs; returns how many it held.
    pub fn release(&mut self, framework_id: &str, task_id: &str) -> usize {
        let before = self.owners.len();
        self.owners
            .retain(|_, (f, t)| !(f == framework_id && t == task_id));
        before - self.owners.len()
    }

    /// How many GPUs are free.
    pub fn free(&self) -> usize {
        self.devices.len() - self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeBackend, fake_device};
    use super::*;

    fn two() -> Vec<GpuDevice> {
        vec![fake_device(0), fake_device(1)]
    }

    #[test]
    fn auto_finds_every_device_and_none_loads_nothing() {
        let fake = FakeBackend::new(two());
        let gpus = discover(&GpuSelection::Auto, || Ok(Arc::new(fake.clone()))).unwrap();
        assert_eq!(gpus.devices, two());
        assert_eq!(gpus.model_attribute().as_deref(), Some("Fake GPU 80GB"));
        let gpus = discover(&GpuSelection::None, || {
            panic!("--gpus none must not load NVML")
        })
        .unwrap();
        assert!(gpus.devices.is_empty() && gpus.backend.is_none());
        assert_eq!(gpus.model_attribute(), None);
    }

    #[test]
    fn auto_without_nvml_offers_none_but_a_list_is_an_error() {
        let missing = || {
            Err(GpuError::Unavailable {
                reason: "libnvidia-ml.so.1: cannot open shared object file".to_owned(),
            })
        };
        let gpus = discover(&GpuSelection::Auto, missing).unwrap();
        assert!(gpus.devices.is_empty() && gpus.backend.is_none());
        let e = discover(&GpuSelection::List(vec![0]), missing).unwrap_err();
        assert!(e.to_string().contains("--gpus none"), "{e}");
    }

    #[test]
    fn a_list_picks_its_indexes_and_refuses_missing_ones() {
        let fake = FakeBackend::new(vec![fake_device(0), fake_device(1), fake_device(2)]);
        let gpus = discover(&GpuSelection::List(vec![2, 0]), || {
            Ok(Arc::new(fake.clone()))
        })
        .unwrap();
        let indexes: Vec<u32> = gpus.devices.iter().map(|d| d.index).collect();
        assert_eq!(indexes, [0, 2]);
        let e = discover(&GpuSelection::List(vec![5]), || Ok(Arc::new(fake.clone()))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--gpus names GPU 5, but NVML finds 3 GPU(s) (indexes 0-2): name existing indexes, or use --gpus auto"
        );
    }

    #[test]
    fn mig_devices_are_not_offered() {
        let mut mig = fake_device(1);
        mig.mig_enabled = true;
        let fake = FakeBackend::new(vec![fake_device(0), mig]);
        let gpus = discover(&GpuSelection::Auto, || Ok(Arc::new(fake))).unwrap();
        assert_eq!(gpus.devices, [fake_device(0)]);
    }

    #[test]
    fn assignment_takes_the_lowest_free_indexes_all_or_nothing() {
        let mut a = Assignments::new(vec![fake_device(0), fake_device(1), fake_device(2)]);
        assert!(a.assign("f", "none", 0.0).unwrap().is_empty());
        let one = a.assign("f", "a", 1.0).unwrap();
        assert_eq!(one, [fake_device(0)]);
        let two = a.assign("f", "b", 2.0).unwrap();
        assert_eq!(two, [fake_device(1), fake_device(2)]);
        let e = a.assign("f", "c", 1.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "task \"c\" asks for 1 GPU(s) but only 0 of this agent's 3 are free: GPU 0 is task \"a\"'s, GPU 1 is task \"b\"'s, GPU 2 is task \"b\"'s"
        );
        assert_eq!(a.release("f", "a"), 1);
        assert_eq!(a.free(), 1);
        // Freed: the next task gets index 0 again.
        assert_eq!(a.assign("f", "c", 1.0).unwrap(), [fake_device(0)]);
        assert_eq!(a.release("f", "b"), 2);
        assert_eq!(a.release("f", "b"), 0);
        assert_eq!(a.of("f", "c"), [fake_device(0)]);
        // Same task ids of two frameworks are two tasks.
        assert_eq!(a.assign("g", "c", 1.0).unwrap(), [fake_device(1)]);
    }

    #[test]
    fn fractions_and_nonsense_are_refused() {
        let mut a = Assignments::new(two());
        for asked in [0.5, 1.5, -1.0, f64::INFINITY] {
            let e = a.assign("f", "t", asked).unwrap_err();
            assert!(e.to_string().contains("only whole GPUs"), "{asked}: {e}");
        }
        assert_eq!(a.free(), 2);
        let e = a.assign("f", "t", 3.0).unwrap_err();
        assert!(
            e.to_string().contains("only 2 of this agent's 2 are free"),
            "{e}"
        );
        assert_eq!(a.free(), 2, "a refused task holds nothing");
    }

    #[test]
    fn reattach_restores_by_uuid_and_refuses_conflicts() {
        let mut a = Assignments::new(two());
        let uuid1 = fake_device(1).uuid;
        assert_eq!(
            a.reattach("f", "a", std::slice::from_ref(&uuid1)).unwrap(),
            [fake_device(1)]
        );
        // The next new task gets index 0, the lowest free.
        assert_eq!(a.assign("f", "b", 1.0).unwrap(), [fake_device(0)]);
        let e = a.reattach("f", "c", &[uuid1]).unwrap_err();
        assert!(e.to_string().contains("task \"a\" holds it"), "{e}");
        let e = a.reattach("f", "c", &["GPU-gone".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("does not offer it"), "{e}");
        assert_eq!(a.free(), 0);
    }
}
