//! The open-file limit (`RLIMIT_NOFILE`): the agent raises its own, tasks keep the host's.
//!
//! Every launch in flight holds several descriptors (its output files, the launch pipe, the
//! cgroup directory, the device program's link), so a burst of launches runs past the usual
//! soft limit of 1024 and launches fail with EMFILE, halfway through. The agent therefore
//! raises its soft limit to the hard one at start-up, as the Go runtime and systemd's
//! services do, and hands the soft limit it started with to the launcher, which restores it
//! for the supervisors and tasks it forks (a task may still set its own `nofile`).

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The variable that carries the tasks' soft limit to the launcher.
pub const TASK_NOFILE_ENV: &str = "STRATA_TASK_NOFILE";

/// The soft limit the agent started with, once it raised its own.
static TASKS_SOFT: OnceLock<u64> = OnceLock::new();

/// Raises this process's soft open-file limit to its hard limit, once; remembers the soft
/// limit it had for the tasks. Logs what it did; a failure is a warning.
pub fn raise_for_agent() {
    TASKS_SOFT.get_or_init(|| match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => {
                        tracing::debug!(from = soft, to = hard, "raised the agent's open-file limit")
                    }
                    Err(e) => {
                        tracing::warn!(soft, hard, error = %e, "cannot raise the agent's open-file limit: a burst of launches may fail with EMFILE")
                    }
                }
            }
            soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the agent's open-file limit");
            u64::MAX
        }
    });
}

/// The soft open-file limit tasks start with, when the agent raised its own.
pub fn for_tasks() -> Option<u64> {
    TASKS_SOFT.get().copied().filter(|s| *s != u64::MAX)
}

/// In the launcher (single-threaded, before it forks anything): sets the soft open-file limit
/// named by [`TASK_NOFILE_ENV`], if any, so that supervisors and tasks get the host's.
pub fn restore_for_tasks() -> nix::Result<()> {
    let Some(soft) = std::env::var(TASK_NOFILE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return Ok(());
    };
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_raises_its_soft_limit_to_the_hard_one_and_remembers_the_old() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        raise_for_agent();
        let (now_soft, now_hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(now_hard, hard);
        assert_eq!(now_soft, hard);
        // What tasks get is the soft limit before the first raise (this test's, or that of an
        // earlier test in this process), never above the hard limit.
        let tasks = for_tasks().unwrap();
        assert!(tasks <= hard, "{tasks} > {hard}");
        // Put it back for the other tests of this process.
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    }
}
