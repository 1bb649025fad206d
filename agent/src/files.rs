//! Task output: each task's sandbox served read-only over the agent's HTTP server, as Mesos'
//! `/files/browse` and `/files/read` did, plus a follow stream.
//!
//! - `GET /files/browse?framework=FW&task=T[&path=DIR]`: the entries of the sandbox (or of a
//!   directory in it) as JSON, `{"path": DIR, "entries": [{"name", "path", "type", "size",
//!   "mtime"}], "truncated": bool}`, at most [`MAX_ENTRIES`] entries.
//! - `GET /files/read?framework=FW&task=T&path=FILE[&offset=N][&length=N]`: raw bytes of a
//!   regular file from `offset` (default 0), at most `length` (default and most
//!   [`MAX_READ_BYTES`]); headers `X-Strata-File-Size` (the file's size when read) and
//!   `X-Strata-Offset`. An offset at or past the end gives an empty body; `length=0` asks for
//!   the size alone.
//! - `GET /files/follow?framework=FW&task=T&path=FILE[&offset=N]`: a stream of the file's bytes
//!   from `offset` as they are written, polled every [`FOLLOW_POLL`]; it ends once the task is
//!   no longer running and the file is drained. A file renamed away and replaced (the agent's
//!   log rotation: `stdout` becomes `stdout.1`) is drained and the new file followed from its
//!   start; a file truncated below what was read is followed again from its start. At most
//!   [`FollowSlots`] streams at once; beyond, 429 with `Retry-After`.
//!
//! Invariants:
//! - The sandbox directory is named only by [`crate::paths`] from ids that pass the id rule.
//! - A path below it is relative, has no `..` component and no NUL, is at most
//!   [`MAX_PATH_BYTES`] long (400 otherwise, saying which), and is opened with `openat2`
//!   and `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` from the sandbox's descriptor, so a symbolic
//!   link (or a directory swapped for one) that leads outside the sandbox is refused by the
//!   kernel (403), whatever the task does meanwhile. Where `openat2` is missing (before Linux
//!   5.6, or filtered), the path is canonicalized, checked to lie below the canonical sandbox
//!   and its last component opened with `O_NOFOLLOW`.
//! - Only regular files are read (opened non-blocking, so a FIFO planted by the task cannot
//!   hang the agent) and directories listed.

use std::collections::HashMap;
use std::io::{self, SeekFrom};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::watch;

use crate::usage::TaskRef;

/// The most bytes one `/files/read` returns.
pub const MAX_READ_BYTES: u64 = 1 << 20;
/// The most entries one `/files/browse` lists.
pub const MAX_ENTRIES: usize = 10_000;
/// The longest `path` served, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// How often a follow stream looks for new bytes, a replaced file and the task's end.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// The default of `--max-concurrent-follows`.
pub const DEFAULT_MAX_CONCURRENT_FOLLOWS: usize = 64;
/// What a follow refused for want of a slot tells the client to wait, in seconds.
const FOLLOW_RETRY_AFTER_SECONDS: u64 = 5;
/// The most bytes a follow stream reads and sends at once.
const FOLLOW_CHUNK: usize = 64 * 1024;

/// Why a sandbox path cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A query parameter is missing or malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A framework or task id that names no directory.
    #[error("{0}")]
    InvalidId(#[from] strata_proto::ids::IdError),
    /// The path is not a plain relative path.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path asked for.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path leads outside the sandbox.
    #[error(
        "path {path:?} of task {task_id} resolves outside the task's sandbox (through a symbolic link): refused"
    )]
    Outside {
        /// The task.
        task_id: String,
        /// The path asked for.
        path: String,
    },
    /// No such sandbox.
    #[error(
        "no sandbox for task {task_id} of framework {framework_id} on this agent: check the ids with `strata ps --all`"
    )]
    NoSandbox {
        /// The task.
        task_id: String,
        /// Its framework.
        framework_id: String,
    },
    /// No such file.
    #[error("no file {path:?} in the sandbox of task {task_id}")]
    NotFound {
        /// The task.
        task_id: String,
        /// The path asked for.
        path: String,
    },
    /// A file of a kind that is not served.
    #[error("{path:?} in the sandbox of task {task_id} is {what}, not {wanted}")]
    WrongType {
        /// The task.
        task_id: String,
        /// The path asked for.
        path: String,
        /// What it is.
        what: &'static str,
        /// What was needed.
        wanted: &'static str,
    },
    /// Another error of the file system.
    #[error("cannot open {path:?} in the sandbox of task {task_id}: {source}")]
    Io {
        /// The task.
        task_id: String,
        /// The path asked for.
        path: String,
        /// The error.
        source: io::Error,
    },
}

impl FilesError {
    /// The HTTP status this error is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::InvalidId(_) | Self::InvalidPath { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::Outside { .. } => StatusCode::FORBIDDEN,
            Self::NoSandbox { .. } | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::WrongType { .. } => StatusCode::BAD_REQUEST,
            Self::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                StatusCode::FORBIDDEN
            }
            Self::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for FilesError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// The follow streams that may run at once on this agent.
pub type FollowSlots = crate::http::Slots;

/// What the file handlers read.
#[derive(Debug, Clone)]
pub struct FilesState {
    /// The agent's work dir (the sandboxes are below it).
    pub work_dir: PathBuf,
    /// The tasks running now (a follow stream ends once its task is not among them).
    pub running: watch::Receiver<Arc<Vec<TaskRef>>>,
    /// The follow streams that may run at once.
    pub follows: FollowSlots,
}

impl FilesState {
    fn is_running(&self, framework_id: &str, task_id: &str) -> bool {
        self.running
            .borrow()
            .iter()
            .any(|t| t.framework_id == framework_id && t.task_id == task_id)
    }
}

/// One task's sandbox, opened.
#[derive(Debug)]
pub struct Sandbox {
    task_id: String,
    root: PathBuf,
    fd: OwnedFd,
}

impl Sandbox {
    /// Opens the sandbox of `task_id` of `framework_id` below `work_dir` (ids checked).
    pub fn open(work_dir: &Path, framework_id: &str, task_id: &str) -> Result<Self, FilesError> {
        let root = crate::paths::sandbox_dir(work_dir, framework_id, task_id)?;
        let fd = nix::fcntl::open(
            &root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|_| FilesError::NoSandbox {
            task_id: task_id.to_owned(),
            framework_id: framework_id.to_owned(),
        })?;
        Ok(Self {
            task_id: task_id.to_owned(),
            root,
            fd,
        })
    }

    /// Opens `path` (relative to the sandbox, checked by [`check_path`]) read-only, never
    /// outside the sandbox. `directory`: open it as a directory.
    fn open_beneath(&self, path: &str, directory: bool) -> Result<OwnedFd, FilesError> {
        let rel = check_path(path)?;
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        let mut flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        if directory {
            flags |= OFlag::O_DIRECTORY;
        }
        let how = nix::fcntl::OpenHow::new().flags(flags).resolve(
            nix::fcntl::ResolveFlag::RESOLVE_BENEATH
                | nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        match nix::fcntl::openat2(self.fd.as_fd(), rel, how) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOSYS | Errno::EPERM) => self.open_checked(rel, path, flags),
            Err(e) => Err(self.open_error(path, e)),
        }
    }

    /// Without `openat2`: the canonical path must lie below the canonical sandbox.
    fn open_checked(&self, rel: &Path, path: &str, flags: OFlag) -> Result<OwnedFd, FilesError> {
        let root = self.root.canonicalize().map_err(|e| self.io(path, e))?;
        let full = self
            .root
            .join(rel)
            .canonicalize()
            .map_err(|e| self.io(path, e))?;
        if !full.starts_with(&root) {
            return Err(FilesError::Outside {
                task_id: self.task_id.clone(),
                path: path.to_owned(),
            });
        }
        nix::fcntl::open(&full, flags | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(|e| self.open_error(path, e))
    }

    fn open_error(&self, path: &str, e: Errno) -> FilesError {
        match e {
            Errno::EXDEV | Errno::ELOOP => FilesError::Outside {
                task_id: self.task_id.clone(),
                path: path.to_owned(),
            },
            Errno::ENOTDIR => FilesError::WrongType {
                task_id: self.task_id.clone(),
                path: path.to_owned(),
                what: "not a directory (or below a file)",
                wanted: "a directory",
            },
            e => self.io(path, io::Error::from(e)),
        }
    }

    fn io(&self, path: &str, source: io::Error) -> FilesError {
        if source.kind() == io::ErrorKind::NotFound {
            return FilesError::NotFound {
                task_id: self.task_id.clone(),
                path: path.to_owned(),
            };
        }
        FilesError::Io {
            task_id: self.task_id.clone(),
            path: path.to_owned(),
            source,
        }
    }

    /// Opens the regular file `path` for reading.
    pub fn open_file(&self, path: &str) -> Result<std::fs::File, FilesError> {
        let file = std::fs::File::from(self.open_beneath(path, false)?);
        let meta = file.metadata().map_err(|e| self.io(path, e))?;
        if !meta.file_type().is_file() {
            return Err(FilesError::WrongType {
                task_id: self.task_id.clone(),
                path: path.to_owned(),
                what: kind_of(meta.file_type()),
                wanted: "a regular file",
            });
        }
        Ok(file)
    }

    /// The entries of the directory `path` (sorted by name), at most [`MAX_ENTRIES`]; whether
    /// there were more.
    pub fn list(&self, path: &str) -> Result<(Vec<Entry>, bool), FilesError> {
        let fd = self.open_beneath(path, true)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| self.io(path, e.into()))?;
        let mut entries = Vec::new();
        let mut truncated = false;
        let dir_fd = dir
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| self.io(path, e))?;
        for entry in dir.iter() {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if entries.len() == MAX_ENTRIES {
                truncated = true;
                break;
            }
            let stat = nix::sys::stat::fstatat(
                dir_fd.as_fd(),
                entry.file_name(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            );
            let (kind, size, mtime) = match stat {
                Ok(st) => (
                    match st.st_mode & nix::libc::S_IFMT {
                        nix::libc::S_IFREG => "file",
                        nix::libc::S_IFDIR => "dir",
                        nix::libc::S_IFLNK => "symlink",
                        _ => "other",
                    },
                    u64::try_from(st.st_size).unwrap_or(0),
                    st.st_mtime,
                ),
                Err(_) => ("other", 0, 0),
            };
            let rel = check_path(path).unwrap_or_default().join(&name);
            entries.push(Entry {
                path: rel.to_string_lossy().into_owned(),
                name,
                kind,
                size,
                mtime,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((entries, truncated))
    }
}

/// One entry of a listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Its path relative to the sandbox.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: &'static str,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, seconds since the epoch.
    pub mtime: i64,
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// `path` as a relative path with normal components only (`.` components dropped; empty: the
/// sandbox itself), or why not.
pub fn check_path(path: &str) -> Result<PathBuf, FilesError> {
    let invalid = |reason| FilesError::InvalidPath {
        path: path.chars().take(100).collect(),
        reason,
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid("longer than 1024 bytes"));
    }
    if path.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(invalid(
            "it is absolute: give a path relative to the task's sandbox",
        ));
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(invalid(
                    "`..` is not allowed: give a path below the task's sandbox",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(
                    "it is absolute: give a path relative to the task's sandbox",
                ));
            }
        }
    }
    Ok(out)
}

/// The query's parameters, percent-decoded; the first of a repeated name wins.
fn params(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k.is_empty() {
            continue;
        }
        out.entry(crate::http::percent_decode(k))
            .or_insert_with(|| crate::http::percent_decode(v));
    }
    out
}

/// The task's sandbox named by the query's `framework` and `task`, opened.
fn sandbox_of(
    state: &FilesState,
    params: &HashMap<String, String>,
) -> Result<(Sandbox, String, String), FilesError> {
    let get = |name: &str| {
        params.get(name).cloned().ok_or_else(|| {
            FilesError::BadRequest(format!(
                "missing the query parameter {name}: give framework=ID&task=ID (`strata ps` lists both)"
            ))
        })
    };
    let framework_id = get("framework")?;
    let task_id = get("task")?;
    let sandbox = Sandbox::open(&state.work_dir, &framework_id, &task_id)?;
    Ok((sandbox, framework_id, task_id))
}

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, FilesError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                FilesError::BadRequest(format!("{name}={v:?} is not a number of bytes (0 or more)"))
            })
        })
        .transpose()
}

fn file_path(params: &HashMap<String, String>) -> Result<String, FilesError> {
    params.get("path").cloned().ok_or_else(|| {
        FilesError::BadRequest(
            "missing the query parameter path: the file to read, e.g. path=stdout".to_owned(),
        )
    })
}

/// `GET /files/browse`.
pub async fn browse(State(state): State<FilesState>, RawQuery(query): RawQuery) -> Response {
    let params = params(query.as_deref());
    let listed = tokio::task::spawn_blocking(move || {
        let (sandbox, _, _) = sandbox_of(&state, &params)?;
        let path = params.get("path").cloned().unwrap_or_default();
        let (entries, truncated) = sandbox.list(&path)?;
        Ok::<_, FilesError>((path, entries, truncated))
    })
    .await;
    match listed {
        Ok(Ok((path, entries, truncated))) => {
            let entries: Vec<_> = entries
                .iter()
                .map(|e| {
                    json!({
                        "name": e.name, "path": e.path, "type": e.kind,
                        "size": e.size, "mtime": e.mtime,
                    })
                })
                .collect();
            let body = json!({ "path": path, "entries": entries, "truncated": truncated });
            (
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Ok(Err(e)) => e.into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the listing failed: {e}\n"),
        )
            .into_response(),
    }
}

/// `GET /files/read`.
pub async fn read(State(state): State<FilesState>, RawQuery(query): RawQuery) -> Response {
    let params = params(query.as_deref());
    let answer = tokio::task::spawn_blocking(move || read_blocking(&state, &params)).await;
    match answer {
        Ok(Ok((offset, size, data))) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    header::HeaderName::from_static("x-strata-file-size"),
                    size.to_string(),
                ),
                (
                    header::HeaderName::from_static("x-strata-offset"),
                    offset.to_string(),
                ),
            ],
            data,
        )
            .into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the read failed: {e}\n"),
        )
            .into_response(),
    }
}

/// The read: (offset, the file's size, the bytes).
fn read_blocking(
    state: &FilesState,
    params: &HashMap<String, String>,
) -> Result<(u64, u64, Vec<u8>), FilesError> {
    use std::io::{Read as _, Seek as _};
    let offset = number(params, "offset")?.unwrap_or(0);
    let length = number(params, "length")?.unwrap_or(MAX_READ_BYTES);
    if length > MAX_READ_BYTES {
        return Err(FilesError::BadRequest(format!(
            "length={length} is more than one read returns ({MAX_READ_BYTES} bytes): read in \
             pieces, or follow the file with /files/follow"
        )));
    }
    let path = file_path(params)?;
    let (sandbox, _, _) = sandbox_of(state, params)?;
    let mut file = sandbox.open_file(&path)?;
    let size = file.metadata().map_err(|e| sandbox.io(&path, e))?.len();
    let mut data = Vec::new();
    if offset < size && length > 0 {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| sandbox.io(&path, e))?;
        file.take(length.min(size - offset))
            .read_to_end(&mut data)
            .map_err(|e| sandbox.io(&path, e))?;
    }
    Ok((offset, size, data))
}

/// `GET /files/follow`: see the module docs.
pub async fn follow(State(state): State<FilesState>, RawQuery(query): RawQuery) -> Response {
    let Some(slot) = state.follows.try_take() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (header::RETRY_AFTER, FOLLOW_RETRY_AFTER_SECONDS.to_string()),
            ],
            format!(
                "{} files are being followed on this agent, the most it serves at once \
                 (--max-concurrent-follows): retry in a few seconds, or read with /files/read\n",
                state.follows.max()
            ),
        )
            .into_response();
    };
    let params = params(query.as_deref());
    let opened = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            let offset = number(&params, "offset")?.unwrap_or(0);
            let path = file_path(&params)?;
            let (sandbox, framework_id, task_id) = sandbox_of(&state, &params)?;
            let file = sandbox.open_file(&path)?;
            Ok::<_, FilesError>((sandbox, framework_id, task_id, path, file, offset))
        })
        .await
    };
    let (sandbox, framework_id, task_id, path, file, offset) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot follow: {e}\n"),
            )
                .into_response();
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(4);
    tokio::spawn(async move {
        let follower = Follower {
            sandbox,
            path,
            file: tokio::fs::File::from_std(file),
            offset,
        };
        let ended = || !state.is_running(&framework_id, &task_id);
        if let Err(e) = follower.run(&tx, ended, FOLLOW_POLL).await {
            tracing::warn!(task_id = %task_id, framework_id = %framework_id, error = %e,
                "a follow stream failed");
            let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
        }
        drop(slot);
    });
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// A file followed across rotation.
#[derive(Debug)]
pub struct Follower {
    sandbox: Sandbox,
    path: String,
    file: tokio::fs::File,
    offset: u64,
}

impl Follower {
    /// Follows `path` of `sandbox` from `offset`.
    pub fn open(sandbox: Sandbox, path: &str, offset: u64) -> Result<Self, FilesError> {
        let file = sandbox.open_file(path)?;
        Ok(Self {
            sandbox,
            path: path.to_owned(),
            file: tokio::fs::File::from_std(file),
            offset,
        })
    }

    /// Sends the file's bytes to `tx` as they come, polling every `poll`, until `ended()` was
    /// true before a read that drained the file (or the receiver went away).
    pub async fn run(
        mut self,
        tx: &tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
        ended: impl Fn() -> bool,
        poll: Duration,
    ) -> Result<(), FilesError> {
        let mut buf = vec![0u8; FOLLOW_CHUNK];
        loop {
            // Sampled before draining: what the task wrote before it ended is read below.
            let ended = ended();
            if !self.drain(tx, &mut buf).await? {
                return Ok(());
            }
            if let Some(replaced) = self.replaced().await {
                // Whatever reached the old file before it was replaced, then the new one.
                if !self.drain(tx, &mut buf).await? {
                    return Ok(());
                }
                self.file = replaced;
                self.offset = 0;
                continue;
            }
            if ended {
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = tx.closed() => return Ok(()),
            }
        }
    }

    /// Reads from the offset to the end; false when the receiver went away.
    async fn drain(
        &mut self,
        tx: &tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
        buf: &mut [u8],
    ) -> Result<bool, FilesError> {
        let io = |e| self.sandbox.io(&self.path, e);
        let size = self.file.metadata().await.map_err(io)?.len();
        if size < self.offset {
            // Truncated in place: what is there now is new.
            self.offset = 0;
        }
        self.file
            .seek(SeekFrom::Start(self.offset))
            .await
            .map_err(|e| self.sandbox.io(&self.path, e))?;
        loop {
            let n = self
                .file
                .read(buf)
                .await
                .map_err(|e| self.sandbox.io(&self.path, e))?;
            if n == 0 {
                return Ok(true);
            }
            self.offset += n as u64;
            if tx
                .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
    }

    /// The file now at the path, when it is another than the one followed.
    async fn replaced(&self) -> Option<tokio::fs::File> {
        let current = self.file.metadata().await.ok()?;
        let now = self.sandbox.open_file(&self.path).ok()?;
        let meta = now.metadata().ok()?;
        (meta.dev() != current.dev() || meta.ino() != current.ino())
            .then(|| tokio::fs::File::from_std(now))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::http::{HttpState, ProfileSlots, bind, router, serve, serve_with};

    const FW: &str = "fw";
    const TASK: &str = "t1";

    fn task_ref(task: &str) -> TaskRef {
        TaskRef {
            framework_id: FW.to_owned(),
            task_id: task.to_owned(),
            role: "*".to_owned(),
            request_cores: 0.1,
            gpus: Vec::new(),
        }
    }

    /// A work dir with one sandbox: `stdout`, `sub/deep.txt`, links out and in, a FIFO.
    fn work_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = crate::paths::sandbox_dir(dir.path(), FW, TASK).unwrap();
        std::fs::create_dir_all(sandbox.join("sub")).unwrap();
        std::fs::write(sandbox.join("stdout"), "hello\nworld\n").unwrap();
        std::fs::write(sandbox.join("sub/deep.txt"), "deep").unwrap();
        std::fs::write(dir.path().join("secret"), "agent's own").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", sandbox.join("abs-out")).unwrap();
        std::os::unix::fs::symlink("../../../secret", sandbox.join("rel-out")).unwrap();
        std::os::unix::fs::symlink("../..", sandbox.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("sub/deep.txt", sandbox.join("in")).unwrap();
        nix::unistd::mkfifo(&sandbox.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        dir
    }

    fn state(
        work: &Path,
        running: watch::Receiver<Arc<Vec<TaskRef>>>,
        follows: usize,
    ) -> HttpState {
        HttpState {
            gpus: Default::default(),
            usage: crate::usage::LatestUsage::default(),
            proc_root: PathBuf::from("/proc"),
            profiles: ProfileSlots::new(crate::http::DEFAULT_MAX_CONCURRENT_PROFILES),
            files: FilesState {
                work_dir: work.to_owned(),
                running,
                follows: FollowSlots::new(follows),
            },
        }
    }

    async fn server(state: HttpState) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let (listener, bound) = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        (bound, tokio::spawn(serve(listener, router(state))))
    }

    async fn get(addr: SocketAddr, path: &str) -> strata_common::http::Response {
        strata_common::http::get(&format!("http://{addr}{path}"), Duration::from_secs(10))
            .await
            .unwrap()
    }

    fn q(path: &str) -> String {
        format!("framework={FW}&task={TASK}&path={path}")
    }

    #[test]
    fn paths_are_relative_without_parent_components() {
        assert_eq!(check_path("").unwrap(), PathBuf::new());
        assert_eq!(check_path("./a//b/").unwrap(), PathBuf::from("a/b"));
        for (bad, says) in [
            ("..", "`..` is not allowed"),
            ("a/../../b", "`..` is not allowed"),
            ("/etc/passwd", "absolute"),
            ("a\0b", "NUL"),
        ] {
            let e = check_path(bad).unwrap_err();
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
        let long = "a/".repeat(MAX_PATH_BYTES);
        assert!(check_path(&long).unwrap_err().to_string().contains("1024"));
    }

    #[tokio::test]
    async fn browse_lists_and_read_reads_by_offset_and_length() {
        let dir = work_dir();
        let (_tx, rx) = watch::channel(Arc::new(Vec::new()));
        let (addr, server) = server(state(dir.path(), rx, 1)).await;

        let page = get(addr, &format!("/files/browse?{}", q(""))).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let v: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
        let names: Vec<&str> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["abs-out", "fifo", "in", "rel-out", "stdout", "sub"],
            "{v}"
        );
        let stdout = v["entries"].as_array().unwrap()[4].clone();
        assert_eq!(stdout["type"], "file");
        assert_eq!(stdout["size"], 12);
        assert_eq!(v["entries"][0]["type"], "symlink");
        let page = get(addr, &format!("/files/browse?{}", q("sub"))).await;
        let v: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
        assert_eq!(v["entries"][0]["path"], "sub/deep.txt", "{v}");

        let page = get(addr, &format!("/files/read?{}", q("stdout"))).await;
        assert_eq!(page.status, 200);
        assert_eq!(page.text(), "hello\nworld\n");
        assert_eq!(page.headers["x-strata-file-size"], "12");
        let page = get(
            addr,
            &format!("/files/read?{}&offset=6&length=3", q("stdout")),
        )
        .await;
        assert_eq!(page.text(), "wor");
        assert_eq!(page.headers["x-strata-offset"], "6");
        // Past the end: nothing; length 0: the size alone.
        let page = get(addr, &format!("/files/read?{}&offset=99", q("stdout"))).await;
        assert_eq!((page.status, page.body.len()), (200, 0));
        let page = get(addr, &format!("/files/read?{}&length=0", q("stdout"))).await;
        assert_eq!(page.body.len(), 0);
        assert_eq!(page.headers["x-strata-file-size"], "12");
        // A link that stays inside is followed.
        let page = get(addr, &format!("/files/read?{}", q("in"))).await;
        assert_eq!(page.text(), "deep");
        let page = get(addr, &format!("/files/read?{}", q("nope"))).await;
        assert_eq!(page.status, 404);
        assert!(page.text().contains("no file \"nope\""), "{}", page.text());
        server.abort();
    }

    #[tokio::test]
    async fn traversal_links_out_bad_ids_and_oversized_reads_are_refused() {
        let dir = work_dir();
        let (_tx, rx) = watch::channel(Arc::new(Vec::new()));
        let (addr, server) = server(state(dir.path(), rx, 1)).await;
        let cases = [
            (q("../../../secret"), 400, "`..` is not allowed"),
            (q("%2E%2E/%2E%2E/%2E%2E/secret"), 400, "`..` is not allowed"),
            (q("/etc/hostname"), 400, "absolute"),
            (q("%2Fetc%2Fhostname"), 400, "absolute"),
            (q("abs-out"), 403, "resolves outside the task's sandbox"),
            (q("rel-out"), 403, "resolves outside the task's sandbox"),
            (
                q("sub/up/t1/stdout"),
                403,
                "resolves outside the task's sandbox",
            ),
            (q("sub"), 400, "is a directory, not a regular file"),
            (q("fifo"), 400, "is a FIFO, not a regular file"),
            (
                format!("framework={FW}&task=..&path=stdout"),
                400,
                "invalid task id",
            ),
            (
                format!("framework=..%2F..&task={TASK}&path=stdout"),
                400,
                "invalid framework id",
            ),
            (
                format!("task={TASK}&path=stdout"),
                400,
                "missing the query parameter framework",
            ),
            (
                format!("{}&length={}", q("stdout"), MAX_READ_BYTES + 1),
                400,
                "more than one read returns",
            ),
            (
                format!("{}&offset=-1", q("stdout")),
                400,
                "not a number of bytes",
            ),
            (
                format!("framework={FW}&task=other&path=stdout"),
                404,
                "no sandbox for task other",
            ),
        ];
        for (query, status, says) in cases {
            let page = get(addr, &format!("/files/read?{query}")).await;
            assert_eq!(page.status, status, "{query}: {}", page.text());
            assert!(page.text().contains(says), "{query}: {}", page.text());
        }
        for (path, status) in [("sub/up", 403), ("..", 400), ("stdout", 400)] {
            let page = get(addr, &format!("/files/browse?{}", q(path))).await;
            assert_eq!(page.status, status, "{path}: {}", page.text());
        }
        let page = get(addr, &format!("/files/follow?{}", q("rel-out"))).await;
        assert_eq!(page.status, 403, "{}", page.text());
        // A request target longer than the server takes.
        let long = format!("/files/read?{}", q(&"a".repeat(crate::http::MAX_URI_BYTES)));
        assert_eq!(get(addr, &long).await.status, 414);
        server.abort();
    }

    #[tokio::test]
    async fn a_follow_ends_when_the_task_has_ended_and_beyond_the_slots_gets_429() {
        let dir = work_dir();
        let (tx, rx) = watch::channel(Arc::new(vec![task_ref(TASK)]));
        let (addr, server) = server(state(dir.path(), rx.clone(), 1)).await;
        let stdout = crate::paths::sandbox_dir(dir.path(), FW, TASK)
            .unwrap()
            .join("stdout");
        let following = tokio::spawn(async move {
            get(addr, &format!("/files/follow?{}&offset=6", q("stdout"))).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The one slot is taken.
        let busy = get(addr, &format!("/files/follow?{}", q("stdout"))).await;
        assert_eq!(busy.status, 429, "{}", busy.text());
        assert_eq!(
            busy.headers["retry-after"],
            FOLLOW_RETRY_AFTER_SECONDS.to_string()
        );
        assert!(busy.text().contains("--max-concurrent-follows"));
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&stdout)
                .unwrap();
            f.write_all(b"more\n").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!following.is_finished(), "the task still runs");
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&stdout)
                .unwrap();
            f.write_all(b"last\n").unwrap();
        }
        // The task ends: the stream drains the file and ends.
        tx.send_replace(Arc::new(Vec::new()));
        let page = tokio::time::timeout(Duration::from_secs(5), following)
            .await
            .expect("the follow ended")
            .unwrap();
        assert_eq!(page.status, 200);
        assert_eq!(page.text(), "world\nmore\nlast\n");
        // The slot is free again.
        let page = get(addr, &format!("/files/follow?{}", q("stdout"))).await;
        assert_eq!(page.text(), "hello\nworld\nmore\nlast\n");
        drop(rx);
        server.abort();
    }

    /// Collects what a follower sends until it ends.
    async fn collect(
        follower: Follower,
        ended: Arc<std::sync::atomic::AtomicBool>,
    ) -> (Vec<u8>, Result<(), FilesError>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let run = tokio::spawn(async move {
            follower
                .run(
                    &tx,
                    || ended.load(std::sync::atomic::Ordering::SeqCst),
                    Duration::from_millis(10),
                )
                .await
        });
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        (out, run.await.unwrap())
    }

    #[tokio::test]
    async fn a_follow_continues_across_log_rotation() {
        use std::io::Write as _;
        let dir = work_dir();
        let sandbox_dir = crate::paths::sandbox_dir(dir.path(), FW, TASK).unwrap();
        let stdout = sandbox_dir.join("stdout");
        std::fs::write(&stdout, "").unwrap();
        let sandbox = Sandbox::open(dir.path(), FW, TASK).unwrap();
        let follower = Follower::open(sandbox, "stdout", 0).unwrap();
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let collected = tokio::spawn(collect(follower, ended.clone()));
        let mut expected = Vec::new();
        // As the supervisor's log copier does: append, rename to stdout.1, open a new one.
        for round in 0..4 {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&stdout)
                .unwrap();
            for line in 0..3 {
                let text = format!("round {round} line {line}\n");
                f.write_all(text.as_bytes()).unwrap();
                expected.extend_from_slice(text.as_bytes());
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            // The last line reaches the old file just before the rename.
            let text = format!("round {round} tail\n");
            f.write_all(text.as_bytes()).unwrap();
            expected.extend_from_slice(text.as_bytes());
            std::fs::rename(&stdout, sandbox_dir.join("stdout.1")).unwrap();
            std::fs::write(&stdout, "").unwrap();
        }
        std::fs::write(&stdout, "after the end\n").unwrap();
        expected.extend_from_slice(b"after the end\n");
        ended.store(true, std::sync::atomic::Ordering::SeqCst);
        let (out, result) = tokio::time::timeout(Duration::from_secs(5), collected)
            .await
            .expect("the follower ended")
            .unwrap();
        result.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected)
        );
    }

    #[tokio::test]
    async fn files_need_view_sandboxes_on_a_protected_agent() {
        let dir = work_dir();
        let creds = dir.path().join("credentials");
        let ops = strata_auth::credentials::create_token(&creds, "ops").unwrap();
        let viewer = strata_auth::credentials::create_token(&creds, "viewer").unwrap();
        let acls = dir.path().join("acls.toml");
        std::fs::write(
            &acls,
            "[[allow]]\nprincipals = [\"ops\"]\nactions = [\"view_sandboxes\"]\n\n\
             [[allow]]\nprincipals = [\"viewer\"]\nactions = [\"view_tasks\"]\n",
        )
        .unwrap();
        let config = crate::http_auth::HttpSecurityConfig {
            credentials: Some(creds),
            acls: Some(acls),
            ..Default::default()
        };
        let (listener, bound) = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let auth = Arc::new(crate::http_auth::HttpAuth::load(&config, bound).unwrap());
        let (_tx, rx) = watch::channel(Arc::new(Vec::new()));
        let server = tokio::spawn(serve_with(listener, router(state(dir.path(), rx, 1)), auth));
        let get_as = |token: Option<&str>, path: &str| {
            let options = strata_common::http::GetOptions {
                tls: None,
                authorization: token.map(|t| format!("Bearer {t}")),
            };
            let url = format!("http://{bound}{path}");
            async move {
                strata_common::http::get_with(&url, Duration::from_secs(10), &options)
                    .await
                    .unwrap()
            }
        };
        for path in ["/files/browse", "/files/read", "/files/follow"] {
            let path = format!("{path}?{}", q("stdout"));
            let anonymous = get_as(None, &path).await;
            assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.text());
            let wrong = get_as(Some("not-a-token"), &path).await;
            assert_eq!(wrong.status, 401, "{path}: {}", wrong.text());
            let viewer = get_as(Some(&viewer), &path).await;
            assert_eq!(viewer.status, 403, "{path}: {}", viewer.text());
            assert!(
                viewer.text().contains("view_sandboxes"),
                "{}",
                viewer.text()
            );
        }
        let read = get_as(Some(&ops), &format!("/files/read?{}", q("stdout"))).await;
        assert_eq!((read.status, read.text().as_str()), (200, "hello\nworld\n"));
        server.abort();
    }
}
