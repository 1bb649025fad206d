//! A network lab of namespaces for fault-injection runs with real partitions: a "switch"
//! namespace holding a bridge, and one namespace per node (an etcd member, an allocator
//! replica, an agent), each joined to the bridge by a veth pair with one IPv4 address on
//! 10.77.0.0/24. Everything is created inside namespaces this lab creates (the veth pairs are
//! made in the switch namespace and one end moved into the node's), so the host's own network
//! is never touched. Processes run in a node with [`Lab::command`] (`nsenter --net`, which
//! changes nothing else: the mounts, and so /sys/fs/cgroup, stay the caller's).
//!
//! Faults are real network cuts: [`Lab::cut`] sets a node's link down (nothing in or out),
//! [`Lab::blackhole`] adds blackhole routes to some addresses inside a node (it is cut off from
//! them only). On drop every process still in the lab's namespaces is killed (they are the
//! run's: nothing else enters them) and the namespaces are deleted, even when the run failed.
//!
//! Needs CAP_NET_ADMIN and CAP_SYS_ADMIN (`ip netns add`), `ip` and `nsenter`: see
//! [`Lab::unavailable`].

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

/// The lab's subnet, as the first three octets.
const SUBNET: [u8; 3] = [10, 77, 0];
/// The bridge's own address (the switch namespace's, where a test process may run).
pub const SWITCH_HOST: u8 = 1;
/// The longest name a node may have (interface names are at most 15 bytes).
const MAX_NODE: usize = 8;
/// The most nodes a lab holds.
const MAX_NODES: usize = 64;

/// One node: its namespace's name and its address.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name in the lab (`e0`, `r1`, `a2`, ...).
    pub name: String,
    /// Its namespace, `<prefix>-<name>`.
    pub netns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

impl Node {
    /// The namespace's path, as `nsenter --net=` takes it.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

/// The namespaces of one run; removed, with every process in them, on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// The nodes, in the order given.
    pub nodes: Vec<Node>,
    created: Vec<String>,
    /// Whether drop removes the namespaces (false in a process that only uses a lab another
    /// process created: see [`Lab::attach`]).
    owned: bool,
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The effective capabilities of this process (`CapEff` of /proc/self/status).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn address(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host)
}

impl Lab {
    /// Why a lab cannot be made here (`None`: it can): without CAP_NET_ADMIN and
    /// CAP_SYS_ADMIN, or without `ip` or `nsenter`.
    pub fn unavailable() -> Option<String> {
        const CAP_NET_ADMIN: u64 = 1 << 12;
        const CAP_SYS_ADMIN: u64 = 1 << 21;
        let caps = effective_caps();
        if caps & CAP_NET_ADMIN == 0 || caps & CAP_SYS_ADMIN == 0 {
            return Some(
                "needs CAP_NET_ADMIN and CAP_SYS_ADMIN (run it as root) to create network namespaces"
                    .to_owned(),
            );
        }
        for tool in ["ip", "nsenter"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if !found {
                return Some(format!("needs {tool} (iproute2, util-linux)"));
            }
        }
        None
    }

    fn layout(prefix: &str, names: &[&str]) -> Result<Vec<Node>> {
        ensure!(
            !prefix.is_empty()
                && prefix.len() <= 24
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "bad lab prefix {prefix:?}: 1 to 24 letters, digits or dashes"
        );
        ensure!(
            names.len() <= MAX_NODES,
            "a lab holds at most {MAX_NODES} nodes"
        );
        let mut nodes = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            ensure!(
                !name.is_empty()
                    && name.len() <= MAX_NODE
                    && name.bytes().all(|b| b.is_ascii_alphanumeric()),
                "bad node name {name:?}: 1 to {MAX_NODE} letters or digits"
            );
            ensure!(
                !names[..i].contains(name),
                "node {name:?} named twice in the lab"
            );
            let host = u8::try_from(10 + i).context("too many nodes")?;
            nodes.push(Node {
                name: (*name).to_owned(),
                netns: format!("{prefix}-{name}"),
                ip: address(host),
            });
        }
        Ok(nodes)
    }

    /// The switch namespace's name.
    pub fn switch_netns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// The switch namespace's path (a test process runs its clients there).
    pub fn switch_path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.switch_netns())
    }

    /// Creates the switch and one namespace per name, each joined to the bridge; `prefix`
    /// names them (unique per run, e.g. with the pid).
    pub fn create(prefix: &str, names: &[&str]) -> Result<Self> {
        let nodes = Self::layout(prefix, names)?;
        let mut lab = Self {
            prefix: prefix.to_owned(),
            nodes,
            created: Vec::new(),
            owned: true,
        };
        let sw = lab.switch_netns();
        ip(&["netns", "add", &sw])?;
        lab.created.push(sw.clone());
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        let switch_ip = format!("{}/24", address(SWITCH_HOST));
        ip(&["-n", &sw, "addr", "add", &switch_ip, "dev", "br0"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..lab.nodes.len() {
            let node = lab.nodes[i].clone();
            ip(&["netns", "add", &node.netns])?;
            lab.created.push(node.netns.clone());
            let port = format!("p{i}");
            ip(&[
                "-n",
                &sw,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.netns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &node.netns, "link", "set", "lo", "up"])?;
            let cidr = format!("{}/24", node.ip);
            ip(&["-n", &node.netns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &node.netns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    /// The lab another process created with the same `prefix` and `names`, to use (its
    /// creator removes it).
    pub fn attach(prefix: &str, names: &[&str]) -> Result<Self> {
        let nodes = Self::layout(prefix, names)?;
        let lab = Self {
            prefix: prefix.to_owned(),
            nodes,
            created: Vec::new(),
            owned: false,
        };
        for path in std::iter::once(lab.switch_path()).chain(lab.nodes.iter().map(Node::netns_path))
        {
            ensure!(
                path.exists(),
                "no namespace {}: the lab was not created",
                path.display()
            );
        }
        Ok(lab)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name:?} in the lab"))
    }

    /// A command running `program` in node `name`'s namespace (`nsenter --net=PATH PROGRAM`:
    /// nsenter execs it, so the child's pid is the program's).
    pub fn command(&self, name: &str, program: impl AsRef<Path>) -> Result<Command> {
        let node = self.node(name)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", node.netns_path().display()))
            .arg("--")
            .arg(program.as_ref());
        Ok(cmd)
    }

    /// [`Lab::command`] as a tokio command.
    pub fn tokio_command(
        &self,
        name: &str,
        program: impl AsRef<Path>,
    ) -> Result<tokio::process::Command> {
        Ok(tokio::process::Command::from(self.command(name, program)?))
    }

    /// Sets node `name`'s link down: nothing reaches it or leaves it.
    pub fn cut(&self, name: &str) -> Result<()> {
        let node = self.node(name)?;
        ip(&["-n", &node.netns, "link", "set", "eth0", "down"])
    }

    /// Sets node `name`'s link up again, with its address and route (a link set down loses
    /// its subnet route; setting it up brings it back).
    pub fn heal(&self, name: &str) -> Result<()> {
        let node = self.node(name)?;
        ip(&["-n", &node.netns, "link", "set", "eth0", "up"])
    }

    /// Adds blackhole routes to `to` inside node `name`: it can no longer reach them (nor
    /// answer them), and everything else still works.
    pub fn blackhole(&self, name: &str, to: &[Ipv4Addr]) -> Result<()> {
        let node = self.node(name)?;
        for addr in to {
            let dst = format!("{addr}/32");
            ip(&["-n", &node.netns, "route", "add", "blackhole", &dst])?;
        }
        Ok(())
    }

    /// Removes the blackhole routes [`Lab::blackhole`] added.
    pub fn unblackhole(&self, name: &str, to: &[Ipv4Addr]) -> Result<()> {
        let node = self.node(name)?;
        for addr in to {
            let dst = format!("{addr}/32");
            ip(&["-n", &node.netns, "route", "del", "blackhole", &dst])?;
        }
        Ok(())
    }

    /// The pids of the processes in namespace `netns` (`ip netns pids`).
    fn pids(netns: &str) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", netns])
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills (SIGKILL) every process in the lab's namespaces but this one, a few rounds (a
    /// supervisor may start one meanwhile), and waits up to 5 s for them to go.
    pub fn kill_all(&self) -> Result<()> {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let names: Vec<String> = std::iter::once(self.switch_netns())
            .chain(self.nodes.iter().map(|n| n.netns.clone()))
            .collect();
        for _ in 0..50 {
            let pids: Vec<i32> = names
                .iter()
                .flat_map(|n| Self::pids(n))
                .filter(|p| *p != me)
                .collect();
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("processes are still in the lab's namespaces after 5 s of SIGKILL")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = self.kill_all() {
            eprintln!("netns lab {}: {e:#}", self.prefix);
        }
        for netns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", netns]) {
                eprintln!("netns lab {}: {e:#}", self.prefix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_or_clash_are_refused() {
        assert!(Lab::layout("ok-1", &["a0", "r1"]).is_ok());
        assert!(Lab::layout("../x", &["a0"]).is_err());
        assert!(Lab::layout("", &["a0"]).is_err());
        assert!(Lab::layout("p", &["a/0"]).is_err());
        assert!(Lab::layout("p", &["waytoolong"]).is_err());
        assert!(Lab::layout("p", &["a0", "a0"]).is_err());
        let many: Vec<String> = (0..=MAX_NODES).map(|i| format!("n{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(Lab::layout("p", &many).is_err());
        let nodes = Lab::layout("p", &["e0", "a1"]).unwrap();
        assert_eq!(nodes[1].netns, "p-a1");
        assert_eq!(nodes[1].ip, Ipv4Addr::new(10, 77, 0, 11));
    }

    /// A real lab: two nodes reach each other through the bridge; a cut node and a
    /// blackholed address do not; everything is gone after drop.
    #[test]
    fn netns_root_cuts_are_real_and_the_lab_cleans_up() {
        if let Some(why) = Lab::unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
        let prefix = format!("stl{}", std::process::id());
        // Reachable: a TCP connect to a closed port is answered (refused); cut off, it times
        // out or has no route.
        let reach = |lab: &Lab, from: &str, to: Ipv4Addr| -> bool {
            let out = lab
                .command(from, "timeout")
                .unwrap()
                .args(["2", "bash", "-c", &format!("exec 3<>/dev/tcp/{to}/9")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stderr).contains("refused")
        };
        let b_ip;
        let mut left;
        {
            let lab = Lab::create(&prefix, &["a", "b"]).unwrap();
            b_ip = lab.node("b").unwrap().ip;
            assert!(
                reach(&lab, "a", b_ip),
                "a cannot reach b through the bridge"
            );
            lab.cut("b").unwrap();
            assert!(
                !reach(&lab, "a", b_ip),
                "a reaches b though its link is down"
            );
            lab.heal("b").unwrap();
            assert!(reach(&lab, "a", b_ip), "a cannot reach b once healed");
            lab.blackhole("a", &[b_ip]).unwrap();
            assert!(!reach(&lab, "a", b_ip), "a reaches a blackholed b");
            lab.unblackhole("a", &[b_ip]).unwrap();
            assert!(reach(&lab, "a", b_ip));
            // A process left in a node is killed on drop.
            left = lab
                .command("b", "sleep")
                .unwrap()
                .arg("600")
                .spawn()
                .unwrap();
        }
        let status = left.wait().unwrap();
        assert!(status.code().is_none(), "not killed: {status}");
        for n in ["sw", "a", "b"] {
            let path = Path::new("/run/netns").join(format!("{prefix}-{n}"));
            assert!(!path.exists(), "{} left behind", path.display());
        }
    }
}
