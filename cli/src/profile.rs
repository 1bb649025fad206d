//! `strata profile TASK [--seconds N] [--out DIR]`: a CPU profile of one running task.
//!
//! It finds the task's agent through the allocator (`ListTasks` gives its agent, `ListAgents`
//! the agent's HTTP endpoint), asks the agent for `GET /profile?task=ID&seconds=N` (the agent
//! samples the task's cgroup only, in eBPF, and symbolizes the stacks), writes the folded stacks
//! to `DIR/TASK.folded` and a flame graph rendered with inferno to `DIR/TASK.svg`, and prints the
//! functions with the most samples.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use strata_proto::{ListTasksRequest, TaskState, TaskSummary};

use crate::operator::{agent_with_endpoint, client, rpc_error};

/// `strata profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The task's id.
    pub task_id: String,
    /// How long to sample, in seconds (1 to 300).
    #[arg(long, short = 's', default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub seconds: u64,
    /// Where to write TASK.folded and TASK.svg.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// The task's framework, when several frameworks use the same task id.
    #[arg(long, value_name = "ID")]
    pub framework: Option<String>,
    /// How many functions to print.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

/// `strata profile TASK ...`.
pub async fn profile(
    allocator: &crate::security::Allocator,
    args: ProfileArgs,
) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    let tasks = client
        .list_tasks(ListTasksRequest {
            framework_id: args.framework.clone().unwrap_or_default(),
            agent_id: String::new(),
            include_terminal: true,
        })
        .await
        .map_err(|s| rpc_error(&addr, "ListTasks", &s))?
        .into_inner()
        .tasks;
    let task = running_task(&args.task_id, &tasks, &addr)?;
    let agent = agent_with_endpoint(&mut client, &addr, &task.agent_id, "to profile its tasks")
        .await
        .with_context(|| format!("task {} runs on agent {}", task.task_id, task.agent_id))?;
    let path = format!(
        "/profile?task={}&seconds={}&framework={}",
        encode(&task.task_id),
        args.seconds,
        encode(&task.framework_id)
    );
    eprintln!(
        "profiling task {} on agent {} ({}) for {} s ...",
        task.task_id, agent.hostname, agent.endpoint, args.seconds
    );
    let limit = Duration::from_secs(args.seconds + 30);
    let options = allocator.get_options()?;
    let url = crate::security::agent_url(&agent.endpoint, &path);
    let answer = strata_common::http::get_with(&url, limit, &options)
        .await
        .with_context(|| {
            format!(
                "cannot get the profile from the agent at {}",
                agent.endpoint
            )
        })?;
    let (status, body) = (answer.status, answer.text());
    if status != 200 {
        bail!(
            "agent at {} refused the profile (HTTP {status}): {}",
            agent.endpoint,
            body.trim()
        );
    }
    let written = write_outputs(&args.out, &task.task_id, &body, args.seconds)?;
    let stacks = strata_agent::profile::parse_folded(&body);
    out!("{}", summary(&stacks, args.top))?;
    for path in written {
        outln!("wrote {}", path.display())?;
    }
    Ok(())
}

/// The one running task with this id (an active one wins over ended ones of the same id).
fn running_task<'a>(
    task_id: &str,
    tasks: &'a [TaskSummary],
    addr: &str,
) -> anyhow::Result<&'a TaskSummary> {
    let mut matching: Vec<&TaskSummary> = tasks.iter().filter(|t| t.task_id == task_id).collect();
    matching.sort_by_key(|t| t.state().is_terminal());
    let Some(first) = matching.first() else {
        bail!(
            "the allocator at {addr} knows no task {task_id}: check the id with `strata ps --all`"
        );
    };
    let active: Vec<&&TaskSummary> = matching
        .iter()
        .filter(|t| !t.state().is_terminal())
        .collect();
    if active.len() > 1 {
        let frameworks: Vec<&str> = active.iter().map(|t| t.framework_id.as_str()).collect();
        bail!(
            "task id {task_id} is used by {} frameworks ({}): pass --framework ID",
            active.len(),
            frameworks.join(", ")
        );
    }
    if first.state() != TaskState::Running {
        bail!(
            "task {task_id} is {}, not running: only a running task can be profiled",
            first.state().as_str_name().trim_start_matches("TASK_")
        );
    }
    Ok(first)
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Writes `DIR/TASK.folded` and, when there are samples, `DIR/TASK.svg`; returns the paths.
fn write_outputs(
    dir: &Path,
    task_id: &str,
    folded: &str,
    seconds: u64,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    // A task id may hold characters a file name cannot.
    let name: String = task_id
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    let folded_path = dir.join(format!("{name}.folded"));
    std::fs::write(&folded_path, folded)
        .with_context(|| format!("cannot write {}", folded_path.display()))?;
    let mut written = vec![folded_path];
    if folded.trim().is_empty() {
        eprintln!(
            "no samples: the task did not run on a CPU during the {seconds} s (idle or \
             sleeping); no flame graph written"
        );
        return Ok(written);
    }
    let svg_path = dir.join(format!("{name}.svg"));
    let svg = flame_graph(folded, &format!("strata profile {task_id} ({seconds} s)"))?;
    std::fs::write(&svg_path, svg)
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    written.push(svg_path);
    Ok(written)
}

/// The flame graph SVG of folded stacks.
fn flame_graph(folded: &str, title: &str) -> anyhow::Result<Vec<u8>> {
    let mut options = inferno::flamegraph::Options::default();
    title.clone_into(&mut options.title);
    "samples".clone_into(&mut options.count_name);
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
        .context("cannot render the flame graph")?;
    Ok(svg)
}

/// The functions with the most samples: their total (on the stack) and self (the leaf) share.
fn summary(stacks: &std::collections::BTreeMap<String, u64>, top: usize) -> String {
    let total: u64 = stacks.values().sum();
    let mut out = String::new();
    if total == 0 {
        return out;
    }
    let mut leaf: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (stack, &n) in stacks {
        if let Some(f) = stack.rsplit(';').next() {
            *leaf.entry(f).or_insert(0) += n;
        }
    }
    let _ = writeln!(
        out,
        "{total} samples; top functions (total = on the stack, self = running):"
    );
    let _ = writeln!(out, "{:>7} {:>7}  function", "total", "self");
    let pct = |n: u64| 100.0 * n as f64 / total as f64;
    for (frame, n) in strata_agent::profile::frames_by_total(stacks)
        .into_iter()
        .take(top)
    {
        let own = leaf.get(frame.as_str()).copied().unwrap_or(0);
        let _ = writeln!(out, "{:>6.1}% {:>6.1}%  {frame}", pct(n), pct(own));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, fw: &str, state: TaskState) -> TaskSummary {
        let mut t = TaskSummary {
            task_id: id.to_owned(),
            framework_id: fw.to_owned(),
            agent_id: "a1".to_owned(),
            ..Default::default()
        };
        t.set_state(state);
        t
    }

    #[test]
    fn only_one_running_task_is_profiled_and_the_errors_say_why() {
        let tasks = [
            task("web", "fw1", TaskState::Finished),
            task("web", "fw1", TaskState::Running),
            task("done", "fw1", TaskState::Finished),
            task("dup", "fw1", TaskState::Running),
            task("dup", "fw2", TaskState::Running),
        ];
        let t = running_task("web", &tasks, "a:1").expect("running");
        assert_eq!(t.state(), TaskState::Running);
        let err = running_task("nope", &tasks, "a:1").expect_err("unknown");
        assert!(err.to_string().contains("knows no task nope"), "{err}");
        let err = running_task("done", &tasks, "a:1").expect_err("ended");
        assert!(err.to_string().contains("FINISHED, not running"), "{err}");
        let err = running_task("dup", &tasks, "a:1").expect_err("ambiguous");
        assert!(err.to_string().contains("--framework"), "{err}");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn outputs_are_the_folded_text_and_a_flame_graph_svg() {
        let dir = tempfile::tempdir().unwrap();
        let folded = "app;main;hot 90\napp;main;cold 10\n";
        let written = write_outputs(dir.path(), "t/1", folded, 5).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(std::fs::read_to_string(&written[0]).unwrap(), folded);
        let svg = std::fs::read_to_string(dir.path().join("t_1.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("hot"), "{svg}");
        let stacks = strata_agent::profile::parse_folded(folded);
        let text = summary(&stacks, 5);
        assert!(text.contains("100 samples"), "{text}");
        assert!(text.contains(" 90.0%   90.0%  hot"), "{text}");
        // No samples: only the (empty) folded file.
        let written = write_outputs(dir.path(), "idle", "", 5).unwrap();
        assert_eq!(written.len(), 1);
    }
}
