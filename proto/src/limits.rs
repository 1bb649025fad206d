//! Bounds every side of the wire agrees on.

/// The fewest cpus a task may ask for (Mesos' `MIN_CPUS`): below it a task's cgroup would get
/// the lowest CPU weight and quota a kernel accepts, which is not what anybody means.
pub const MIN_TASK_CPUS: f64 = 0.01;

/// The least memory, in MiB, a task may ask for: every task runs with a memory limit, and one
/// below this cannot start a process.
pub const MIN_TASK_MEM_MIB: f64 = 4.0;
