//! A real etcd member (Debian's `etcd-server`, installed by `cargo xtask setup`) in a temp dir
//! on free loopback ports, killed on drop: what the allocator's etcd store and election are
//! tested against.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::net::free_port;

/// A running single-member etcd.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    /// Its client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts a fresh member and waits (up to 20 s) until its client port answers.
    pub fn start() -> Result<Self> {
        let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context(
                "etcd is not installed: run `cargo xtask setup` (it installs Debian's etcd-server)",
            )?;
        let dir = tempfile::tempdir()?;
        let client = free_port();
        let peer = free_port();
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let child = Command::new(binary)
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let mut etcd = Self {
            child,
            url,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", client)).is_ok() {
                return Ok(etcd);
            }
            if let Some(status) = etcd.child.try_wait()? {
                let log =
                    std::fs::read_to_string(etcd._dir.path().join("etcd.log")).unwrap_or_default();
                bail!("etcd exited at start with {status}: {log}");
            }
            if Instant::now() >= deadline {
                bail!("etcd did not listen on {} within 20 s", etcd.url);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
