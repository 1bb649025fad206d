//! The web dashboard in a real browser: cli/tests/ui/test_ui.py drives Debian's chromium
//! (headless, through Playwright for Python from target/ui-venv, both installed by `cargo
//! xtask setup`) against a real `strata local`: every page, a task launched through the CLI
//! seen within 2 s, its output followed, a profile's flame graph, a kill from the page, a
//! drain; with `--with services,jobs`, an app deployed and a job added through the CLI seen
//! on the "Apps & jobs" page within 2 s, and the app's scale seen live. Screenshots go to
//! target/ui-screenshots/.
//!
//! Without chromium or the venv the test fails saying to run `cargo xtask setup`, unless
//! `STRATA_SKIP_BROWSER_TESTS=1` says to skip it (then it says so and passes).

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
/// How long the browser script may take.
const SCRIPT_WAIT: Duration = Duration::from_secs(300);
/// Where the screenshots go, under the workspace.
const SCREENSHOTS: &str = "target/ui-screenshots";
/// The browser.
const CHROMIUM: &str = "/usr/bin/chromium";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

/// The venv's python, or why the test cannot run.
fn browser_python() -> Result<PathBuf, String> {
    let python = workspace().join("target/ui-venv/bin/python");
    if !python.exists() {
        return Err(format!(
            "{} is missing: run `cargo xtask setup` (it installs Playwright for Python there)",
            python.display()
        ));
    }
    if !Path::new(CHROMIUM).exists() {
        return Err(format!(
            "{CHROMIUM} is missing: run `cargo xtask setup` (it installs Debian's chromium)"
        ));
    }
    Ok(python)
}

/// Kills (SIGTERM, then SIGKILL after a while) and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        if reap_within(
            &mut self.0,
            Duration::from_secs(20),
            Duration::from_millis(50),
        )
        .is_err()
        {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn the_dashboard_in_chromium_against_strata_local() {
    let python = match browser_python() {
        Ok(python) => python,
        Err(why) if std::env::var_os("STRATA_SKIP_BROWSER_TESTS").is_some_and(|v| v == "1") => {
            eprintln!("skipped (STRATA_SKIP_BROWSER_TESTS=1): {why}");
            return;
        }
        Err(why) => panic!("{why} (or set STRATA_SKIP_BROWSER_TESTS=1 to skip this test)"),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let log = dir.path().join("local.err");
    let mut local = Command::new(env!("CARGO_BIN_EXE_strata"))
        // A shared development machine: cgroups stay below the test's own.
        .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
        .args(["local", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--with",
            "services,jobs",
            "--services-listen",
            "127.0.0.1:0",
            "--jobs-listen",
            "127.0.0.1:0",
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
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("strata local starts");
    let stdout = local.stdout.take().expect("piped stdout");
    let local = Reaped(local);
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep draining so `strata local` never blocks on a full pipe.
            let _ = lines_tx.send(line);
        }
    });
    // The banner's addresses: the Mesos HTTP API's, then each framework's API.
    let deadline = Instant::now() + START_WAIT;
    let (mut mesos, mut services, mut jobs) = (None, None, None);
    while mesos.is_none() || services.is_none() || jobs.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect(
            "strata local prints its Mesos HTTP API and framework API addresses within 30 s",
        );
        let after = |marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == ';').next())
                .map(str::to_owned)
        };
        mesos = mesos.or_else(|| after("Mesos scheduler HTTP API on http://"));
        services = services.or_else(|| after("services framework API on http://"));
        jobs = jobs.or_else(|| after("jobs framework API on http://"));
    }
    let (mesos, services, jobs) = (
        mesos.unwrap_or_default(),
        services.unwrap_or_default(),
        jobs.unwrap_or_default(),
    );
    let screenshots = workspace().join(SCREENSHOTS);
    let _ = std::fs::remove_dir_all(&screenshots);
    let out_path = dir.path().join("browser.out");
    let err_path = dir.path().join("browser.err");
    let mut script = Command::new(&python)
        .arg(workspace().join("cli/tests/ui/test_ui.py"))
        .env("STRATA_UI_URL", format!("http://{mesos}"))
        .env("STRATA_ALLOCATOR", format!("127.0.0.1:{port}"))
        .env("STRATA_SERVICES", &services)
        .env("STRATA_JOBS", &jobs)
        .env("STRATA_BIN", env!("CARGO_BIN_EXE_strata"))
        .env("STRATA_UI_SCREENSHOTS", &screenshots)
        .env("STRATA_CHROMIUM", CHROMIUM)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(std::fs::File::create(&out_path).expect("log file"))
        .stderr(std::fs::File::create(&err_path).expect("log file"))
        .spawn()
        .expect("the browser script starts");
    let status = reap_within(&mut script, SCRIPT_WAIT, Duration::from_millis(100))
        .expect("wait for the script");
    if status.is_none() {
        let _ = script.kill();
        let _ = script.wait();
    }
    drop(local);
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let cluster = std::fs::read_to_string(&log).unwrap_or_default();
    let report = format!(
        "browser stdout:\n{out}\nbrowser stderr:\n{}\nstrata local stderr (tail):\n{}",
        tail(&err, 40),
        tail(&cluster, 40)
    );
    let status =
        status.unwrap_or_else(|| panic!("the browser script ran past {SCRIPT_WAIT:?}\n{report}"));
    assert!(
        status.success(),
        "the browser script failed ({status})\n{report}"
    );
    assert!(out.contains("test_ui: passed"), "{report}");
    for page in [
        "overview",
        "agents",
        "frameworks",
        "tasks",
        "task",
        "profile",
        "killed",
        "events",
        "apps",
    ] {
        let png = screenshots.join(format!("{page}.png"));
        assert!(png.exists(), "no screenshot {}\n{report}", png.display());
    }
    eprintln!("{}", out.trim());
}
