//! The real `strata-agent` binary with bridge networking, killed with `kill -9` and started
//! again on the same work dir, then cleaned up with `--remove-cgroups`, as a user does on a
//! pure cgroup v2 host (guest only: `tests/guest.rs`). The allocator runs in the test's process
//! and tasks are launched through the framework SDK.
//!
//! What is left is read from the kernel, never from the agent's records: links from
//! `/sys/class/net`, the agent's nf_tables table over netlink, eBPF maps and programs by id
//! and name (`BPF_MAP_GET_NEXT_ID`, `BPF_PROG_GET_NEXT_ID`), map entries by reading the maps the
//! kernel holds, network namespaces from `/proc/*/ns/net`, pins from `/sys/fs/bpf`, cgroups
//! from `/sys/fs/cgroup`.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_agent::cgroup::RootPlacement;
use strata_agent_common::{
    MAP_EGRESS_DROPS, MAP_EGRESS_EDT, MAP_MANAGED_PORTS, MAP_TASK_PORTS, PROG_BIND4, PROG_BIND6,
    PROG_EGRESS_EDT, PROG_POST_BIND4, PROG_POST_BIND6,
};
use strata_framework::proto::{Resource, TaskInfo, TaskState, TaskStatus};
use strata_framework::{Event, FrameworkBuilder, ResourceBudget, task};

use crate::CGROUP2_ROOT;
use crate::bridge::round_trip;
use crate::egress::{DEVICE, Link};

/// The agent's bridge: the default name, as a user gets it.
const BRIDGE: &str = "strata0";
const SUBNET: &str = "172.31.9.0/24";
/// The agent binary in the guest.
const AGENT: &str = "/bin/strata-agent";
/// How long the agent may take to start, recover, or a task to reach a state.
const LIMIT: Duration = Duration::from_secs(60);
/// The agent's eBPF maps and programs that only networking, ports and egress limits use: none
/// may be left once no agent runs.
const NET_MAPS: [&str; 4] = [
    MAP_EGRESS_EDT,
    MAP_EGRESS_DROPS,
    MAP_TASK_PORTS,
    MAP_MANAGED_PORTS,
];
const NET_PROGRAMS: [&str; 5] = [
    PROG_EGRESS_EDT,
    PROG_BIND4,
    PROG_BIND6,
    PROG_POST_BIND4,
    PROG_POST_BIND6,
];

/// The agent's flags in this scenario (for the agent and for `--remove-cgroups` alike).
fn agent_flags(url: &str, work_dir: &Path) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--allocator",
        url,
        "--bridge-subnet",
        SUBNET,
        "--net-egress-device",
        DEVICE,
        "--net-egress-mbps",
        "1000",
        "--ports",
        "31000-31009",
        "--http-listen",
        "none",
        "--status-update-retry",
        "500ms",
        "--work-dir",
    ]
    .map(str::to_owned)
    .to_vec();
    flags.push(work_dir.display().to_string());
    flags
}

/// A `strata-agent` process, started alone in a fresh top-level cgroup (as a process
/// supervisor without systemd would), its stderr echoed and kept.
struct AgentProcess {
    child: Child,
    said: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl AgentProcess {
    fn start(start_cgroup: &Path, flags: &[String]) -> Result<Self> {
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                "echo $$ > \"$1/cgroup.procs\" || exit 90; shift; exec \"$@\"",
                "sh",
            ])
            .arg(start_cgroup)
            .arg(AGENT)
            .args(flags)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting strata-agent")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, said) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  strata-agent: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            said,
            log: Vec::new(),
        })
    }

    /// Waits (at most [`LIMIT`]) for a line of the agent's log containing `text`.
    fn wait_for_line(&mut self, text: &str) -> Result<()> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if self.log.iter().any(|l| l.contains(text)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.said.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => bail!("the agent never said {text:?}:\n{}", self.log.join("\n")),
            }
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// The eBPF map and program ids the process holds (its fds' `map_id:` and `prog_id:`, links'
    /// included) and the maps of those programs.
    fn bpf_ids(&self) -> (BTreeSet<u32>, BTreeSet<u32>) {
        let (mut maps, mut progs) = (BTreeSet::new(), BTreeSet::new());
        let dir = format!("/proc/{}/fdinfo", self.pid());
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines() {
                let id = |key: &str| line.strip_prefix(key).and_then(|v| v.trim().parse().ok());
                if let Some(id) = id("map_id:") {
                    maps.insert(id);
                }
                if let Some(id) = id("prog_id:") {
                    progs.insert(id);
                }
            }
        }
        // And the maps its programs use (it need not keep an fd of a map it only wrote once).
        for info in aya::programs::loaded_programs().flatten() {
            if progs.contains(&info.id())
                && let Ok(Some(ids)) = info.map_ids()
            {
                maps.extend(ids);
            }
        }
        (maps, progs)
    }

    /// `kill -9` by pid, then reaps it.
    fn kill_9(mut self) -> Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .context("kill -9 of the agent")?;
        self.child.wait().context("reaping the agent")?;
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The latest status of each task, as the framework saw it, and the tasks left to launch.
#[derive(Default)]
struct Seen {
    latest: HashMap<String, TaskStatus>,
    to_launch: Vec<TaskInfo>,
}

/// The allocator (in this process) and a framework that launches what it is given and keeps
/// each task's latest status.
struct Cluster {
    rt: tokio::runtime::Runtime,
    url: String,
    seen: Arc<Mutex<Seen>>,
    client: strata_framework::Framework,
    stop_allocator: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Cluster {
    fn start() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        let (stop_allocator, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding the allocator's port")?;
        let url = format!("http://{}", listener.local_addr()?);
        rt.spawn(strata_allocator::serve(
            listener,
            strata_allocator::AllocatorConfig::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        let (client, mut events) = rt
            .block_on(FrameworkBuilder::new(&url).name("vm-kill-9").subscribe())
            .context("subscribing a framework")?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (driver, state) = (client.clone(), seen.clone());
        rt.spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Offers(offers) => {
                        for offer in offers {
                            let mut budget = ResourceBudget::of_offer(&offer);
                            let batch: Vec<TaskInfo> = {
                                let Ok(mut s) = state.lock() else { return };
                                let mut batch = Vec::new();
                                while let Some(t) = s.to_launch.first() {
                                    if !budget.take(&t.resources) {
                                        break;
                                    }
                                    batch.push(s.to_launch.remove(0));
                                }
                                batch
                            };
                            let _ = if batch.is_empty() {
                                driver.decline(vec![offer.id.clone()], Some(0.2)).await
                            } else {
                                driver.launch(&offer, batch).await
                            };
                        }
                    }
                    Event::Update(status) => {
                        if let Ok(mut s) = state.lock() {
                            s.latest.insert(status.task_id.clone(), status);
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Self {
            rt,
            url,
            seen,
            client,
            stop_allocator: Some(stop_allocator),
        })
    }

    fn launch(&self, tasks: Vec<TaskInfo>) -> Result<()> {
        self.seen
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .to_launch
            .extend(tasks);
        self.rt.block_on(self.client.revive())?;
        Ok(())
    }

    /// Waits (at most [`LIMIT`]) until `task_id`'s latest state is `state`; its status.
    fn wait_for(&self, task_id: &str, state: TaskState) -> Result<TaskStatus> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let latest = self
                .seen
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .latest
                .get(task_id)
                .cloned();
            if let Some(s) = &latest
                && s.state == state as i32
            {
                return Ok(s.clone());
            }
            if Instant::now() >= deadline {
                bail!("task {task_id} is not {state:?} after {LIMIT:?}: {latest:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&self, task_id: &str, agent_id: &str) -> Result<()> {
        self.rt.block_on(self.client.kill(task_id, agent_id))?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), self.client.teardown()).await
        });
        if let Some(stop) = self.stop_allocator.take() {
            let _ = stop.send(());
        }
    }
}

/// The bridge's veths (`strata0v<n>`) and whether the bridge is there, from `/sys/class/net`.
fn bridge_links() -> Result<(bool, BTreeSet<String>)> {
    let mut veths = BTreeSet::new();
    let mut bridge = false;
    for entry in std::fs::read_dir("/sys/class/net").context("reading /sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name == BRIDGE {
            bridge = true;
        } else if name.starts_with(&format!("{BRIDGE}v")) {
            veths.insert(name);
        }
    }
    Ok((bridge, veths))
}

/// The rules of the agent's nf_tables table, read over netlink (`None`: no table).
fn nat_rules() -> Result<Option<usize>> {
    strata_agent::bridge::nat::rule_count(BRIDGE).context("reading the agent's nf_tables table")
}

/// The ids of the kernel's eBPF maps named `name`, with their keys (cgroup ids).
fn maps_named(name: &str) -> Result<Vec<(u32, BTreeSet<u64>)>> {
    let mut out = Vec::new();
    for info in aya::maps::loaded_maps() {
        let Ok(info) = info else { continue };
        if info.name_as_str() != Some(name) {
            continue;
        }
        let id = info.id();
        // Freed between listing and opening: not there.
        let Ok(data) = aya::maps::MapData::from_id(id) else {
            continue;
        };
        let keys: BTreeSet<u64> = if info.key_size() == 8 {
            map_keys(aya::maps::Map::from_map_data(data)?)?
        } else {
            BTreeSet::new()
        };
        out.push((id, keys));
    }
    Ok(out)
}

/// The `u64` keys of a hash map of the agent's (egress limits: `[u64; 4]` values; task ports:
/// `[u32; 16]`).
fn map_keys(map: aya::maps::Map) -> Result<BTreeSet<u64>> {
    use strata_agent_common::{EDT_WORDS, PortRanges};
    let keys = match map {
        aya::maps::Map::HashMap(data) => {
            if data.info()?.value_size() as usize == EDT_WORDS * 8 {
                let m: aya::maps::HashMap<_, u64, [u64; EDT_WORDS]> =
                    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))?;
                m.keys().collect::<Result<BTreeSet<u64>, _>>()?
            } else {
                let m: aya::maps::HashMap<_, u64, PortRanges> =
                    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))?;
                m.keys().collect::<Result<BTreeSet<u64>, _>>()?
            }
        }
        _ => BTreeSet::new(),
    };
    Ok(keys)
}

/// The kernel's eBPF maps and programs named as the agent's networking ones, by name.
fn net_bpf_objects() -> Vec<String> {
    let mut left = Vec::new();
    for info in aya::maps::loaded_maps().flatten() {
        if let Some(name) = info.name_as_str()
            && NET_MAPS.contains(&name)
        {
            left.push(format!("map {name} (id {})", info.id()));
        }
    }
    for info in aya::programs::loaded_programs().flatten() {
        if let Some(name) = info.name_as_str()
            && NET_PROGRAMS.contains(&name)
        {
            left.push(format!("program {name} (id {})", info.id()));
        }
    }
    left
}

/// The kernel's networking maps and programs ([`net_bpf_objects`]) that `agent` does not hold:
/// a previous agent's, which recovery should have replaced.
fn net_bpf_objects_not_of(agent: &AgentProcess) -> Vec<String> {
    let (maps, progs) = agent.bpf_ids();
    let mut left = Vec::new();
    for info in aya::maps::loaded_maps().flatten() {
        if let Some(name) = info.name_as_str()
            && NET_MAPS.contains(&name)
            && !maps.contains(&info.id())
        {
            left.push(format!("a previous agent's map {name} (id {})", info.id()));
        }
    }
    for info in aya::programs::loaded_programs().flatten() {
        if let Some(name) = info.name_as_str()
            && NET_PROGRAMS.contains(&name)
            && !progs.contains(&info.id())
        {
            left.push(format!(
                "a previous agent's program {name} (id {})",
                info.id()
            ));
        }
    }
    left
}

/// The map and program ids of `ids` that the kernel still holds.
fn still_loaded(maps: &BTreeSet<u32>, progs: &BTreeSet<u32>) -> Vec<String> {
    let mut left = Vec::new();
    for info in aya::maps::loaded_maps().flatten() {
        if maps.contains(&info.id()) {
            left.push(format!("map {:?} (id {})", info.name_as_str(), info.id()));
        }
    }
    for info in aya::programs::loaded_programs().flatten() {
        if progs.contains(&info.id()) {
            left.push(format!(
                "program {:?} (id {})",
                info.name_as_str(),
                info.id()
            ));
        }
    }
    left
}

/// The network namespaces (inodes) of every process.
fn namespaces() -> BTreeSet<u64> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path().join("ns/net")).ok())
        .map(|m| m.ino())
        .collect()
}

/// A running task as the kernel shows it: its cgroup (and id), one of its processes, its
/// network namespace and its eth0 address.
#[derive(Debug, Clone)]
struct Running {
    cgroup: PathBuf,
    cgroup_id: u64,
    netns: u64,
    address: Option<String>,
}

/// Every pid in `cgroup` and the cgroups below it.
fn pids_in(cgroup: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut todo = vec![cgroup.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(entry.path());
            }
        }
    }
    pids
}

fn running(agent_root: &Path, framework_id: &str, task_id: &str) -> Result<Running> {
    let cgroup = agent_root
        .join("containers")
        .join(framework_id)
        .join(task_id);
    let cgroup_id = std::fs::metadata(&cgroup)
        .with_context(|| format!("task {task_id}: no cgroup {}", cgroup.display()))?
        .ino();
    // The task's command (the last process to join): the supervisor's namespace is the
    // agent's for host tasks.
    let pid = *pids_in(&cgroup)
        .iter()
        .max()
        .with_context(|| format!("task {task_id}: no process in {}", cgroup.display()))?;
    let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .context("reading the task's network namespace")?
        .ino();
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .output()
        .context("running nsenter ip addr")?;
    let address = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(|a| a.split('/').next().unwrap_or_default().to_owned());
    Ok(Running {
        cgroup,
        cgroup_id,
        netns,
        address,
    })
}

/// Polls `check` (at most `limit`) until it returns an empty list; the last list otherwise.
fn until_empty(limit: Duration, mut check: impl FnMut() -> Result<Vec<String>>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left = check()?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{}", left.join("; "));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bridge_task(id: &str, port: u16, mbps: f64) -> TaskInfo {
    task(id)
        .command(["/bin/strata-vm-helper", "-", "rr-server", &port.to_string()])
        .network_mode(strata_proto::NetworkMode::Bridge)
        .resource(Resource::ranges(
            "ports",
            [(u64::from(port), u64::from(port))],
        ))
        .scalar("net_egress_mbps", mbps)
        .cpus(0.1)
        .mem(32.0)
        .build()
}

/// Bridge tasks with a mapped port and an egress limit (and a host task with a port) survive a
/// `kill -9` of the real agent, still reached on their mapped port while it is down; the agent
/// started again on the same work dir recovers them: their rules, egress map entries and port
/// entries are in the kernel again (one map each, the old ones freed) and their addresses are
/// not leased to a new task. One ended leaves no namespace, veth, rule or entry; after another
/// `kill -9`, `--remove-cgroups` leaves nothing of Strata's: no bridge, veth, table, namespace,
/// eBPF map or program of the agent's, pin or cgroup.
pub fn a_killed_agent_recovers_bridge_tasks_and_leaves_nothing() -> Result<()> {
    let _link = Link::create()?;
    let start_cgroup = Path::new(CGROUP2_ROOT).join("vm-kill-9");
    std::fs::create_dir_all(&start_cgroup)
        .with_context(|| format!("creating {}", start_cgroup.display()))?;
    let work_dir = PathBuf::from("/tmp/vm-kill-9");
    let _ = std::fs::remove_dir_all(&work_dir);
    let result = (|| -> Result<()> {
        let cluster = Cluster::start()?;
        let flags = agent_flags(&cluster.url, &work_dir);
        let agent_root =
            match strata_agent::AgentConfig::new(&cluster.url, &work_dir).root_placement() {
                RootPlacement::Auto(name) => Path::new(CGROUP2_ROOT).join(name),
                other => bail!("unexpected placement {other:?}"),
            };
        let framework_id = cluster.client.framework_id();
        scenario(&cluster, &flags, &start_cgroup, &agent_root, &framework_id)
    })();
    let _ = std::fs::write(start_cgroup.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::remove_dir(&start_cgroup).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    result
}

fn scenario(
    cluster: &Cluster,
    flags: &[String],
    start_cgroup: &Path,
    agent_root: &Path,
    framework_id: &str,
) -> Result<()> {
    let mut agent = AgentProcess::start(start_cgroup, flags)?;
    agent.wait_for_line("egress limits on")?;
    agent.wait_for_line("port enforcement on")?;
    cluster.launch(vec![
        bridge_task("web", 31000, 20.0),
        bridge_task("api", 31001, 10.0),
        task("host")
            .command(["/bin/sleep", "600"])
            .resource(Resource::ranges("ports", [(31005, 31005)]))
            .cpus(0.1)
            .mem(16.0)
            .build(),
    ])?;
    let mut agent_id = String::new();
    for id in ["web", "api", "host"] {
        agent_id = cluster.wait_for(id, TaskState::Running)?.agent_id;
    }
    let web = running(agent_root, framework_id, "web")?;
    let api = running(agent_root, framework_id, "api")?;
    let host = running(agent_root, framework_id, "host")?;
    eprintln!("kill-9: running {web:?}, {api:?}, {host:?}");
    let (web_addr, api_addr) = (
        web.address.clone().context("web has no eth0 address")?,
        api.address.clone().context("api has no eth0 address")?,
    );
    ensure!(web_addr != api_addr, "two tasks share {web_addr}");
    round_trip(SocketAddr::from(([127, 0, 0, 1], 31000))).context("web on its mapped port")?;
    // Two masquerading rules, two per mapped port and protocol (tcp and udp).
    ensure!(nat_rules()? == Some(10), "rules: {:?}", nat_rules()?);
    let (bridge, veths) = bridge_links()?;
    ensure!(
        bridge && veths.len() == 2,
        "bridge {bridge}, veths {veths:?}"
    );
    let tasks_ids: BTreeSet<u64> = [web.cgroup_id, api.cgroup_id].into();
    let (old_maps, old_progs) = agent.bpf_ids();

    // kill -9: the data path does not need the agent.
    agent.kill_9()?;
    ensure!(nat_rules()? == Some(10), "the rules went with the agent");
    round_trip(SocketAddr::from(([127, 0, 0, 1], 31000)))
        .context("web on its mapped port while the agent is down")?;
    round_trip(SocketAddr::from(([127, 0, 0, 1], 31001)))
        .context("api on its mapped port while the agent is down")?;

    // Restarted on the same work dir: recovery.
    let restart = Instant::now();
    let mut agent = AgentProcess::start(start_cgroup, flags)?;
    // When the limits are back in the kernel (a figure, not a bound: TCG's speed varies).
    let deadline = Instant::now() + LIMIT;
    // (The killed agent's map, which its netlink filters keep on 6.1 until they are replaced,
    // does not count.)
    while !maps_named(MAP_EGRESS_EDT)?
        .iter()
        .any(|(id, keys)| !old_maps.contains(id) && *keys == tasks_ids)
    {
        ensure!(Instant::now() < deadline, "the limits never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let limits_back = restart.elapsed();
    agent.wait_for_line("recovered tasks from the checkpoint")?;
    eprintln!(
        "kill-9: the restarted agent's limit map held both bridge tasks {:.2} s after it was \
         started; recovery reported by {:.2} s",
        limits_back.as_secs_f64(),
        restart.elapsed().as_secs_f64()
    );
    // Masquerading only at start, the recovered tasks' mappings once recovery is done.
    until_empty(Duration::from_secs(10), || {
        let rules = nat_rules()?;
        Ok(if rules == Some(10) {
            Vec::new()
        } else {
            vec![format!("{rules:?} rules after recovery, not 10")]
        })
    })?;
    round_trip(SocketAddr::from(([127, 0, 0, 1], 31000)))
        .context("web on its mapped port after recovery")?;
    // One limits map, the new agent's, with the two bridge tasks; one task ports map with the
    // host task (bridge tasks' ports are their namespace's); the old agent's are freed (on 6.1
    // its netlink filters held them until the new agent replaced them).
    until_empty(Duration::from_secs(10), || {
        let mut wrong = Vec::new();
        let edt = maps_named(MAP_EGRESS_EDT)?;
        if edt.len() != 1 || edt[0].1 != tasks_ids {
            wrong.push(format!(
                "{MAP_EGRESS_EDT} maps {edt:?}, not one with {tasks_ids:?}"
            ));
        }
        let ports = maps_named(MAP_TASK_PORTS)?;
        if ports.len() != 1 || ports[0].1 != BTreeSet::from([host.cgroup_id]) {
            wrong.push(format!(
                "{MAP_TASK_PORTS} maps {ports:?}, not one with {}",
                host.cgroup_id
            ));
        }
        wrong.extend(net_bpf_objects_not_of(&agent));
        Ok(wrong)
    })
    .context("the eBPF maps after recovery")?;
    let (bridge, veths) = bridge_links()?;
    ensure!(
        bridge && veths.len() == 2,
        "after recovery: bridge {bridge}, veths {veths:?}"
    );
    // The leases were adopted: a new bridge task gets another address.
    cluster.launch(vec![
        task("probe")
            .shell("ip -4 -o addr show dev eth0")
            .network_mode(strata_proto::NetworkMode::Bridge)
            .cpus(0.1)
            .mem(16.0)
            .build(),
    ])?;
    cluster.wait_for("probe", TaskState::Finished)?;
    let sandbox_out = probe_output(&work_dir_of(flags), framework_id)?;
    ensure!(
        sandbox_out.contains("inet 172.31.9.")
            && !sandbox_out.contains(&format!("inet {web_addr}/"))
            && !sandbox_out.contains(&format!("inet {api_addr}/")),
        "the new task's address: {sandbox_out:?} (recovered: {web_addr}, {api_addr})"
    );
    until_empty(Duration::from_secs(10), || {
        let (_, veths) = bridge_links()?;
        Ok(if veths.len() == 2 {
            Vec::new()
        } else {
            vec![format!("veths after the probe ended: {veths:?}")]
        })
    })?;

    // One task ends: its namespace, veth, rules and entries go.
    cluster.kill("web", &agent_id)?;
    cluster.wait_for("web", TaskState::Killed)?;
    until_empty(Duration::from_secs(20), || {
        let mut left = Vec::new();
        if namespaces().contains(&web.netns) {
            left.push("web's network namespace".to_owned());
        }
        let (_, veths) = bridge_links()?;
        if veths.len() != 1 {
            left.push(format!("veths {veths:?}"));
        }
        if nat_rules()? != Some(6) {
            left.push(format!("{:?} rules, not 6", nat_rules()?));
        }
        let edt = maps_named(MAP_EGRESS_EDT)?;
        if edt.len() != 1 || edt[0].1 != BTreeSet::from([api.cgroup_id]) {
            left.push(format!("{MAP_EGRESS_EDT} {edt:?}"));
        }
        if web.cgroup.exists() {
            left.push(format!("{}", web.cgroup.display()));
        }
        Ok(left)
    })
    .context("left after web ended (EGRESS_LINGER keeps its entry 5 s)")?;
    ensure!(
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], 31000)),
            Duration::from_secs(2)
        )
        .is_err(),
        "web's mapped port still answers"
    );
    round_trip(SocketAddr::from(([127, 0, 0, 1], 31001))).context("api after web ended")?;

    // Another kill -9, then --remove-cgroups with the same flags.
    let (maps, progs) = agent.bpf_ids();
    agent.kill_9()?;
    let out = Command::new(AGENT)
        .arg("--remove-cgroups")
        .args(flags)
        .output()
        .context("running strata-agent --remove-cgroups")?;
    eprintln!(
        "kill-9: --remove-cgroups said: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    ensure!(
        out.status.success(),
        "--remove-cgroups failed: {}",
        out.status
    );
    let task_namespaces = [web.netns, api.netns];
    until_empty(Duration::from_secs(10), || {
        let mut left = Vec::new();
        let (bridge, veths) = bridge_links()?;
        if bridge {
            left.push(BRIDGE.to_owned());
        }
        left.extend(veths);
        if let Some(rules) = nat_rules()? {
            left.push(format!("nf_tables table ip {BRIDGE} ({rules} rules)"));
        }
        let now = namespaces();
        left.extend(
            task_namespaces
                .iter()
                .filter(|n| now.contains(n))
                .map(|n| format!("a task's network namespace {n}")),
        );
        left.extend(still_loaded(&maps, &progs));
        left.extend(still_loaded(&old_maps, &old_progs));
        left.extend(net_bpf_objects());
        for dir in ["/sys/fs/bpf", "/run/netns"] {
            left.extend(
                std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path().display().to_string()),
            );
        }
        if agent_root.exists() {
            left.push(agent_root.display().to_string());
        }
        Ok(left)
    })
    .context("left after --remove-cgroups")?;
    Ok(())
}

/// The work dir in `flags` (the last flag's value).
fn work_dir_of(flags: &[String]) -> PathBuf {
    PathBuf::from(flags.last().map_or("", String::as_str))
}

/// What the probe task printed (its sandbox's stdout).
fn probe_output(work_dir: &Path, framework_id: &str) -> Result<String> {
    let dir = work_dir.join("sandboxes").join(framework_id).join("probe");
    let mut found = None;
    let mut todo = vec![dir.clone()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(entry.path());
            } else if entry.file_name() == "stdout" {
                found = Some(entry.path());
            }
        }
    }
    let path = found.with_context(|| format!("no stdout below {}", dir.display()))?;
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}
