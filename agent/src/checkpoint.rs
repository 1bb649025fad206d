//! The agent's durable state under its work dir: for now the agent id the allocator assigned
//! (`<work_dir>/agent_id`), plus the atomic-write helper every checkpointed file goes through.
//!
//! Invariants: a checkpointed file is only ever replaced whole (write a temporary file next to
//! it, fsync it, rename it over the old one, fsync the directory), so a crash leaves either the
//! old or the new content, never a torn one. A file that exists but cannot be understood is an
//! error that names the file and what to do; it is never silently replaced.
//! - A task's checkpoint files (`task.pb`, `updates.pb`) are framed ([`FRAME_MAGIC`], then the
//!   payload's length), so an empty or truncated file is an error rather than a shorter valid
//!   message, and what they hold must name the task of their run directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file, directly under the work dir, that holds the agent id.
pub const AGENT_ID_FILE: &str = "agent_id";

/// The longest agent id accepted from the file (ids are short opaque strings).
const MAX_AGENT_ID_LEN: usize = 256;

/// Errors reading or writing checkpointed state.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A checkpoint file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The agent id file holds something that is not an agent id.
    #[error(
        "the agent id file {path} is corrupt ({reason}): restore the id the allocator assigned \
         to this agent, or delete the file to register as a new agent"
    )]
    CorruptAgentId {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
    /// A task checkpoint file is torn or corrupt.
    #[error(
        "the task checkpoint {path} is corrupt ({reason}): the task is recovered from what else is known; remove the file once the task is no longer needed"
    )]
    CorruptTask {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Replaces `path` with `contents` atomically: temporary file in the same directory, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), CheckpointError> {
    write_atomic_with(path, contents, true)
}

/// Like [`write_atomic`] without the fsyncs: readers never see a torn file, but the write may
/// not survive a crash of the host. For files that describe processes, which do not survive one
/// either (a supervisor's pid, a task's exit status, its spec).
pub fn write_atomic_volatile(path: &Path, contents: &[u8]) -> Result<(), CheckpointError> {
    write_atomic_with(path, contents, false)
}

fn write_atomic_with(path: &Path, contents: &[u8], durable: bool) -> Result<(), CheckpointError> {
    let write_err = |source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        write_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path has no file name",
        ))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(contents)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        // Best effort: do not leave the temporary file behind.
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Loads the agent id persisted in `<work_dir>/agent_id`; `None` when the agent never
/// registered from this work dir.
pub fn load_agent_id(work_dir: &Path) -> Result<Option<String>, CheckpointError> {
    let path = work_dir.join(AGENT_ID_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Read { path, source }),
    };
    let corrupt = |reason: &str| CheckpointError::CorruptAgentId {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let text = String::from_utf8(bytes).map_err(|_| corrupt("it is not UTF-8 text"))?;
    let id = text.trim();
    if id.is_empty() {
        return Err(corrupt("it is empty"));
    }
    if id.len() > MAX_AGENT_ID_LEN {
        return Err(corrupt("it is longer than any agent id"));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(corrupt("it contains whitespace or control characters"));
    }
    Ok(Some(id.to_owned()))
}

/// Persists the agent id in `<work_dir>/agent_id` (atomically).
pub fn save_agent_id(work_dir: &Path, agent_id: &str) -> Result<(), CheckpointError> {
    write_atomic(&work_dir.join(AGENT_ID_FILE), agent_id.as_bytes())
}

/// The task's launch record in its run directory: framework id and TaskInfo.
pub const TASK_FILE: &str = "task.pb";
/// The task's latest status and its unacknowledged updates.
pub const UPDATES_FILE: &str = "updates.pb";
/// The GPUs assigned to the task (framed JSON: index, UUID, model, memory, minor number).
pub const GPUS_FILE: &str = "gpus.json";

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CheckpointError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The first bytes of a framed task checkpoint file, followed by the payload's length (u64,
/// little-endian) and the payload. It starts with a NUL, which no protobuf message starts with
/// (field number 0 does not exist), so the files of agents from before framing are told apart
/// and still read.
pub const FRAME_MAGIC: &[u8; 8] = b"\0strata1";

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_MAGIC.len() + 8 + payload.len());
    out.extend_from_slice(FRAME_MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a framed file (or the whole of an unframed one from an older agent).
fn unframe(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.is_empty() {
        return Err("it is empty (0 bytes)".to_owned());
    }
    let Some(rest) = bytes.strip_prefix(FRAME_MAGIC.as_slice()) else {
        return Ok(bytes);
    };
    let Some((len, payload)) = rest.split_first_chunk::<8>() else {
        return Err(format!(
            "it is truncated: {} bytes end inside its header",
            bytes.len()
        ));
    };
    let len = u64::from_le_bytes(*len);
    match (payload.len() as u64).cmp(&len) {
        std::cmp::Ordering::Equal => Ok(payload),
        std::cmp::Ordering::Less => Err(format!(
            "it is truncated: {} of its {len} bytes are there",
            payload.len()
        )),
        std::cmp::Ordering::Greater => Err(format!(
            "it holds {} bytes where its header says {len}",
            payload.len()
        )),
    }
}

/// Checkpoints a launched task (atomically) in its run directory.
pub fn save_task(run_dir: &Path, task: &strata_proto::TaskInfo) -> Result<(), CheckpointError> {
    use prost::Message as _;
    write_atomic(&run_dir.join(TASK_FILE), &frame(&task.encode_to_vec()))
}

/// The checkpointed task of a run directory, which must be task `task_id`'s; `None` when there
/// is none (never launched, or forgotten). An empty, truncated or corrupt file, or one naming
/// another task, is an error naming the file.
pub fn load_task(
    run_dir: &Path,
    task_id: &str,
) -> Result<Option<strata_proto::TaskInfo>, CheckpointError> {
    use prost::Message as _;
    let path = run_dir.join(TASK_FILE);
    let Some(bytes) = read_optional(&path)? else {
        return Ok(None);
    };
    let corrupt = |reason: String| CheckpointError::CorruptTask {
        path: path.clone(),
        reason,
    };
    let payload = unframe(&bytes).map_err(corrupt)?;
    let task = strata_proto::TaskInfo::decode(payload).map_err(|e| corrupt(e.to_string()))?;
    if task.task_id != task_id {
        return Err(corrupt(format!(
            "it holds task {:?}, not this run directory's task {task_id:?}",
            strata_proto::ids::shorten(&task.task_id, 64)
        )));
    }
    Ok(Some(task))
}

/// Checkpoints a task's latest status followed by its unacknowledged updates, in order.
pub fn save_updates(
    run_dir: &Path,
    latest: &strata_proto::TaskStatus,
    pending: &[strata_proto::TaskStatus],
) -> Result<(), CheckpointError> {
    use prost::Message as _;
    let mut buf = Vec::new();
    for status in std::iter::once(latest).chain(pending) {
        status
            .encode_length_delimited(&mut buf)
            .map_err(|e| CheckpointError::Write {
                path: run_dir.join(UPDATES_FILE),
                source: io::Error::other(e.to_string()),
            })?;
    }
    write_atomic(&run_dir.join(UPDATES_FILE), &frame(&buf))
}

/// Task `framework_id`/`task_id`'s checkpointed latest status and unacknowledged updates;
/// `None` when there are none. An empty, truncated or corrupt file, or one with an update of
/// another task, is an error naming the file.
pub fn load_updates(
    run_dir: &Path,
    framework_id: &str,
    task_id: &str,
) -> Result<Option<(strata_proto::TaskStatus, Vec<strata_proto::TaskStatus>)>, CheckpointError> {
    use prost::Message as _;
    let path = run_dir.join(UPDATES_FILE);
    let Some(bytes) = read_optional(&path)? else {
        return Ok(None);
    };
    let corrupt = |reason: String| CheckpointError::CorruptTask {
        path: path.clone(),
        reason,
    };
    let mut rest = unframe(&bytes).map_err(corrupt)?;
    let mut all = Vec::new();
    while !rest.is_empty() {
        let status = strata_proto::TaskStatus::decode_length_delimited(&mut rest)
            .map_err(|e| corrupt(e.to_string()))?;
        if status.task_id != task_id || status.framework_id != framework_id {
            return Err(corrupt(format!(
                "it holds an update of task {:?} of framework {:?}, not of this run \
                 directory's task {task_id:?} of framework {framework_id:?}",
                strata_proto::ids::shorten(&status.task_id, 64),
                strata_proto::ids::shorten(&status.framework_id, 64),
            )));
        }
        all.push(status);
    }
    let mut all = all.into_iter();
    let latest = all
        .next()
        .ok_or_else(|| corrupt("it holds no update".to_owned()))?;
    Ok(Some((latest, all.collect())))
}

/// Checkpoints the GPUs assigned to a task (atomically) in its run directory, before it
/// starts; none: the file is removed.
pub fn save_gpus(run_dir: &Path, gpus: &[crate::gpu::GpuDevice]) -> Result<(), CheckpointError> {
    let path = run_dir.join(GPUS_FILE);
    if gpus.is_empty() {
        return match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CheckpointError::Write { path, source }),
        };
    }
    let payload = serde_json::to_vec(gpus).map_err(|e| CheckpointError::Write {
        path: path.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    write_atomic(&path, &frame(&payload))
}

/// The GPUs checkpointed for a task; empty when it has none. An empty, truncated or corrupt
/// file is an error naming the file.
pub fn load_gpus(run_dir: &Path) -> Result<Vec<crate::gpu::GpuDevice>, CheckpointError> {
    let path = run_dir.join(GPUS_FILE);
    let Some(bytes) = read_optional(&path)? else {
        return Ok(Vec::new());
    };
    let corrupt = |reason: String| CheckpointError::CorruptTask {
        path: path.clone(),
        reason,
    };
    let payload = unframe(&bytes).map_err(corrupt)?;
    let gpus: Vec<crate::gpu::GpuDevice> =
        serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
    if gpus.len() > crate::gpu::MAX_GPUS {
        return Err(corrupt(format!("it lists {} GPUs", gpus.len())));
    }
    Ok(gpus)
}

/// Forgets a task's checkpoint (its terminal update was acknowledged); the run directory (unless
/// it is left empty) and the sandbox stay until garbage collection.
pub fn forget_task(run_dir: &Path) {
    for file in [TASK_FILE, UPDATES_FILE, GPUS_FILE] {
        let _ = fs::remove_file(run_dir.join(file));
    }
    // Gone too when nothing else is in it (a launch that failed); otherwise the task's run
    // files stay for the sandbox collector.
    let _ = fs::remove_dir(run_dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_round_trip_and_a_torn_file_is_an_error() {
        use crate::gpu::fake::fake_device;
        let dir = tempfile::tempdir().unwrap();
        assert!(load_gpus(dir.path()).unwrap().is_empty());
        let gpus = vec![fake_device(0), fake_device(3)];
        save_gpus(dir.path(), &gpus).unwrap();
        assert_eq!(load_gpus(dir.path()).unwrap(), gpus);
        let path = dir.path().join(GPUS_FILE);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = load_gpus(dir.path()).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        save_gpus(dir.path(), &[]).unwrap();
        assert!(!path.exists());
        save_gpus(dir.path(), &gpus).unwrap();
        forget_task(dir.path());
        assert!(!path.exists(), "forgotten with the task");
    }

    #[test]
    fn agent_id_round_trips_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_agent_id(dir.path()).unwrap(), None);
        save_agent_id(dir.path(), "agent-1").unwrap();
        assert_eq!(
            load_agent_id(dir.path()).unwrap().as_deref(),
            Some("agent-1")
        );
        save_agent_id(dir.path(), "agent-2").unwrap();
        assert_eq!(
            load_agent_id(dir.path()).unwrap().as_deref(),
            Some("agent-2")
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![AGENT_ID_FILE.to_owned()]);
    }

    #[test]
    fn a_trailing_newline_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(AGENT_ID_FILE), "agent-7\n").unwrap();
        assert_eq!(
            load_agent_id(dir.path()).unwrap().as_deref(),
            Some("agent-7")
        );
    }

    #[test]
    fn a_corrupt_id_file_is_an_error_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AGENT_ID_FILE);
        for content in [&b""[..], b"  \n", b"\xff\xfe", b"two words"] {
            fs::write(&path, content).unwrap();
            let err = load_agent_id(dir.path()).unwrap_err();
            assert!(
                matches!(err, CheckpointError::CorruptAgentId { .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("delete the file"), "{msg}");
        }
    }

    #[test]
    fn writing_into_a_missing_directory_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("file");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    fn status(state: strata_proto::TaskState) -> strata_proto::TaskStatus {
        strata_proto::TaskStatus {
            task_id: "t".to_owned(),
            framework_id: "fw".to_owned(),
            state: state as i32,
            uuid: vec![1; 16],
            ..strata_proto::TaskStatus::default()
        }
    }

    #[test]
    fn task_checkpoints_round_trip_and_corruption_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert!(load_task(run, "t").unwrap().is_none());
        assert!(load_updates(run, "fw", "t").unwrap().is_none());
        let task = strata_proto::TaskInfo {
            task_id: "t".to_owned(),
            ..strata_proto::TaskInfo::default()
        };
        save_task(run, &task).unwrap();
        assert_eq!(load_task(run, "t").unwrap(), Some(task));
        let latest = status(strata_proto::TaskState::Running);
        let pending = vec![status(strata_proto::TaskState::Running)];
        save_updates(run, &latest, &pending).unwrap();
        assert_eq!(
            load_updates(run, "fw", "t").unwrap(),
            Some((latest, pending))
        );

        // A torn file: cut in the middle of a record.
        let bytes = fs::read(run.join(UPDATES_FILE)).unwrap();
        fs::write(run.join(UPDATES_FILE), &bytes[..bytes.len() - 3]).unwrap();
        let err = load_updates(run, "fw", "t").unwrap_err();
        assert!(
            matches!(err, CheckpointError::CorruptTask { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(UPDATES_FILE), "{err}");
        fs::write(run.join(TASK_FILE), b"\xff\xff\xff").unwrap();
        let err = load_task(run, "t").unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");

        forget_task(run);
        assert!(load_task(run, "t").unwrap().is_none());
    }

    #[test]
    fn empty_truncated_or_foreign_task_checkpoints_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let task = strata_proto::TaskInfo {
            task_id: "t".to_owned(),
            name: "a name long enough to cut".to_owned(),
            resources: vec![strata_proto::Resource::scalar("mem", 64.0)],
            ..strata_proto::TaskInfo::default()
        };
        save_task(run, &task).unwrap();
        let whole = fs::read(run.join(TASK_FILE)).unwrap();
        // Every cut, the empty file included, is refused: a cut between two fields would
        // still be a valid, shorter message without the frame.
        for len in 0..whole.len() {
            fs::write(run.join(TASK_FILE), &whole[..len]).unwrap();
            let err = load_task(run, "t").unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&run.join(TASK_FILE).display().to_string()),
                "{len}: {msg}"
            );
            if len == 0 {
                assert!(msg.contains("it is empty"), "{msg}");
            }
        }
        fs::write(run.join(TASK_FILE), &whole).unwrap();
        let err = load_task(run, "other").unwrap_err();
        assert!(
            err.to_string().contains("not this run directory's task"),
            "{err}"
        );

        // The unframed files of an older agent are still read.
        use prost::Message as _;
        fs::write(run.join(TASK_FILE), task.encode_to_vec()).unwrap();
        assert_eq!(load_task(run, "t").unwrap(), Some(task));

        save_updates(run, &status(strata_proto::TaskState::Running), &[]).unwrap();
        let whole = fs::read(run.join(UPDATES_FILE)).unwrap();
        for len in 0..whole.len() {
            fs::write(run.join(UPDATES_FILE), &whole[..len]).unwrap();
            let err = load_updates(run, "fw", "t").unwrap_err();
            assert!(err.to_string().contains(UPDATES_FILE), "{len}: {err}");
        }
        fs::write(run.join(UPDATES_FILE), &whole).unwrap();
        let err = load_updates(run, "other-fw", "t").unwrap_err();
        assert!(err.to_string().contains("not of this run"), "{err}");
    }
}
