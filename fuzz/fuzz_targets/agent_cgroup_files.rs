//! The agent's parsers of what the kernel writes: a task cgroup's files as the usage collector
//! reads them (`agent/src/usage/read.rs`: cpu.stat, cpu.max, memory.stat, memory.events,
//! io.stat, blkio, PSI, ... as cgroup v2 and as v1), and the `/proc` and cgroup files of
//! discovery (`meminfo`, `self/cgroup`, memory limits up the hierarchy) and of the agent's own
//! metrics (`self/stat`, `self/status`).
//!
//! The input is sections separated by NUL bytes; each section's first byte picks the file it
//! fills (files no section names are absent). Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_agent::{discovery, fuzzing};

#[path = "../common/scratch.rs"]
mod scratch;
use scratch::scratch;

/// The files a section can fill: in the cgroup directory `cg/`, or in the proc root `proc/`.
const FILES: [&str; 31] = [
    "cg/cpu.stat",
    "cg/cpu.max",
    "cg/cpuacct.usage",
    "cg/cpuacct.usage_user",
    "cg/cpuacct.usage_sys",
    "cg/cpu.cfs_quota_us",
    "cg/cpu.cfs_period_us",
    "cg/memory.current",
    "cg/memory.peak",
    "cg/memory.stat",
    "cg/memory.max",
    "cg/memory.high",
    "cg/memory.events",
    "cg/memory.usage_in_bytes",
    "cg/memory.max_usage_in_bytes",
    "cg/memory.kmem.usage_in_bytes",
    "cg/memory.limit_in_bytes",
    "cg/memory.soft_limit_in_bytes",
    "cg/memory.oom_control",
    "cg/pids.current",
    "cg/pids.max",
    "cg/io.stat",
    "cg/blkio.throttle.io_service_bytes",
    "cg/blkio.throttle.io_serviced",
    "cg/cpu.pressure",
    "cg/memory.pressure",
    "cg/io.pressure",
    "proc/meminfo",
    "proc/self/cgroup",
    "proc/self/stat",
    "proc/self/status",
];

fuzz_target!(|data: &[u8]| {
    let root = scratch();
    let mut contents: [Option<&[u8]>; FILES.len()] = [None; FILES.len()];
    for section in data.split(|&b| b == 0) {
        if let Some((&which, content)) = section.split_first() {
            contents[usize::from(which) % FILES.len()] = Some(content);
        }
    }
    std::fs::create_dir_all(root.join("cg/memory")).expect("mkdir");
    std::fs::create_dir_all(root.join("proc/self")).expect("mkdir");
    for (name, content) in FILES.iter().zip(contents) {
        let path = root.join(name);
        match content {
            Some(content) => std::fs::write(&path, content).expect("write"),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let cg = root.join("cg");
    let proc_root = root.join("proc");
    let _ = fuzzing::read_cgroup_dir(&cg);
    let _ = fuzzing::own_usage(&proc_root);
    let _ = discovery::mem_total_bytes(&proc_root);
    let _ = discovery::cgroup_memory_limit_bytes(&proc_root, &cg);
    let _ = discovery::unified_cgroup_dir(&proc_root, &cg);
});
