//! Real etcd members (Debian's `etcd-server`, installed by `cargo xtask setup`) in temp dirs
//! on free loopback ports, killed on drop: what the allocator's etcd store and election are
//! tested against. [`Etcd`] is one member; [`EtcdCluster`] several, of which one can be lost
//! and brought back.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::net::free_port;

/// A running single-member etcd.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    /// Its client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub url: String,
    _dir: tempfile::TempDir,
}

/// A member's TLS files (PEM): its certificate and key for 127.0.0.1, and the CA whose
/// certificates it requires of every client (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct MemberTls {
    /// The CA certificate clients' certificates must chain to.
    pub client_ca: PathBuf,
    /// The member's certificate (valid for 127.0.0.1).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl Etcd {
    /// Starts a fresh member and waits (up to 20 s) until its client port answers.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Starts a fresh member that serves clients over TLS only and requires a client
    /// certificate signed by `tls.client_ca`.
    pub fn start_tls(tls: &MemberTls) -> Result<Self> {
        Self::start_with(Some(tls.clone()))
    }

    fn start_with(tls: Option<MemberTls>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut member = Member::new(0, dir.path());
        member.tls = tls;
        let cluster = member.initial();
        let child = member.spawn(&cluster)?;
        Ok(Self {
            child: member.wait(child)?,
            url: member.url(),
            _dir: dir,
        })
    }
}

impl Etcd {
    /// The member's process id (to pause it with SIGSTOP, as an etcd that stops answering).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One member's name, address, ports, data dir and network namespace.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    host: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    /// The namespace it runs in (`nsenter --net=`), when in a [`crate::netns::Lab`].
    netns: Option<PathBuf>,
    /// Clients are served over TLS with these files (peers stay plain).
    tls: Option<MemberTls>,
}

fn binary() -> Result<&'static str> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context(
            "etcd is not installed: run `cargo xtask setup` (it installs Debian's etcd-server)",
        )
}

impl Member {
    fn new(index: usize, root: &Path) -> Self {
        let name = format!("m{index}");
        Self {
            dir: root.join(&name),
            name,
            host: "127.0.0.1".to_owned(),
            client: free_port(),
            peer: free_port(),
            netns: None,
            tls: None,
        }
    }

    /// Member `index` alone on node `node` of a lab, on etcd's usual ports.
    fn in_lab(index: usize, root: &Path, node: &crate::netns::Node) -> Self {
        let name = format!("m{index}");
        Self {
            dir: root.join(&name),
            name,
            host: node.ip.to_string(),
            client: 2379,
            peer: 2380,
            netns: Some(node.netns_path()),
            tls: None,
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.client)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer)
    }

    /// `NAME=PEER_URL`, for `--initial-cluster`.
    fn initial(&self) -> String {
        format!("{}={}", self.name, self.peer_url())
    }

    fn spawn(&self, initial_cluster: &str) -> Result<Child> {
        let binary = binary()?;
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))?;
        let mut cmd = match &self.netns {
            Some(netns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-token=strata-test")
            .arg("--log-level=error");
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.client_ca.display()))
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {binary}"))
    }

    /// Waits (up to 20 s) until the member's client port answers (killed if it does not).
    fn wait(&self, mut child: Child) -> Result<Child> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect((self.host.as_str(), self.client)).is_ok() {
                return Ok(child);
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                bail!(
                    "etcd member {} exited at start with {status}: {log}",
                    self.name
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "etcd member {} did not listen on {} within 20 s",
                    self.name,
                    self.url()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Several etcd members forming one cluster; each can be killed and started again (with its
/// data), as a lost member that comes back.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    children: Vec<Option<Child>>,
    initial: String,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` fresh members on loopback and waits until each client port answers.
    pub fn start(n: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let members: Vec<Member> = (0..n).map(|i| Member::new(i, dir.path())).collect();
        Self::start_members(members, dir)
    }

    /// Starts one fresh member on each of `nodes` of a lab (each in its node's namespace, on
    /// its address) and waits until each client port answers; the caller must reach the
    /// nodes (run in the lab's switch namespace).
    pub fn start_in_lab(nodes: &[&crate::netns::Node]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let members = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| Member::in_lab(i, dir.path(), node))
            .collect();
        Self::start_members(members, dir)
    }

    fn start_members(members: Vec<Member>, dir: tempfile::TempDir) -> Result<Self> {
        let n = members.len();
        let initial = members
            .iter()
            .map(Member::initial)
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            children: Vec::with_capacity(n),
            members,
            initial,
            _dir: dir,
        };
        // All spawned before any is waited for: a member waits for a quorum to serve.
        for member in &cluster.members {
            cluster.children.push(Some(member.spawn(&cluster.initial)?));
        }
        for i in 0..n {
            let child = cluster.children[i].take().context("spawned above")?;
            cluster.children[i] = Some(cluster.members[i].wait(child)?);
        }
        Ok(cluster)
    }

    /// Every member's client URL, comma-separated (as `--etcd` takes them).
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(Member::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills member `i` (SIGKILL), as a lost machine.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children.get_mut(i).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again with its data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        let member = self.members.get(i).context("no such member")?;
        let child = member.spawn(&self.initial)?;
        self.children[i] = Some(member.wait(child)?);
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
