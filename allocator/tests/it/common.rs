//! The `strata-allocator` binary as a real process, for the tests of the binary itself (the
//! rest of the harness is strata-test-support's).

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The longest a `strata-allocator` process may take to print its address or to exit.
pub const PROCESS_STEP: Duration = Duration::from_secs(20);

/// `strata-allocator ARGS` with piped output, killed on drop; a command that names neither
/// `--work-dir`, `--store` nor `--etcd` gets `--store memory`, so no test writes to the
/// default work dir under /var/lib.
pub fn allocator_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-allocator"));
    cmd.args(args);
    if !args
        .iter()
        .any(|a| matches!(*a, "--work-dir" | "--store" | "--etcd"))
    {
        cmd.args(["--store", "memory"]);
    }
    cmd.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Starts `strata-allocator ARGS` and returns it with `http://ADDR` from its listening line.
pub async fn start_allocator(args: &[&str]) -> Result<(Child, String)> {
    let mut child = allocator_command(args)
        .spawn()
        .context("starting strata-allocator")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(PROCESS_STEP, lines.next_line())
        .await
        .map_err(|_| anyhow!("no listening line within {PROCESS_STEP:?}"))??
        .context("stdout closed before the listening line")?;
    let addr = line
        .strip_prefix("strata-allocator listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    Ok((child, format!("http://{addr}")))
}

pub async fn wait_exit(child: &mut Child) -> Result<ExitStatus> {
    tokio::time::timeout(PROCESS_STEP, child.wait())
        .await
        .map_err(|_| anyhow!("the allocator did not exit within {PROCESS_STEP:?}"))?
        .context("waiting for the allocator")
}

/// Runs `strata-allocator ARGS`, which must fail, and returns what it wrote to stderr.
pub async fn allocator_fails(args: &[&str]) -> Result<String> {
    let mut child = allocator_command(args)
        .spawn()
        .context("starting strata-allocator")?;
    let status = wait_exit(&mut child).await?;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)
        .await?;
    if status.success() {
        bail!("strata-allocator {args:?} succeeded; stderr: {stderr}");
    }
    Ok(stderr)
}
