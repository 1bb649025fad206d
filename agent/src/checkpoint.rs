//! The agent's durable state under its work dir: for now the agent id the allocator assigned
//! (`<work_dir>/agent_id`), plus the atomic-write helper every checkpointed file goes through.
//!
//! Invariants: a checkpointed file is only ever replaced whole (write a temporary file next to
//! it, fsync it, rename it over the old one, fsync the directory), so a crash leaves either the
//! old or the new content, never a torn one. A file that exists but cannot be understood is an
//! error that names the file and what to do; it is never silently replaced.

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
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
