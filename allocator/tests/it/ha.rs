//! Replicas of one cluster (`--etcd`) as real processes on a real etcd: one leads and serves,
//! the next takes over with the registry when the leader is killed, a clean stop resigns at
//! once, and a leader whose key is taken from it stops instead of writing.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use strata_etcd::Client;
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::{GetQuotaRequest, QuotaInfo, Resource, SetQuotaRequest};
use strata_test_support::bounded;
use strata_test_support::etcd::Etcd;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Child;
use tonic::transport::{Channel, Endpoint};

use crate::common::{PROCESS_STEP, allocator_command, wait_exit};

/// A replica of cluster `cluster` on `etcd`, with a 2 s lease.
fn replica(etcd: &Etcd, cluster: &str) -> Result<Child> {
    Ok(allocator_command(&[
        "--listen",
        "127.0.0.1:0",
        "--mesos-listen",
        "none",
        "--metrics-listen",
        "none",
        "--etcd",
        &etcd.url,
        "--cluster",
        cluster,
        "--etcd-lease-ttl",
        "2s",
    ])
    .spawn()?)
}

/// Waits up to `limit` for the replica's listening line (it leads); its gRPC address.
async fn leads_within(child: &mut Child, limit: Duration) -> Result<Option<String>> {
    let stdout = child.stdout.as_mut().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    match tokio::time::timeout(limit, lines.next_line()).await {
        Err(_) => Ok(None),
        Ok(line) => {
            let line = line?.context("stdout closed before the listening line")?;
            let addr = line
                .strip_prefix("strata-allocator listening on ")
                .with_context(|| format!("unexpected first line {line:?}"))?;
            Ok(Some(format!("http://{addr}")))
        }
    }
}

async fn operator(addr: &str) -> Result<OperatorServiceClient<Channel>> {
    let channel = bounded("connect", Endpoint::from_shared(addr.to_owned())?.connect()).await??;
    Ok(OperatorServiceClient::new(channel))
}

fn quota(role: &str, cpus: f64) -> SetQuotaRequest {
    SetQuotaRequest {
        quota: Some(QuotaInfo {
            role: role.to_owned(),
            guarantee: vec![Resource::scalar("cpus", cpus)],
            limit: vec![],
        }),
    }
}

#[tokio::test]
async fn the_next_replica_takes_over_with_the_registry_and_a_clean_stop_resigns() -> Result<()> {
    let etcd = Etcd::start()?;
    let mut a = replica(&etcd, "c1")?;
    let a_addr = leads_within(&mut a, PROCESS_STEP)
        .await?
        .context("the first replica does not lead")?;
    bounded(
        "SetQuota",
        operator(&a_addr).await?.set_quota(quota("eng", 2.0)),
    )
    .await??;

    // B waits while A leads.
    let mut b = replica(&etcd, "c1")?;
    if let Some(addr) = leads_within(&mut b, Duration::from_secs(4)).await? {
        bail!("a second replica serves at {addr} while the first leads");
    }
    // A dies: B leads within the lease's ttl (2 s) and a poll (1 s), with A's registry.
    a.start_kill()?;
    wait_exit(&mut a).await?;
    let started = std::time::Instant::now();
    let b_addr = leads_within(&mut b, Duration::from_secs(10))
        .await?
        .context("the second replica did not take over")?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let quotas = bounded(
        "GetQuota",
        operator(&b_addr).await?.get_quota(GetQuotaRequest {}),
    )
    .await??
    .into_inner()
    .quotas;
    assert!(
        quotas.iter().any(|q| q.role == "eng"),
        "the quota set on the first leader is gone: {quotas:?}"
    );

    // A clean stop resigns: the leader key is gone at once, not after the ttl.
    let pid = b.id().context("pid")?;
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    assert!(kill.success());
    assert!(wait_exit(&mut b).await?.success());
    let client = Client::new(std::slice::from_ref(&etcd.url), Duration::from_secs(5))?;
    assert!(
        client.get(b"/strata/c1/leader").await?.is_none(),
        "the leader key outlived a clean stop"
    );
    Ok(())
}

#[tokio::test]
async fn a_leader_whose_key_is_gone_stops_instead_of_writing() -> Result<()> {
    let etcd = Etcd::start()?;
    let mut a = replica(&etcd, "c2")?;
    let addr = leads_within(&mut a, PROCESS_STEP)
        .await?
        .context("the replica does not lead")?;
    let mut op = operator(&addr).await?;
    bounded("SetQuota", op.set_quota(quota("eng", 2.0))).await??;
    // Its key is taken away (as after a partition from etcd longer than its lease, with
    // another replica elected meanwhile).
    let client = Client::new(std::slice::from_ref(&etcd.url), Duration::from_secs(5))?;
    client.delete(b"/strata/c2/leader").await?;
    client.put(b"/strata/c2/leader", b"someone-else", 0).await?;
    // Its next registry write is refused, and it stops with an error saying why.
    let _ = bounded("SetQuota", op.set_quota(quota("ads", 1.0))).await;
    let status = wait_exit(&mut a).await?;
    assert!(!status.success(), "a deposed leader kept running");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(a.stderr.as_mut().context("stderr")?, &mut stderr)
        .await?;
    assert!(
        stderr.contains("stopped leading cluster c2"),
        "stderr: {stderr}"
    );
    let registry = client.list_prefix(b"/strata/c2/registry/quotas/").await?;
    let roles: Vec<_> = registry
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert_eq!(
        roles,
        ["/strata/c2/registry/quotas/eng"],
        "a deposed leader wrote"
    );
    Ok(())
}
