//! The `strata-allocator` binary as a real process: it serves, stops cleanly on SIGTERM, and
//! explains an address already in use. Every wait is bounded; children are killed on drop.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use strata_proto::ListAgentsRequest;
use strata_proto::operator_service_client::OperatorServiceClient;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Endpoint;

const STEP: Duration = Duration::from_secs(20);

fn allocator(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-allocator"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn wait_exit(child: &mut Child) -> Result<std::process::ExitStatus> {
    tokio::time::timeout(STEP, child.wait())
        .await
        .map_err(|_| anyhow!("the allocator did not exit within {STEP:?}"))?
        .context("waiting for the allocator")
}

#[tokio::test]
async fn serves_and_stops_on_sigterm() -> Result<()> {
    let mut child = allocator(&["--listen", "127.0.0.1:0", "--allocation-interval", "100ms"])
        .spawn()
        .context("starting strata-allocator")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(STEP, lines.next_line())
        .await
        .map_err(|_| anyhow!("no listening line within {STEP:?}"))??
        .context("stdout closed before the listening line")?;
    let addr = line
        .strip_prefix("strata-allocator listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();

    let channel = tokio::time::timeout(
        STEP,
        Endpoint::from_shared(format!("http://{addr}"))?.connect(),
    )
    .await??;
    let agents = tokio::time::timeout(
        STEP,
        OperatorServiceClient::new(channel).list_agents(ListAgentsRequest {}),
    )
    .await??
    .into_inner()
    .agents;
    assert!(agents.is_empty());

    let pid = child.id().context("child pid")?;
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    assert!(kill.success());
    let status = wait_exit(&mut child).await?;
    assert!(status.success(), "exit status {status:?}");
    Ok(())
}

#[tokio::test]
async fn an_address_in_use_is_a_clear_error() -> Result<()> {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = taken.local_addr()?.to_string();
    let mut child = allocator(&["--listen", &addr]).spawn()?;
    let status = wait_exit(&mut child).await?;
    assert!(!status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().context("stderr")?, &mut stderr)
        .await?;
    assert!(
        stderr.contains(&format!(
            "cannot listen on {addr}: address already in use: is another allocator or \
             `strata local` running?"
        )),
        "stderr: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_duration_flag_is_refused() -> Result<()> {
    let mut child = allocator(&["--listen", "127.0.0.1:0", "--agent-timeout", "soon"]).spawn()?;
    let status = wait_exit(&mut child).await?;
    assert!(!status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().context("stderr")?, &mut stderr)
        .await?;
    assert!(
        stderr.contains("invalid duration \"soon\""),
        "stderr: {stderr}"
    );
    Ok(())
}
