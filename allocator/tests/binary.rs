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

/// The allocator with `args`; a test that names neither `--work-dir` nor `--store` gets
/// `--store memory`, so no test writes to the default work dir under /var/lib.
fn allocator(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-allocator"));
    cmd.args(args);
    if !args.iter().any(|a| *a == "--work-dir" || *a == "--store") {
        cmd.args(["--store", "memory"]);
    }
    cmd.env("RUST_LOG", "warn")
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
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("allocator");
    let work_arg = work.display().to_string();
    let mut child = allocator(&[
        "--listen",
        "127.0.0.1:0",
        "--allocation-interval",
        "100ms",
        "--work-dir",
        &work_arg,
    ])
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
    // The registry is persisted by default, in the work dir.
    assert!(
        work.join("registry.redb").is_file(),
        "no registry.redb in {work:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_work_dir_that_cannot_be_created_is_a_clear_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory")?;
    let work = file.join("allocator").display().to_string();
    let mut child = allocator(&["--listen", "127.0.0.1:0", "--work-dir", &work]).spawn()?;
    let status = wait_exit(&mut child).await?;
    assert!(!status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().context("stderr")?, &mut stderr)
        .await?;
    assert!(
        stderr.contains(&format!("cannot create the allocator's work dir {work}"))
            && stderr.contains("pass --work-dir a writable directory"),
        "stderr: {stderr}"
    );
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

#[tokio::test]
async fn a_corrupt_store_is_a_clear_error_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("registry.redb");
    std::fs::write(&path, vec![0x42; 8192])?;
    let store = path.display().to_string();
    let mut child = allocator(&["--listen", "127.0.0.1:0", "--store", &store]).spawn()?;
    let status = wait_exit(&mut child).await?;
    assert!(!status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().context("stderr")?, &mut stderr)
        .await?;
    assert!(
        stderr.contains(&format!(
            "the allocator's registry store {store} is corrupt"
        )) && stderr.contains("move it away"),
        "stderr: {stderr}"
    );
    Ok(())
}

/// Starts the allocator and returns it with its address.
async fn start(args: &[&str]) -> Result<(Child, String)> {
    let mut child = allocator(args)
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
    Ok((child, format!("http://{addr}")))
}

/// Subscribes (with `id` to re-subscribe) and returns the id from SUBSCRIBED, keeping the
/// stream open in the returned sender.
async fn subscribe(
    addr: &str,
    id: &str,
) -> Result<(String, tokio::sync::mpsc::Sender<strata_proto::Call>)> {
    use strata_proto::scheduler_service_client::SchedulerServiceClient;
    use strata_proto::{Call, FrameworkInfo, call, event};
    let channel =
        tokio::time::timeout(STEP, Endpoint::from_shared(addr.to_owned())?.connect()).await??;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(Call {
        call: Some(call::Call::Subscribe(call::Subscribe {
            framework_info: Some(FrameworkInfo {
                id: id.to_owned(),
                name: "survivor".to_owned(),
                roles: vec!["eng".to_owned()],
                failover_timeout_seconds: 3600.0,
                ..FrameworkInfo::default()
            }),
        })),
        ..Call::default()
    })
    .await?;
    let mut events = tokio::time::timeout(
        STEP,
        SchedulerServiceClient::new(channel)
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await??
    .into_inner();
    let first = tokio::time::timeout(STEP, events.message())
        .await??
        .context("stream ended before SUBSCRIBED")?;
    let Some(event::Event::Subscribed(s)) = first.event else {
        anyhow::bail!("expected SUBSCRIBED, got {first:?}");
    };
    // Keep reading so the stream stays open.
    tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} });
    Ok((s.framework_id, tx))
}

#[tokio::test]
async fn a_killed_allocator_restarts_with_its_registry() -> Result<()> {
    use strata_proto::{GetQuotaRequest, ListFrameworksRequest, ListRolesRequest, QuotaInfo};
    use strata_proto::{Resource, SetQuotaRequest, SetWeightsRequest};
    let dir = tempfile::tempdir()?;
    let work = dir.path().display().to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--work-dir",
        &work,
        "--allocation-interval",
        "100ms",
    ];
    let (mut child, addr) = start(&args).await?;
    let channel = Endpoint::from_shared(addr.clone())?.connect().await?;
    let mut op = OperatorServiceClient::new(channel);
    op.set_weights(SetWeightsRequest {
        weights: [("eng".to_owned(), 3.0)].into(),
    })
    .await?;
    op.set_quota(SetQuotaRequest {
        quota: Some(QuotaInfo {
            role: "eng".to_owned(),
            guarantee: vec![Resource::scalar("cpus", 2.0)],
            limit: vec![Resource::scalar("cpus", 8.0)],
        }),
    })
    .await?;
    let (fid, _stream) = subscribe(&addr, "").await?;
    // SIGKILL: no chance to flush anything at exit.
    child.start_kill()?;
    wait_exit(&mut child).await?;

    let (_child, addr) = start(&args).await?;
    let channel = Endpoint::from_shared(addr.clone())?.connect().await?;
    let mut op = OperatorServiceClient::new(channel);
    let fws = op
        .list_frameworks(ListFrameworksRequest {})
        .await?
        .into_inner()
        .frameworks;
    assert_eq!(fws.len(), 1);
    assert_eq!(fws[0].id, fid);
    assert!(!fws[0].connected);
    let quotas = op.get_quota(GetQuotaRequest {}).await?.into_inner().quotas;
    assert_eq!(quotas.len(), 1);
    assert_eq!(quotas[0].role, "eng");
    let roles = op.list_roles(ListRolesRequest {}).await?.into_inner().roles;
    assert!(
        roles.iter().any(|r| r.name == "eng" && r.weight == 3.0),
        "{roles:?}"
    );
    // The framework re-subscribes with its persisted id and is accepted.
    let (again, _stream) = subscribe(&addr, &fid).await?;
    assert_eq!(again, fid);
    Ok(())
}
