//! Mesos compatibility: pymesos (a third-party Mesos scheduler library from PyPI, installed
//! unmodified by `cargo xtask setup` into target/mesos-venv) runs a real framework,
//! cli/tests/mesos/pymesos_framework.py, against a real `strata local` through its Mesos v1
//! scheduler HTTP API: 50 command tasks to TASK_FINISHED, a decline with a filter then
//! REVIVE, implicit and explicit reconciliation, and a kill; and the same against a standalone
//! allocator with TLS and authentication on, pymesos sending HTTP Basic (principal and token).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_test_support::CGROUP_PLACEMENT;
use strata_test_support::net::free_port;
use strata_test_support::wait::reap_within;

/// How long `strata local` may take to print its banner.
const START_WAIT: Duration = Duration::from_secs(30);
/// How long the whole framework script may take.
const SCRIPT_WAIT: Duration = Duration::from_secs(240);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

fn venv_python() -> PathBuf {
    let python = workspace().join("target/mesos-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it installs pymesos into target/mesos-venv)",
        python.display()
    );
    python
}

/// Kills (SIGTERM, then SIGKILL after a while) and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let reaped = reap_within(
            &mut self.0,
            Duration::from_secs(20),
            Duration::from_millis(50),
        );
        if reaped.is_err() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn pymesos_framework_runs_against_strata_local() {
    let python = venv_python();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut local = Command::new(env!("CARGO_BIN_EXE_strata"))
        // A shared development machine: cgroups stay below the test's own.
        .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
        .args(["local", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--mesos-listen",
            "127.0.0.1:0",
            "--cpus",
            "2",
            "--mem",
            "2048",
        ])
        .arg("--work-dir")
        .arg(dir.path().join("local"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("local.err")).expect("log file"))
        .spawn()
        .expect("strata local starts");
    let stdout = local.stdout.take().expect("piped stdout");
    let local = Reaped(local);
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                // Keep draining so `strata local` never blocks on a full pipe.
                continue;
            }
        }
    });
    let deadline = Instant::now() + START_WAIT;
    let mesos = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("strata local prints its Mesos HTTP API address within 30 s");
        if let Some(url) = line
            .split("Mesos scheduler HTTP API on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        {
            break url.to_owned();
        }
    };

    let local_err = dir.path().join("local.err");
    run_framework(&python, &mesos, &[], dir.path(), &local_err, move || {
        drop(local)
    });
}

/// Runs the pymesos framework script against the Mesos API at `mesos` with `env`, then
/// `stop`s the cluster, and checks that every phase passed (the cluster's `log` in the report).
fn run_framework(
    python: &Path,
    mesos: &str,
    env: &[(&str, &str)],
    dir: &Path,
    log: &Path,
    stop: impl FnOnce(),
) {
    let out_path = dir.join("framework.out");
    let err_path = dir.join("framework.err");
    let mut script = Command::new(python)
        .arg(workspace().join("cli/tests/mesos/pymesos_framework.py"))
        .arg(mesos)
        .env("TASKS", "50")
        .env("STEP", "60")
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&out_path).expect("log file"))
        .stderr(std::fs::File::create(&err_path).expect("log file"))
        .spawn()
        .expect("the framework script starts");
    let status = reap_within(&mut script, SCRIPT_WAIT, Duration::from_millis(100))
        .expect("wait for the script");
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    stop();
    let cluster_err = std::fs::read_to_string(log).unwrap_or_default();
    let report = format!(
        "framework stdout:\n{out}\nframework stderr:\n{err}\ncluster stderr (tail):\n{}",
        tail(&cluster_err, 60)
    );
    let status = status
        .unwrap_or_else(|| panic!("the framework did not finish in {SCRIPT_WAIT:?}\n{report}"));
    assert!(
        status.success(),
        "the framework failed ({status})\n{report}"
    );
    let tls = env.iter().any(|(k, _)| *k == "STRATA_TLS_CA");
    if tls {
        assert!(
            out.contains("ok: refused without credentials over TLS"),
            "no 401 without credentials\n{report}"
        );
    }
    for phase in [
        "ok: subscribed as ",
        "ok: 50 tasks finished",
        "ok: declined with a one-hour filter (",
        "ok: offered again",
        "ok: long task running",
        "ok: implicit reconciliation",
        "ok: explicit reconciliation",
        "ok: killed",
        "ok: stopped",
    ] {
        assert!(out.contains(phase), "missing {phase:?}\n{report}");
    }
}

/// With TLS and authentication on, pymesos subscribes with HTTP Basic (its `principal` and
/// `secret`) over TLS (pymesos has no TLS: the script forwards its connection through one it
/// verifies with the cluster's CA); without credentials SUBSCRIBE is answered 401 saying what
/// to send. The agent registers with its client certificate.
#[test]
fn pymesos_framework_authenticates_with_http_basic_over_tls() {
    use strata_auth::certs;
    let python = venv_python();
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = dir.path().join("pki");
    let ca = certs::init_ca(&pki).expect("ca").cert;
    let server = certs::issue(&pki, "allocator", &["127.0.0.1".into()]).expect("cert");
    let agent_cert = certs::issue(&pki, "agent-1", &[]).expect("cert");
    let creds = dir.path().join("credentials.toml");
    let token = strata_auth::credentials::create_token(&creds, "alice").expect("token");
    let acls = dir.path().join("acls.toml");
    std::fs::write(
        &acls,
        "[[allow]]\nprincipals = [\"agent-*\"]\nactions = [\"register_agents\"]\n\n\
         [[allow]]\nprincipals = [\"alice\"]\nactions = [\"register_frameworks\", \"run_tasks\"]\n",
    )
    .expect("acls");
    let (port, mesos_port) = (free_port(), free_port());
    let log = dir.path().join("cluster.err");
    let allocator = Command::new(strata_test_support::cluster::bin("strata-allocator"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            "memory",
        ])
        .args([
            "--mesos-listen",
            &format!("127.0.0.1:{mesos_port}"),
            "--metrics-listen",
            "none",
        ])
        .arg("--work-dir")
        .arg(dir.path().join("allocator"))
        .arg("--tls-cert")
        .arg(&server.cert)
        .arg("--tls-key")
        .arg(&server.key)
        .arg("--tls-client-ca")
        .arg(&ca)
        .arg("--credentials")
        .arg(&creds)
        .arg("--acls")
        .arg(&acls)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("strata-allocator starts");
    let allocator = Reaped(allocator);
    let agent = Command::new(strata_test_support::cluster::bin("strata-agent"))
        .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
        .args(["--allocator", &format!("https://127.0.0.1:{port}")])
        .args(["--cpus", "2", "--mem", "2048", "--http-listen", "none"])
        .arg("--tls-ca")
        .arg(&ca)
        .arg("--tls-cert")
        .arg(&agent_cert.cert)
        .arg("--tls-key")
        .arg(&agent_cert.key)
        .arg("--work-dir")
        .arg(dir.path().join("agent"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.err")).expect("log file"))
        .spawn()
        .expect("strata-agent starts");
    let agent = Reaped(agent);
    let mesos = format!("127.0.0.1:{mesos_port}");
    let deadline = Instant::now() + START_WAIT;
    while std::net::TcpStream::connect(&mesos).is_err() {
        assert!(Instant::now() < deadline, "the Mesos API did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ca = ca.display().to_string();
    run_framework(
        &python,
        &mesos,
        &[
            ("STRATA_PRINCIPAL", "alice"),
            ("STRATA_SECRET", &token),
            ("STRATA_TLS_CA", &ca),
        ],
        dir.path(),
        &log,
        move || {
            drop(agent);
            drop(allocator);
        },
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
