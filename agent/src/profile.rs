//! CPU profiles of one cgroup's tasks (`strata profile`): stack samples taken in the kernel,
//! symbolized here, returned as folded stacks.
//!
//! [`profile`] loads the profiler object (`agent-ebpf/src/profile.rs`, built by `build.rs`) on
//! demand, so an agent that is not profiling pays nothing. It writes the target cgroup id into
//! the program's target map, attaches the program to a software CPU-clock perf event sampling
//! at [`ProfileOptions::frequency_hz`] on every online CPU, waits, detaches (drops the object),
//! and reads the counted (process, user stack, kernel stack) triples. Samples of other cgroups
//! are filtered out inside the kernel.
//!
//! Symbolization uses blazesym: user addresses through the process's `/proc/PID/maps` and
//! `map_files` (so binaries inside a task's mount namespace are found) and the ELF symbol tables,
//! with Rust and C++ names demangled; kernel addresses through `<proc>/kallsyms` when readable.
//! A process must still run when its profile ends for its frames to be named; an address that
//! cannot be named is `[unknown]`. User stacks are unwound by the kernel with frame pointers:
//! code built without them yields the sampled function and possibly a short or wrong tail.
//!
//! Folded stacks are `root;...;leaf COUNT` lines: the process name (`comm`), its user frames,
//! then its kernel frames, marked `_[k]` as `perf script` folding does.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::include_bytes_aligned;
use aya::maps::{
    HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, StackTraceMap,
};
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::{PerfEvent, ProgramError};
use blazesym::MaybeDefault;
use blazesym::symbolize::source::{Kernel, Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use strata_agent_common::{
    CgroupId, MAP_PROFILE_COUNTS, MAP_PROFILE_STACKS, MAP_PROFILE_STATS, MAP_PROFILE_TARGETS,
    NO_STACK, PROG_PROFILE, ProfileKey,
};

/// The profiler object built by `build.rs` from `agent-ebpf/src/profile.rs` (empty when built
/// without it: see [`crate::ebpf::NOT_BUILT`]).
pub(crate) static PROFILE_OBJECT: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/strata-profile-ebpf"));

/// The default sampling frequency: 99 Hz, off the beat of 100 Hz timers.
pub const DEFAULT_FREQUENCY_HZ: u64 = 99;

/// The longest profile [`profile`] takes.
pub const MAX_DURATION: Duration = Duration::from_secs(300);

/// The name of a frame whose address could not be named at all.
const FOLDED_UNKNOWN: &str = "[unknown]";

/// The longest frame name kept, in bytes (longer ones, such as deep C++ template names, are
/// cut): with the kernel's bounds (8,192 stacks of at most 127 frames each way), the folded
/// profile stays within a few MiB.
pub const MAX_FRAME_NAME_BYTES: usize = 256;

/// The most bytes of folded stack lines one profile keeps; the samples of further stacks are
/// counted under one `[more stacks than a profile keeps]` frame of their process.
pub const MAX_FOLDED_BYTES: usize = 8 * 1024 * 1024;

/// The frame that stands for the stacks beyond [`MAX_FOLDED_BYTES`].
const FOLDED_TRUNCATED: &str = "[more stacks than a profile keeps]";

/// Errors of the profiler.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// This binary was built with empty placeholders instead of the eBPF objects.
    #[error("{}", crate::ebpf::NOT_BUILT)]
    NotBuilt,
    /// The requested duration is zero or too long.
    #[error(
        "cannot profile for {requested:?}: the duration must be above zero and at most {max:?}"
    )]
    Duration {
        /// What was asked for.
        requested: Duration,
        /// The longest allowed.
        max: Duration,
    },
    /// The profiler object could not be loaded (no rights, no perf events, a verifier error).
    #[error("cannot load the profiler eBPF program: {detail}")]
    Load {
        /// The loader's error and its causes, with a hint where known.
        detail: String,
    },
    /// The online CPUs could not be listed.
    #[error("cannot list the online cpus ({path}): {source}")]
    Cpus {
        /// The file read.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The program could not be attached to a CPU's clock.
    #[error("cannot attach the profiler to cpu {cpu}: {detail}")]
    Attach {
        /// The CPU.
        cpu: u32,
        /// The loader's error, with a hint where known.
        detail: String,
    },
    /// A map of the profiler could not be read or written.
    #[error("profiler map {map}: {detail}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What failed.
        detail: String,
    },
    /// The blocking part of the profile panicked or was cancelled.
    #[error("the profiler's worker failed: {0}")]
    Worker(String),
}

/// How to profile.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    /// Samples per second and CPU; default [`DEFAULT_FREQUENCY_HZ`].
    pub frequency_hz: u64,
    /// Where procfs is mounted (process names, `kallsyms`); default `/proc`.
    pub proc_root: PathBuf,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self {
            frequency_hz: DEFAULT_FREQUENCY_HZ,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// A finished profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// Folded stack (`root;...;leaf`) → samples.
    pub stacks: BTreeMap<String, u64>,
    /// Samples of the target cgroup the kernel took.
    pub samples: u64,
    /// Samples whose user stack could not be recorded (they are still counted, with their
    /// kernel stack only).
    pub stack_errors: u64,
    /// Samples not counted because the counts map was full.
    pub lost: u64,
    /// How long the sampling ran.
    pub duration: Duration,
    /// The sampling frequency (per CPU).
    pub frequency_hz: u64,
}

impl Profile {
    /// The folded stacks as text: `root;...;leaf COUNT` lines, most samples first.
    #[must_use]
    pub fn folded(&self) -> String {
        let mut lines: Vec<(&String, &u64)> = self.stacks.iter().collect();
        lines.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let mut out = String::new();
        for (stack, count) in lines {
            out.push_str(stack);
            out.push(' ');
            out.push_str(&count.to_string());
            out.push('\n');
        }
        out
    }

    /// The samples counted in [`Profile::stacks`].
    #[must_use]
    pub fn counted(&self) -> u64 {
        self.stacks.values().sum()
    }
}

/// Parses folded text (`root;...;leaf COUNT` lines) into stack → samples; lines that are not
/// folded stacks are skipped.
#[must_use]
pub fn parse_folded(text: &str) -> BTreeMap<String, u64> {
    let mut stacks = BTreeMap::new();
    for line in text.lines() {
        if let Some((stack, count)) = line.trim_end().rsplit_once(' ')
            && let Ok(n) = count.parse::<u64>()
            && !stack.is_empty()
        {
            *stacks.entry(stack.to_owned()).or_insert(0) += n;
        }
    }
    stacks
}

/// Samples per function, counting each sample once for every function on its stack (the
/// function's "total" share in a flame graph), most first.
#[must_use]
pub fn frames_by_total(stacks: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut totals: HashMap<&str, u64> = HashMap::new();
    for (stack, &n) in stacks {
        let mut seen: Vec<&str> = Vec::new();
        // Skip the root (the process name).
        for frame in stack.split(';').skip(1) {
            if !seen.contains(&frame) {
                seen.push(frame);
                *totals.entry(frame).or_insert(0) += n;
            }
        }
    }
    let mut out: Vec<(String, u64)> = totals.into_iter().map(|(f, n)| (f.to_owned(), n)).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The longest profile the agent's `GET /profile` takes, in seconds.
pub const MAX_HTTP_SECONDS: u64 = 300;
/// The profile length of a `GET /profile` without `seconds`.
pub const DEFAULT_HTTP_SECONDS: u64 = 10;

/// Serves `GET /profile?task=ID&seconds=N[&framework=FW]` for the agent's HTTP server: profiles
/// the running task `ID` for `N` seconds (1..=[`MAX_HTTP_SECONDS`], default
/// [`DEFAULT_HTTP_SECONDS`]) and returns its folded stacks as `text/plain`.
///
/// `running` are the latest usage records (the running tasks; a record without eBPF on-CPU time
/// means eBPF is off on this agent). The task's cgroup is found in the unified hierarchy at
/// `containers/<framework>/<task>` below the agent's own cgroup (`<proc>/self/cgroup`, under
/// `cgroup_mount`), where the agent's cgroup root always is. Refusals are 4xx with a message
/// that says what was wrong: 400 for a bad query, 404 for a task not running here, 409 when
/// eBPF is off or the task has no unified cgroup.
pub async fn handle_http_request(
    running: &[strata_proto::TaskUsage],
    proc_root: &Path,
    cgroup_mount: &Path,
    query: Option<&str>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let query = parse_query(query.unwrap_or(""));
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let Some(task) = get("task").filter(|t| !t.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing task: use /profile?task=ID&seconds=N\n".to_owned(),
        );
    };
    let seconds = match get("seconds") {
        None => DEFAULT_HTTP_SECONDS,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (1..=MAX_HTTP_SECONDS).contains(&n) => n,
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "bad seconds {text:?}: give a whole number from 1 to {MAX_HTTP_SECONDS}\n"
                    ),
                );
            }
        },
    };
    let framework = get("framework").filter(|f| !f.is_empty());
    let matches: Vec<&strata_proto::TaskUsage> = running
        .iter()
        .filter(|u| u.task_id == task && framework.is_none_or(|f| u.framework_id == f))
        .collect();
    let record = match matches.as_slice() {
        [] => {
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "task {task:?} is not running on this agent (or has no usage record yet: \
                     retry in a second)\n"
                ),
            );
        }
        [one] => *one,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                format!("task id {task:?} is used by several frameworks here: add &framework=ID\n"),
            );
        }
    };
    if record
        .cpu
        .as_ref()
        .is_none_or(|c| c.oncpu_seconds_total.is_none())
    {
        return (
            StatusCode::CONFLICT,
            "eBPF is off on this agent (started with --no-ebpf, or its programs could not be \
             loaded: see its log); profiling needs eBPF: run the agent as root without --no-ebpf\n"
                .to_owned(),
        );
    }
    let Some(dir) = crate::discovery::unified_cgroup_dir(proc_root, cgroup_mount)
        .and_then(|base| find_task_cgroup(&base, &record.framework_id, task))
    else {
        return (
            StatusCode::CONFLICT,
            format!(
                "task {task:?} has no cgroup in the unified (v2) hierarchy below the agent's \
                 cgroup: it cannot be profiled\n"
            ),
        );
    };
    let id = match crate::ebpf::cgroup_id(&dir) {
        Ok(id) => id,
        Err(e) => return (StatusCode::NOT_FOUND, format!("task {task:?} ended: {e}\n")),
    };
    let options = ProfileOptions {
        proc_root: proc_root.to_path_buf(),
        ..ProfileOptions::default()
    };
    match profile(id, Duration::from_secs(seconds), options).await {
        Ok(p) => (StatusCode::OK, p.folded()),
        Err(e @ ProfileError::Duration { .. }) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e) => {
            tracing::warn!(task, error = %e, "profile failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

/// `k=v&k=v` pairs, percent-decoded (`+` is a space).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup `containers/<framework>/<task>` (see [`crate::cgroup::task_rel`]) at or below
/// `base` (searched breadth first, a few levels deep, not inside other task cgroups).
#[must_use]
pub fn find_task_cgroup(base: &Path, framework_id: &str, task_id: &str) -> Option<PathBuf> {
    const DEPTH: usize = 4;
    const MAX_DIRS: usize = 4096;
    let rel = crate::cgroup::task_rel(framework_id, task_id).ok()?;
    let containers = rel.components().next()?.as_os_str().to_owned();
    let mut level = vec![base.to_path_buf()];
    for _ in 0..=DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            let candidate = dir.join(&rel);
            if candidate.is_dir() {
                return Some(candidate);
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != containers {
                    next.push(e.path());
                }
            }
        }
        if next.is_empty() || next.len() > MAX_DIRS {
            break;
        }
        level = next;
    }
    None
}

/// The directory, in the unified (v2) hierarchy, of the cgroup process `pid` is in: the `0::`
/// line of `<proc>/<pid>/cgroup` below `<cgroup>/unified` on a hybrid host, below `<cgroup>` on
/// a pure v2 one. Its inode number is the cgroup id [`profile`] and the eBPF maps use. `None`
/// when the process is gone or there is no unified hierarchy.
#[must_use]
pub fn unified_cgroup_of_pid(proc_root: &Path, cgroup_root: &Path, pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|part| part == "..") {
        return None;
    }
    let mount = if cgroup_root.join("cgroup.controllers").is_file() {
        cgroup_root.to_path_buf()
    } else {
        cgroup_root.join("unified")
    };
    let dir = if rel.is_empty() {
        mount
    } else {
        mount.join(rel)
    };
    dir.is_dir().then_some(dir)
}

/// Samples the CPU stacks of the tasks in the cgroup `cgroup_id` (the cgroup itself, not its
/// descendants) for `duration`, then symbolizes them. Needs root (or CAP_BPF and
/// CAP_PERFMON).
pub async fn profile(
    cgroup_id: CgroupId,
    duration: Duration,
    options: ProfileOptions,
) -> Result<Profile, ProfileError> {
    if duration.is_zero() || duration > MAX_DURATION {
        return Err(ProfileError::Duration {
            requested: duration,
            max: MAX_DURATION,
        });
    }
    let frequency_hz = options.frequency_hz.max(1);
    let sampler = tokio::task::spawn_blocking(move || Sampler::start(cgroup_id, frequency_hz))
        .await
        .map_err(|e| ProfileError::Worker(e.to_string()))??;
    let started = Instant::now();
    tracing::info!(
        cgroup_id,
        ?duration,
        frequency_hz,
        cpus = sampler.cpus,
        "profiling"
    );
    tokio::time::sleep(duration).await;
    tokio::task::spawn_blocking(move || {
        let raw = sampler.finish()?;
        let mut profile = symbolize(&raw, &options.proc_root);
        profile.duration = started.elapsed();
        profile.frequency_hz = frequency_hz;
        tracing::info!(
            cgroup_id,
            samples = profile.samples,
            stacks = profile.stacks.len(),
            stack_errors = profile.stack_errors,
            lost = profile.lost,
            "profile done"
        );
        Ok(profile)
    })
    .await
    .map_err(|e| ProfileError::Worker(e.to_string()))?
}

/// The loaded, attached profiler; dropping it detaches and unloads it.
struct Sampler {
    object: aya::Ebpf,
    cpus: usize,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

/// What the kernel side counted, before symbolization.
#[derive(Debug, Default)]
struct RawProfile {
    counts: Vec<(ProfileKey, u64)>,
    stacks: HashMap<u32, Vec<u64>>,
    samples: u64,
    stack_errors: u64,
    lost: u64,
}

impl Sampler {
    fn start(cgroup_id: CgroupId, frequency_hz: u64) -> Result<Self, ProfileError> {
        let object = crate::ebpf::embedded(PROFILE_OBJECT).map_err(|_| ProfileError::NotBuilt)?;
        let mut object = aya::Ebpf::load(object).map_err(|e| ProfileError::Load {
            detail: crate::ebpf::describe_error(&e),
        })?;
        {
            let map = object
                .map_mut(MAP_PROFILE_TARGETS)
                .ok_or_else(|| missing(MAP_PROFILE_TARGETS))?;
            let mut targets: BpfHashMap<&mut MapData, CgroupId, u8> =
                BpfHashMap::try_from(map).map_err(|e| map_err(MAP_PROFILE_TARGETS, &e))?;
            targets
                .insert(cgroup_id, 1, 0)
                .map_err(|e| map_err(MAP_PROFILE_TARGETS, &e))?;
        }
        let program: &mut PerfEvent = object
            .program_mut(PROG_PROFILE)
            .ok_or_else(|| ProfileError::Load {
                detail: format!("the program {PROG_PROFILE} is missing from the eBPF object"),
            })?
            .try_into()
            .map_err(|e: ProgramError| ProfileError::Load {
                detail: crate::ebpf::describe_error(&e),
            })?;
        program.load().map_err(|e| ProfileError::Load {
            detail: crate::ebpf::describe_error(&e),
        })?;
        let cpus = aya::util::online_cpus().map_err(|(path, source)| ProfileError::Cpus {
            path: path.to_owned(),
            source,
        })?;
        for &cpu in &cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(frequency_hz),
                    false,
                )
                .map_err(|e| ProfileError::Attach {
                    cpu,
                    detail: crate::ebpf::describe_error(&e),
                })?;
        }
        Ok(Self {
            object,
            cpus: cpus.len(),
        })
    }

    /// Detaches the program, then reads the maps.
    fn finish(mut self) -> Result<RawProfile, ProfileError> {
        if let Some(program) = self.object.program_mut(PROG_PROFILE)
            && let Ok(program) = <&mut PerfEvent>::try_from(program)
        {
            // Unloading detaches every perf event link: no sample is added while reading.
            let _ = program.unload();
        }
        let mut raw = RawProfile::default();
        let counts: PerCpuHashMap<&MapData, ProfileKey, u64> = PerCpuHashMap::try_from(
            self.object
                .map(MAP_PROFILE_COUNTS)
                .ok_or_else(|| missing(MAP_PROFILE_COUNTS))?,
        )
        .map_err(|e| map_err(MAP_PROFILE_COUNTS, &e))?;
        for entry in counts.iter() {
            let (key, per_cpu) = entry.map_err(|e| map_err(MAP_PROFILE_COUNTS, &e))?;
            let n = per_cpu.iter().fold(0u64, |s, v| s.wrapping_add(*v));
            if n > 0 {
                raw.counts.push((key, n));
            }
        }
        let stacks: StackTraceMap<&MapData> = StackTraceMap::try_from(
            self.object
                .map(MAP_PROFILE_STACKS)
                .ok_or_else(|| missing(MAP_PROFILE_STACKS))?,
        )
        .map_err(|e| map_err(MAP_PROFILE_STACKS, &e))?;
        for &(key, _) in &raw.counts {
            for id in [key[1], key[2]] {
                if id == NO_STACK || raw.stacks.contains_key(&id) {
                    continue;
                }
                match stacks.get(&id, 0) {
                    Ok(trace) => {
                        raw.stacks
                            .insert(id, trace.frames().iter().map(|f| f.ip).collect());
                    }
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(MAP_PROFILE_STACKS, &e)),
                }
            }
        }
        let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.object
                .map(MAP_PROFILE_STATS)
                .ok_or_else(|| missing(MAP_PROFILE_STATS))?,
        )
        .map_err(|e| map_err(MAP_PROFILE_STATS, &e))?;
        let stat = |i: u32| -> Result<u64, ProfileError> {
            let v = stats
                .get(&i, 0)
                .map_err(|e| map_err(MAP_PROFILE_STATS, &e))?;
            Ok(v.iter().fold(0u64, |s, x| s.wrapping_add(*x)))
        };
        raw.samples = stat(0)?;
        raw.stack_errors = stat(1)?;
        raw.lost = stat(2)?;
        Ok(raw)
    }
}

fn missing(map: &'static str) -> ProfileError {
    ProfileError::Map {
        map,
        detail: "missing from the eBPF object".to_owned(),
    }
}

fn map_err(map: &'static str, e: &MapError) -> ProfileError {
    ProfileError::Map {
        map,
        detail: crate::ebpf::describe_error(e),
    }
}

/// Names every address and folds the stacks.
fn symbolize(raw: &RawProfile, proc_root: &Path) -> Profile {
    let symbolizer = Symbolizer::new();
    // User addresses per process; a return address is looked up one byte back so that a call
    // at the very end of a function is named after that function.
    let mut user_addrs: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut kernel_addrs: Vec<u64> = Vec::new();
    for &(key, _) in &raw.counts {
        let [tgid, user, kernel, _] = key;
        if let Some(ips) = raw.stacks.get(&user) {
            user_addrs
                .entry(tgid)
                .or_default()
                .extend(lookup_addrs(ips));
        }
        if let Some(ips) = raw.stacks.get(&kernel) {
            kernel_addrs.extend(lookup_addrs(ips));
        }
    }
    let mut user_names: HashMap<(u32, u64), String> = HashMap::new();
    for (tgid, mut addrs) in user_addrs {
        addrs.sort_unstable();
        addrs.dedup();
        let Some(pid) = NonZeroU32::new(tgid) else {
            continue;
        };
        let mut process = Process::new(blazesym::Pid::Pid(pid));
        process.perf_map = true;
        let names = name_all(&symbolizer, &Source::Process(process), &addrs);
        // An address without a symbol (a stripped binary) is named after its file, as
        // `[file]`, which says more in a flame graph than `[unknown]`.
        let maps = read_maps(proc_root, tgid);
        for (addr, name) in addrs.into_iter().zip(names) {
            let name = if name == FOLDED_UNKNOWN {
                module_of(&maps, addr).map_or(name, |m| {
                    // `[stack]`, `[heap]`, `[vdso]` are bracketed already.
                    if m.starts_with('[') {
                        m.to_owned()
                    } else {
                        format!("[{m}]")
                    }
                })
            } else {
                name
            };
            user_names.insert((tgid, addr), name);
        }
    }
    kernel_addrs.sort_unstable();
    kernel_addrs.dedup();
    let kallsyms = proc_root.join("kallsyms");
    let kernel_names: HashMap<u64, String> = if kallsyms.is_file() && !kernel_addrs.is_empty() {
        let kernel = Kernel {
            kallsyms: MaybeDefault::Some(kallsyms),
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        };
        let names = name_all(&symbolizer, &Source::Kernel(kernel), &kernel_addrs);
        kernel_addrs.into_iter().zip(names).collect()
    } else {
        HashMap::new()
    };

    let mut comms: HashMap<u32, String> = HashMap::new();
    let mut profile = Profile {
        samples: raw.samples,
        stack_errors: raw.stack_errors,
        lost: raw.lost,
        ..Profile::default()
    };
    let mut folded_bytes = 0;
    for &(key, count) in &raw.counts {
        let [tgid, user, kernel, _] = key;
        let comm = comms
            .entry(tgid)
            .or_insert_with(|| process_name(proc_root, tgid))
            .clone();
        if folded_bytes >= MAX_FOLDED_BYTES {
            *profile
                .stacks
                .entry(format!("{comm};{FOLDED_TRUNCATED}"))
                .or_insert(0) += count;
            continue;
        }
        let mut frames = vec![comm];
        if let Some(ips) = raw.stacks.get(&user) {
            for addr in lookup_addrs(ips).rev() {
                frames.push(
                    user_names
                        .get(&(tgid, addr))
                        .cloned()
                        .unwrap_or_else(|| FOLDED_UNKNOWN.to_owned()),
                );
            }
        }
        if let Some(ips) = raw.stacks.get(&kernel) {
            for addr in lookup_addrs(ips).rev() {
                let name = kernel_names
                    .get(&addr)
                    .map_or(FOLDED_UNKNOWN, String::as_str);
                frames.push(format!("{name}_[k]"));
            }
        }
        let line = frames.join(";");
        folded_bytes += line.len();
        *profile.stacks.entry(line).or_insert(0) += count;
    }
    profile
}

/// The file-backed mappings of a process (`<proc>/<pid>/maps`): start, end, file name.
fn read_maps(proc_root: &Path, pid: u32) -> Vec<(u64, u64, String)> {
    let Ok(text) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("maps")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let path = fields.nth(4)?;
            let name = path.rsplit('/').next().filter(|n| !n.is_empty())?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                sanitize(name),
            ))
        })
        .collect()
}

/// The file name of the mapping holding `addr`.
fn module_of(maps: &[(u64, u64, String)], addr: u64) -> Option<&str> {
    maps.iter()
        .find(|(start, end, _)| (*start..*end).contains(&addr))
        .map(|(_, _, name)| name.as_str())
}

/// A stack's addresses (leaf first) as looked up: the leaf as sampled, the return addresses
/// one byte back.
fn lookup_addrs(ips: &[u64]) -> impl DoubleEndedIterator<Item = u64> + '_ {
    ips.iter()
        .enumerate()
        .map(|(i, &ip)| if i == 0 { ip } else { ip.saturating_sub(1) })
}

/// Names for `addrs` (sorted, deduplicated), `[unknown]` where none is found.
fn name_all(symbolizer: &Symbolizer, source: &Source<'_>, addrs: &[u64]) -> Vec<String> {
    match symbolizer.symbolize(source, Input::AbsAddr(addrs)) {
        Ok(symbols) => symbols
            .iter()
            .map(|s| match s {
                Symbolized::Sym(sym) => sanitize(&sym.name),
                Symbolized::Unknown(_) => FOLDED_UNKNOWN.to_owned(),
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot symbolize addresses");
            vec![FOLDED_UNKNOWN.to_owned(); addrs.len()]
        }
    }
}

/// A frame name usable in a folded line: no `;` (the frame separator), no line breaks, at
/// most [`MAX_FRAME_NAME_BYTES`] (cut with `…`).
fn sanitize(name: &str) -> String {
    let name = strata_proto::ids::shorten(name, MAX_FRAME_NAME_BYTES);
    name.chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// A process's name from `<proc>/<pid>/comm`, or `pid-<pid>` once it is gone.
fn process_name(proc_root: &Path, pid: u32) -> String {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|c| sanitize(c.trim()).replace(' ', "_"))
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("pid-{pid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built with the placeholders, the profiler says so before touching the kernel.
    #[test]
    fn a_build_without_the_programs_is_named_as_such() {
        if crate::ebpf::programs_built() {
            return;
        }
        let err = Sampler::start(1, DEFAULT_FREQUENCY_HZ).expect_err("no programs");
        assert!(matches!(err, ProfileError::NotBuilt), "{err}");
        assert!(err.to_string().contains("cargo xtask setup"), "{err}");
    }

    #[test]
    fn folded_text_round_trips_and_totals_count_each_frame_once_per_stack() {
        let mut profile = Profile::default();
        profile.stacks.insert("app;main;hot;hot".to_owned(), 7);
        profile.stacks.insert("app;main;cold".to_owned(), 3);
        let text = profile.folded();
        assert_eq!(text, "app;main;hot;hot 7\napp;main;cold 3\n");
        let parsed = parse_folded(&format!("{text}not a stack\n\n"));
        assert_eq!(parsed, profile.stacks);
        assert_eq!(profile.counted(), 10);
        let totals = frames_by_total(&parsed);
        assert_eq!(
            totals,
            vec![
                ("main".to_owned(), 10),
                ("hot".to_owned(), 7),
                ("cold".to_owned(), 3)
            ]
        );
    }

    #[test]
    fn return_addresses_are_looked_up_one_byte_back_and_names_are_sanitized() {
        let ips = [0x1000, 0x2000, 0x3000];
        assert_eq!(
            lookup_addrs(&ips).collect::<Vec<_>>(),
            [0x1000, 0x1fff, 0x2fff]
        );
        assert_eq!(sanitize("a;b\nc"), "a:b c");
        let long = sanitize(&"x".repeat(10 * MAX_FRAME_NAME_BYTES));
        assert!(
            long.len() <= MAX_FRAME_NAME_BYTES + "…".len(),
            "{}",
            long.len()
        );
    }

    #[test]
    fn unknown_addresses_are_named_after_their_mapping() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("9")).expect("mkdir");
        std::fs::write(
            dir.path().join("9/maps"),
            "55d0a0000000-55d0a0020000 r-xp 00002000 fe:01 1234 /usr/bin/dash\n\
             7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n\
             7f0000000000-7f0000001000 rw-p 00000000 00:00 0\n",
        )
        .expect("write");
        let maps = read_maps(dir.path(), 9);
        assert_eq!(module_of(&maps, 0x55d0_a000_1000), Some("dash"));
        assert_eq!(module_of(&maps, 0x7ffd_0000_0010), Some("[stack]"));
        assert_eq!(module_of(&maps, 0x7f00_0000_0010), None);
        assert!(read_maps(dir.path(), 10).is_empty());
    }

    #[test]
    fn process_names_come_from_comm_and_fall_back_to_the_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("42")).expect("mkdir");
        std::fs::write(dir.path().join("42/comm"), "my app\n").expect("write");
        assert_eq!(process_name(dir.path(), 42), "my_app");
        assert_eq!(process_name(dir.path(), 43), "pid-43");
    }

    #[test]
    fn symbolizing_keeps_unknown_addresses_and_marks_kernel_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = RawProfile {
            // A pid that cannot exist (above pid_max): its frames stay unknown.
            counts: vec![
                ([u32::MAX - 1, 1, 2, 0], 5),
                ([u32::MAX - 1, NO_STACK, 2, 0], 1),
            ],
            stacks: HashMap::from([(1, vec![0x10, 0x20]), (2, vec![0xffff_ffff_8100_0000])]),
            samples: 6,
            stack_errors: 1,
            lost: 0,
        };
        let p = symbolize(&raw, dir.path());
        let name = format!("pid-{}", u32::MAX - 1);
        assert_eq!(
            p.stacks
                .get(&format!("{name};[unknown];[unknown];[unknown]_[k]")),
            Some(&5),
            "{p:?}"
        );
        assert_eq!(
            p.stacks.get(&format!("{name};[unknown]_[k]")),
            Some(&1),
            "{p:?}"
        );
        assert_eq!((p.samples, p.stack_errors), (6, 1));
    }

    #[test]
    fn a_process_cgroup_is_found_in_the_unified_hierarchy() {
        let root = tempfile::tempdir().expect("tempdir");
        let proc_root = root.path().join("proc");
        let cg = root.path().join("cgroup");
        std::fs::create_dir_all(proc_root.join("7")).expect("mkdir");
        std::fs::write(proc_root.join("7/cgroup"), "4:memory:/a/b\n0::/a/b/task\n").expect("write");
        // Hybrid: the unified hierarchy is <cgroup>/unified.
        std::fs::create_dir_all(cg.join("unified/a/b/task")).expect("mkdir");
        assert_eq!(
            unified_cgroup_of_pid(&proc_root, &cg, 7),
            Some(cg.join("unified/a/b/task"))
        );
        // Pure v2: the mount itself (it has cgroup.controllers).
        std::fs::create_dir_all(cg.join("a/b/task")).expect("mkdir");
        std::fs::write(cg.join("cgroup.controllers"), "cpu\n").expect("write");
        assert_eq!(
            unified_cgroup_of_pid(&proc_root, &cg, 7),
            Some(cg.join("a/b/task"))
        );
        assert_eq!(unified_cgroup_of_pid(&proc_root, &cg, 8), None);
    }

    #[test]
    fn task_cgroups_are_found_below_the_agent_cgroup_by_framework_and_task() {
        let root = tempfile::tempdir().expect("tempdir");
        let task = root.path().join("strata-abc/containers/fw/t1");
        std::fs::create_dir_all(&task).expect("mkdir");
        std::fs::create_dir_all(root.path().join("other/deeper")).expect("mkdir");
        assert_eq!(find_task_cgroup(root.path(), "fw", "t1"), Some(task));
        assert_eq!(find_task_cgroup(root.path(), "fw", "t2"), None);
        assert_eq!(find_task_cgroup(root.path(), "fw", "../t1"), None);
    }

    #[test]
    fn queries_are_split_and_percent_decoded() {
        assert_eq!(
            parse_query("task=a%2Fb&seconds=5&x&y=1+2"),
            vec![
                ("task".to_owned(), "a/b".to_owned()),
                ("seconds".to_owned(), "5".to_owned()),
                ("x".to_owned(), String::new()),
                ("y".to_owned(), "1 2".to_owned()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
    }

    fn record(task: &str, ebpf: bool) -> strata_proto::TaskUsage {
        strata_proto::TaskUsage {
            task_id: task.to_owned(),
            framework_id: "fw".to_owned(),
            cpu: Some(strata_proto::CpuUsage {
                oncpu_seconds_total: ebpf.then_some(1.0),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn http_requests_are_refused_with_what_was_wrong() {
        use axum::http::StatusCode;
        let dir = tempfile::tempdir().expect("tempdir");
        let running = [record("on", true), record("off", false)];
        let ask = |q: &'static str| {
            let running = running.clone();
            let root = dir.path().to_path_buf();
            async move { handle_http_request(&running, &root, &root, Some(q)).await }
        };
        let (status, body) = ask("seconds=5").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("missing task"), "{body}");
        for bad in [
            "task=on&seconds=0",
            "task=on&seconds=301",
            "task=on&seconds=x",
        ] {
            let (status, body) = ask(bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert!(body.contains("from 1 to 300"), "{body}");
        }
        let (status, body) = ask("task=nope&seconds=1").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains("not running on this agent"), "{body}");
        let (status, body) = ask("task=off&seconds=1").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("eBPF is off"), "{body}");
        // No /proc/self/cgroup under the fake root: no unified cgroup to find the task in.
        let (status, body) = ask("task=on&seconds=1").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("no cgroup in the unified"), "{body}");
    }

    #[tokio::test]
    async fn a_zero_or_too_long_duration_is_refused() {
        for d in [Duration::ZERO, MAX_DURATION + Duration::from_secs(1)] {
            let err = profile(1, d, ProfileOptions::default())
                .await
                .expect_err("refused");
            assert!(err.to_string().contains("at most"), "{err}");
        }
    }
}
