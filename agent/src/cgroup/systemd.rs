//! systemd and the agent's cgroups: finding the delegated cgroup the agent runs in, and asking
//! systemd for one when the agent was started from a shell.
//!
//! systemd owns the cgroup tree on the hosts it runs; a program may manage cgroups only inside
//! a unit that systemd **delegated** to it (`Delegate=yes`), which systemd marks with the
//! extended attribute `trusted.delegate` (and `user.delegate`) set to `1` (systemd 251 and
//! later). The agent's systemd unit (`scripts/strata-agent.service`) is delegated; an agent
//! started from a shell asks systemd for a transient delegated scope holding itself
//! (`StartTransientUnit` over D-Bus, through `busctl`), as container engines do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The extended attributes systemd sets on the cgroups it delegates.
const DELEGATE_XATTRS: [&str; 2] = ["trusted.delegate", "user.delegate"];

/// How long systemd may take to move the agent into its new scope.
const SCOPE_WAIT: Duration = Duration::from_secs(5);

/// The nearest cgroup at or above `own` (a path like `/system.slice/x.service`) in the unified
/// hierarchy mounted at `unified_mount` that is marked delegated; `None` when there is none.
pub fn delegated_ancestor(unified_mount: &Path, own: &str) -> Option<String> {
    let mut path = own.trim_end_matches('/').to_owned();
    while !path.is_empty() {
        let dir = super::under(unified_mount, &path);
        let marked = DELEGATE_XATTRS.iter().any(|name| {
            match crate::sys::get_xattr(&dir, name) {
                Ok(value) => value.as_deref() == Some(b"1"),
                Err(e) => {
                    tracing::debug!(cgroup = %dir.display(), xattr = name, error = %e, "cannot read a cgroup's extended attribute");
                    false
                }
            }
        });
        if marked {
            return Some(path);
        }
        match path.rfind('/') {
            Some(i) => path.truncate(i),
            None => break,
        }
    }
    None
}

/// Whether systemd manages this host (`<run>/systemd/system` exists, as `sd_booted` checks).
pub fn running(run_root: &Path) -> bool {
    run_root.join("systemd").join("system").is_dir()
}

/// The transient scope an agent started from a shell asks for: `<root name>.scope`.
pub fn scope_unit(root_name: &str) -> String {
    format!("{root_name}.scope")
}

/// The slice the agent's scope goes in.
pub const SCOPE_SLICE: &str = "system.slice";

/// The agent's root inside its scope (`/system.slice/<root name>.scope/<root name>`, relative
/// to the hierarchy's mount), when that exists under `mount`: where an agent started from a
/// shell on a systemd host keeps its task cgroups.
pub fn scope_root(mount: &Path, root_name: &str) -> Option<PathBuf> {
    let rel = Path::new("/")
        .join(SCOPE_SLICE)
        .join(scope_unit(root_name))
        .join(root_name);
    super::under(mount, &rel.to_string_lossy())
        .is_dir()
        .then_some(rel)
}

/// What [`enter_scope`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeOutcome {
    /// systemd made the scope and moved the agent into it.
    Started,
    /// The scope already existed (an earlier agent's tasks keep it alive): the agent moved
    /// itself into the scope's leaf `<scope>/<root name>/agent`.
    Joined(PathBuf),
}

/// The `busctl` arguments that ask systemd for the delegated scope `unit` holding `pid`.
pub fn start_scope_args(unit: &str, pid: u32) -> Vec<String> {
    [
        "--system",
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        unit,
        "fail",
        "4",
        "PIDs",
        "au",
        "1",
        &pid.to_string(),
        "Delegate",
        "b",
        "true",
        "Slice",
        "s",
        SCOPE_SLICE,
        "Description",
        "s",
        "Strata agent and its tasks",
        "0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Asks systemd (through `busctl`) for the delegated scope `<root name>.scope` in
/// [`SCOPE_SLICE`] holding this process, and waits until the process is in it. When the scope
/// already exists, moves this process into its leaf `<root name>/agent` instead (a pure v2
/// hierarchy mounted at `mount`). Errors say what systemd answered.
pub fn enter_scope(
    mount: &Path,
    proc_root: &Path,
    root_name: &str,
) -> Result<ScopeOutcome, String> {
    let unit = scope_unit(root_name);
    let pid = std::process::id();
    let out = Command::new("busctl")
        .args(start_scope_args(&unit, pid))
        .output()
        .map_err(|e| format!("cannot run busctl: {e}"))?;
    if out.status.success() {
        let deadline = Instant::now() + SCOPE_WAIT;
        while Instant::now() < deadline {
            let own = std::fs::read_to_string(proc_root.join("self/cgroup")).unwrap_or_default();
            if own
                .lines()
                .any(|l| l.starts_with("0::") && l.trim_end().ends_with(&unit))
            {
                return Ok(ScopeOutcome::Started);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return Err(format!(
            "systemd accepted the scope {unit} but did not move the agent into it within {SCOPE_WAIT:?}"
        ));
    }
    let answer = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !answer.contains("already exists") {
        return Err(format!("systemd refused the scope {unit}: {answer}"));
    }
    let leaf = mount
        .join(SCOPE_SLICE)
        .join(&unit)
        .join(root_name)
        .join(super::v2::AGENT_LEAF);
    std::fs::create_dir_all(&leaf)
        .and_then(|()| std::fs::write(leaf.join("cgroup.procs"), pid.to_string()))
        .map_err(|e| {
            format!(
                "the scope {unit} exists already, and the agent cannot join its leaf {}: {e}",
                leaf.display()
            )
        })?;
    Ok(ScopeOutcome::Joined(leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_request_delegates_and_names_this_process() {
        let args = start_scope_args("strata-00ff.scope", 42);
        let at = |s: &str| args.iter().position(|a| a == s).unwrap();
        assert_eq!(args[at("StartTransientUnit") + 2], "strata-00ff.scope");
        assert_eq!(args[at("PIDs") + 3], "42");
        assert_eq!(args[at("Delegate") + 2], "true");
        assert_eq!(args[at("Slice") + 2], "system.slice");
        // Four properties, no auxiliary units.
        assert_eq!(args[at("fail") + 1], "4");
        assert_eq!(args.last().unwrap(), "0");
    }

    #[test]
    fn the_nearest_delegated_cgroup_is_found_by_its_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        let unit = mount.join("system.slice/strata.service");
        std::fs::create_dir_all(unit.join("agent")).unwrap();
        assert_eq!(
            delegated_ancestor(mount, "/system.slice/strata.service/agent"),
            None
        );
        // user.* attributes need no privilege (tmpfs has them since Linux 6.6); skip where the
        // file system keeps none.
        if let Err(e) = crate::sys::set_xattr(&unit, "user.delegate", b"1") {
            eprintln!("skipped: this file system keeps no user extended attributes: {e}");
            return;
        }
        assert_eq!(
            delegated_ancestor(mount, "/system.slice/strata.service/agent").as_deref(),
            Some("/system.slice/strata.service")
        );
        assert_eq!(
            delegated_ancestor(mount, "/system.slice/strata.service").as_deref(),
            Some("/system.slice/strata.service")
        );
        assert_eq!(delegated_ancestor(mount, "/system.slice"), None);
    }

    #[test]
    fn systemd_runs_where_its_run_directory_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!running(dir.path()));
        std::fs::create_dir_all(dir.path().join("systemd/system")).unwrap();
        assert!(running(dir.path()));
    }
}
