//! The `strata-allocator` binary as a real process: it serves, stops cleanly on SIGTERM, and
//! explains an address already in use. Every wait is bounded; children are killed on drop.

use anyhow::{Context as _, Result, bail};
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::{
    AgentInfo, Call, FrameworkInfo, GetQuotaRequest, ListAgentsRequest, ListFrameworksRequest,
    ListRolesRequest, ListTasksRequest, QuotaInfo, Resource, SetQuotaRequest, SetWeightsRequest,
    TaskState,
};
use strata_test_support::fake_agent::FakeAgent;
use strata_test_support::framework::{Framework, task};
use strata_test_support::{StreamOptions, bounded};
use tokio::process::Command;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::common::{allocator_fails, start_allocator, wait_exit};

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
    let info = FrameworkInfo {
        id: id.to_owned(),
        name: "survivor".to_owned(),
        roles: vec!["eng".to_owned()],
        failover_timeout_seconds: 3600.0,
        ..FrameworkInfo::default()
    };
    let opts = StreamOptions {
        capacity: 16,
        ..StreamOptions::default()
    };
    let fw = Framework::subscribe_on(connect(addr).await?, info, opts).await?;
    // Keep reading so the stream stays open.
    let mut events = fw.rx;
    tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} });
    Ok((fw.id, fw.tx))
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

#[tokio::test]
async fn finished_tasks_are_listed_after_a_restart() -> Result<()> {
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
    let info = AgentInfo {
        hostname: "h1".to_owned(),
        resources: vec![
            Resource::scalar("cpus", 2.0),
            Resource::scalar("mem", 512.0),
        ],
        ..AgentInfo::default()
    };
    let (agent, _) =
        FakeAgent::connect(connect(&addr).await?, info, StreamOptions::default()).await?;
    let _answering = agent.answer_launches();
    let info = FrameworkInfo {
        name: "history".to_owned(),
        failover_timeout_seconds: 3600.0,
        ..FrameworkInfo::default()
    };
    let mut fw =
        Framework::subscribe_on(connect(&addr).await?, info, StreamOptions::default()).await?;
    let offer = fw.offer().await?;
    fw.launch(&offer, vec![task("done", 0.5, 64.0)]).await?;
    while fw.update().await?.state() != TaskState::Finished {}
    // SIGKILL: what was written as it ended is all there is.
    child.start_kill()?;
    wait_exit(&mut child).await?;

    let (_child, addr) = start_allocator(&args).await?;
    let mut op = OperatorServiceClient::new(connect(&addr).await?);
    let all = ListTasksRequest {
        include_terminal: true,
        ..ListTasksRequest::default()
    };
    let tasks = bounded("ListTasks", op.list_tasks(all))
        .await??
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].task_id, "done");
    assert_eq!(tasks[0].state(), TaskState::Finished);
    assert_eq!(tasks[0].exit_code, Some(0));
    Ok(())
}

/// `strata-allocator --print-config` with `flags`, the environment `env`, and the config file
/// `file` (when given): its stdout.
async fn print_config(flags: &[&str], env: &[(&str, &str)], file: Option<&str>) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-allocator"));
    cmd.arg("--print-config")
        .args(flags)
        .env_remove("STRATA_CONFIG");
    if let Some(text) = file {
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, text)?;
        cmd.arg("--config").arg(&path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = bounded("strata-allocator --print-config", cmd.output()).await??;
    if !out.status.success() {
        bail!(
            "strata-allocator --print-config failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn a_flag_beats_its_environment_variable_which_beats_the_config_file() -> Result<()> {
    let file = Some("[allocator]\nagent-timeout = \"20s\"\nterminal-task-history = 7\n");
    let env = [("STRATA_ALLOCATOR_AGENT_TIMEOUT", "30s")];
    let flag = ["--agent-timeout", "40s"];
    let line = |settings: &str| {
        settings
            .lines()
            .find(|l| l.starts_with("agent-timeout = "))
            .unwrap_or_default()
            .to_owned()
    };
    let all = print_config(&flag, &env, file).await?;
    assert_eq!(
        line(&all),
        "agent-timeout = \"40s\"  # command line",
        "{all}"
    );
    let no_flag = print_config(&[], &env, file).await?;
    assert_eq!(
        line(&no_flag),
        "agent-timeout = \"30s\"  # environment (STRATA_ALLOCATOR_AGENT_TIMEOUT)",
        "{no_flag}"
    );
    let file_only = print_config(&[], &[], file).await?;
    assert!(
        line(&file_only).starts_with("agent-timeout = \"20s\"  # config file ("),
        "{file_only}"
    );
    // The file's other keys apply too, and the rest keep their defaults.
    assert!(file_only.contains("terminal-task-history = \"7\"  # config file ("));
    assert!(file_only.contains("allocation-interval = \"1s\"  # default"));
    let nothing = print_config(&[], &[], None).await?;
    assert_eq!(
        line(&nothing),
        "agent-timeout = \"15s\"  # default",
        "{nothing}"
    );
    Ok(())
}

#[tokio::test]
async fn a_config_file_with_an_unknown_key_or_a_bad_value_is_refused_saying_where() -> Result<()> {
    let unknown = print_config(&[], &[], Some("[allocator]\nagent-timout = \"1s\"\n")).await;
    let e = unknown.expect_err("an unknown key").to_string();
    assert!(
        e.contains("[allocator] agent-timout: no such setting"),
        "{e}"
    );
    let bad = print_config(&[], &[], Some("[allocator]\nagent-timeout = \"soon\"\n")).await;
    let e = bad.expect_err("a bad value").to_string();
    assert!(e.contains("invalid duration \"soon\""), "{e}");
    // One file can serve a host: the allocator skips the agent's table, not a misspelt one.
    let shared = print_config(&[], &[], Some("[agent]\ncpus = 2\n")).await?;
    assert!(
        shared.contains("agent-timeout = \"15s\"  # default"),
        "{shared}"
    );
    let table = print_config(&[], &[], Some("[agent]\ncpus = 2\n[alocator]\n")).await;
    let e = table.expect_err("an unknown table").to_string();
    assert!(e.contains("[alocator]: no such table"), "{e}");
    Ok(())
}

/// With default flags the allocator was open to anyone who could reach it. Outside loopback
/// it now refuses to serve without TLS and authentication, and says what to give.
#[tokio::test]
async fn an_exposed_address_without_tls_is_refused_unless_insecure() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().display().to_string();
    let common = ["--store", "memory", "--work-dir", work.as_str()];
    let mut args = vec![
        "--listen",
        "0.0.0.0:0",
        "--mesos-listen",
        "none",
        "--metrics-listen",
        "none",
    ];
    args.extend(common);
    let stderr = allocator_fails(&args).await?;
    assert!(
        stderr.contains("refusing to serve the allocator (--listen) on 0.0.0.0:")
            && stderr.contains("Give --tls-cert, --tls-key and --tls-client-ca")
            && stderr.contains("pass --insecure to accept the risk"),
        "stderr: {stderr}"
    );
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--mesos-listen",
        "0.0.0.0:0",
        "--metrics-listen",
        "none",
    ];
    args.extend(common);
    let stderr = allocator_fails(&args).await?;
    assert!(
        stderr.contains("the Mesos HTTP API (--mesos-listen)"),
        "stderr: {stderr}"
    );
    // Authentication without ACLs would deny everything: refused at start.
    let creds = dir.path().join("credentials.toml");
    strata_auth::credentials::create_token(&creds, "ops")?;
    let creds = creds.display().to_string();
    let mut args = vec!["--listen", "127.0.0.1:0", "--credentials", creds.as_str()];
    args.extend(common);
    let stderr = allocator_fails(&args).await?;
    assert!(
        stderr.contains("no --acls file says who may do what"),
        "stderr: {stderr}"
    );
    // --insecure accepts the risk.
    let mut args = vec![
        "--listen",
        "0.0.0.0:0",
        "--mesos-listen",
        "none",
        "--metrics-listen",
        "none",
        "--insecure",
    ];
    args.extend(common);
    let (mut child, _) = start_allocator(&args).await?;
    child.kill().await?;
    Ok(())
}
