//! A cluster with TLS and authentication on, as real processes: `strata-allocator` with its
//! certificate, the cluster CA, tokens and ACLs; `strata-agent` dialling it over TLS with its
//! own certificate and serving its HTTP endpoints over TLS behind tokens; the `strata` CLI
//! with `--ca` and `--token`. Tasks run for a principal allowed to run them; without
//! credentials, or with a principal no rule allows, each surface refuses and says why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_auth::{certs, credentials};
use strata_test_support::CGROUP_PLACEMENT;
use strata_test_support::cluster::{WAIT, bin, text};
use strata_test_support::net::free_port;

const ACLS: &str = r#"
[[allow]]
principals = ["agent-*"]
actions = ["register_agents"]

[[allow]]
principals = ["alice"]
actions = ["register_frameworks", "run_tasks"]

[[allow]]
principals = ["ops"]
actions = ["view_frameworks", "view_tasks", "profile_tasks", "teardown_frameworks"]
"#;

/// Kills its processes when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log(dir: &Path, name: &str) -> Result<std::fs::File> {
    Ok(std::fs::File::create(dir.join(name))?)
}

/// `strata --allocator URL --ca CA [--token T] ARGS`, without the developer's variables.
fn strata(url: &str, ca: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("strata"));
    for var in [
        "STRATA_CA",
        "STRATA_CERT",
        "STRATA_KEY",
        "STRATA_TOKEN",
        "STRATA_ALLOCATOR",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(["--allocator", url, "--ca"]).arg(ca);
    if let Some(token) = token {
        cmd.args(["--token", token]);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("strata runs")
}

#[tokio::test]
async fn a_secure_cluster_runs_tasks_for_allowed_principals_and_refuses_the_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let ca = certs::init_ca(&pki)?.cert;
    certs::issue(&pki, "allocator", &["localhost".into(), "127.0.0.1".into()])?;
    certs::issue(&pki, "agent-1", &["127.0.0.1".into()])?;
    let creds = dir.path().join("credentials.toml");
    let alice = credentials::create_token(&creds, "alice")?;
    let ops = credentials::create_token(&creds, "ops")?;
    let acls = dir.path().join("acls.toml");
    std::fs::write(&acls, ACLS)?;
    let file = |name: &str| -> PathBuf { pki.join(name) };

    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let http_port = free_port();
    let endpoint = format!("https://127.0.0.1:{http_port}");
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(bin("strata-allocator"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store",
                "memory",
            ])
            .args(["--mesos-listen", "none", "--metrics-listen", "none"])
            .arg("--work-dir")
            .arg(dir.path().join("allocator"))
            .arg("--tls-cert")
            .arg(file("allocator.pem"))
            .arg("--tls-key")
            .arg(file("allocator-key.pem"))
            .arg("--tls-client-ca")
            .arg(&ca)
            .arg("--credentials")
            .arg(&creds)
            .arg("--acls")
            .arg(&acls)
            .arg("--audit-log")
            .arg(dir.path().join("audit.log"))
            .stdout(log(dir.path(), "allocator.log")?)
            .stderr(log(dir.path(), "allocator.err")?)
            .spawn()
            .context("cannot start strata-allocator")?,
    );
    procs.0.push(
        Command::new(bin("strata-agent"))
            .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
            .args(["--allocator", &url, "--cpus", "2", "--mem", "1024"])
            .arg("--work-dir")
            .arg(dir.path().join("agent"))
            .arg("--tls-ca")
            .arg(&ca)
            .arg("--tls-cert")
            .arg(file("agent-1.pem"))
            .arg("--tls-key")
            .arg(file("agent-1-key.pem"))
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .arg("--http-tls-cert")
            .arg(file("agent-1.pem"))
            .arg("--http-tls-key")
            .arg(file("agent-1-key.pem"))
            .arg("--http-credentials")
            .arg(&creds)
            .arg("--http-acls")
            .arg(&acls)
            .stdout(log(dir.path(), "agent.log")?)
            .stderr(log(dir.path(), "agent.err")?)
            .spawn()
            .context("cannot start strata-agent")?,
    );

    // The agent registers with its certificate; ops sees it.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = strata(&url, &ca, Some(&ops), &["agents", "--json"]);
        if out.status.success()
            && let Ok(agents) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && agents.as_array().is_some_and(|a| !a.is_empty())
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "no agent registered: {} / {}\nagent: {}",
                text(&out.stdout),
                text(&out.stderr),
                std::fs::read_to_string(dir.path().join("agent.err")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        endpoint.starts_with("https://127.0.0.1:"),
        "endpoint {endpoint}"
    );

    // Alice runs a task; the CLI speaks TLS with the CA and sends her token.
    let out = strata(
        &url,
        &ca,
        Some(&alice),
        &[
            "run", "--cpus", "0.1", "--mem", "32", "--", "echo", "secure",
        ],
    );
    ensure!(
        out.status.success(),
        "run failed: {} / {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Without a token, or as a principal without a rule, each surface refuses.
    let out = strata(&url, &ca, None, &["ps", "--all"]);
    ensure!(!out.status.success(), "ps without a token succeeded");
    ensure!(
        text(&out.stderr).contains("authentication required"),
        "{}",
        text(&out.stderr)
    );
    let out = strata(&url, &ca, Some(&alice), &["frameworks"]);
    ensure!(!out.status.success(), "alice may not view frameworks");
    ensure!(
        text(&out.stderr).contains("may not view_frameworks"),
        "{}",
        text(&out.stderr)
    );
    let out = strata(&url, &ca, Some(&ops), &["ps", "--all"]);
    ensure!(out.status.success(), "{}", text(&out.stderr));
    ensure!(
        text(&out.stdout).contains("TASK_FINISHED"),
        "{}",
        text(&out.stdout)
    );

    // The agent's own HTTP endpoints: TLS, and a token with view_tasks.
    let tls = strata_auth::tls::client_config(&ca, None, &[b"http/1.1"])?;
    let get = |token: Option<&str>| {
        let options = strata_common::http::GetOptions {
            tls: Some(tls.clone()),
            authorization: token.map(|t| format!("Bearer {t}")),
        };
        let url = format!("{endpoint}/usage");
        async move { strata_common::http::get_with(&url, WAIT, &options).await }
    };
    assert_eq!(get(None).await?.status, 401);
    assert_eq!(get(Some(&alice)).await?.status, 403);
    assert_eq!(get(Some(&ops)).await?.status, 200);

    let audit = std::fs::read_to_string(dir.path().join("audit.log"))?;
    ensure!(audit.contains("\"principal\":\"agent-1\""), "{audit}");
    ensure!(audit.contains("\"principal\":\"alice\""), "{audit}");
    Ok(())
}
