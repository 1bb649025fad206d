//! `strata job add|run|list|history|remove`: the jobs framework's control API (strata-jobs, or
//! `strata local --with jobs`).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use strata_jobs::client::JobsClient;

/// `strata job`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The jobs framework's control API.
    #[arg(long, env = "STRATA_JOBS", default_value = strata_jobs::flags::DEFAULT_LISTEN, value_name = "ADDR")]
    pub jobs: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: JobCommand,
}

/// The `strata job` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Add a job, or replace the definition of the job with its id: `strata job add FILE`
    /// (TOML or JSON; `-` reads standard input).
    Add {
        /// The definition's file, or `-`.
        file: PathBuf,
    },
    /// Start a run of a job now.
    Run {
        /// The job.
        id: String,
    },
    /// List the jobs: schedule, next run, active runs, latest outcome.
    List,
    /// A job's history: each ended attempt and skipped run, oldest first.
    History {
        /// The job.
        id: String,
    },
    /// Remove a job and its history (killing its running attempts).
    Remove {
        /// The job.
        id: String,
    },
}

/// Runs a `strata job` command.
pub async fn job(args: JobArgs, token: Option<String>) -> anyhow::Result<()> {
    let client = JobsClient::new(&args.jobs, token)?;
    let answer = match &args.command {
        JobCommand::Add { file } => {
            let text = read_definition(file, strata_jobs::spec::MAX_DEFINITION_BYTES)?;
            // Checked here too, for errors that name the file.
            strata_jobs::spec::JobSpec::parse(&text)
                .with_context(|| format!("{}", file.display()))?;
            client.add(text).await?
        }
        JobCommand::Run { id } => client.run(id).await?,
        JobCommand::List => client.list().await?,
        JobCommand::History { id } => client.history(id).await?,
        JobCommand::Remove { id } => client.remove(id).await?,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(());
    }
    match &args.command {
        JobCommand::Add { .. } => {
            let next = answer["next_run"].as_str().unwrap_or("only when run");
            outln!("job {} added; next run: {next}", str(&answer["id"]))?;
        }
        JobCommand::Run { id } => outln!("job {id}: run {} started", answer["run_id"])?,
        JobCommand::Remove { id } => outln!("job {id} removed")?,
        JobCommand::List => {
            let Some(jobs) = answer.as_array() else {
                bail!("the jobs framework answered {answer}");
            };
            let mut table =
                crate::render::table(&["ID", "SCHEDULE", "NEXT RUN", "ACTIVE", "LAST", "EXIT"]);
            for j in jobs {
                table.add_row(vec![
                    str(&j["id"]),
                    opt(&j["schedule"]),
                    opt(&j["next_run"]),
                    j["active_runs"].to_string(),
                    opt(&j["last_outcome"]),
                    opt(&j["last_exit_code"]),
                ]);
            }
            out!("{}", crate::render::finish(&table))?;
        }
        JobCommand::History { .. } => {
            let Some(records) = answer.as_array() else {
                bail!("the jobs framework answered {answer}");
            };
            let mut table = crate::render::table(&[
                "RUN", "ATTEMPT", "STATE", "EXIT", "STARTED", "ENDED", "MESSAGE",
            ]);
            for r in records {
                table.add_row(vec![
                    r["run_id"].to_string(),
                    r["attempt"].to_string(),
                    str(&r["outcome"]),
                    opt(&r["exit_code"]),
                    opt(&r["started_at"]),
                    opt(&r["ended_at"]),
                    opt(&r["message"]),
                ]);
            }
            out!("{}", crate::render::finish(&table))?;
        }
    }
    Ok(())
}

/// A definition from `file`, or standard input for `-` (at most `max` bytes and one more, so
/// that a longer one is refused by the parser's bound).
pub(crate) fn read_definition(file: &Path, max: usize) -> anyhow::Result<String> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .take(max as u64 + 1)
            .read_to_string(&mut text)
            .context("cannot read the definition from standard input")?;
    } else {
        text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(text)
}

/// A JSON string's text, or the value as JSON.
pub(crate) fn str(v: &Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string())
}

/// [`str`], with `-` for null.
pub(crate) fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        other => str(other),
    }
}
