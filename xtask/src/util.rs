//! Small helpers shared by the xtask commands: running commands loudly, finding the workspace.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ebpf_toolchain::REQUIRE_ENV;

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo that runs us, so the pinned toolchain is used throughout, in the workspace root.
///
/// It sets [`REQUIRE_ENV`] (`STRATA_REQUIRE_EBPF=1`): what xtask builds is tested, benchmarked or run for real, so
/// the agent in it must carry its eBPF programs (a plain `cargo check` or clippy need not).
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).env(REQUIRE_ENV, "1");
    cmd
}

/// Runs `cmd`, echoing it first, and fails with its exit status if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// A command as a shell-like line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Where cargo puts build outputs for `profile` ("debug" or "release"), or another directory
/// of the target directory.
pub fn target_dir(profile: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    base.join(profile)
}

/// The variable that sets the agents' cgroup placement (`--cgroup-placement`).
pub const CGROUP_PLACEMENT_ENV: &str = "STRATA_AGENT_CGROUP_PLACEMENT";

/// Has the agent (or `strata local`) that `cmd` starts keep its cgroups below the cgroup it
/// starts in, as the shared development machines require, unless [`CGROUP_PLACEMENT_ENV`] is
/// set (e.g. to `auto` on a machine of one's own).
pub fn dev_cgroup_placement(cmd: &mut Command) -> &mut Command {
    let placement = std::env::var(CGROUP_PLACEMENT_ENV).unwrap_or_else(|_| "below-own".into());
    cmd.env(CGROUP_PLACEMENT_ENV, placement)
}

/// A loopback address (`127.0.0.1:PORT`) with a port that was free a moment ago.
pub fn free_loopback_addr() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.to_string())
}

/// Waits until something accepts connections on `addr`, at most `limit` after starting `what`.
pub fn wait_for_port(addr: &str, what: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!(
                "nothing listens on {addr} {} s after starting {what}",
                limit.as_secs()
            );
        }
        sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cargo_xtask_runs_requires_the_real_ebpf_programs() {
        let cmd = cargo();
        let set = cmd
            .get_envs()
            .any(|(k, v)| k == REQUIRE_ENV && v == Some("1".as_ref()));
        assert!(set, "{REQUIRE_ENV}=1 is not set on {}", describe(&cmd));
        assert_eq!(cmd.get_current_dir(), Some(workspace_root().as_path()));
    }
}
