//! Support for the kernel integration tests that run inside a qemu guest (`cargo xtask vm-test`).
//!
//! The guest's init (written by xtask) mounts cgroup2 as the only hierarchy at
//! [`CGROUP2_ROOT`], enables every controller in the root's `cgroup.subtree_control`, sets
//! [`GUEST_ENV`] and [`HELPER_ENV`], and runs the test binaries with `--ignored`. Tests call
//! [`guest_or_skip`] first so that on a host they never create cgroups or stress anything.
//!
//! A test creates a [`TestCgroup`] below the root, sets its limits, and runs the helper binary
//! (`strata-vm-helper`, see its source for the commands) in it with [`run_helper`]; the helper
//! moves itself into the cgroup before it does anything, and reports `key=value` lines.
//!
//! The scenarios that run both in the guest and on the host are declared once, in
//! [`scenarios!`] (see [`scenarios`](mod@scenarios)).

pub mod accounting;
pub mod bridge;
pub mod egress;
pub mod isolation;
pub mod ports;
pub mod profiling;
pub mod restart;
pub mod scenarios;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Set (to `1`) by the guest's init; the tests run only where it is set.
pub const GUEST_ENV: &str = "STRATA_VM_GUEST";
/// The path of the helper binary in the guest, set by the guest's init.
pub const HELPER_ENV: &str = "STRATA_VM_HELPER";
/// Where the guest mounts cgroup2.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";
/// The helper's name (its default location in the guest is `/bin/strata-vm-helper`).
pub const HELPER_NAME: &str = "strata-vm-helper";

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine (the helper's
/// samples and a test's own instants), whatever their namespaces.
pub fn monotonic_ns() -> anyhow::Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(u64::try_from(t.tv_sec())? * 1_000_000_000 + u64::try_from(t.tv_nsec())?)
}

/// Errors of the test support code.
#[derive(Debug, thiserror::Error)]
pub enum VmTestError {
    /// A file of a cgroup could not be read or written, or a directory created or removed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing 64M to", ...).
        action: String,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A flat-keyed cgroup file (`key value` lines) had a line that is not one.
    #[error("{path}: line {line:?} is not `key value` with an integer value")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending line.
        line: String,
    },
    /// A key the test needs is absent.
    #[error("{source_name} has no {key:?} (it has: {present})")]
    MissingKey {
        /// Where it was looked for (a file, or the helper's output).
        source_name: String,
        /// The key.
        key: String,
        /// The keys that are there.
        present: String,
    },
    /// The helper could not be started.
    #[error("cannot start {path}: {source} (is {HELPER_ENV} set by the guest's init?)")]
    Spawn {
        /// The helper's path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The helper ran past its time limit and was killed.
    #[error("helper `{args}` did not finish within {limit:?}: killed it")]
    Timeout {
        /// Its arguments.
        args: String,
        /// The limit.
        limit: Duration,
    },
}

/// True inside the test guest (where [`GUEST_ENV`] is `1`).
#[must_use]
pub fn in_guest() -> bool {
    std::env::var(GUEST_ENV).is_ok_and(|v| v == "1")
}

/// True inside the guest; elsewhere prints why the test is skipped and returns false.
#[must_use]
pub fn guest_or_skip(test: &str) -> bool {
    if in_guest() {
        return true;
    }
    eprintln!(
        "skipped {test}: it creates cgroups and stresses the kernel, so it runs only inside the \
         qemu guest ({GUEST_ENV}=1 is not set); run `cargo xtask vm-test`"
    );
    false
}

/// A cgroup under [`CGROUP2_ROOT`], removed (its processes killed first) when dropped.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `/sys/fs/cgroup/strata-vmt-<name>`, replacing a leftover of the same name.
    pub fn create(name: &str) -> Result<Self, VmTestError> {
        let path = Path::new(CGROUP2_ROOT).join(format!("strata-vmt-{name}"));
        if path.exists() {
            remove_cgroup(&path)?;
        }
        fs::create_dir(&path).map_err(|source| VmTestError::Io {
            action: "creating cgroup".to_owned(),
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    /// The cgroup's directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup's v2 id (the key of the agent's eBPF maps).
    pub fn id(&self) -> Result<u64, VmTestError> {
        strata_agent::ebpf::cgroup_id(&self.path).map_err(|e| VmTestError::Io {
            action: "reading the id of".to_owned(),
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// Writes `value` to the cgroup's `file` (e.g. `memory.max`).
    pub fn write(&self, file: &str, value: &str) -> Result<(), VmTestError> {
        let path = self.path.join(file);
        fs::write(&path, value).map_err(|source| VmTestError::Io {
            action: format!("writing {value:?} to"),
            path,
            source,
        })
    }

    /// Reads the cgroup's `file`.
    pub fn read(&self, file: &str) -> Result<String, VmTestError> {
        let path = self.path.join(file);
        fs::read_to_string(&path).map_err(|source| VmTestError::Io {
            action: "reading".to_owned(),
            path,
            source,
        })
    }

    /// Reads a flat-keyed file (`cpu.stat`, `memory.events`, `pids.events`, ...).
    pub fn flat_keyed(&self, file: &str) -> Result<FlatKeyed, VmTestError> {
        let text = self.read(file)?;
        parse_flat_keyed(&self.path.join(file), &text)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_cgroup(&self.path) {
            eprintln!("warning: {e}");
        }
    }
}

/// Kills a cgroup's processes (`cgroup.kill`) and removes it, waiting up to 10 s for them to go.
fn remove_cgroup(path: &Path) -> Result<(), VmTestError> {
    let kill = path.join("cgroup.kill");
    if kill.exists() {
        let _ = fs::write(&kill, "1");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(source) if Instant::now() >= deadline => {
                return Err(VmTestError::Io {
                    action: "removing cgroup".to_owned(),
                    path: path.to_path_buf(),
                    source,
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The contents of a flat-keyed file, or of the helper's `key=value` report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlatKeyed {
    /// Where it came from, for error messages.
    pub source_name: String,
    /// The values by key.
    pub values: BTreeMap<String, u64>,
}

impl FlatKeyed {
    /// The value of `key`, or an error naming the source and the keys it has.
    pub fn get(&self, key: &str) -> Result<u64, VmTestError> {
        self.values
            .get(key)
            .copied()
            .ok_or_else(|| VmTestError::MissingKey {
                source_name: self.source_name.clone(),
                key: key.to_owned(),
                present: self.values.keys().cloned().collect::<Vec<_>>().join(" "),
            })
    }
}

/// Parses `key value` lines (cgroup v2's flat-keyed format).
pub fn parse_flat_keyed(path: &Path, text: &str) -> Result<FlatKeyed, VmTestError> {
    let mut values = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let parsed = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(v), None) => v.parse::<u64>().ok().map(|v| (k.to_owned(), v)),
            _ => None,
        };
        let (k, v) = parsed.ok_or_else(|| VmTestError::Parse {
            path: path.to_path_buf(),
            line: line.to_owned(),
        })?;
        values.insert(k, v);
    }
    Ok(FlatKeyed {
        source_name: path.display().to_string(),
        values,
    })
}

/// What the helper did: its exit status, its output, and its `key=value` report.
#[derive(Debug)]
pub struct HelperOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// The `key=value` lines of its standard output with integer values.
    pub report: FlatKeyed,
}

/// The helper binary's path in the guest.
#[must_use]
pub fn helper_path() -> PathBuf {
    std::env::var_os(HELPER_ENV).map_or_else(|| Path::new("/bin").join(HELPER_NAME), PathBuf::from)
}

/// Runs the helper in `cgroup` with `args`; kills it after `limit`.
pub fn run_helper(
    cgroup: &TestCgroup,
    args: &[&str],
    limit: Duration,
) -> Result<HelperOutput, VmTestError> {
    let path = helper_path();
    let child = Command::new(&path)
        .arg(cgroup.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| VmTestError::Spawn {
            path: path.clone(),
            source,
        })?;
    wait_with_limit(child, &args.join(" "), limit)
}

fn wait_with_limit(
    mut child: Child,
    args: &str,
    limit: Duration,
) -> Result<HelperOutput, VmTestError> {
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = child.stdout.take().map(|s| read_all(Box::new(s)));
    let err = child.stderr.take().map(|s| read_all(Box::new(s)));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VmTestError::Timeout {
                    args: args.to_owned(),
                    limit,
                });
            }
        }
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    let mut values = BTreeMap::new();
    for line in stdout.lines() {
        if let Some((k, v)) = line.split_once('=')
            && let Ok(v) = v.trim().parse::<u64>()
        {
            values.insert(k.trim().to_owned(), v);
        }
    }
    Ok(HelperOutput {
        status,
        stdout,
        stderr,
        report: FlatKeyed {
            source_name: format!("the report of helper `{args}`"),
            values,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_parses_cgroup_files() {
        let text = "usage_usec 1200\nnr_periods 10\nnr_throttled 3\n\n";
        let f = parse_flat_keyed(Path::new("cpu.stat"), text).expect("parses");
        assert_eq!(f.get("nr_throttled").expect("present"), 3);
        assert_eq!(f.values.len(), 3);
    }

    #[test]
    fn flat_keyed_rejects_other_lines_and_names_missing_keys() {
        let err = parse_flat_keyed(Path::new("x"), "max 64M").expect_err("not an integer");
        assert!(err.to_string().contains("max 64M"), "{err}");
        let f = parse_flat_keyed(Path::new("memory.events"), "oom 1").expect("parses");
        let err = f.get("oom_kill").expect_err("absent");
        assert!(
            err.to_string().contains("oom_kill") && err.to_string().contains("oom"),
            "{err}"
        );
    }

    #[test]
    fn skips_outside_the_guest() {
        if std::env::var_os(GUEST_ENV).is_none() {
            assert!(!guest_or_skip("skips_outside_the_guest"));
        }
    }
}
