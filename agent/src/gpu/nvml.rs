//! The real [`GpuBackend`]: NVML through the `nvml-wrapper` crate, which loads
//! `libnvidia-ml.so.1` with `dlopen` when [`NvmlBackend::load`] runs, so the agent builds and
//! starts on hosts without the NVIDIA driver.

use std::ffi::OsStr;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use super::{DeviceStatus, GpuBackend, GpuDevice, GpuError, GpuProcess, ProcessSample, bounded};

/// Where NVML is looked for: the loader's search path first, then where NVIDIA's container
/// images and some installs put it.
const LIBRARIES: [&str; 3] = [
    "libnvidia-ml.so.1",
    "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
];

/// NVML, initialised.
pub struct NvmlBackend {
    nvml: Nvml,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlBackend").finish_non_exhaustive()
    }
}

impl NvmlBackend {
    /// Loads and initialises NVML; an error says why (no library, no driver, no device
    /// access).
    pub fn load() -> Result<Self, GpuError> {
        let mut reasons = Vec::new();
        for library in LIBRARIES {
            match Nvml::builder().lib_path(OsStr::new(library)).init() {
                Ok(nvml) => return Ok(Self { nvml }),
                Err(e) => reasons.push(format!("{library}: {}", chain(&e))),
            }
        }
        Err(GpuError::Unavailable {
            reason: reasons.join("; "),
        })
    }

    fn device(&self, index: u32, call: &'static str) -> Result<nvml_wrapper::Device<'_>, GpuError> {
        self.nvml
            .device_by_index(index)
            .map_err(|e| call_error(call, index, &e))
    }
}

fn chain(e: &NvmlError) -> String {
    strata_common::error::chain(e)
}

fn call_error(call: &'static str, index: u32, e: &NvmlError) -> GpuError {
    GpuError::Call {
        call,
        index,
        reason: chain(e),
    }
}

/// A figure the device may not support: `None` then, or on any other error (logged at debug).
fn optional<T>(index: u32, what: &'static str, result: Result<T, NvmlError>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(NvmlError::NotSupported) => None,
        Err(e) => {
            tracing::debug!(index, what, error = %chain(&e), "cannot read a GPU figure");
            None
        }
    }
}

impl GpuBackend for NvmlBackend {
    fn devices(&self) -> Result<Vec<GpuDevice>, GpuError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| call_error("nvmlDeviceGetCount", 0, &e))?;
        let mut devices = Vec::new();
        for index in 0..count.min(super::MAX_GPUS as u32) {
            let device = self.device(index, "nvmlDeviceGetHandleByIndex")?;
            let err = |call| move |e: NvmlError| call_error(call, index, &e);
            let mig_enabled = match device.mig_mode() {
                Ok(mode) => mode.current == 1,
                Err(NvmlError::NotSupported | NvmlError::FunctionNotFound) => false,
                Err(e) => return Err(call_error("nvmlDeviceGetMigMode", index, &e)),
            };
            devices.push(GpuDevice {
                index,
                uuid: bounded(device.uuid().map_err(err("nvmlDeviceGetUUID"))?),
                model: bounded(device.name().map_err(err("nvmlDeviceGetName"))?),
                memory_bytes: device
                    .memory_info()
                    .map_err(err("nvmlDeviceGetMemoryInfo"))?
                    .total,
                minor: device
                    .minor_number()
                    .map_err(err("nvmlDeviceGetMinorNumber"))?,
                mig_enabled,
            });
        }
        Ok(devices)
    }

    fn processes(&self, index: u32) -> Result<Vec<GpuProcess>, GpuError> {
        const CALL: &str = "nvmlDeviceGetComputeRunningProcesses";
        let device = self.device(index, CALL)?;
        let processes = device
            .running_compute_processes()
            .map_err(|e| call_error(CALL, index, &e))?;
        Ok(processes
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                },
            })
            .collect())
    }

    fn process_samples(&self, index: u32, since_us: u64) -> Result<Vec<ProcessSample>, GpuError> {
        const CALL: &str = "nvmlDeviceGetProcessUtilization";
        let device = self.device(index, CALL)?;
        match device.process_utilization_stats(since_us) {
            Ok(samples) => Ok(samples
                .into_iter()
                .map(|s| ProcessSample {
                    pid: s.pid,
                    timestamp_us: s.timestamp,
                    sm_percent: s.sm_util,
                    memory_percent: s.mem_util,
                })
                .collect()),
            // No sample since `since_us` (nothing ran).
            Err(NvmlError::NotFound) => Ok(Vec::new()),
            Err(e) => Err(call_error(CALL, index, &e)),
        }
    }

    fn status(&self, index: u32) -> Result<DeviceStatus, GpuError> {
        let device = self.device(index, "nvmlDeviceGetHandleByIndex")?;
        let utilization = optional(index, "utilization", device.utilization_rates());
        Ok(DeviceStatus {
            gpu_percent: utilization.as_ref().map(|u| u.gpu),
            memory_percent: utilization.as_ref().map(|u| u.memory),
            memory_used_bytes: optional(index, "memory", device.memory_info()).map(|m| m.used),
            power_milliwatts: optional(index, "power", device.power_usage()),
            temperature_celsius: optional(
                index,
                "temperature",
                device.temperature(TemperatureSensor::Gpu),
            ),
            sm_clock_mhz: optional(index, "sm clock", device.clock_info(Clock::SM)),
            memory_clock_mhz: optional(index, "memory clock", device.clock_info(Clock::Memory)),
            throttle_reasons: optional(
                index,
                "throttle reasons",
                device.current_throttle_reasons(),
            )
            .map(|r| r.bits()),
            ecc_corrected_total: optional(
                index,
                "corrected ecc errors",
                device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
            ),
            ecc_uncorrected_total: optional(
                index,
                "uncorrected ecc errors",
                device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a host without the driver (the development machines) loading fails with a message
    /// that says what to do; on a GPU host it finds the devices.
    #[test]
    fn loading_nvml_finds_devices_or_says_why_not() {
        match NvmlBackend::load() {
            Ok(nvml) => {
                let devices = nvml.devices().unwrap();
                assert!(
                    devices.iter().all(|d| d.uuid.starts_with("GPU-")),
                    "{devices:?}"
                );
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.starts_with("cannot load NVML ("), "{text}");
                assert!(text.contains("libnvidia-ml.so.1"), "{text}");
                assert!(
                    text.ends_with("or start the agent with --gpus none"),
                    "{text}"
                );
            }
        }
    }
}
