//! `strata agents`, `strata frameworks` and `strata ps`: one OperatorService call each, printed
//! as a table or as JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use strata_framework::AuthChannel;
use strata_framework::Error as SdkError;
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::{ListAgentsRequest, ListFrameworksRequest, ListTasksRequest};

use crate::args::{ListArgs, PsArgs};
use crate::render::{
    AgentRow, FrameworkRow, TaskRow, agents_table, frameworks_table, sort_tasks, tasks_table,
};

/// An OperatorService client for `allocator` (TLS for https://, the token on every call), and
/// the address as normalised for messages.
pub(crate) async fn client(
    allocator: &crate::security::Allocator,
) -> anyhow::Result<(OperatorServiceClient<AuthChannel>, String)> {
    let channel = strata_framework::dial_secure(&allocator.url, &allocator.security).await?;
    Ok((
        OperatorServiceClient::new(channel),
        strata_common::parse::endpoint_list(&allocator.url).map_err(anyhow::Error::msg)?,
    ))
}

/// Agent `agent_id` as the allocator lists it, which must serve an HTTP endpoint for
/// `purpose` ("to profile its tasks"): errors say which agent and what to start it with.
pub(crate) async fn agent_with_endpoint(
    client: &mut OperatorServiceClient<AuthChannel>,
    addr: &str,
    agent_id: &str,
    purpose: &str,
) -> anyhow::Result<strata_proto::AgentSummary> {
    let agents = client
        .list_agents(ListAgentsRequest {})
        .await
        .map_err(|s| rpc_error(addr, "ListAgents", &s))?
        .into_inner()
        .agents;
    let agent = agents
        .into_iter()
        .find(|a| a.id == agent_id)
        .with_context(|| format!("agent {agent_id} is no longer listed by the allocator"))?;
    if agent.endpoint.is_empty() {
        anyhow::bail!(
            "agent {} ({}) serves no HTTP endpoint: start it with --http-listen ADDR {purpose}",
            agent.id,
            agent.hostname
        );
    }
    Ok(agent)
}

/// An OperatorService call's failure as the SDK's error, which says what to do.
pub(crate) fn rpc_error(addr: &str, rpc: &'static str, status: &tonic::Status) -> SdkError {
    SdkError::from_status(addr, rpc, "OperatorService", status)
}

fn print_json<T: serde::Serialize>(rows: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(rows).context("cannot encode the answer as JSON")?;
    outln!("{text}")?;
    Ok(())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `strata agents`.
pub async fn agents(allocator: &crate::security::Allocator, args: &ListArgs) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    let response = client
        .list_agents(ListAgentsRequest {})
        .await
        .map_err(|s| rpc_error(&addr, "ListAgents", &s))?
        .into_inner();
    let mut rows: Vec<AgentRow> = response.agents.iter().map(AgentRow::new).collect();
    rows.sort_by(|a, b| a.hostname.cmp(&b.hostname).then_with(|| a.id.cmp(&b.id)));
    if args.json {
        print_json(&rows)
    } else {
        out!("{}", agents_table(&rows))?;
        Ok(())
    }
}

/// `strata frameworks`.
pub async fn frameworks(
    allocator: &crate::security::Allocator,
    args: &ListArgs,
) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    let response = client
        .list_frameworks(ListFrameworksRequest {})
        .await
        .map_err(|s| rpc_error(&addr, "ListFrameworks", &s))?
        .into_inner();
    let mut rows: Vec<FrameworkRow> = response.frameworks.iter().map(FrameworkRow::new).collect();
    rows.sort_by(|a, b| {
        a.registered_at
            .total_cmp(&b.registered_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    if args.json {
        print_json(&rows)
    } else {
        out!("{}", frameworks_table(&rows))?;
        Ok(())
    }
}

/// `strata ps`.
pub async fn ps(allocator: &crate::security::Allocator, args: &PsArgs) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    let response = client
        .list_tasks(ListTasksRequest {
            framework_id: args.framework.clone().unwrap_or_default(),
            agent_id: args.agent.clone().unwrap_or_default(),
            include_terminal: args.all,
        })
        .await
        .map_err(|s| rpc_error(&addr, "ListTasks", &s))?
        .into_inner();
    let mut rows: Vec<TaskRow> = response.tasks.iter().map(TaskRow::new).collect();
    sort_tasks(&mut rows);
    if args.json {
        print_json(&rows)
    } else {
        out!("{}", tasks_table(&rows, args.all, now()))?;
        Ok(())
    }
}
