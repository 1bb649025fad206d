//! The command line: `strata [--allocator ADDR] <local|run|agents|frameworks|ps> ...`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use strata_common::parse;

/// The allocator address used when neither --allocator nor STRATA_ALLOCATOR is given.
pub const DEFAULT_ALLOCATOR: &str = "http://127.0.0.1:5050";

/// Strata: run a local cluster, run tasks, and look at agents, frameworks and tasks.
#[derive(Debug, Parser)]
#[command(name = "strata", version, propagate_version = true)]
pub struct Cli {
    /// The allocator to talk to (a URL or host:port), or the replicas of a highly available
    /// allocator separated by commas (the leader is used: a follower's answer names it).
    #[arg(long, global = true, env = "STRATA_ALLOCATOR", default_value = DEFAULT_ALLOCATOR, value_name = "ADDR[,ADDR...]", value_parser = parse::endpoint_list)]
    pub allocator: String,

    /// The cluster's CA certificate (PEM): verifies an https:// allocator and https:// agents.
    #[arg(long, global = true, env = "STRATA_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) to present; its common name is who you are. Needs --key.
    #[arg(long, global = true, env = "STRATA_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "STRATA_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A bearer token (`strata token create`), sent to the allocator and agents. Prefer
    /// STRATA_TOKEN: a flag is visible to other users in `ps`.
    #[arg(
        long,
        global = true,
        env = "STRATA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The allocator and what to present to it.
    pub fn target(&self) -> crate::security::Allocator {
        crate::security::Allocator {
            url: self.allocator.clone(),
            security: strata_framework::ClientSecurity {
                ca: self.ca.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
                token: self.token.clone().filter(|t| !t.trim().is_empty()),
            },
        }
    }
}

impl std::fmt::Display for crate::security::Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an allocator and one agent on this machine until Ctrl-C.
    Local(Box<LocalArgs>),
    /// Run one command as a task, print its state changes, and exit with its exit code.
    ///
    /// Exit status: the task's exit code; 128+N if a signal N ended it; 127 if the command
    /// could not be started; 125 if Strata failed (no allocator, no fitting offer in time,
    /// invalid launch, task lost); 130 after Ctrl-C (which kills the task).
    Run(RunArgs),
    /// List the agents: state, tasks, and allocated/total resources.
    Agents(ListArgs),
    /// List the frameworks: connection, tasks, allocation and dominant share.
    Frameworks(ListArgs),
    /// List tasks (active ones; --all adds those that ended recently).
    Ps(PsArgs),
    /// Role quotas: `strata quota set eng cpus=100 mem=512GiB`, `strata quota get`.
    Quota(crate::admin::QuotaArgs),
    /// Role weights: `strata weights set eng=2 ads=1`.
    Weights(crate::admin::WeightsArgs),
    /// List roles: weight, quota, allocation, reservations.
    Roles(crate::admin::AdminListArgs),
    /// List reservations (static and dynamic) by agent and role.
    Reservations(crate::admin::AdminListArgs),
    /// Reserve an agent's free resources for a role: `strata reserve AGENT eng cpus=2`.
    Reserve(crate::admin::ReserveArgs),
    /// Undo a dynamic reservation: `strata unreserve AGENT eng cpus=2`.
    Unreserve(crate::admin::ReserveArgs),
    /// Agent maintenance: `strata agent drain|deactivate|reactivate ID`.
    Agent(crate::admin::AgentArgs),
    /// Framework administration: `strata framework teardown ID`.
    Framework(crate::admin::FrameworkArgs),
    /// Print cluster events as they happen, until Ctrl-C.
    Watch,
    /// One running task's latest usage (cpu, run queue, memory, pids, io, network, pressure):
    /// `strata usage TASK [--watch] [--json]`.
    Usage(crate::usage::UsageArgs),
    /// A live table of the running tasks' usage, sortable by cpu, memory, network and
    /// run-queue latency (one snapshot when stdout is not a terminal).
    Top(crate::top::TopArgs),
    /// A CPU profile of one running task, sampled in the kernel on its agent: writes
    /// TASK.folded and a TASK.svg flame graph and prints the top functions:
    /// `strata profile TASK --seconds N [--out DIR]`.
    Profile(crate::profile::ProfileArgs),
    /// A task's stdout (or stderr) from its sandbox on its agent, followed until the task
    /// ends with -f: `strata logs TASK [-f] [--stderr] [--tail N]`.
    Logs(crate::logs::LogsArgs),
    /// Jobs on the jobs framework (strata-jobs, or `strata local --with jobs`):
    /// `strata job add FILE|-`, `run ID`, `list`, `history ID`, `remove ID`.
    Job(crate::job::JobArgs),
    /// Long-running apps on the services framework (strata-services, or `strata local --with
    /// services`): `strata app deploy FILE|-`, `list`, `show ID`, `scale ID N`, `restart ID`,
    /// `suspend ID`, `destroy ID`, `plan ID`.
    App(crate::app::AppArgs),
    /// The cluster's CA and certificates: `strata certs init [--dir DIR]`,
    /// `strata certs issue NAME [--dir DIR] [--host H]...`.
    Certs(crate::security::CertsArgs),
    /// Bearer tokens: `strata token create --principal NAME [--file FILE]`.
    Token(crate::security::TokenArgs),
}

/// `strata local`: an allocator and an agent in one process. It takes every flag of
/// `strata-agent` and `strata-allocator` (but the agent's allocator and the allocator's store,
/// which it sets itself); each can also be set by its environment variable or in a config file
/// (`--config`: the `[local]`, `[agent]` and `[allocator]` tables), a flag beating its variable,
/// which beats the file.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// A config file (TOML) whose `[local]`, `[agent]` and `[allocator]` tables set flags by
    /// their long names.
    #[arg(long, env = strata_common::config::CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (and where each came from) as TOML, then exit.
    #[arg(long)]
    pub print_config: bool,
    /// Where the allocator listens (port 0 picks a free port).
    #[arg(long, env = "STRATA_LOCAL_LISTEN", default_value = strata_allocator::flags::DEFAULT_LISTEN, value_parser = parse::listen, value_name = "ADDR")]
    pub listen: String,
    /// The agent's work directory, and the allocator's registry in it [default:
    /// $TMPDIR/strata-local, or /tmp/strata-local].
    #[arg(long, env = "STRATA_LOCAL_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Serve TLS and require authentication, as a real cluster should: makes a CA,
    /// certificates, an operator token and ACLs in WORK_DIR/pki (kept for the next start) and
    /// prints how to use them. Needed to listen outside loopback.
    #[arg(long, env = "STRATA_LOCAL_SECURE")]
    pub secure: bool,
    /// Frameworks to run inside strata local too: `jobs` (strata-jobs, its API on
    /// --jobs-listen, its state in WORK_DIR/jobs unless --jobs-state-dir says otherwise) and
    /// `services` (strata-services, its API on --services-listen, its state in
    /// WORK_DIR/services unless --services-state-dir says otherwise).
    #[arg(long = "with", env = "STRATA_LOCAL_WITH", value_delimiter = ',', value_parser = ["jobs", "services"], value_name = "FRAMEWORKS")]
    pub with: Vec<String>,
    #[command(flatten)]
    pub jobs: strata_jobs::flags::JobsArgs,
    #[command(flatten)]
    pub services: strata_services::flags::ServicesArgs,
    #[command(flatten)]
    pub agent: strata_agent::flags::AgentArgs,
    #[command(flatten)]
    pub allocator: strata_allocator::flags::AllocatorArgs,
}

/// The config file tables of `strata local`: its own flags, the agent's, the allocator's.
pub fn local_tables(command: &clap::Command) -> [(String, Vec<String>); 3] {
    let local = command
        .find_subcommand("local")
        .cloned()
        .unwrap_or_default();
    [
        (
            "local".to_owned(),
            vec![
                "listen".to_owned(),
                "work_dir".to_owned(),
                "secure".to_owned(),
                "with".to_owned(),
                "jobs_listen".to_owned(),
                "jobs_state_dir".to_owned(),
                "jobs_role".to_owned(),
                "jobs_failover_timeout".to_owned(),
                "jobs_credentials".to_owned(),
                "services_listen".to_owned(),
                "services_state_dir".to_owned(),
                "services_role".to_owned(),
                "services_failover_timeout".to_owned(),
                "services_credentials".to_owned(),
            ],
        ),
        (
            strata_agent::flags::CONFIG_TABLE.to_owned(),
            strata_common::config::group_args(&local, "AgentArgs"),
        ),
        (
            strata_allocator::flags::CONFIG_TABLE.to_owned(),
            strata_common::config::group_args(&local, "AllocatorArgs"),
        ),
    ]
}

/// Parses the command line (`argv`, the program name first); for `strata local`, with the
/// config file it names applied. Returns the CLI and, for `strata local`, its effective
/// settings as a config file.
pub fn parse_command_line(argv: Vec<std::ffi::OsString>) -> Result<(Cli, String), clap::Error> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let cli = Cli::try_parse_from(&argv)?;
    if !matches!(cli.command, Command::Local(_)) {
        return Ok((cli, String::new()));
    }
    let command = Cli::command();
    let tables = local_tables(&command);
    let flags: Vec<Vec<&str>> = tables
        .iter()
        .map(|(_, flags)| flags.iter().map(String::as_str).collect())
        .collect();
    // Keys of the other programs that strata local sets itself.
    let elsewhere: [&[&str]; 3] = [
        &[],
        &["allocator", "work-dir"],
        &["listen", "work-dir", "store"],
    ];
    let tables: Vec<strata_common::config::Table<'_>> = tables
        .iter()
        .zip(&flags)
        .zip(elsewhere)
        .map(
            |(((name, _), flags), elsewhere)| strata_common::config::Table {
                name,
                flags,
                elsewhere,
            },
        )
        .collect();
    let loaded = strata_common::config::load(command, argv, &tables, Some("local"))?;
    let cli = Cli::from_arg_matches(&loaded.matches)?;
    Ok((
        cli,
        strata_common::config::render(&loaded.settings, &tables),
    ))
}

/// `strata run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// CPU cores for the task.
    #[arg(long, default_value_t = 0.1)]
    pub cpus: f64,
    /// Memory for the task, MiB.
    #[arg(long, default_value_t = 32.0)]
    pub mem: f64,
    /// Disk for the task, MiB.
    #[arg(long, default_value_t = 0.0)]
    pub disk: f64,
    /// Whole GPUs for the task (the framework then declares GPU_RESOURCES, so that it is
    /// offered agents with GPUs); the agent names them in CUDA_VISIBLE_DEVICES.
    #[arg(long, default_value_t = 0, value_parser = strata_common::parse::gpu_count)]
    pub gpus: u32,
    /// Declare GPU_RESOURCES without asking for GPUs: the task may then run on an agent that
    /// has GPUs (which frameworks without it are not offered), using none of them.
    #[arg(long)]
    pub gpu_resources: bool,
    /// The task's name (default: the command's name).
    #[arg(long)]
    pub name: Option<String>,
    /// The task id (default: run-<random>).
    #[arg(long)]
    pub task_id: Option<String>,
    /// Run CMD ARGS... as one script with /bin/sh -c (joined by spaces).
    #[arg(long)]
    pub shell: bool,
    /// Kill the task once it has been running this long (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub kill_after: Option<Duration>,
    /// Do not stream the task's stdout and stderr to the terminal (`strata logs TASK` reads
    /// them later).
    #[arg(long)]
    pub detach: bool,
    /// Give up (exit 125) if no offer large enough arrives within this long.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, default_value = "30s")]
    pub offer_timeout: Duration,
    /// The task's network: host (the agent's network namespace), bridge (a namespace of its
    /// own on the agent's bridge, with an address of the agent's subnet) or none (loopback
    /// only).
    #[arg(long, value_enum, default_value_t = NetworkArg::Host)]
    pub network: NetworkArg,
    /// With --network bridge: forward HOST (a port the agent offers; the task asks for it) to
    /// CONTAINER in the task's namespace, tcp and udp unless /tcp or /udp is given. Repeatable.
    #[arg(long, value_name = "HOST:CONTAINER[/tcp|/udp]", value_parser = parse::publish)]
    pub publish: Vec<(u16, u16, &'static str)>,
    /// The command and its arguments (put them after `--` if they start with `-`).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `strata run --network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkArg {
    /// The agent's network namespace.
    Host,
    /// A namespace of the task's own on the agent's bridge.
    Bridge,
    /// A namespace of the task's own with loopback only.
    None,
}

/// `strata agents` and `strata frameworks`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON (an array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `strata ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Include tasks that have ended (kept by the allocator for a while).
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Only this framework's tasks.
    #[arg(long, value_name = "ID")]
    pub framework: Option<String>,
    /// Only tasks on this agent.
    #[arg(long, value_name = "ID")]
    pub agent: Option<String>,
    /// Print JSON (an array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("strata").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_resources_and_a_command_after_double_dash() {
        let cli = parse(&[
            "--allocator",
            "http://10.0.0.1:5050",
            "run",
            "--cpus",
            "0.5",
            "--mem",
            "64",
            "--kill-after",
            "2m",
            "--",
            "sleep",
            "-n",
            "10",
        ])
        .expect("parses");
        assert_eq!(cli.allocator, "http://10.0.0.1:5050");
        let Command::Run(run) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(run.cpus, 0.5);
        assert_eq!(run.mem, 64.0);
        assert_eq!(run.disk, 0.0);
        assert_eq!(run.kill_after, Some(Duration::from_secs(120)));
        assert_eq!(run.offer_timeout, Duration::from_secs(30));
        assert!(!run.shell);
        assert_eq!(run.command, ["sleep", "-n", "10"]);
    }

    #[test]
    fn run_without_double_dash_keeps_the_commands_flags() {
        let cli = parse(&["run", "--shell", "echo", "-e", "a b"]).expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("expected run");
        };
        assert!(run.shell);
        assert_eq!(run.command, ["echo", "-e", "a b"]);
        assert_eq!(run.cpus, 0.1);
        assert_eq!(run.mem, 32.0);
    }

    #[test]
    fn run_needs_a_command_and_valid_durations() {
        assert!(parse(&["run"]).is_err());
        assert!(parse(&["run", "--"]).is_err());
        let err =
            parse(&["run", "--offer-timeout", "soon", "--", "true"]).expect_err("bad duration");
        assert!(err.to_string().contains("like 500ms"), "{err}");
        assert!(
            parse(&["run", "--bogus", "true"]).is_err(),
            "unknown flags before CMD are errors"
        );
    }

    #[test]
    fn allocator_defaults_and_is_global() {
        let cli = parse(&["ps"]).expect("parses");
        // STRATA_ALLOCATOR may be set in a developer's shell; only check when it is not.
        if std::env::var_os("STRATA_ALLOCATOR").is_none() {
            assert_eq!(cli.allocator, DEFAULT_ALLOCATOR);
        }
        let cli = parse(&[
            "ps",
            "--allocator",
            "127.0.0.1:6000",
            "--all",
            "--framework",
            "f-1",
            "--json",
        ])
        .expect("parses");
        // Read by the one parser of allocator addresses: the URL it is dialled at.
        assert_eq!(cli.allocator, "http://127.0.0.1:6000");
        let Command::Ps(ps) = cli.command else {
            panic!("expected ps");
        };
        assert!(ps.all && ps.json);
        assert_eq!(ps.framework.as_deref(), Some("f-1"));
        assert_eq!(ps.agent, None);
    }

    #[test]
    fn list_commands_take_json() {
        let Command::Agents(a) = parse(&["agents", "--json"]).expect("parses").command else {
            panic!("expected agents");
        };
        assert!(a.json);
        let Command::Frameworks(f) = parse(&["frameworks"]).expect("parses").command else {
            panic!("expected frameworks");
        };
        assert!(!f.json);
    }

    #[test]
    fn local_takes_agent_overrides() {
        let cli = parse(&[
            "local",
            "--listen",
            "127.0.0.1:0",
            "--work-dir",
            "/tmp/x",
            "--cpus",
            "2",
            "--mem",
            "1024",
            "--ports",
            "40000-40010",
            "--attribute",
            "rack=r1",
            "--attribute",
            "zone=a",
        ])
        .expect("parses");
        let Command::Local(local) = cli.command else {
            panic!("expected local");
        };
        assert_eq!(local.listen, "127.0.0.1:0");
        assert_eq!(local.work_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(local.agent.cpus, Some(2.0));
        assert_eq!(local.agent.mem, Some(1024.0));
        assert_eq!(local.agent.disk, None);
        assert_eq!(local.agent.ports, Some((40000, 40010)));
        assert_eq!(
            local.agent.attributes,
            [
                ("rack".to_owned(), "r1".to_owned()),
                ("zone".to_owned(), "a".to_owned())
            ]
        );
        let defaults = parse(&["local"]).expect("parses");
        let Command::Local(local) = defaults.command else {
            panic!("expected local");
        };
        assert_eq!(local.listen, "127.0.0.1:5050");
        assert_eq!(local.work_dir, None);
    }

    #[test]
    fn port_ranges_and_attributes_are_validated() {
        let local = |flags: &[&str]| {
            let argv: Vec<&str> = ["local"].iter().chain(flags).copied().collect();
            match parse(&argv).map(|cli| cli.command) {
                Ok(Command::Local(local)) => Ok(local),
                Ok(_) => panic!("expected local"),
                Err(e) => Err(e.to_string()),
            }
        };
        let ok = local(&["--ports", "31000-32000", "--attribute", " k = v=w "]).unwrap();
        assert_eq!(ok.agent.ports, Some((31000, 32000)));
        assert_eq!(
            ok.agent.attributes,
            vec![("k".to_owned(), "v=w".to_owned())]
        );
        for bad in [["--ports", "32000-31000"], ["--ports", "1-70000"]] {
            assert!(local(&bad).unwrap_err().contains("BEGIN-END"), "{bad:?}");
        }
        for bad in ["=x", "novalue"] {
            let e = local(&["--attribute", bad]).unwrap_err();
            assert!(e.contains("NAME=VALUE"), "{e}");
        }
    }
}

#[cfg(test)]
mod flags_reference {
    use clap::CommandFactory as _;
    use strata_agent::flags::AgentCommand;
    use strata_allocator::flags::AllocatorCommand;
    use strata_common::config::reference;

    use super::*;

    /// The long names of `command`'s flags.
    fn longs(command: &clap::Command) -> Vec<String> {
        command
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect()
    }

    #[test]
    fn local_takes_every_agent_and_allocator_flag() {
        let cli = Cli::command();
        let local = longs(cli.find_subcommand("local").expect("a local subcommand"));
        // What strata local sets itself: the agent's allocator is local's own allocator, the
        // allocator's store is in local's work dir; --remove-cgroups is the agent binary's, and
        // so are the agent's TLS files for a remote https:// allocator and its HTTP security.
        // The allocator's security flags are strata-allocator's: strata local serves loopback
        // only (docs/security.md); so are its replication flags (one allocator, no etcd).
        let own = [
            "allocator",
            "work-dir",
            "listen",
            "store",
            "remove-cgroups",
            "tls-ca",
            "tls-cert",
            "tls-key",
            "tls-client-ca",
            "credentials",
            "acls",
            "audit-log",
            "insecure",
            "http-tls-cert",
            "http-tls-key",
            "http-client-ca",
            "http-credentials",
            "http-acls",
            "token-file",
            "etcd",
            "cluster",
            "etcd-lease-ttl",
            "etcd-ca",
            "etcd-cert",
            "etcd-key",
            "advertise",
        ];
        for (program, flags) in [
            ("strata-agent", longs(&AgentCommand::command())),
            ("strata-allocator", longs(&AllocatorCommand::command())),
        ] {
            for flag in flags.iter().filter(|f| !own.contains(&f.as_str())) {
                assert!(
                    local.contains(flag),
                    "strata local has no --{flag} of {program}"
                );
            }
        }
        // And it says so in --help.
        let help = cli
            .find_subcommand("local")
            .expect("local")
            .clone()
            .render_long_help()
            .to_string();
        for flag in [
            "--task-user",
            "--cgroup-placement",
            "--agent-timeout",
            "--mesos-listen",
        ] {
            assert!(help.contains(flag), "{flag} not in strata local --help");
        }
    }

    /// `docs/flags.md`, made from the three programs' flag definitions.
    fn render() -> String {
        let agent = AgentCommand::command();
        let allocator = AllocatorCommand::command();
        let cli = Cli::command();
        let local = cli.find_subcommand("local").expect("local").clone();
        let mut out = String::from(
            "# Flags reference\n\n\
             Generated from the flag definitions (`agent/src/flags.rs`, \
             `allocator/src/flags.rs`, `cli/src/args.rs`) by \
             `STRATA_BLESS=1 cargo test -p strata flags_reference`; a test fails when it is \
             out of date.\n\n\
             Every setting can be given three ways. **Precedence, highest first: the flag on the \
             command line, its environment variable, the config file, the built-in default.** \
             The config file is TOML, named by `--config FILE` or `STRATA_CONFIG`; its keys are \
             the flags' long names, in a table per program (`[agent]`, `[allocator]`, `[local]`), \
             so one file can serve a whole host; a key that names no flag is an error. Repeatable \
             flags take a list. `--print-config` prints the effective settings, each with where \
             it came from, as a config file.\n\n\
             ```toml\n[agent]\nallocator = \"http://10.0.0.1:5050\"\ncpus = 8\nattribute = [\"rack=r1\", \"zone=a\"]\n\n\
             [allocator]\nagent-timeout = \"30s\"\n```\n\n\
             Values: durations are a number with an optional unit (`500ms`, `5s`, `2m`, `1h`, \
             `1d`; plain numbers are seconds); sizes are MiB or a number with `KiB`, `MiB`, \
             `GiB` or `TiB`; addresses are `HOST:PORT` (port 0 picks a free one).\n\n",
        );
        out.push_str("## strata-agent\n\n");
        out.push_str(&reference(
            &agent,
            &[("agent".to_owned(), AgentCommand::table_flags(&agent))],
        ));
        out.push_str("\n## strata-allocator\n\n");
        out.push_str(&reference(
            &allocator,
            &[(
                "allocator".to_owned(),
                AllocatorCommand::table_flags(&allocator),
            )],
        ));
        out.push_str("\n## strata local\n\n");
        out.push_str(&reference(&local, &local_tables(&cli)));
        out
    }

    #[test]
    fn the_flags_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/flags.md");
        let now = render();
        if std::env::var_os("STRATA_BLESS").is_some() {
            std::fs::write(&path, &now).expect("writing docs/flags.md");
            return;
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == now,
            "docs/flags.md is out of date: run `STRATA_BLESS=1 cargo test -p strata flags_reference` and commit it"
        );
    }
}
