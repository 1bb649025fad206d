//! Every path the agent names after a framework id or a task id: a task's run directory
//! (`<work_dir>/runs/<framework_id>/<task_id>`, its checkpoint and its supervisor's files), its
//! sandbox (`<work_dir>/sandboxes/<framework_id>/<task_id>`) and its cgroup below the agent's
//! root (`containers/<framework_id>/<task_id>`).
//!
//! Invariants:
//! - These paths are built here and nowhere else, and only from ids that passed
//!   [`strata_proto::ids::check_id`] ([`TaskIds::new`]): each id is exactly one normal path
//!   component (never empty, `.`, `..`, absolute, with a separator, NUL or control character),
//!   so no id from the wire can name a path outside the work dir or the agent's cgroup root.
//! - Directories read back from the work dir ([`listed`]) go through the same check: a name
//!   the agent could not have made is skipped, never turned into a task.

use std::path::{Component, Path, PathBuf};

use strata_proto::ids::{IdError, check_id};

/// Below the work dir: one run directory per task (`runs/<framework_id>/<task_id>`).
pub const RUNS_DIR: &str = "runs";
/// Below the work dir: one sandbox per task (`sandboxes/<framework_id>/<task_id>`).
pub const SANDBOXES_DIR: &str = "sandboxes";
/// Below the agent's cgroup root: one cgroup per task (`containers/<framework_id>/<task_id>`).
/// Not `tasks`: every v1 cgroup directory already has a file of that name.
pub const TASK_CGROUPS_DIR: &str = "containers";

/// A framework id and a task id that passed the id rule: each names exactly one directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskIds<'a> {
    framework_id: &'a str,
    task_id: &'a str,
}

impl<'a> TaskIds<'a> {
    /// Checks both ids; the error names the first that is refused.
    pub fn new(framework_id: &'a str, task_id: &'a str) -> Result<Self, IdError> {
        check_id("framework id", framework_id)?;
        check_id("task id", task_id)?;
        Ok(Self {
            framework_id,
            task_id,
        })
    }

    /// `<work_dir>/runs/<framework_id>/<task_id>`.
    #[must_use]
    pub fn run_dir(self, work_dir: &Path) -> PathBuf {
        self.below(&work_dir.join(RUNS_DIR))
    }

    /// `<work_dir>/sandboxes/<framework_id>/<task_id>`.
    #[must_use]
    pub fn sandbox_dir(self, work_dir: &Path) -> PathBuf {
        self.below(&work_dir.join(SANDBOXES_DIR))
    }

    /// `containers/<framework_id>/<task_id>`, relative to the agent's cgroup root.
    #[must_use]
    pub fn cgroup(self) -> PathBuf {
        self.below(Path::new(TASK_CGROUPS_DIR))
    }

    /// The one place an id becomes a path component.
    fn below(self, base: &Path) -> PathBuf {
        let path = base.join(self.framework_id).join(self.task_id);
        debug_assert!(
            path.strip_prefix(base).is_ok_and(|rel| rel
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
                && rel.components().count() == 2),
            "{path:?} is not two levels below {base:?}"
        );
        path
    }
}

/// `<work_dir>/runs/<framework_id>/<task_id>`, after checking both ids.
pub fn run_dir(work_dir: &Path, framework_id: &str, task_id: &str) -> Result<PathBuf, IdError> {
    Ok(TaskIds::new(framework_id, task_id)?.run_dir(work_dir))
}

/// `<work_dir>/sandboxes/<framework_id>/<task_id>`, after checking both ids.
pub fn sandbox_dir(work_dir: &Path, framework_id: &str, task_id: &str) -> Result<PathBuf, IdError> {
    Ok(TaskIds::new(framework_id, task_id)?.sandbox_dir(work_dir))
}

/// `containers/<framework_id>/<task_id>` below the agent's cgroup root, after checking both
/// ids.
pub fn task_cgroup(framework_id: &str, task_id: &str) -> Result<PathBuf, IdError> {
    Ok(TaskIds::new(framework_id, task_id)?.cgroup())
}

/// The (framework id, task id) pairs that have a directory in `<work_dir>/<tree>/` (`tree` is
/// [`RUNS_DIR`] or [`SANDBOXES_DIR`]), sorted. A directory whose name is not a valid id (not
/// UTF-8, or refused by the id rule) is skipped with a warning: the agent never makes one.
#[must_use]
pub fn listed(work_dir: &Path, tree: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for fw in dirs_in(&work_dir.join(tree)) {
        for task in dirs_in(&work_dir.join(tree).join(&fw)) {
            out.push((fw.clone(), task));
        }
    }
    out.sort();
    out
}

/// The names of the directories in `dir` that are valid ids.
fn dirs_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let refused = match e.file_name().into_string() {
                Ok(name) => match check_id("directory name", &name) {
                    Ok(()) => return Some(name),
                    Err(err) => err.to_string(),
                },
                Err(_) => "its name is not UTF-8".to_owned(),
            };
            tracing::warn!(path = %e.path().display(), error = %refused,
                "skipping a directory that no task of this agent can have");
            None
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: [&str; 8] = [
        "../../../x",
        "/abs/path",
        "..",
        ".",
        "",
        "a\0b",
        "a/b",
        "a\nb",
    ];

    #[test]
    fn paths_of_valid_ids_are_two_levels_below_their_base() {
        let work = Path::new("/w");
        assert_eq!(
            run_dir(work, "fw", "t-1").unwrap(),
            Path::new("/w/runs/fw/t-1")
        );
        assert_eq!(
            sandbox_dir(work, "fw", "t.1").unwrap(),
            Path::new("/w/sandboxes/fw/t.1")
        );
        assert_eq!(
            task_cgroup("fw", "t").unwrap(),
            Path::new("containers/fw/t")
        );
    }

    #[test]
    fn hostile_ids_name_no_path() {
        let work = Path::new("/w");
        for bad in HOSTILE {
            for (fw, task) in [("fw", bad), (bad, "t")] {
                let err = run_dir(work, fw, task).unwrap_err();
                assert!(err.to_string().starts_with("invalid "), "{err}");
                assert!(sandbox_dir(work, fw, task).is_err(), "{fw:?} {task:?}");
                assert!(task_cgroup(fw, task).is_err(), "{fw:?} {task:?}");
            }
        }
    }

    #[test]
    fn only_directories_named_by_valid_ids_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        for rel in ["runs/fw/t1", "runs/fw/t2", "runs/fw2/t", "runs/fw/a\nb"] {
            std::fs::create_dir_all(work.join(rel)).unwrap();
        }
        std::fs::write(work.join("runs/fw/file"), "").unwrap();
        assert_eq!(
            listed(work, RUNS_DIR),
            vec![
                ("fw".to_owned(), "t1".to_owned()),
                ("fw".to_owned(), "t2".to_owned()),
                ("fw2".to_owned(), "t".to_owned()),
            ]
        );
        assert!(listed(work, SANDBOXES_DIR).is_empty());
    }
}
