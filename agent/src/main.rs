//! `strata-agent`: runs the Strata agent on this host until SIGINT or SIGTERM. Its flags are
//! `strata_agent::flags` (with their environment variables and config file); the agent binary
//! is also each task's supervisor and the launcher of supervisors (`supervise`, `launcher`
//! modes, entered before anything else runs).

use std::process::ExitCode;

use strata_agent::flags::AgentCommand;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // The supervisor and launcher modes run before any thread exists (they fork and unshare
    // namespaces).
    let mut raw = std::env::args_os().skip(1);
    match (raw.next().as_deref().and_then(|a| a.to_str()), raw.next()) {
        (Some("supervise"), Some(run_dir)) => {
            return ExitCode::from(strata_agent::containerizer::supervisor::supervise_main(
                std::path::Path::new(&run_dir),
            ));
        }
        (Some("launcher"), None) => {
            return ExitCode::from(strata_agent::containerizer::supervisor::launcher_main());
        }
        _ => {}
    }
    let args = strata_common::config::flags_or_exit(
        AgentCommand::parse_from(std::env::args_os().collect()),
        |args| args.print_config,
    );
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(agent_main(args)),
        Err(e) => {
            eprintln!("strata-agent: error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn agent_main(args: AgentCommand) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = args.config();
    if args.remove_cgroups {
        use strata_agent::cgroup::{RootPlacement, systemd};
        let roots = &config.roots;
        // An agent started from a shell on a systemd host kept its cgroups in its scope.
        let placement = match config.root_placement() {
            RootPlacement::Auto(name) => systemd::scope_root(&roots.cgroup, &name)
                .map_or(RootPlacement::Auto(name), RootPlacement::Path),
            other => other,
        };
        // A netlink EDT filter a killed agent left on its egress device goes too.
        if let Some(device) = config
            .net_egress_device
            .clone()
            .or_else(|| strata_agent::ebpf::default_route_device(&roots.proc))
        {
            match strata_agent::ebpf::remove_egress_program(&device) {
                Ok(true) => eprintln!("strata-agent: removed the egress program from {device}"),
                Ok(false) => {}
                Err(e) => eprintln!("strata-agent: warning: {e}"),
            }
        }
        // The bridge and its veths (the tasks are killed with their cgroups below; their
        // veths would go with their namespaces, but not the bridge).
        if config.bridge_subnet.is_some() {
            match strata_agent::bridge::remove_all(&config.bridge_name) {
                Ok(links) if !links.is_empty() => {
                    eprintln!("strata-agent: removed {}", links.join(", "))
                }
                Ok(_) => {}
                Err(e) => eprintln!("strata-agent: warning: {e}"),
            }
        }
        let removed = strata_agent::cgroup::detect(&roots.proc, &roots.cgroup, &placement)
            .and_then(|cgroups| cgroups.destroy_root());
        return match removed {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strata-agent: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match strata_agent::run(config, strata_common::signal::shutdown()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-agent: error: {e}");
            ExitCode::FAILURE
        }
    }
}
