//! scripts/install-agent.sh: installs into a scratch root (DESTDIR), is idempotent, keeps the
//! operator's config, refuses hosts it cannot serve, and its unit passes `systemd-analyze
//! verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result, ensure};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-agent.sh")
}

fn install(destdir: &Path, envs: &[(&str, &str)]) -> Result<Output> {
    let mut cmd = Command::new("sh");
    cmd.arg(script())
        .args(["--binary", env!("CARGO_BIN_EXE_strata-agent")])
        .args(["--allocator", "http://alloc.example:5050"])
        .arg("--destdir")
        .arg(destdir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().context("running install-agent.sh")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn installs_into_a_scratch_root_idempotently_and_keeps_the_config() -> Result<()> {
    let root = tempfile::tempdir()?;
    let out = install(root.path(), &[])?;
    ensure!(out.status.success(), "first install failed: {}", text(&out));
    let bin = root.path().join("usr/local/bin/strata-agent");
    let unit = root.path().join("etc/systemd/system/strata-agent.service");
    let conf = root.path().join("etc/strata/agent.env");
    for f in [&bin, &unit, &conf] {
        ensure!(f.is_file(), "{} was not installed", f.display());
    }
    ensure!(root.path().join("var/lib/strata/agent").is_dir());
    let unit_text = std::fs::read_to_string(&unit)?;
    for line in ["Delegate=yes", "KillMode=process", "Restart=always"] {
        ensure!(
            unit_text.lines().any(|l| l == line),
            "the unit lacks {line}"
        );
    }
    let conf_text = std::fs::read_to_string(&conf)?;
    ensure!(conf_text.contains("STRATA_ALLOCATOR=http://alloc.example:5050"));

    // The operator edits the config; a second run keeps it and changes nothing else.
    std::fs::write(&conf, format!("{conf_text}# edited by the operator\n"))?;
    let out = install(root.path(), &[])?;
    ensure!(
        out.status.success(),
        "second install failed: {}",
        text(&out)
    );
    ensure!(text(&out).contains("kept"), "{}", text(&out));
    ensure!(std::fs::read_to_string(&conf)?.contains("# edited by the operator"));
    ensure!(std::fs::read_to_string(&unit)? == unit_text);
    let mut files: Vec<PathBuf> = Vec::new();
    collect(root.path(), &mut files)?;
    ensure!(files.len() == 3, "unexpected files: {files:?}");
    Ok(())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}

#[test]
fn refuses_hosts_without_cgroup2_or_with_an_old_kernel() -> Result<()> {
    let root = tempfile::tempdir()?;
    let mounts = root.path().join("mounts");
    std::fs::write(
        &mounts,
        "proc /proc proc rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n",
    )?;
    let out = install(
        &root.path().join("r1"),
        &[("STRATA_PROC_MOUNTS", mounts.to_str().context("path")?)],
    )?;
    ensure!(!out.status.success(), "installed without cgroup2");
    ensure!(
        text(&out).contains("no cgroup2 hierarchy"),
        "{}",
        text(&out)
    );
    let out = install(
        &root.path().join("r2"),
        &[("STRATA_KERNEL_RELEASE", "4.19.0-25-amd64")],
    )?;
    ensure!(!out.status.success(), "installed on 4.19");
    ensure!(text(&out).contains("too old"), "{}", text(&out));
    ensure!(!root.path().join("r1").exists() && !root.path().join("r2").exists());
    let out = install(
        &root.path().join("r3"),
        &[("STRATA_KERNEL_RELEASE", "6.1.0-18-amd64")],
    )?;
    ensure!(out.status.success(), "{}", text(&out));
    Ok(())
}

#[test]
fn the_installed_unit_passes_systemd_analyze_verify() -> Result<()> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed (cargo xtask setup installs systemd)");
        return Ok(());
    }
    let root = tempfile::tempdir()?;
    let out = install(root.path(), &[])?;
    ensure!(out.status.success(), "{}", text(&out));
    // The scratch root needs the standard targets the unit's dependencies name.
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units)?;
    for entry in std::fs::read_dir("/usr/lib/systemd/system")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "target")
            && let Ok(content) = std::fs::read(&path)
        {
            std::fs::write(units.join(path.file_name().context("name")?), content)?;
        }
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .arg("/etc/systemd/system/strata-agent.service")
        .output()?;
    let report = text(&out);
    ensure!(
        out.status.success(),
        "systemd-analyze verify failed: {report}"
    );
    ensure!(
        !report.contains("strata-agent.service:"),
        "systemd-analyze has remarks on the unit: {report}"
    );
    Ok(())
}
