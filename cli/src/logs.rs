//! `strata logs TASK [-f] [--stderr] [--tail N]`: a task's stdout (or stderr) from its sandbox,
//! and the streaming of `strata run`.
//!
//! It finds the task's agent through the allocator (`ListTasks` gives its agent and framework,
//! `ListAgents` the agent's HTTP endpoint), as `strata profile` does, and reads the file with
//! the agent's `GET /files/read` (raw bytes, at most 1 MiB a call); with `-f` it follows the
//! file with `GET /files/follow`, a stream that ends once the task has ended and the file is
//! drained (the agent follows it across log rotation). A task not running yet is waited for.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use strata_proto::{ListTasksRequest, TaskState, TaskSummary};

use crate::operator::{agent_with_endpoint, client, rpc_error};

/// How long the head of an answer from an agent may take.
const AGENT_ANSWER: Duration = Duration::from_secs(30);
/// The most bytes one read asks for (the agent serves at most 1 MiB).
const READ_BYTES: u64 = 1 << 20;
/// How far back `--tail` looks for the lines it prints, at most.
const TAIL_WINDOW: u64 = 16 << 20;
/// How often a task that is not running yet is looked up again.
const START_POLL: Duration = Duration::from_millis(200);

/// `strata logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The task's id.
    pub task_id: String,
    /// Keep printing what the task writes until it ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print the task's stderr instead of its stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Only the last N lines (then, with -f, what follows).
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// The task's framework, when several frameworks use the same task id.
    #[arg(long, value_name = "ID")]
    pub framework: Option<String>,
}

/// Where a task's files are served.
#[derive(Debug, Clone)]
pub struct TaskFiles {
    /// The agent's HTTP endpoint (`host:port` or a URL).
    pub endpoint: String,
    /// The task's framework.
    pub framework_id: String,
    /// The task.
    pub task_id: String,
    /// TLS and the token for the agent.
    pub options: strata_common::http::GetOptions,
}

impl TaskFiles {
    fn url(&self, what: &str, path: &str, extra: &str) -> String {
        crate::security::agent_url(
            &self.endpoint,
            &format!(
                "/files/{what}?framework={}&task={}&path={}{extra}",
                encode(&self.framework_id),
                encode(&self.task_id),
                encode(path)
            ),
        )
    }

    /// Bytes of `path` from `offset` (at most 1 MiB) and the file's size.
    pub async fn read(
        &self,
        path: &str,
        offset: u64,
        length: u64,
    ) -> anyhow::Result<(Vec<u8>, u64)> {
        let url = self.url("read", path, &format!("&offset={offset}&length={length}"));
        let answer = strata_common::http::get_with(&url, AGENT_ANSWER, &self.options)
            .await
            .with_context(|| format!("cannot read the task's {path} from its agent"))?;
        if answer.status != 200 {
            bail!(
                "the agent at {} refused to read {path} of task {} (HTTP {}): {}",
                self.endpoint,
                self.task_id,
                answer.status,
                answer.text().trim()
            );
        }
        let size = answer
            .headers
            .get("x-strata-file-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((answer.body, size))
    }

    /// Writes `path` from `offset` to its current end into `sink`; the offset reached.
    pub async fn copy(
        &self,
        path: &str,
        mut offset: u64,
        sink: &mut impl std::io::Write,
    ) -> anyhow::Result<u64> {
        loop {
            let (data, size) = self.read(path, offset, READ_BYTES).await?;
            write_all(sink, &data)?;
            offset += data.len() as u64;
            if data.is_empty() || offset >= size {
                return Ok(offset);
            }
        }
    }

    /// The offset where the last `lines` lines of `path` start.
    pub async fn tail_offset(&self, path: &str, lines: u64) -> anyhow::Result<u64> {
        let (_, size) = self.read(path, 0, 0).await?;
        let mut start = size;
        let mut found = 0u64;
        let floor = size.saturating_sub(TAIL_WINDOW);
        while start > floor {
            let from = start.saturating_sub(64 * 1024).max(floor);
            let (data, _) = self.read(path, from, start - from).await?;
            for (i, b) in data.iter().enumerate().rev() {
                // The last byte's newline ends the last line; it starts none.
                if *b == b'\n' && from + i as u64 + 1 != size {
                    found += 1;
                    if found == lines {
                        return Ok(from + i as u64 + 1);
                    }
                }
            }
            if data.is_empty() {
                break;
            }
            start = from;
        }
        Ok(floor)
    }

    /// Follows `path` from `offset` into `sink` until the agent ends the stream (the task
    /// has ended and the file is drained).
    pub async fn follow(
        &self,
        path: &str,
        offset: u64,
        sink: &mut impl std::io::Write,
    ) -> anyhow::Result<()> {
        let url = self.url("follow", path, &format!("&offset={offset}"));
        let mut stream = strata_common::http::get_stream(&url, AGENT_ANSWER, &self.options)
            .await
            .with_context(|| format!("cannot follow the task's {path} on its agent"))?;
        if stream.status != 200 {
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = stream.chunk().await {
                body.extend_from_slice(&chunk);
                if body.len() > 4096 {
                    break;
                }
            }
            bail!(
                "the agent at {} refused to follow {path} of task {} (HTTP {}): {}",
                self.endpoint,
                self.task_id,
                stream.status,
                String::from_utf8_lossy(&body).trim()
            );
        }
        while let Some(chunk) = stream
            .chunk()
            .await
            .with_context(|| format!("following the task's {path}"))?
        {
            write_all(sink, &chunk)?;
        }
        Ok(())
    }
}

/// Writes and flushes; a closed stdout ends the command quietly ([`crate::out`]).
fn write_all(sink: &mut impl std::io::Write, data: &[u8]) -> anyhow::Result<()> {
    sink.write_all(data)
        .and_then(|()| sink.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(crate::out::StdoutClosed),
            _ => anyhow::Error::new(e).context("cannot write the task's output"),
        })
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    use std::fmt::Write as _;
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

/// The agent endpoint of `agent_id`, from the allocator.
pub async fn agent_endpoint(
    allocator: &crate::security::Allocator,
    agent_id: &str,
) -> anyhow::Result<String> {
    let (mut client, addr) = client(allocator).await?;
    let agent =
        agent_with_endpoint(&mut client, &addr, agent_id, "to read its tasks' output").await?;
    Ok(agent.endpoint)
}

/// The task with this id: an active one wins over ended ones of the same id.
fn find_task(task_id: &str, tasks: &[TaskSummary], addr: &str) -> anyhow::Result<TaskSummary> {
    let mut matching: Vec<&TaskSummary> = tasks.iter().filter(|t| t.task_id == task_id).collect();
    matching.sort_by_key(|t| t.state().is_terminal());
    let Some(first) = matching.first() else {
        bail!(
            "the allocator at {addr} knows no task {task_id}: check the id with `strata ps --all`"
        );
    };
    let active = matching.iter().filter(|t| !t.state().is_terminal()).count();
    if active > 1 || (active == 0 && matching.len() > 1) {
        let frameworks: Vec<&str> = matching.iter().map(|t| t.framework_id.as_str()).collect();
        bail!(
            "task id {task_id} is used by several frameworks ({}): pass --framework ID",
            frameworks.join(", ")
        );
    }
    Ok((*first).clone())
}

/// `strata logs TASK ...`.
pub async fn logs(allocator: &crate::security::Allocator, args: LogsArgs) -> anyhow::Result<()> {
    let (mut client, addr) = client(allocator).await?;
    let task = loop {
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
        let task = find_task(&args.task_id, &tasks, &addr)?;
        // Its sandbox is made at launch: wait for that (and, to follow, for it to run).
        if matches!(task.state(), TaskState::Staging | TaskState::Starting) {
            tokio::time::sleep(START_POLL).await;
            continue;
        }
        break task;
    };
    let files = TaskFiles {
        endpoint: agent_endpoint(allocator, &task.agent_id).await?,
        framework_id: task.framework_id.clone(),
        task_id: task.task_id.clone(),
        options: allocator.get_options()?,
    };
    let path = if args.stderr { "stderr" } else { "stdout" };
    let offset = match args.tail {
        Some(lines) => files.tail_offset(path, lines).await?,
        None => 0,
    };
    let mut stdout = std::io::stdout();
    if args.follow {
        files.follow(path, offset, &mut stdout).await
    } else {
        files.copy(path, offset, &mut stdout).await.map(|_| ())
    }
}

/// `strata run`'s live output: the task's stdout to this stdout and its stderr to this stderr,
/// each followed until the task has ended and the file is drained. Errors are printed, never
/// fatal: the task's exit code is what `strata run` reports.
pub fn stream_output(
    allocator: crate::security::Allocator,
    agent_id: String,
    framework_id: String,
    task_id: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let files = async {
            Ok::<_, anyhow::Error>(TaskFiles {
                endpoint: agent_endpoint(&allocator, &agent_id).await?,
                framework_id,
                task_id,
                options: allocator.get_options()?,
            })
        };
        let files = match files.await {
            Ok(files) => files,
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "strata: cannot show the task's output: {e:#}"
                );
                return;
            }
        };
        let out = {
            let files = files.clone();
            tokio::spawn(async move { files.follow("stdout", 0, &mut std::io::stdout()).await })
        };
        let err = files.follow("stderr", 0, &mut std::io::stderr()).await;
        for (what, result) in [
            ("stdout", out.await.unwrap_or_else(|e| Err(e.into()))),
            ("stderr", err),
        ] {
            if let Err(e) = result
                && !crate::out::is_stdout_closed(&e)
            {
                let _ = writeln!(
                    std::io::stderr(),
                    "strata: cannot show the task's {what}: {e:#}"
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(task: &str, fw: &str, state: TaskState) -> TaskSummary {
        TaskSummary {
            task_id: task.into(),
            framework_id: fw.into(),
            state: state as i32,
            ..TaskSummary::default()
        }
    }

    #[test]
    fn the_task_is_the_active_one_or_the_one_ended_one() {
        let tasks = [
            summary("t", "fw1", TaskState::Finished),
            summary("t", "fw2", TaskState::Running),
            summary("u", "fw1", TaskState::Finished),
            summary("v", "fw1", TaskState::Finished),
            summary("v", "fw2", TaskState::Failed),
        ];
        assert_eq!(find_task("t", &tasks, "a").unwrap().framework_id, "fw2");
        assert_eq!(find_task("u", &tasks, "a").unwrap().framework_id, "fw1");
        let e = find_task("v", &tasks, "a").unwrap_err().to_string();
        assert!(e.contains("--framework"), "{e}");
        let e = find_task("w", &tasks, "a").unwrap_err().to_string();
        assert!(e.contains("strata ps --all"), "{e}");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("a b/../c"), "a%20b%2F..%2Fc");
    }
}
