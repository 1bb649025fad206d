//! `launch_bench`: launches `/bin/true` isolated `--tasks` times, one after the other, and
//! prints `<runtime> <median launch→running ms> <p99> <median launch+teardown ms> <p99>`.
//!
//! - `--runtime strata` (default): through the agent's [`LinuxContainerizer`]: a cgroup with
//!   limits (1 cpu, 64 MiB, 4096 pids), pid/mount/ipc/uts namespaces, user nobody, no
//!   capabilities, no_new_privs, device control. Launch→running is `launch` returning (the
//!   command has been started); launch+teardown adds `wait` (exit reported, cgroup removed).
//! - `--runtime crun|runc`: the same container as an OCI bundle on the host's root filesystem
//!   (same namespaces, user, capabilities and cgroup limits, cgroups below this process's own):
//!   launch→running is `run --detach` (one invocation that returns once the command has been
//!   started, as strata's `launch` does; `create` then `start` would count a second program
//!   start against them); launch+teardown is `run` (create, start, wait, delete). They run in
//!   a private mount namespace of this process, where the host root is bind-mounted as the
//!   bundle's rootfs (runtimes cannot pivot into `/` itself); for crun, the unified cgroup
//!   hierarchy is hidden there too (crun 1.8 refuses hybrid hosts whose unified hierarchy has
//!   controllers, and then drives the v1 controllers, as strata does).
//!
//! `--warmup N` first runs N launches that are not measured (a fresh process's first launch
//! pays one-time costs: the agent's launcher, the page cache); `--samples FILE` also writes
//! every measurement, one `<launch→running ms> <launch+teardown ms>` line each, so that runs
//! made in rounds can be pooled.
//!
//! Run by `cargo xtask bench launch` (as root), which interleaves the runtimes in rounds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use strata_agent::cgroup::{self, CgroupBackend, RootPlacement};
use strata_agent::containerizer::linux::{LinuxConfig, LinuxContainerizer};
use strata_agent::containerizer::{Containerizer as _, ExitStatus, LaunchSpec};
use strata_proto::{CommandInfo, Resource, TaskInfo, names};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut tasks = 1000usize;
    let mut supervisor: Option<PathBuf> = None;
    let mut work_dir = PathBuf::from("target/bench-launch");
    let mut runtime = "strata".to_owned();
    let mut warmup = 0usize;
    let mut samples_file: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--warmup" => warmup = args.next().context("--warmup N")?.parse()?,
            "--samples" => samples_file = Some(args.next().context("--samples FILE")?.into()),
            "--tasks" => tasks = args.next().context("--tasks N")?.parse()?,
            "--supervisor" => supervisor = Some(args.next().context("--supervisor PATH")?.into()),
            "--work-dir" => work_dir = args.next().context("--work-dir DIR")?.into(),
            "--runtime" => runtime = args.next().context("--runtime strata|crun|runc")?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let work_dir = std::path::absolute(&work_dir)?;
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;
    let result = match runtime.as_str() {
        "strata" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(bench_strata(warmup, tasks, supervisor, &work_dir)),
        "crun" | "runc" => bench_oci(&runtime, warmup, tasks, &work_dir),
        other => bail!("unknown runtime {other:?}: use strata, crun or runc"),
    };
    let _ = std::fs::remove_dir_all(&work_dir);
    let (running, teardown) = result?;
    if let Some(path) = samples_file {
        let lines: String = running
            .iter()
            .zip(&teardown)
            .map(|(r, t)| format!("{r:.4} {t:.4}\n"))
            .collect();
        std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let (run_median, run_p99) = summary(running);
    let (td_median, td_p99) = summary(teardown);
    println!("{runtime} {run_median:.3} {run_p99:.3} {td_median:.3} {td_p99:.3}");
    Ok(())
}

async fn bench_strata(
    warmup: usize,
    tasks: usize,
    supervisor: Option<PathBuf>,
    work_dir: &Path,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let supervisor =
        supervisor.context("--supervisor PATH (the release strata-agent) is needed")?;
    let placement = RootPlacement::BelowOwn(format!("strata-bench-{}", std::process::id()));
    let cgroups: Arc<dyn CgroupBackend> = Arc::from(cgroup::detect(
        Path::new("/proc"),
        Path::new("/sys/fs/cgroup"),
        &placement,
    )?);
    let mut config = LinuxConfig::new(work_dir);
    config.supervisor_exe = Some(supervisor);
    let mut containerizer = LinuxContainerizer::new(config, cgroups.clone());
    if std::env::var_os("STRATA_BENCH_NO_DEVICES").is_none() {
        let devices = strata_agent::ebpf::DeviceControl::load()
            .context("loading the device control program")?;
        containerizer = containerizer.with_device_control(devices);
    }

    let mut running = Vec::with_capacity(tasks);
    let mut teardown = Vec::with_capacity(tasks);
    let result: Result<()> = async {
        for i in 0..warmup + tasks {
            let spec = LaunchSpec {
                gpus: Vec::new(),
                framework_id: "bench".to_owned(),
                agent_id: "bench".to_owned(),
                task: TaskInfo {
                    task_id: format!("true-{i}"),
                    resources: vec![
                        Resource::scalar(names::CPUS, 1.0),
                        Resource::scalar(names::MEM, 64.0),
                    ],
                    command: Some(CommandInfo {
                        shell: false,
                        value: "/bin/true".to_owned(),
                        ..CommandInfo::default()
                    }),
                    ..TaskInfo::default()
                },
            };
            let started = Instant::now();
            let container = containerizer.launch(&spec).await?;
            let up = started.elapsed();
            let status = tokio::time::timeout(Duration::from_secs(30), container.wait())
                .await
                .context("a task did not end in 30 s")??;
            let done = started.elapsed();
            if status != ExitStatus::Code(0) {
                bail!("task {i}: /bin/true {status}");
            }
            if i >= warmup {
                running.push(up.as_secs_f64() * 1000.0);
                teardown.push(done.as_secs_f64() * 1000.0);
            }
            let _ =
                std::fs::remove_dir_all(work_dir.join("sandboxes/bench").join(&spec.task.task_id));
            let _ = std::fs::remove_dir_all(work_dir.join("runs/bench").join(&spec.task.task_id));
        }
        Ok(())
    }
    .await;
    let _ = cgroups.destroy_root();
    result?;
    Ok((running, teardown))
}

/// This process's deepest cgroup path; every controller's path must lead to it, so one
/// `cgroupsPath` below it is below this process's cgroup in every hierarchy.
fn own_cgroup_prefix() -> Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .collect();
    let deepest = paths
        .iter()
        .max_by_key(|p| p.len())
        .context("/proc/self/cgroup is empty")?;
    for p in &paths {
        if !deepest.starts_with(p) {
            bail!(
                "this process's cgroups ({paths:?}) do not nest: cannot place the OCI containers below all of them"
            );
        }
    }
    Ok(deepest.trim_end_matches('/').to_owned())
}

fn bench_oci(
    runtime: &str,
    warmup: usize,
    tasks: usize,
    work_dir: &Path,
) -> Result<(Vec<f64>, Vec<f64>)> {
    use nix::mount::{MsFlags, mount, umount2};
    use std::process::{Command, Stdio};
    let prefix = own_cgroup_prefix()?;
    let bundle = work_dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unsharing a mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some("/"),
        &rootfs,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("binding / as the bundle's rootfs")?;
    if runtime == "crun" && Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        mount(
            Some("none"),
            "/sys/fs/cgroup/unified",
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("hiding the unified hierarchy from crun")?;
    }
    let parent = format!("{prefix}/strata-bench-{runtime}-{}", std::process::id());
    let config = |id: &str| {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 65534, "gid": 65534},
                "args": ["/bin/true"],
                "env": ["PATH=/usr/bin:/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []
                },
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": id,
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
                "cgroupsPath": format!("{parent}/{id}"),
                "resources": {
                    "memory": {"limit": 64 << 20},
                    "cpu": {"shares": 1024},
                    "pids": {"limit": 4096},
                    "devices": [{"allow": false, "access": "rwm"}]
                }
            }
        })
    };
    let rt = |args: &[&str]| -> Result<()> {
        let status = Command::new(runtime)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {runtime}: is it installed? (cargo xtask setup)"))?;
        if !status.success() {
            bail!("{runtime} {} failed: {status}", args.join(" "));
        }
        Ok(())
    };
    let bundle_str = bundle.to_str().context("bundle path")?.to_owned();
    let mut running = Vec::with_capacity(tasks);
    let mut teardown = Vec::with_capacity(tasks);
    let result: Result<()> = (|| {
        for i in 0..warmup + tasks {
            let id = format!("strata-bench-{i}");
            std::fs::write(bundle.join("config.json"), config(&id).to_string())?;
            let started = Instant::now();
            rt(&["run", "--detach", "--bundle", &bundle_str, &id])?;
            let up = started.elapsed();
            rt(&["delete", "--force", &id])?;
            let id = format!("strata-bench-run-{i}");
            std::fs::write(bundle.join("config.json"), config(&id).to_string())?;
            let started = Instant::now();
            rt(&["run", "--bundle", &bundle_str, &id])?;
            let done = started.elapsed();
            if i >= warmup {
                running.push(up.as_secs_f64() * 1000.0);
                teardown.push(done.as_secs_f64() * 1000.0);
            }
        }
        Ok(())
    })();
    let _ = umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(parent.trim_start_matches('/')));
    }
    result?;
    Ok((running, teardown))
}
