//! TLS and tokens from the CLI: `strata certs init|issue` and `strata token create` (files,
//! modes, nothing replaced), the global `--ca`, `--cert`, `--key`, `--token` (clear errors for
//! bad settings; a TLS allocator reached with the CA, presented the client certificate and
//! sent the token).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::Result;
use strata_test_support::cluster::WAIT;
use strata_test_support::fake_scheduler::FakeSchedulerService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// `strata ARGS` with none of the security variables of the developer's shell.
fn strata(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    for var in [
        "STRATA_CA",
        "STRATA_CERT",
        "STRATA_KEY",
        "STRATA_TOKEN",
        "STRATA_CERTS_DIR",
        "STRATA_ALLOCATOR",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    strata(args).output().expect("strata runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_init_and_issue_write_files_once_with_private_keys() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("certs");
    let d = dir.to_str().unwrap();

    // Without a CA, issue says which file is missing.
    let out = run(&["certs", "issue", "allocator", "--dir", d]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("ca-key.pem"), "{out:?}");

    let out = run(&["certs", "init", "--dir", d]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("wrote {d}/ca.pem")), "{stdout}");
    assert!(
        stdout.contains(&format!("wrote {d}/ca-key.pem")),
        "{stdout}"
    );
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
    let ca_before = std::fs::read(dir.join("ca.pem"))?;

    // A second init replaces nothing.
    let out = run(&["certs", "init", "--dir", d]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("exists"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read(dir.join("ca.pem"))?, ca_before);

    let out = run(&[
        "certs",
        "issue",
        "allocator",
        "--dir",
        d,
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("wrote {d}/allocator.pem")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("wrote {d}/allocator-key.pem")),
        "{stdout}"
    );
    assert_eq!(mode(&dir.join("allocator-key.pem")), 0o600);

    let out = run(&["certs", "issue", "allocator", "--dir", d]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("exists"), "{out:?}");
    // A principal that could be a path is refused.
    let out = run(&["certs", "issue", "../x", "--dir", d]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("invalid principal"), "{out:?}");
    Ok(())
}

#[test]
fn token_create_prints_the_token_once_and_stores_its_hash() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("credentials.toml");
    let f = file.to_str().unwrap();
    let out = run(&["token", "create", "--principal", "alice", "--file", f]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let token = stdout
        .trim()
        .strip_prefix("export STRATA_TOKEN=")
        .expect("an export line")
        .to_owned();
    assert!(token.starts_with("strata_") && token.len() > 40, "{stdout}");
    assert_eq!(stdout.lines().count(), 1);
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains(&token),
        "the token is printed once: {stderr}"
    );
    assert!(stderr.contains(f), "{stderr}");
    assert_eq!(mode(&file), 0o600);
    assert!(!std::fs::read_to_string(&file)?.contains(&token));

    // Another principal is added, the first kept.
    let out = run(&["token", "create", "--principal", "bob", "--file", f]);
    assert!(out.status.success(), "{out:?}");
    let stored = std::fs::read_to_string(&file)?;
    assert!(
        stored.contains("\"alice\"") && stored.contains("\"bob\""),
        "{stored}"
    );

    // A file that is not a credentials file is neither appended to nor replaced.
    let other = tmp.path().join("notes.toml");
    std::fs::write(&other, "this is not toml = = =")?;
    let out = run(&[
        "token",
        "create",
        "--principal",
        "carol",
        "--file",
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("notes.toml"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&other)?, "this is not toml = = =");
    let out = run(&["token", "create", "--principal", "no/slash", "--file", f]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("invalid principal"), "{out:?}");
    Ok(())
}

#[test]
fn bad_tls_settings_are_one_line_errors_naming_what_to_fix() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "junk")?;
    let g = garbage.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["ps", "--allocator", "https://127.0.0.1:1"], "--ca"),
        (
            &["ps", "--allocator", "https://127.0.0.1:1", "--ca", g],
            "garbage.pem",
        ),
        (
            &[
                "agents",
                "--allocator",
                "https://127.0.0.1:1",
                "--ca",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
        (
            &["ps", "--allocator", "https://127.0.0.1:1", "--cert", g],
            "without its private key",
        ),
        (
            &["ps", "--allocator", "127.0.0.1:1", "--token", "a b"],
            "token is not usable",
        ),
    ];
    for (args, want) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    // The token never shows in help, even from the environment.
    let out = strata(&["--help"])
        .env("STRATA_TOKEN", "strata_hidden")
        .output()?;
    assert!(!text(&out.stdout).contains("strata_hidden"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_allocator_gets_the_certificate_and_the_token_from_the_cli() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let ca = strata_auth::certs::init_ca(dir)?;
    let server = strata_auth::certs::issue(dir, "allocator", &["127.0.0.1".into()])?;
    let me = strata_auth::certs::issue(dir, "operator", &[])?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(&server.cert)?,
            std::fs::read(&server.key)?,
        ))
        .client_ca_root(Certificate::from_pem(std::fs::read(&ca.cert)?))
        .client_auth_optional(true);
    let mut fake = FakeSchedulerService::start_with(Some(tls)).await;
    let (ca_path, cert, key) = (
        ca.cert.to_str().unwrap(),
        me.cert.to_str().unwrap(),
        me.key.to_str().unwrap(),
    );

    // `strata run` subscribes over TLS with the identity and the token from the environment.
    let mut child = strata(&[
        "run",
        "--allocator",
        &fake.addr,
        "--ca",
        ca_path,
        "--cert",
        cert,
        "--key",
        key,
        "--",
        "true",
    ])
    .env("STRATA_TOKEN", "strata_cli_token")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()?;
    let session = tokio::time::timeout(WAIT, fake.sessions.recv()).await;
    let _ = child.kill();
    let _ = child.wait();
    let session = session
        .expect("strata run subscribes in time")
        .expect("a subscription");
    assert_eq!(
        session.authorization.as_deref(),
        Some("Bearer strata_cli_token")
    );
    assert_eq!(session.client_certs, 1);

    // Operator commands dial with the CA too: the handshake succeeds and the fake, which
    // serves no OperatorService, says so.
    let out = run(&["ps", "--allocator", &fake.addr, "--ca", ca_path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not serve strata.v1.OperatorService"),
        "{out:?}"
    );
    // Another cluster's CA does not verify it.
    let other = tempfile::tempdir()?;
    let other_ca = strata_auth::certs::init_ca(other.path())?;
    let out = run(&[
        "ps",
        "--allocator",
        &fake.addr,
        "--ca",
        other_ca.cert.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("TLS with the allocator"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    Ok(())
}
