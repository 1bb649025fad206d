//! `strata local` as a user runs it: one process with an allocator and an agent, a task through
//! `strata run`, and a clean stop on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_test_support::CGROUP_PLACEMENT;
use strata_test_support::net::free_port;
use strata_test_support::wait::reap_within;

#[test]
fn strata_local_runs_a_task_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr = format!("http://{listen}");
    let strata = env!("CARGO_BIN_EXE_strata");
    let mut local = Command::new(strata)
        // A shared development machine: cgroups stay below the test's own.
        .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
        .args(["local", "--listen", &listen, "--work-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strata local starts");

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ran = None;
    while Instant::now() < deadline {
        let out = Command::new(strata)
            .args([
                "--allocator",
                &addr,
                "run",
                "--offer-timeout",
                "5s",
                "--",
                "echo",
                "hi",
            ])
            .output()
            .expect("strata run");
        if out.status.success() {
            ran = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = stop(&mut local);
    let ran = ran.expect("`strata run -- echo hi` succeeded against strata local within 30 s");
    assert!(String::from_utf8_lossy(&ran.stderr).contains("TASK_FINISHED"));
    let status = status.expect("strata local stops within 20 s of SIGTERM");
    assert!(status.success(), "strata local exited with {status}");
}

#[test]
fn strata_local_with_services_and_jobs_runs_both_frameworks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = format!("127.0.0.1:{}", free_port());
    let services = format!("127.0.0.1:{}", free_port());
    let jobs = format!("127.0.0.1:{}", free_port());
    let strata = env!("CARGO_BIN_EXE_strata");
    let mut local = Command::new(strata)
        .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
        .args(["local", "--listen", &listen, "--with", "services,jobs"])
        .args([
            "--services-listen",
            &services,
            "--jobs-listen",
            &jobs,
            "--work-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strata local starts");
    let app = dir.path().join("app.toml");
    std::fs::write(
        &app,
        "id = \"sleeper\"\ncommand = \"exec sleep 1000\"\ninstances = 2\n",
    )
    .expect("definition written");
    let cli = |args: &[&str]| {
        Command::new(strata)
            .args(args)
            .output()
            .expect("strata runs")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut deployed = false;
    while !deployed && Instant::now() < deadline {
        deployed = cli(&[
            "app",
            "--services",
            &services,
            "deploy",
            app.to_str().unwrap(),
        ])
        .status
        .success();
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut healthy = serde_json::Value::Null;
    while Instant::now() < deadline {
        let out = cli(&["app", "--services", &services, "--json", "list"]);
        healthy = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map(|v| v[0]["healthy"].clone())
            .unwrap_or_default();
        if healthy == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let job_list = cli(&["job", "--jobs", &jobs, "list"]);
    let status = stop(&mut local);
    assert!(
        deployed,
        "strata app deploy succeeded against strata local within 30 s"
    );
    assert_eq!(healthy, 2, "both instances running");
    assert!(
        job_list.status.success(),
        "{}",
        String::from_utf8_lossy(&job_list.stderr)
    );
    assert!(
        status
            .expect("strata local stops within 20 s of SIGTERM")
            .success()
    );
    assert!(dir.path().join("services").join("state.json").exists());
}

/// Sends `strata local` SIGTERM; how it exited, if within 20 s.
fn stop(local: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let stopped = Command::new("kill")
        .args(["-TERM", &local.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    reap_within(local, Duration::from_secs(20), Duration::from_millis(50)).expect("wait")
}

/// `strata local --print-config` with `flags`, the environment `env` and a config file holding
/// `file`: what it prints.
fn local_settings(flags: &[&str], env: &[(&str, &str)], file: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, file).expect("config file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.args(["local", "--print-config", "--config"])
        .arg(&path)
        .args(flags)
        .env_remove("STRATA_CONFIG")
        .env_remove("STRATA_AGENT_CPUS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("strata local --print-config runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn local_settings_come_from_flags_then_environment_then_config_file() {
    let file = "[local]\nlisten = \"127.0.0.1:6060\"\n[agent]\ncpus = 2\n[allocator]\nagent-timeout = \"20s\"\n";
    let cpus = |settings: &str| {
        settings
            .lines()
            .find(|l| l.starts_with("cpus = "))
            .unwrap_or_default()
            .to_owned()
    };
    let env = [("STRATA_AGENT_CPUS", "3")];
    let all = local_settings(&["--cpus", "4"], &env, file);
    assert_eq!(cpus(&all), "cpus = \"4\"  # command line", "{all}");
    let no_flag = local_settings(&[], &env, file);
    assert_eq!(
        cpus(&no_flag),
        "cpus = \"3\"  # environment (STRATA_AGENT_CPUS)",
        "{no_flag}"
    );
    let file_only = local_settings(&[], &[], file);
    assert!(
        cpus(&file_only).starts_with("cpus = \"2\"  # config file ("),
        "{file_only}"
    );
    // Each table's keys, under its header.
    for expected in [
        "listen = \"127.0.0.1:6060\"  # config file (",
        "[local]\n",
        "[agent]\n",
        "[allocator]\n",
        "agent-timeout = \"20s\"  # config file (",
    ] {
        assert!(
            file_only.contains(expected),
            "{expected:?} not in {file_only}"
        );
    }
}

/// `strata local --secure`: TLS everywhere, the operator's token from WORK_DIR/pki works, and
/// the allocator and the agent's HTTP endpoints refuse callers without credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_local_secure_serves_tls_and_refuses_callers_without_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, http_port) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{port}");
    let strata = env!("CARGO_BIN_EXE_strata");
    let banner = dir.path().join("banner.txt");
    let mut local = Command::new(strata)
        .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
        .args([
            "local",
            "--secure",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--mesos-listen", "none"])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .arg("--work-dir")
        .arg(dir.path())
        .stdout(std::fs::File::create(&banner).expect("banner file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("strata local starts");
    let pki = dir.path().join("pki");
    let ca = pki.join("ca.pem");
    let cli = |token: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(strata);
        for var in ["STRATA_CA", "STRATA_CERT", "STRATA_KEY", "STRATA_TOKEN"] {
            cmd.env_remove(var);
        }
        cmd.args(["--allocator", &url, "--ca"]).arg(&ca);
        if let Some(token) = token {
            cmd.args(["--token", token]);
        }
        cmd.args(args).output().expect("strata runs")
    };

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ran = None;
    let mut token = String::new();
    while Instant::now() < deadline && ran.is_none() {
        if let Ok(t) = std::fs::read_to_string(pki.join("operator.token")) {
            token = t.trim().to_owned();
            let out = cli(
                Some(&token),
                &["run", "--offer-timeout", "5s", "--", "echo", "secure"],
            );
            if out.status.success() {
                ran = Some(out);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let anonymous = cli(None, &["ps", "--all"]);
    let plain = Command::new(strata)
        .args(["--allocator", &format!("http://127.0.0.1:{port}"), "ps"])
        .env_remove("STRATA_TOKEN")
        .output()
        .expect("strata runs");
    let tls = strata_auth::tls::client_config(&ca, None, &[b"http/1.1"]).expect("client tls");
    let agent_get = |authorization: Option<String>| {
        let options = strata_common::http::GetOptions {
            tls: Some(tls.clone()),
            authorization,
        };
        let url = format!("https://127.0.0.1:{http_port}/usage");
        async move {
            strata_common::http::get_with(&url, Duration::from_secs(10), &options)
                .await
                .map(|r| r.status)
        }
    };
    let agent_anonymous = agent_get(None).await;
    let agent_operator = agent_get(Some(format!("Bearer {token}"))).await;

    let status = stop(&mut local);
    let banner = std::fs::read_to_string(&banner).unwrap_or_default();

    let ran = ran.expect("`strata run` with the operator's token succeeded within 30 s");
    assert!(String::from_utf8_lossy(&ran.stderr).contains("TASK_FINISHED"));
    assert!(!anonymous.status.success());
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("authentication required"), "{stderr}");
    assert!(!plain.status.success(), "plain HTTP/2 to a TLS port worked");
    assert_eq!(agent_anonymous.expect("agent answers"), 401);
    assert_eq!(agent_operator.expect("agent answers"), 200);
    assert!(banner.contains("export STRATA_CA="), "{banner}");
    assert!(
        banner.contains(&format!("https://127.0.0.1:{port}")),
        "{banner}"
    );
    let status = status.expect("strata local stops within 20 s of SIGTERM");
    assert!(status.success(), "strata local exited with {status}");
}

/// Without --secure, `strata local` serves loopback only.
#[test]
fn strata_local_refuses_to_listen_outside_loopback_without_secure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
        .args(["local", "--listen", "0.0.0.0:0", "--mesos-listen", "none"])
        .arg("--work-dir")
        .arg(dir.path())
        .output()
        .expect("strata local runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without TLS and authentication") && stderr.contains("--secure"),
        "{stderr}"
    );
}
