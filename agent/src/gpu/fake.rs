//! A [`GpuBackend`] configured by tests: devices, the processes on each and their samples, the
//! devices' figures. Clones share their state, so a test changes what an agent under test sees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{DeviceStatus, GpuBackend, GpuDevice, GpuError, GpuProcess, ProcessSample};

#[derive(Debug, Default)]
struct State {
    devices: Vec<GpuDevice>,
    processes: HashMap<u32, Vec<GpuProcess>>,
    samples: HashMap<u32, Vec<ProcessSample>>,
    status: HashMap<u32, DeviceStatus>,
    calls: usize,
}

/// A fake NVML; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct FakeBackend(Arc<Mutex<State>>);

/// Device `index` of a fake host: UUID `GPU-fake-<index>`, 80 GiB, minor number = index.
pub fn fake_device(index: u32) -> GpuDevice {
    GpuDevice {
        index,
        uuid: format!("GPU-fake-{index}"),
        model: "Fake GPU 80GB".to_owned(),
        memory_bytes: 80 << 30,
        minor: index,
        mig_enabled: false,
    }
}

impl FakeBackend {
    /// A host with these devices and nothing running.
    pub fn new(devices: Vec<GpuDevice>) -> Self {
        Self(Arc::new(Mutex::new(State {
            devices,
            ..State::default()
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the processes on device `index` and their samples.
    pub fn set_processes(
        &self,
        index: u32,
        processes: Vec<GpuProcess>,
        samples: Vec<ProcessSample>,
    ) {
        let mut state = self.state();
        state.processes.insert(index, processes);
        state.samples.insert(index, samples);
    }

    /// Sets device `index`'s own figures.
    pub fn set_status(&self, index: u32, status: DeviceStatus) {
        self.state().status.insert(index, status);
    }

    /// How many backend calls were made (to check polling stays cheap).
    pub fn calls(&self) -> usize {
        self.state().calls
    }

    fn known(state: &State, index: u32, call: &'static str) -> Result<(), GpuError> {
        if state.devices.iter().any(|d| d.index == index) {
            Ok(())
        } else {
            Err(GpuError::Call {
                call,
                index,
                reason: "no such device".to_owned(),
            })
        }
    }
}

impl GpuBackend for FakeBackend {
    fn devices(&self) -> Result<Vec<GpuDevice>, GpuError> {
        let mut state = self.state();
        state.calls += 1;
        Ok(state.devices.clone())
    }

    fn processes(&self, index: u32) -> Result<Vec<GpuProcess>, GpuError> {
        let mut state = self.state();
        state.calls += 1;
        Self::known(&state, index, "nvmlDeviceGetComputeRunningProcesses")?;
        Ok(state.processes.get(&index).cloned().unwrap_or_default())
    }

    fn process_samples(&self, index: u32, since_us: u64) -> Result<Vec<ProcessSample>, GpuError> {
        let mut state = self.state();
        state.calls += 1;
        Self::known(&state, index, "nvmlDeviceGetProcessUtilization")?;
        Ok(state
            .samples
            .get(&index)
            .map(|s| {
                s.iter()
                    .filter(|s| s.timestamp_us > since_us)
                    .copied()
                    .collect()
            })
            .unwrap_or_default())
    }

    fn status(&self, index: u32) -> Result<DeviceStatus, GpuError> {
        let mut state = self.state();
        state.calls += 1;
        Self::known(&state, index, "nvmlDeviceGetUtilizationRates")?;
        Ok(state.status.get(&index).cloned().unwrap_or_default())
    }
}
