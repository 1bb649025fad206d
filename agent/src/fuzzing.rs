//! Entry points for the fuzz targets in `fuzz/` (`cargo xtask fuzz`): the parsers of files the
//! kernel writes that the public API reaches only through a running agent. Not an API: hidden
//! from the docs, and free to change with the targets.

use std::path::Path;

use crate::usage::read::{self, Reader};

/// Runs every reader of the usage collector on the cgroup files in `dir`, as cgroup v2 and as
/// the v1 controllers of a hybrid host (cpu and cpuacct both `dir`), limits included; returns
/// what they read, formatted.
pub fn read_cgroup_dir(dir: &Path) -> String {
    let mut r = Reader::default();
    let v2 = (
        read::cpu_v2(&mut r, dir, true),
        read::memory_v2(&mut r, dir, true),
        read::pids(&mut r, dir, true),
        read::io_v2(&mut r, dir),
    );
    let v1 = (
        read::cpu_v1(&mut r, dir, dir, true),
        read::memory_v1(&mut r, dir, true),
        read::io_v1(&mut r, dir),
    );
    let pressure = ["cpu.pressure", "memory.pressure", "io.pressure"]
        .map(|name| read::pressure(&mut r, dir, name));
    format!("{v2:?} {v1:?} {pressure:?}")
}

/// The agent's own CPU seconds and resident bytes from `<proc_root>/self/stat` and
/// `<proc_root>/self/status`, as its `/metrics` reads them.
pub fn own_usage(proc_root: &Path) -> Option<(f64, u64)> {
    crate::http::own_usage(proc_root)
}
