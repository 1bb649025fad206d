//! Replicas of one cluster (`--etcd`) as real processes on a real etcd: one leads and serves,
//! a follower answers naming it (gRPC `UNAVAILABLE` with the leader's address, Mesos 307),
//! the next takes over with the registry when the leader is killed, a clean stop resigns at
//! once, and a leader whose key is taken from it stops instead of writing.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use strata_etcd::Client;
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::{GetLeaderRequest, GetQuotaRequest, QuotaInfo, Resource, SetQuotaRequest};
use strata_test_support::bounded;
use strata_test_support::etcd::Etcd;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Child;
use tonic::transport::{Channel, Endpoint};

use crate::common::{PROCESS_STEP, allocator_command, allocator_fails, wait_exit};

/// A replica of cluster `cluster` on `etcd`, with a 2 s lease: the process, its gRPC address
/// (`http://ADDR`) and its Mesos HTTP API's `ADDR`, from its first lines (a follower listens
/// too).
async fn replica(etcd: &Etcd, cluster: &str) -> Result<(Child, String, String)> {
    replica_with(etcd, cluster, &[]).await
}

/// [`replica`] with more flags.
async fn replica_with(
    etcd: &Etcd,
    cluster: &str,
    more: &[&str],
) -> Result<(Child, String, String)> {
    let mut flags = vec![
        "--listen",
        "127.0.0.1:0",
        "--mesos-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "none",
        "--etcd",
        &etcd.url,
        "--cluster",
        cluster,
        "--etcd-lease-ttl",
        "2s",
    ];
    flags.extend_from_slice(more);
    let mut child = allocator_command(&flags).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next = async || -> Result<String> {
        tokio::time::timeout(PROCESS_STEP, lines.next_line())
            .await
            .context("no line from the replica")??
            .context("stdout closed")
    };
    let grpc = next().await?;
    let grpc = grpc
        .strip_prefix("strata-allocator listening on ")
        .with_context(|| format!("unexpected first line {grpc:?}"))?
        .to_owned();
    let mesos = next().await?;
    let mesos = mesos
        .strip_prefix("strata-allocator Mesos HTTP API on http://")
        .with_context(|| format!("unexpected second line {mesos:?}"))?
        .to_owned();
    // Keep reading its stdout so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, format!("http://{grpc}"), mesos))
}

/// Whether the replica at `addr` leads within `limit` (it answers `GetLeader`); else the
/// last follower answer.
async fn leads_within(addr: &str, limit: Duration) -> Result<Result<(), tonic::Status>> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let answer = bounded(
            "GetLeader",
            operator(addr).await?.get_leader(GetLeaderRequest {}),
        )
        .await?;
        match answer {
            Ok(_) => return Ok(Ok(())),
            Err(status) if tokio::time::Instant::now() >= deadline => return Ok(Err(status)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
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
    let (mut a, a_addr, a_mesos) = replica(&etcd, "c1").await?;
    leads_within(&a_addr, PROCESS_STEP)
        .await?
        .context("the first replica does not lead")?;
    bounded(
        "SetQuota",
        operator(&a_addr).await?.set_quota(quota("eng", 2.0)),
    )
    .await??;

    // B waits while A leads, and answers as a follower: gRPC calls are refused naming A,
    // Mesos HTTP calls are redirected to A's.
    let (mut b, b_addr, b_mesos) = replica(&etcd, "c1").await?;
    let Err(refused) = leads_within(&b_addr, Duration::from_secs(4)).await? else {
        bail!("a second replica serves at {b_addr} while the first leads");
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        strata_proto::leader::hint(&refused),
        Some(a_addr.as_str()),
        "{refused:?}"
    );
    assert!(refused.message().contains("cluster c1"), "{refused:?}");
    let quota_on_b = bounded(
        "GetQuota",
        operator(&b_addr).await?.get_quota(GetQuotaRequest {}),
    )
    .await?;
    assert_eq!(
        quota_on_b.map(|_| ()).unwrap_err().code(),
        tonic::Code::Unavailable,
        "a follower answered from its registry"
    );
    let page = strata_test_support::http::get(&b_mesos, "/master/state?jsonp=x").await?;
    assert_eq!(page.status, 307, "{page:?}");
    assert_eq!(
        page.header("location"),
        Some(format!("//{a_mesos}/master/state?jsonp=x").as_str())
    );
    assert_eq!(
        strata_test_support::http::get(&b_mesos, "/health")
            .await?
            .status,
        200
    );
    // A dies: B leads within the lease's ttl (2 s) and a poll (1 s), with A's registry, on
    // the ports it answered on as a follower.
    a.start_kill()?;
    wait_exit(&mut a).await?;
    let started = std::time::Instant::now();
    leads_within(&b_addr, Duration::from_secs(10))
        .await?
        .map_err(|s| anyhow::anyhow!("the second replica did not take over: {s:?}"))?;
    let took = started.elapsed();
    let state = strata_test_support::http::get(&b_mesos, "/master/state").await?;
    assert_eq!(state.status, 200, "{state:?}");
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
    let (mut a, addr, _) = replica(&etcd, "c2").await?;
    leads_within(&addr, PROCESS_STEP)
        .await?
        .map_err(|s| anyhow::anyhow!("the replica does not lead: {s:?}"))?;
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

/// etcd serving TLS only, with client certificates required: a replica given the CA and its
/// certificate leads and keeps its registry there; one without a certificate is refused by
/// etcd and stops saying so; an https:// endpoint without --etcd-ca stops it at start.
#[tokio::test]
async fn a_replica_reaches_etcd_over_tls_with_its_client_certificate() -> Result<()> {
    use strata_auth::certs;
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let ca = certs::init_ca(&pki)?;
    let server = certs::issue(&pki, "etcd", &["127.0.0.1".to_owned()])?;
    let me = certs::issue(&pki, "replica-1", &[])?;
    let etcd = Etcd::start_tls(&strata_test_support::etcd::MemberTls {
        client_ca: ca.cert.clone(),
        cert: server.cert,
        key: server.key,
    })?;
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca_pem, cert, key) = (path(&ca.cert), path(&me.cert), path(&me.key));
    let tls = [
        "--etcd-ca",
        &ca_pem,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ];
    let (mut a, addr, _) = replica_with(&etcd, "tls", &tls).await?;
    leads_within(&addr, PROCESS_STEP)
        .await?
        .map_err(|s| anyhow::anyhow!("the replica does not lead over TLS: {s:?}"))?;
    let mut op = operator(&addr).await?;
    bounded("SetQuota", op.set_quota(quota("eng", 2.0))).await??;
    // The registry is in the TLS member.
    let identity =
        tonic::transport::Identity::from_pem(std::fs::read(&me.cert)?, std::fs::read(&me.key)?);
    let client_tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
            &ca.cert,
        )?))
        .identity(identity);
    let client = Client::with_tls(
        std::slice::from_ref(&etcd.url),
        Some(&client_tls),
        Duration::from_secs(5),
    )?;
    let quotas = client.list_prefix(b"/strata/tls/registry/quotas/").await?;
    assert_eq!(quotas.len(), 1, "the quota was not written to etcd");
    a.kill().await?;

    // Without a client certificate etcd refuses the replica, which stops and says why.
    let err = allocator_fails(&[
        "--listen",
        "127.0.0.1:0",
        "--mesos-listen",
        "none",
        "--metrics-listen",
        "none",
        "--etcd",
        &etcd.url,
        "--cluster",
        "tls",
        "--etcd-ca",
        &ca_pem,
    ])
    .await?;
    assert!(
        err.contains("cannot use etcd at https://127.0.0.1:"),
        "{err}"
    );
    // An https:// endpoint without the CA: refused before it listens, naming the flag.
    let err = allocator_fails(&["--etcd", &etcd.url, "--cluster", "tls"]).await?;
    assert!(err.contains("give --etcd-ca"), "{err}");
    Ok(())
}
