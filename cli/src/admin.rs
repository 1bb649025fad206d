//! Cluster administration: `strata quota`, `strata weights`, `strata roles`,
//! `strata reservations`, `strata reserve|unreserve`, `strata agent drain|deactivate|reactivate`,
//! `strata framework teardown` and `strata watch`; one OperatorService call each.

use crate::operator::{client, rpc_error};
use anyhow::bail;
use clap::{Args, Subcommand};
use strata_proto::{
    DeactivateAgentRequest, DrainAgentRequest, GetQuotaRequest, ListReservationsRequest,
    ListRolesRequest, QuotaInfo, ReactivateAgentRequest, ReserveRequest, Resource, SetQuotaRequest,
    SetWeightsRequest, TeardownFrameworkRequest, UnreserveRequest, WatchRequest,
};

/// `strata quota`.
#[derive(Debug, Args)]
pub struct QuotaArgs {
    #[command(subcommand)]
    pub command: QuotaCommand,
}

/// `strata quota set|get|remove`.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a role's quota: `strata quota set eng cpus=100 mem=512GiB [--limit cpus=200]`.
    Set {
        /// The role.
        role: String,
        /// The guarantee, NAME=VALUE each (mem and disk take KiB/MiB/GiB/TiB, MiB by default).
        #[arg(value_name = "NAME=VALUE")]
        guarantee: Vec<String>,
        /// The limit, NAME=VALUE (repeatable); a resource not named has no limit, and a limit
        /// of 0 gives the role none beyond what it holds.
        #[arg(long = "limit", value_name = "NAME=VALUE")]
        limit: Vec<String>,
    },
    /// Show every role's quota.
    Get {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a role's quota.
    Remove {
        /// The role.
        role: String,
    },
}

/// `strata weights`.
#[derive(Debug, Args)]
pub struct WeightsArgs {
    #[command(subcommand)]
    pub command: WeightsCommand,
}

/// `strata weights set`.
#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Set role weights: `strata weights set eng=2 ads=1.5` (1 is the default).
    Set {
        /// ROLE=WEIGHT pairs.
        #[arg(required = true, value_name = "ROLE=WEIGHT")]
        weights: Vec<String>,
    },
}

/// `strata roles` and `strata reservations`.
#[derive(Debug, Args)]
pub struct AdminListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `strata reserve` and `strata unreserve`.
#[derive(Debug, Args)]
pub struct ReserveArgs {
    /// The agent.
    pub agent_id: String,
    /// The role the resources are (to be) reserved for.
    pub role: String,
    /// What to reserve, NAME=VALUE each: `cpus=2 mem=4GiB`.
    #[arg(required = true, value_name = "NAME=VALUE")]
    pub resources: Vec<String>,
}

/// `strata agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// `strata agent drain|deactivate|reactivate ID`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// No new offers on the agent, and its tasks are killed.
    Drain {
        /// The agent.
        agent_id: String,
        /// The kill grace period for its tasks, seconds (default: each task's own).
        #[arg(long)]
        grace_period: Option<f64>,
    },
    /// No new offers on the agent; its tasks keep running.
    Deactivate {
        /// The agent.
        agent_id: String,
    },
    /// Offer a drained or deactivated agent again.
    Reactivate {
        /// The agent.
        agent_id: String,
    },
}

/// `strata framework`.
#[derive(Debug, Args)]
pub struct FrameworkArgs {
    #[command(subcommand)]
    pub command: FrameworkCommand,
}

/// `strata framework teardown ID`.
#[derive(Debug, Subcommand)]
pub enum FrameworkCommand {
    /// Remove the framework: its tasks are killed and its id forgotten.
    Teardown {
        /// The framework.
        framework_id: String,
    },
}

/// Parses `cpus=100`, `mem=512GiB`, `disk=1TiB`, `gpus=2` into scalar resources (mem and
/// disk in MiB) reserved for `role` (empty: unreserved).
pub fn parse_resources(items: &[String], role: &str) -> anyhow::Result<Vec<Resource>> {
    items
        .iter()
        .map(|item| {
            let (name, value) =
                strata_common::parse::resource(item).map_err(|e| anyhow::anyhow!(e))?;
            Ok(Resource {
                role: role.to_owned(),
                ..Resource::scalar(&name, value)
            })
        })
        .collect()
}

fn show(resources: &[Resource]) -> String {
    if resources.is_empty() {
        return "-".to_owned();
    }
    resources
        .iter()
        .map(|r| {
            let value = if r.ranges.is_empty() {
                format!("{}", (r.scalar * 1000.0).round() / 1000.0)
            } else {
                r.ranges
                    .iter()
                    .map(|v| format!("{}-{}", v.begin, v.end))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            if r.role.is_empty() {
                format!("{}={value}", r.name)
            } else {
                format!("{}({})={value}", r.name, r.role)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// `strata quota ...`.
pub async fn quota(allocator: &crate::security::Allocator, args: QuotaArgs) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    match args.command {
        QuotaCommand::Set {
            role,
            guarantee,
            limit,
        } => {
            let quota = QuotaInfo {
                guarantee: parse_resources(&guarantee, "")?,
                limit: parse_resources(&limit, "")?,
                role: role.clone(),
            };
            if quota.guarantee.is_empty() && quota.limit.is_empty() {
                bail!(
                    "give a guarantee (cpus=4 mem=8GiB) or --limit; `strata quota remove {role}` removes it"
                );
            }
            if quota.limit.is_empty() && quota.guarantee.iter().all(|r| r.scalar == 0.0) {
                bail!(
                    "a guarantee of 0 with no limit is no quota: give a positive guarantee, or \
                     --limit (a limit of 0 caps the role at what it holds); `strata quota \
                     remove {role}` removes a quota"
                );
            }
            client
                .set_quota(SetQuotaRequest { quota: Some(quota) })
                .await
                .map_err(|s| rpc_error(&addr, "SetQuota", &s))?;
            outln!("quota of role {role} set")?;
        }
        QuotaCommand::Remove { role } => {
            client
                .set_quota(SetQuotaRequest {
                    quota: Some(QuotaInfo {
                        role: role.clone(),
                        ..QuotaInfo::default()
                    }),
                })
                .await
                .map_err(|s| rpc_error(&addr, "SetQuota", &s))?;
            outln!("quota of role {role} removed")?;
        }
        QuotaCommand::Get { json } => {
            let quotas = client
                .get_quota(GetQuotaRequest {})
                .await
                .map_err(|s| rpc_error(&addr, "GetQuota", &s))?
                .into_inner()
                .quotas;
            if json {
                let rows: Vec<serde_json::Value> = quotas
                    .iter()
                    .map(|q| {
                        serde_json::json!({
                            "role": q.role,
                            "guarantee": show(&q.guarantee),
                            "limit": show(&q.limit),
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                let rows = quotas
                    .iter()
                    .map(|q| vec![q.role.clone(), show(&q.guarantee), show(&q.limit)])
                    .collect();
                out!("{}", table(&["ROLE", "GUARANTEE", "LIMIT"], rows))?;
            }
        }
    }
    Ok(())
}

/// `strata weights set ...`.
pub async fn weights(
    allocator: &crate::security::Allocator,
    args: WeightsArgs,
) -> anyhow::Result<()> {
    let WeightsCommand::Set { weights } = args.command;
    let mut map = std::collections::HashMap::new();
    for item in &weights {
        let parsed = item
            .split_once('=')
            .and_then(|(role, w)| Some((role.trim().to_owned(), w.trim().parse::<f64>().ok()?)));
        let Some((role, weight)) = parsed else {
            bail!("invalid weight {item:?}: write ROLE=WEIGHT, e.g. eng=2");
        };
        map.insert(role, weight);
    }
    let (mut client, addr) = client(allocator).await?;
    client
        .set_weights(SetWeightsRequest { weights: map })
        .await
        .map_err(|s| rpc_error(&addr, "SetWeights", &s))?;
    outln!("weights set")?;
    Ok(())
}

/// `strata roles`.
pub async fn roles(
    allocator: &crate::security::Allocator,
    args: AdminListArgs,
) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    let roles = client
        .list_roles(ListRolesRequest {})
        .await
        .map_err(|s| rpc_error(&addr, "ListRoles", &s))?
        .into_inner()
        .roles;
    let rows: Vec<Vec<String>> = roles
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                format!("{}", r.weight),
                show(&r.allocated),
                show(&r.offered),
                show(&r.reserved),
                show(&r.guarantee),
                show(&r.limit),
                r.frameworks.len().to_string(),
            ]
        })
        .collect();
    let header = [
        "ROLE",
        "WEIGHT",
        "ALLOCATED",
        "OFFERED",
        "RESERVED",
        "GUARANTEE",
        "LIMIT",
        "FRAMEWORKS",
    ];
    if args.json {
        let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .into_iter()
            .map(|row| {
                header
                    .iter()
                    .map(|h| h.to_lowercase())
                    .zip(row.into_iter().map(serde_json::Value::String))
                    .collect()
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&objects)?)?;
    } else {
        out!("{}", table(&header, rows))?;
    }
    Ok(())
}

/// `strata reservations`.
pub async fn reservations(
    allocator: &crate::security::Allocator,
    args: AdminListArgs,
) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    let list = client
        .list_reservations(ListReservationsRequest {})
        .await
        .map_err(|s| rpc_error(&addr, "ListReservations", &s))?
        .into_inner()
        .reservations;
    if args.json {
        let rows: Vec<serde_json::Value> = list
            .iter()
            .map(|r| {
                serde_json::json!({
                    "agent_id": r.agent_id,
                    "role": r.role,
                    "resources": show(&r.resources),
                    "dynamic": r.dynamic,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        let rows = list
            .iter()
            .map(|r| {
                vec![
                    r.agent_id.clone(),
                    r.role.clone(),
                    show(&r.resources),
                    if r.dynamic { "dynamic" } else { "static" }.to_owned(),
                ]
            })
            .collect();
        out!("{}", table(&["AGENT", "ROLE", "RESOURCES", "KIND"], rows))?;
    }
    Ok(())
}

/// `strata reserve` (`reserve` true) and `strata unreserve`.
pub async fn reserve(
    allocator: &crate::security::Allocator,
    args: ReserveArgs,
    reserve: bool,
) -> anyhow::Result<()> {
    let resources = parse_resources(&args.resources, &args.role)?;
    let (mut client, addr) = client(allocator).await?;
    if reserve {
        client
            .reserve(ReserveRequest {
                agent_id: args.agent_id.clone(),
                resources,
            })
            .await
            .map_err(|s| rpc_error(&addr, "Reserve", &s))?;
        outln!("reserved on agent {} for role {}", args.agent_id, args.role)?;
    } else {
        client
            .unreserve(UnreserveRequest {
                agent_id: args.agent_id.clone(),
                resources,
            })
            .await
            .map_err(|s| rpc_error(&addr, "Unreserve", &s))?;
        outln!("unreserved on agent {}", args.agent_id)?;
    }
    Ok(())
}

/// `strata agent ...`.
pub async fn agent(allocator: &crate::security::Allocator, args: AgentArgs) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    match args.command {
        AgentCommand::Drain {
            agent_id,
            grace_period,
        } => {
            client
                .drain_agent(DrainAgentRequest {
                    agent_id: agent_id.clone(),
                    grace_period_seconds: grace_period,
                })
                .await
                .map_err(|s| rpc_error(&addr, "DrainAgent", &s))?;
            outln!("agent {agent_id} draining: no new offers, its tasks are being killed")?;
        }
        AgentCommand::Deactivate { agent_id } => {
            client
                .deactivate_agent(DeactivateAgentRequest {
                    agent_id: agent_id.clone(),
                })
                .await
                .map_err(|s| rpc_error(&addr, "DeactivateAgent", &s))?;
            outln!("agent {agent_id} deactivated: no new offers")?;
        }
        AgentCommand::Reactivate { agent_id } => {
            client
                .reactivate_agent(ReactivateAgentRequest {
                    agent_id: agent_id.clone(),
                })
                .await
                .map_err(|s| rpc_error(&addr, "ReactivateAgent", &s))?;
            outln!("agent {agent_id} reactivated")?;
        }
    }
    Ok(())
}

/// `strata framework teardown ID`.
pub async fn framework(
    allocator: &crate::security::Allocator,
    args: FrameworkArgs,
) -> anyhow::Result<()> {
    let FrameworkCommand::Teardown { framework_id } = args.command;
    let (mut client, addr) = client(allocator).await?;
    client
        .teardown_framework(TeardownFrameworkRequest {
            framework_id: framework_id.clone(),
        })
        .await
        .map_err(|s| rpc_error(&addr, "TeardownFramework", &s))?;
    outln!("framework {framework_id} torn down")?;
    Ok(())
}

/// `strata watch`: prints cluster events as they happen, one line each, until Ctrl-C.
pub async fn watch(allocator: &crate::security::Allocator) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    let mut stream = client
        .watch(WatchRequest {})
        .await
        .map_err(|s| rpc_error(&addr, "Watch", &s))?
        .into_inner();
    while let Some(e) = stream
        .message()
        .await
        .map_err(|s| rpc_error(&addr, "Watch", &s))?
    {
        let mut parts = vec![format!("{:.3}", e.timestamp), e.kind];
        for (k, v) in [
            ("agent", e.agent_id),
            ("framework", e.framework_id),
            ("task", e.task_id),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k}={v}"));
            }
        }
        if !e.message.is_empty() {
            parts.push(e.message.trim().to_owned());
        }
        outln!("{}", parts.join(" "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_with_units() {
        let r = parse_resources(
            &["cpus=100".into(), "mem=512GiB".into(), "disk=1.5TiB".into()],
            "",
        )
        .expect("valid");
        assert_eq!(r[0].scalar, 100.0);
        assert_eq!(r[1].scalar, 512.0 * 1024.0);
        assert_eq!(r[2].scalar, 1.5 * 1024.0 * 1024.0);
        let r = parse_resources(&["mem=64".into()], "eng").expect("valid");
        assert_eq!((r[0].scalar, r[0].role.as_str()), (64.0, "eng"));
        for bad in ["cpus", "cpus=x", "cpus=4GiB", "=4", "mem=-1"] {
            assert!(parse_resources(&[bad.into()], "").is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], vec![vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
