//! The `strata-allocator` binary as a real process: it serves, stops cleanly on SIGTERM, and
//! explains an address already in use. Every wait is bounded; children are killed on drop.

mod common;

use anyhow::{Context as _, Result, bail};
use common::{allocator_fails, bounded, start_allocator, wait_exit};
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::scheduler_service_client::SchedulerServiceClient;
use strata_proto::{
    Call, FrameworkInfo, GetQuotaRequest, ListAgentsRequest, ListFrameworksRequest,
    ListRolesRequest, QuotaInfo, Resource, SetQuotaRequest, SetWeightsRequest, call, event,
};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

async fn connect(addr: &str) -> Result<Channel> {
    Ok(bounded("connect", Endpoint::from_shared(addr.to_owned())?.connect()).await??)
}

#[tokio::test]
async fn serves_and_stops_on_sigterm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("allocator");
    let work_arg = work.display().to_string();
    let (mut child, addr) = start_allocator(&[
        "--listen",
        "127.0.0.1:0",
        "--allocation-interval",
        "100ms",
        "--work-dir",
        &work_arg,
    ])
    .await?;

    let mut op = OperatorServiceClient::new(connect(&addr).await?);
    let agents = bounded("ListAgents", op.list_agents(ListAgentsRequest {}))
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
    let stderr = allocator_fails(&["--listen", "127.0.0.1:0", "--work-dir", &work]).await?;
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
    let stderr = allocator_fails(&["--listen", &addr]).await?;
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
    let stderr = allocator_fails(&["--listen", "127.0.0.1:0", "--agent-timeout", "soon"]).await?;
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
    let stderr = allocator_fails(&["--listen", "127.0.0.1:0", "--store", &store]).await?;
    assert!(
        stderr.contains(&format!(
            "the allocator's registry store {store} is corrupt"
        )) && stderr.contains("move it away"),
        "stderr: {stderr}"
    );
    Ok(())
}

/// Subscribes (with `id` to re-subscribe) and returns the id from SUBSCRIBED, keeping the
/// stream open in the returned sender.
async fn subscribe(addr: &str, id: &str) -> Result<(String, mpsc::Sender<Call>)> {
    let channel = connect(addr).await?;
    let (tx, rx) = mpsc::channel(16);
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
    let mut events = bounded(
        "Subscribe",
        SchedulerServiceClient::new(channel).subscribe(ReceiverStream::new(rx)),
    )
    .await??
    .into_inner();
    let first = bounded("SUBSCRIBED", events.message())
        .await??
        .context("stream ended before SUBSCRIBED")?;
    let Some(event::Event::Subscribed(s)) = first.event else {
        bail!("expected SUBSCRIBED, got {first:?}");
    };
    // Keep reading so the stream stays open.
    tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} });
    Ok((s.framework_id, tx))
}

#[tokio::test]
async fn a_killed_allocator_restarts_with_its_registry() -> Result<()> {
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
    let (mut child, addr) = start_allocator(&args).await?;
    let mut op = OperatorServiceClient::new(connect(&addr).await?);
    let weights = SetWeightsRequest {
        weights: [("eng".to_owned(), 3.0)].into(),
    };
    bounded("SetWeights", op.set_weights(weights)).await??;
    let quota = SetQuotaRequest {
        quota: Some(QuotaInfo {
            role: "eng".to_owned(),
            guarantee: vec![Resource::scalar("cpus", 2.0)],
            limit: vec![Resource::scalar("cpus", 8.0)],
        }),
    };
    bounded("SetQuota", op.set_quota(quota)).await??;
    let (fid, _stream) = subscribe(&addr, "").await?;
    // SIGKILL: no chance to flush anything at exit.
    child.start_kill()?;
    wait_exit(&mut child).await?;

    let (_child, addr) = start_allocator(&args).await?;
    let mut op = OperatorServiceClient::new(connect(&addr).await?);
    let fws = bounded(
        "ListFrameworks",
        op.list_frameworks(ListFrameworksRequest {}),
    )
    .await??
    .into_inner()
    .frameworks;
    assert_eq!(fws.len(), 1);
    assert_eq!(fws[0].id, fid);
    assert!(!fws[0].connected);
    let quotas = bounded("GetQuota", op.get_quota(GetQuotaRequest {}))
        .await??
        .into_inner()
        .quotas;
    assert_eq!(quotas.len(), 1);
    assert_eq!(quotas[0].role, "eng");
    let roles = bounded("ListRoles", op.list_roles(ListRolesRequest {}))
        .await??
        .into_inner()
        .roles;
    assert!(
        roles.iter().any(|r| r.name == "eng" && r.weight == 3.0),
        "{roles:?}"
    );
    // The framework re-subscribes with its persisted id and is accepted.
    let (again, _stream) = subscribe(&addr, &fid).await?;
    assert_eq!(again, fid);
    Ok(())
}
