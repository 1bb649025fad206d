//! `strata top [--agent ID] [--framework ID] [--sort cpu|mem|net|runq] [--interval 1s]`: a live
//! table of the running tasks' usage across the cluster (or one agent, or one framework),
//! drawn with ratatui; `c`, `m`, `n`, `r` sort by cpu, memory, network, run-queue latency;
//! `q`, Esc or Ctrl-C quit. The terminal is restored on exit and on panic (ratatui's hook).
//! When stdout is not a terminal, it prints one snapshot table and exits (for scripts): two
//! samples an interval apart, so network rates are real.
//!
//! The data, sorting and formatting ([`TopState`], [`sort_rows`], [`row_cells`],
//! [`snapshot_table`]) are pure and tested apart from drawing ([`draw`], tested on ratatui's
//! `TestBackend`).

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::{GetUsageRequest, TaskUsage};
use tokio::sync::mpsc;

use crate::operator::{client, rpc_error};
use crate::render::fmt_scalar;
use crate::usage::{fmt_latency, net_rates};
use strata_common::parse;

/// `strata top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Only the tasks on this agent.
    #[arg(long, value_name = "ID")]
    pub agent: Option<String>,
    /// Only this framework's tasks.
    #[arg(long, value_name = "ID")]
    pub framework: Option<String>,
    /// The column to sort by, largest first (keys c, m, n, r, g change it).
    #[arg(long, value_enum, default_value_t = SortKey::Cpu)]
    pub sort: SortKey,
    /// How often to refresh.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, default_value = "1s")]
    pub interval: Duration,
}

/// What `strata top` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Cores used.
    Cpu,
    /// Memory in use.
    Mem,
    /// Network bytes per second, received and sent.
    Net,
    /// Run-queue latency, p99.
    Runq,
    /// GPU SM utilisation (summed over the task's GPUs).
    Gpu,
}

impl SortKey {
    fn label(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Mem => "mem",
            Self::Net => "net",
            Self::Runq => "runq",
            Self::Gpu => "gpu",
        }
    }

    /// The column of [`HEADER`] it sorts.
    fn column(self) -> usize {
        match self {
            Self::Cpu => 3,
            Self::Mem => 4,
            Self::Net => 5,
            Self::Runq => 6,
            Self::Gpu => 8,
        }
    }
}

/// One task's line.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    pub task_id: String,
    pub framework_id: String,
    pub agent_id: String,
    /// Cores used over the last interval.
    pub cpu_cores: f64,
    /// The hard limit, else the request (0: neither).
    pub cpu_limit: f64,
    pub mem_bytes: u64,
    /// memory.max (0: none).
    pub mem_limit: u64,
    /// Bytes per second, once two records of the task were seen.
    pub rx_rate: Option<f64>,
    pub tx_rate: Option<f64>,
    /// None without eBPF on the agent.
    pub runq_p99: Option<f64>,
    pub pids: u64,
    /// The task's GPUs (0: none), their SM utilisation summed (percent of one GPU) and the
    /// GPU memory its processes hold.
    pub gpus: usize,
    pub gpu_sm_percent: f64,
    pub gpu_mem_bytes: u64,
}

/// The records seen last, so that network rates come from two records of each task.
#[derive(Debug, Default)]
pub struct TopState {
    last: HashMap<(String, String), TaskUsage>,
    rates: HashMap<(String, String), (f64, f64)>,
}

impl TopState {
    /// Takes the latest records and returns one row per task (tasks not listed are gone).
    pub fn update(&mut self, records: Vec<TaskUsage>) -> Vec<TopRow> {
        let mut last = HashMap::with_capacity(records.len());
        let mut rates = HashMap::with_capacity(records.len());
        let mut rows = Vec::with_capacity(records.len());
        for record in records {
            let key = (record.framework_id.clone(), record.task_id.clone());
            let previous = self.last.get(&key);
            // A new sample gives new rates; the same sample keeps the ones it had.
            let rate = match previous {
                Some(p) if p.timestamp != record.timestamp => net_rates(p, &record),
                Some(_) => self.rates.get(&key).copied(),
                None => None,
            };
            if let Some(rate) = rate {
                rates.insert(key.clone(), rate);
            }
            rows.push(row(&record, rate));
            last.insert(key, record);
        }
        self.last = last;
        self.rates = rates;
        rows
    }
}

fn row(u: &TaskUsage, rate: Option<(f64, f64)>) -> TopRow {
    let cpu = u.cpu.clone().unwrap_or_default();
    let mem = u.memory.unwrap_or_default();
    TopRow {
        task_id: u.task_id.clone(),
        framework_id: u.framework_id.clone(),
        agent_id: u.agent_id.clone(),
        cpu_cores: cpu.cores,
        cpu_limit: if cpu.limit_cores > 0.0 {
            cpu.limit_cores
        } else {
            cpu.request_cores
        },
        mem_bytes: mem.current_bytes,
        mem_limit: mem.limit_bytes,
        rx_rate: rate.map(|r| r.0),
        tx_rate: rate.map(|r| r.1),
        runq_p99: cpu.run_queue.map(|rq| rq.p99_seconds),
        pids: u.pids.as_ref().map_or(0, |p| p.current),
        gpus: u.gpus.len(),
        gpu_sm_percent: u.gpus.iter().map(|g| g.sm_utilization_percent).sum(),
        gpu_mem_bytes: u.gpus.iter().map(|g| g.memory_used_bytes).sum(),
    }
}

/// Sorts largest first by `key`, then by framework and task id (stable output).
pub fn sort_rows(rows: &mut [TopRow], key: SortKey) {
    let value = |r: &TopRow| match key {
        SortKey::Cpu => r.cpu_cores,
        SortKey::Mem => r.mem_bytes as f64,
        SortKey::Net => r.rx_rate.unwrap_or(0.0) + r.tx_rate.unwrap_or(0.0),
        SortKey::Runq => r.runq_p99.unwrap_or(-1.0),
        SortKey::Gpu => r.gpu_sm_percent,
    };
    rows.sort_by(|a, b| {
        value(b)
            .total_cmp(&value(a))
            .then_with(|| a.framework_id.cmp(&b.framework_id))
            .then_with(|| a.task_id.cmp(&b.task_id))
    });
}

/// The columns.
pub const HEADER: [&str; 9] = [
    "TASK",
    "FRAMEWORK",
    "AGENT",
    "CPU/LIMIT",
    "MEM/LIMIT",
    "NET RX/TX /s",
    "RUNQ P99",
    "PIDS",
    "GPU SM/MEM",
];

/// Bytes in a few characters: `512B`, `1.5Ki`, `48.0Mi`, `3.0Gi`.
pub fn fmt_bytes_short(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["Ki", "Mi", "Gi", "Ti", "Pi"];
    if !bytes.is_finite() || bytes < 1024.0 {
        return format!("{}B", bytes.max(0.0).round());
    }
    let mut value = bytes / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// A row's cells, in [`HEADER`] order.
pub fn row_cells(r: &TopRow) -> [String; 9] {
    let limit = |text: String| if text == "0" { "-".to_owned() } else { text };
    let rate = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), fmt_bytes_short);
    [
        r.task_id.clone(),
        r.framework_id.clone(),
        r.agent_id.clone(),
        format!("{:.2}/{}", r.cpu_cores, limit(fmt_scalar(r.cpu_limit))),
        format!(
            "{}/{}",
            fmt_bytes_short(r.mem_bytes as f64),
            if r.mem_limit == 0 {
                "-".to_owned()
            } else {
                fmt_bytes_short(r.mem_limit as f64)
            }
        ),
        format!("{}/{}", rate(r.rx_rate), rate(r.tx_rate)),
        r.runq_p99.map_or_else(|| "-".to_owned(), fmt_latency),
        r.pids.to_string(),
        if r.gpus == 0 {
            "-".to_owned()
        } else {
            format!(
                "{}x {:.0}%/{}",
                r.gpus,
                r.gpu_sm_percent,
                fmt_bytes_short(r.gpu_mem_bytes as f64)
            )
        },
    ]
}

/// What shows when no task reports usage.
const EMPTY: &str = "no running task reports usage yet: agents report each task every interval (1s by default), from its first second on";

/// The rows as a plain, column-aligned table (the snapshot printed when stdout is no
/// terminal).
pub fn snapshot_table(rows: &[TopRow]) -> String {
    if rows.is_empty() {
        return format!("{EMPTY}\n");
    }
    let cells: Vec<[String; 9]> = rows.iter().map(row_cells).collect();
    let mut widths = HEADER.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&HEADER.map(str::to_owned));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// What one frame shows.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Sorted.
    pub rows: Vec<TopRow>,
    pub sort: SortKey,
    /// `cluster`, `agent ID`, `framework ID`.
    pub scope: String,
    /// The last refresh's failure, if it failed.
    pub error: Option<String>,
}

/// Draws `view`: a title line, the table (the sort column's header highlighted), and a line
/// for the last error or the keys.
pub fn draw(frame: &mut Frame<'_>, view: &View) {
    let [title, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "strata top: {} task{} ({}), sorted by {}",
            view.rows.len(),
            if view.rows.len() == 1 { "" } else { "s" },
            view.scope,
            view.sort.label()
        )))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        title,
    );
    if view.rows.is_empty() {
        frame.render_widget(Paragraph::new(EMPTY), body);
    } else {
        let sorted = view.sort.column();
        let header = Row::new(HEADER.iter().enumerate().map(|(i, h)| {
            let style = if i == sorted {
                Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)
            } else {
                Style::new().add_modifier(Modifier::BOLD)
            };
            Cell::from(*h).style(style)
        }));
        let cells: Vec<[String; 9]> = view.rows.iter().map(row_cells).collect();
        let mut widths = HEADER.map(|h| h.len() as u16);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(u16::try_from(c.chars().count()).unwrap_or(u16::MAX));
            }
        }
        let rows = cells.into_iter().map(Row::new);
        frame.render_widget(
            Table::new(rows, widths.map(Constraint::Length))
                .header(header)
                .column_spacing(2),
            body,
        );
    }
    let footer_line = match &view.error {
        Some(error) => {
            Paragraph::new(format!("refresh failed: {error}")).style(Style::new().fg(Color::Red))
        }
        None => Paragraph::new("keys: c cpu  m mem  n net  r run queue  g gpu  q quit"),
    };
    frame.render_widget(footer_line, footer);
}

/// What a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Sort(SortKey),
    Nothing,
}

/// The action of a key press (releases and repeats do nothing).
pub fn key_action(key: KeyEvent) -> Action {
    if key.kind != KeyEventKind::Press {
        return Action::Nothing;
    }
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('c') => Action::Sort(SortKey::Cpu),
        KeyCode::Char('m') => Action::Sort(SortKey::Mem),
        KeyCode::Char('n') => Action::Sort(SortKey::Net),
        KeyCode::Char('r') => Action::Sort(SortKey::Runq),
        KeyCode::Char('g') => Action::Sort(SortKey::Gpu),
        _ => Action::Nothing,
    }
}

async fn fetch(
    client: &mut OperatorServiceClient<strata_framework::AuthChannel>,
    addr: &str,
    request: &GetUsageRequest,
) -> anyhow::Result<Vec<TaskUsage>> {
    Ok(client
        .get_usage(request.clone())
        .await
        .map_err(|s| rpc_error(addr, "GetUsage", &s))?
        .into_inner()
        .tasks)
}

/// `strata top`.
pub async fn top(allocator: &crate::security::Allocator, args: TopArgs) -> anyhow::Result<()> {
    if args.interval.is_zero() {
        bail!("--interval must be greater than zero, e.g. --interval 1s");
    }
    let (mut client, addr) = client(allocator).await?;
    let request = GetUsageRequest {
        task_id: String::new(),
        framework_id: args.framework.clone().unwrap_or_default(),
        agent_id: args.agent.clone().unwrap_or_default(),
    };
    let mut state = TopState::default();
    // The first call before the terminal is touched: a wrong address fails plainly.
    let mut rows = state.update(fetch(&mut client, &addr, &request).await?);
    if !std::io::stdout().is_terminal() {
        tokio::time::sleep(args.interval).await;
        let mut rows = state.update(fetch(&mut client, &addr, &request).await?);
        sort_rows(&mut rows, args.sort);
        out!("{}", snapshot_table(&rows))?;
        return Ok(());
    }
    let scope = match (&args.agent, &args.framework) {
        (Some(a), Some(f)) => format!("agent {a}, framework {f}"),
        (Some(a), None) => format!("agent {a}"),
        (None, Some(f)) => format!("framework {f}"),
        (None, None) => "cluster".to_owned(),
    };
    // Installs a panic hook that restores the terminal, then raw mode and the alternate screen.
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(e) => {
            ratatui::restore();
            return Err(e).context("cannot set up the terminal for `strata top`");
        }
    };
    let keys = spawn_key_reader();
    let mut view = View {
        rows: Vec::new(),
        sort: args.sort,
        scope,
        error: None,
    };
    sort_rows(&mut rows, view.sort);
    view.rows = rows;
    let result = run_ui(
        &mut terminal,
        keys,
        &mut view,
        args.interval,
        || {
            let mut client = client.clone();
            let addr = addr.clone();
            let request = request.clone();
            async move { fetch(&mut client, &addr, &request).await }
        },
        &mut state,
    )
    .await;
    ratatui::restore();
    result
}

/// Terminal events the UI reacts to.
enum UiEvent {
    Key(KeyEvent),
    Resize,
}

/// Reads terminal events on a thread of its own (crossterm's read blocks) until the UI is gone.
fn spawn_key_reader() -> mpsc::Receiver<UiEvent> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        loop {
            let ui = match event::read() {
                Ok(Event::Key(key)) => UiEvent::Key(key),
                Ok(Event::Resize(..)) => UiEvent::Resize,
                Ok(_) => continue,
                Err(_) => break,
            };
            if tx.blocking_send(ui).is_err() {
                break;
            }
        }
    });
    rx
}

async fn run_ui<F, Fut>(
    terminal: &mut ratatui::DefaultTerminal,
    mut keys: mpsc::Receiver<UiEvent>,
    view: &mut View,
    interval: Duration,
    fetch: F,
    state: &mut TopState,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<TaskUsage>>>,
{
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        terminal
            .draw(|frame| draw(frame, view))
            .context("cannot draw on the terminal")?;
        tokio::select! {
            _ = ticker.tick() => match fetch().await {
                Ok(records) => {
                    view.rows = state.update(records);
                    view.error = None;
                }
                Err(e) => view.error = Some(format!("{e:#}")),
            },
            event = keys.recv() => match event {
                Some(UiEvent::Key(key)) => match key_action(key) {
                    Action::Quit => return Ok(()),
                    Action::Sort(key) => view.sort = key,
                    Action::Nothing => {}
                },
                Some(UiEvent::Resize) => {}
                None => return Ok(()),
            },
        }
        sort_rows(&mut view.rows, view.sort);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::tests::record;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    const MIB: u64 = 1024 * 1024;

    fn records() -> Vec<TaskUsage> {
        let mut busy = record("busy", 1000.0);
        busy.cpu.as_mut().expect("cpu").cores = 1.9;
        let mut big = record("big", 1000.0);
        big.memory.as_mut().expect("memory").current_bytes = 900 * MIB;
        big.memory.as_mut().expect("memory").limit_bytes = 1024 * MIB;
        let mut waits = record("waits", 1000.0);
        let cpu = waits.cpu.as_mut().expect("cpu");
        cpu.run_queue.as_mut().expect("run queue").p99_seconds = 0.25;
        cpu.limit_cores = 0.0;
        big.gpus = vec![strata_proto::GpuUsage {
            uuid: "GPU-1".to_owned(),
            index: 0,
            memory_used_bytes: 4096 * MIB,
            sm_utilization_percent: 87.5,
        }];
        vec![busy, big, waits]
    }

    fn later(mut records: Vec<TaskUsage>, seconds: f64) -> Vec<TaskUsage> {
        for (i, r) in records.iter_mut().enumerate() {
            r.timestamp += seconds;
            let net = r.network.as_mut().expect("network");
            // "waits" sends the most.
            net.rx_bytes_total += 1024 * (i as u64 + 1);
            net.tx_bytes_total += 4096 * (i as u64 + 1);
        }
        records
    }

    fn ids(rows: &[TopRow]) -> Vec<&str> {
        rows.iter().map(|r| r.task_id.as_str()).collect()
    }

    #[test]
    fn the_command_line_parses() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            let argv = ["strata", "top"].into_iter().chain(args.iter().copied());
            match crate::args::Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(crate::args::Command::Top(top)) => Ok(top),
                Ok(other) => panic!("expected top, got {other:?}"),
                Err(e) => Err(e),
            }
        };
        let top = parse(&["--agent", "a-1", "--sort", "net", "--interval", "2s"]).expect("parses");
        assert_eq!(top.agent.as_deref(), Some("a-1"));
        assert_eq!(top.framework, None);
        assert_eq!(top.sort, SortKey::Net);
        assert_eq!(top.interval, Duration::from_secs(2));
        let top = parse(&[]).expect("parses");
        assert_eq!(
            (top.sort, top.interval),
            (SortKey::Cpu, Duration::from_secs(1))
        );
        assert!(parse(&["--sort", "disk"]).is_err());
    }

    #[test]
    fn rates_need_two_samples_and_survive_a_repeated_one() {
        let mut state = TopState::default();
        let first = state.update(records());
        assert!(first.iter().all(|r| r.rx_rate.is_none()), "{first:?}");
        let second = state.update(later(records(), 2.0));
        let waits = second.iter().find(|r| r.task_id == "waits").expect("waits");
        assert_eq!((waits.rx_rate, waits.tx_rate), (Some(1536.0), Some(6144.0)));
        // The allocator still has the same sample: the rates stay.
        let third = state.update(later(records(), 2.0));
        assert_eq!(third, second);
        // A task that is gone is dropped.
        let fourth = state.update(later(records(), 3.0).into_iter().take(1).collect());
        assert_eq!(ids(&fourth), ["busy"]);
    }

    #[test]
    fn each_key_sorts_by_its_column_largest_first() {
        let mut state = TopState::default();
        state.update(records());
        let mut rows = state.update(later(records(), 1.0));
        sort_rows(&mut rows, SortKey::Cpu);
        assert_eq!(ids(&rows)[0], "busy");
        sort_rows(&mut rows, SortKey::Mem);
        assert_eq!(ids(&rows)[0], "big");
        sort_rows(&mut rows, SortKey::Net);
        assert_eq!(ids(&rows), ["waits", "big", "busy"]);
        sort_rows(&mut rows, SortKey::Runq);
        assert_eq!(ids(&rows)[0], "waits");
        sort_rows(&mut rows, SortKey::Gpu);
        assert_eq!(ids(&rows)[0], "big");
        let press = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
        assert_eq!(key_action(press('m')), Action::Sort(SortKey::Mem));
        assert_eq!(key_action(press('n')), Action::Sort(SortKey::Net));
        assert_eq!(key_action(press('r')), Action::Sort(SortKey::Runq));
        assert_eq!(key_action(press('c')), Action::Sort(SortKey::Cpu));
        assert_eq!(key_action(press('g')), Action::Sort(SortKey::Gpu));
        assert_eq!(key_action(press('q')), Action::Quit);
        assert_eq!(
            key_action(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
            Action::Quit
        );
        assert_eq!(
            key_action(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        assert_eq!(key_action(press('x')), Action::Nothing);
    }

    #[test]
    fn cells_are_compact_and_the_snapshot_aligns() {
        let mut state = TopState::default();
        state.update(records());
        let mut rows = state.update(later(records(), 1.0));
        sort_rows(&mut rows, SortKey::Cpu);
        let busy = row_cells(&rows[0]);
        assert_eq!(
            busy,
            [
                "busy",
                "f-1",
                "a-1",
                "1.90/2",
                "48.0Mi/64.0Mi",
                "1.0Ki/4.0Ki",
                "1.2ms",
                "3",
                "-"
            ]
            .map(str::to_owned)
        );
        let waits = rows.iter().find(|r| r.task_id == "waits").expect("waits");
        assert_eq!(row_cells(waits)[3], "0.52/1", "the request without a limit");
        assert_eq!(row_cells(waits)[6], "250.0ms");
        let big = rows.iter().find(|r| r.task_id == "big").expect("big");
        assert_eq!(row_cells(big)[8], "1x 88%/4.0Gi", "GPUs, SM and GPU memory");
        let table = snapshot_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("TASK"), "{table}");
        assert_eq!(
            lines[0].find("CPU/LIMIT"),
            lines[1].find("1.90/2"),
            "{table}"
        );
        assert!(!table.lines().any(|l| l.ends_with(' ')), "{table}");
        assert!(snapshot_table(&[]).starts_with("no running task reports usage"));
        assert_eq!(fmt_bytes_short(512.0), "512B");
        assert_eq!(fmt_bytes_short(1536.0), "1.5Ki");
        assert_eq!(fmt_bytes_short(3.0 * 1024.0 * MIB as f64), "3.0Gi");
    }

    fn screen(view: &View, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a test terminal");
        terminal.draw(|f| draw(f, view)).expect("draws");
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
                    .trim_end()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn the_frame_shows_title_header_rows_and_keys() {
        let mut state = TopState::default();
        let mut rows = state.update(records());
        sort_rows(&mut rows, SortKey::Mem);
        let view = View {
            rows,
            sort: SortKey::Mem,
            scope: "cluster".to_owned(),
            error: None,
        };
        let lines = screen(&view, 110, 8);
        assert_eq!(lines[0], "strata top: 3 tasks (cluster), sorted by mem");
        assert!(
            lines[1].starts_with("TASK") && lines[1].contains("MEM/LIMIT"),
            "{lines:#?}"
        );
        assert!(
            lines[2].starts_with("big") && lines[2].contains("900.0Mi/1.0Gi"),
            "{lines:#?}"
        );
        assert!(
            lines[3].starts_with("busy") || lines[3].starts_with("waits"),
            "{lines:#?}"
        );
        assert_eq!(
            lines[7],
            "keys: c cpu  m mem  n net  r run queue  g gpu  q quit"
        );

        let empty = View {
            rows: vec![],
            error: Some("cannot reach the allocator".to_owned()),
            ..view
        };
        let lines = screen(&empty, 110, 5);
        assert!(
            lines[1].starts_with("no running task reports usage"),
            "{lines:#?}"
        );
        assert_eq!(lines[4], "refresh failed: cannot reach the allocator");
    }
}
