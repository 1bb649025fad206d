//! Replicated allocators (`--etcd`) as real processes on a real etcd, with a real agent and the
//! CLI given every replica's address, the follower's first: they reach the leader (the
//! follower answers naming it), and
//! after the leader is killed they follow the replica that takes over, the agent
//! re-registering with it and `strata run` working again.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use strata_framework::ClientSecurity;
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::{AgentState, GetLeaderRequest, ListAgentsRequest};
use strata_test_support::CGROUP_PLACEMENT;
use strata_test_support::cluster::{bin, text};
use strata_test_support::etcd::Etcd;
use strata_test_support::net::free_port;
use strata_test_support::wait::{Poll, poll_until};

/// Killed (and, for the agent, its cgroups removed) on drop.
struct Procs {
    children: Vec<Child>,
    agent_work: std::path::PathBuf,
    allocators: String,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(bin("strata-agent"))
            .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
            .args(["--allocator", &self.allocators, "--work-dir"])
            .arg(&self.agent_work)
            .arg("--remove-cgroups")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn replica(etcd: &Etcd, dir: &std::path::Path, port: u16, name: &str) -> Result<Child> {
    Command::new(bin("strata-allocator"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--mesos-listen", "none", "--metrics-listen", "none"])
        .args([
            "--etcd",
            &etcd.url,
            "--cluster",
            "ha-e2e",
            "--etcd-lease-ttl",
            "2s",
        ])
        .args(["--allocation-interval", "100ms"])
        .stdout(std::fs::File::create(dir.join(format!("{name}.log")))?)
        .stderr(std::fs::File::create(dir.join(format!("{name}.err")))?)
        .spawn()
        .context("cannot start strata-allocator")
}

/// The agents the leader reached through `allocators` lists as registered (active, with
/// resources: a replica that took over lists the agents of its registry only once they
/// re-register).
async fn connected_agents(allocators: &str) -> Result<usize> {
    let channel = strata_framework::dial_secure(allocators, &ClientSecurity::none()).await?;
    let agents = OperatorServiceClient::new(channel)
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    Ok(agents
        .iter()
        .filter(|a| a.state() == AgentState::Active && !a.total.is_empty())
        .count())
}

/// The answer of the replica on `port` to `GetLeader`: OK when it leads, else its refusal.
async fn leader_answer(port: u16) -> Result<Result<(), tonic::Status>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
    Ok(OperatorServiceClient::new(channel)
        .get_leader(GetLeaderRequest {})
        .await
        .map(|_| ()))
}

fn run_hello(allocators: &str) -> Result<()> {
    let out = Command::new(bin("strata"))
        .args(["--allocator", allocators, "run", "--", "echo", "hello"])
        .output()?;
    if !out.status.success() || !text(&out.stdout).contains("hello") {
        bail!(
            "strata run through {allocators}: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_agent_and_the_cli_follow_the_leader_of_replicated_allocators() -> Result<()> {
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let (pa, pb) = (free_port(), free_port());
    // The follower's address first: clients must skip it.
    let allocators = format!("http://127.0.0.1:{pb},http://127.0.0.1:{pa}");
    let mut procs = Procs {
        children: Vec::new(),
        agent_work: dir.path().join("agent"),
        allocators: allocators.clone(),
    };
    procs.children.push(replica(&etcd, dir.path(), pa, "a")?);
    let limit = Duration::from_secs(20);
    let every = Duration::from_millis(100);
    poll_until(limit, every, || async {
        Ok(match leader_answer(pa).await {
            Ok(Ok(())) => Poll::Ready(()),
            Ok(Err(status)) => {
                Poll::Pending(format!("the first replica does not lead: {status:?}"))
            }
            Err(e) => Poll::Pending(format!("the first replica does not answer: {e:#}")),
        })
    })
    .await?;
    procs.children.push(replica(&etcd, dir.path(), pb, "b")?);
    let agent = Command::new(bin("strata-agent"))
        .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
        .args(["--allocator", &allocators, "--work-dir"])
        .arg(&procs.agent_work)
        .args([
            "--cpus",
            "2",
            "--mem",
            "1024",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--reconnect-backoff-max", "1s"])
        .stdout(std::fs::File::create(dir.path().join("agent.log"))?)
        .stderr(std::fs::File::create(dir.path().join("agent.err"))?)
        .spawn()?;
    procs.children.push(agent);
    let registered = || async {
        Ok(match connected_agents(&allocators).await {
            Ok(1) => Poll::Ready(()),
            Ok(n) => Poll::Pending(format!("{n} agents connected")),
            Err(e) => Poll::Pending(format!("{e:#}")),
        })
    };
    poll_until(limit, every, registered).await?;
    let refused = leader_answer(pb)
        .await?
        .expect_err("the follower says it leads");
    assert_eq!(
        strata_proto::leader::hint(&refused),
        Some(format!("http://127.0.0.1:{pa}").as_str()),
        "{refused:?}"
    );
    run_hello(&allocators)?;

    // The leader dies: the other replica takes over, the agent follows it.
    let a = &mut procs.children[0];
    a.kill()?;
    a.wait()?;
    poll_until(Duration::from_secs(40), every, registered).await?;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", pa)).is_err(),
        "the killed leader still listens"
    );
    run_hello(&allocators)?;
    Ok(())
}
