//! `strata app deploy|list|show|scale|restart|suspend|destroy|plan`: the services framework's
//! control API (strata-services, or `strata local --with services`).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use strata_services::client::ServicesClient;

use crate::job::{opt, read_definition, str};

/// `strata app`.
#[derive(Debug, Args)]
pub struct AppArgs {
    /// The services framework's control API.
    #[arg(long, env = "STRATA_SERVICES", default_value = strata_services::flags::DEFAULT_LISTEN, value_name = "ADDR")]
    pub services: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AppCommand,
}

/// The `strata app` subcommands.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Deploy an app: `strata app deploy FILE` (TOML or JSON; `-` reads standard input). A
    /// changed definition rolls out within its upgrade strategy.
    Deploy {
        /// The definition's file, or `-`.
        file: PathBuf,
    },
    /// List the apps: version, instances, healthy, deployment.
    List,
    /// One app: its definition and instances.
    Show {
        /// The app.
        id: String,
    },
    /// Set an app's instance count.
    Scale {
        /// The app.
        id: String,
        /// The instance count.
        instances: u32,
    },
    /// Replace every instance of an app (a rolling restart).
    Restart {
        /// The app.
        id: String,
    },
    /// Scale an app to zero instances (its definition stays).
    Suspend {
        /// The app.
        id: String,
    },
    /// Kill every instance of an app and remove it.
    Destroy {
        /// The app.
        id: String,
    },
    /// The plan the framework follows for an app: phases and steps with their status.
    Plan {
        /// The app.
        id: String,
    },
}

/// Runs a `strata app` command.
pub async fn app(args: AppArgs, token: Option<String>) -> anyhow::Result<()> {
    let client = ServicesClient::new(&args.services, token)?;
    let answer = match &args.command {
        AppCommand::Deploy { file } => {
            let text = read_definition(file, strata_services::spec::MAX_DEFINITION_BYTES)?;
            // Checked here too, for errors that name the file.
            strata_services::spec::AppSpec::parse(&text)
                .with_context(|| format!("{}", file.display()))?;
            client.deploy(text).await?
        }
        AppCommand::List => client.list().await?,
        AppCommand::Show { id } => client.show(id).await?,
        AppCommand::Scale { id, instances } => client.scale(id, *instances).await?,
        AppCommand::Restart { id } => client.restart(id).await?,
        AppCommand::Suspend { id } => client.suspend(id).await?,
        AppCommand::Destroy { id } => client.destroy(id).await?,
        AppCommand::Plan { id } => client.plan(id).await?,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(());
    }
    match &args.command {
        AppCommand::Deploy { .. } | AppCommand::Restart { .. } => outln!(
            "app {} at version {}; follow it with: strata app plan {}",
            str(&answer["id"]),
            answer["version"],
            str(&answer["id"])
        )?,
        AppCommand::Scale { id, instances } => outln!("app {id} scaled to {instances}")?,
        AppCommand::Suspend { id } => outln!("app {id} suspended (0 instances)")?,
        AppCommand::Destroy { id } => outln!("app {id} is being destroyed")?,
        AppCommand::List => {
            let Some(apps) = answer.as_array() else {
                bail!("the services framework answered {answer}");
            };
            let mut table = crate::render::table(&[
                "ID",
                "VERSION",
                "INSTANCES",
                "RUNNING",
                "HEALTHY",
                "DEPLOYMENT",
            ]);
            for a in apps {
                table.add_row(vec![
                    str(&a["id"]),
                    a["version"].to_string(),
                    a["instances"].to_string(),
                    a["running"].to_string(),
                    a["healthy"].to_string(),
                    opt(&a["deployment"]),
                ]);
            }
            out!("{}", crate::render::finish(&table))?;
        }
        AppCommand::Show { .. } => {
            outln!(
                "app {}: version {}, {} instances wanted, {} running, {} healthy, deployment {}",
                str(&answer["id"]),
                answer["version"],
                answer["instances"],
                answer["running"],
                answer["healthy"],
                opt(&answer["deployment"])
            )?;
            let mut table = crate::render::table(&["TASK", "VERSION", "STATE", "HEALTHY", "AGENT"]);
            if let Some(instances) = answer["instance_list"].as_object() {
                for (task, i) in instances {
                    table.add_row(vec![
                        task.clone(),
                        i["version"].to_string(),
                        str(&i["state"]),
                        opt(&i["healthy"]),
                        str(&i["agent_id"]),
                    ]);
                }
            }
            out!("{}", crate::render::finish(&table))?;
        }
        AppCommand::Plan { .. } => out!("{}", render_plan(&answer))?,
    }
    Ok(())
}

/// A plan as text: the plan's line, then each phase and its steps, indented.
fn render_plan(plan: &Value) -> String {
    let mut text = format!(
        "app {} version {}: {} ({})\n",
        str(&plan["app"]),
        plan["version"],
        str(&plan["strategy"]),
        str(&plan["status"])
    );
    for phase in plan["phases"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "  {} ({})\n",
            str(&phase["name"]),
            str(&phase["status"])
        ));
        for step in phase["steps"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "    {} ({})\n",
                str(&step["name"]),
                str(&step["status"])
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_render_phases_and_steps() {
        let plan = serde_json::json!({"app": "web", "version": 2, "strategy": "deploy",
            "status": "IN_PROGRESS", "phases": [{"name": "run 1 healthy instances of version 2",
            "status": "IN_PROGRESS", "steps": [{"name": "instance 1 of 1 at version 2",
            "status": "IN_PROGRESS"}]}]});
        assert_eq!(
            render_plan(&plan),
            "app web version 2: deploy (IN_PROGRESS)\n  run 1 healthy instances of version 2 \
             (IN_PROGRESS)\n    instance 1 of 1 at version 2 (IN_PROGRESS)\n"
        );
    }
}
