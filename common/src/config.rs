//! Config files (TOML) beside flags and environment variables, with one definition of each
//! setting: the flag. A config file's keys are the flags' long names, in tables named after
//! the program they configure, so one file can serve a whole host:
//!
//! ```toml
//! [agent]
//! allocator = "http://10.0.0.1:5050"
//! cpus = 8
//! attribute = ["rack=r1", "zone=a"]
//!
//! [allocator]
//! agent-timeout = "30s"
//! ```
//!
//! Precedence, highest first: a flag on the command line, its environment variable, the config
//! file, the built-in default. The file's values become the flags' defaults before the command
//! line is parsed, so they go through the same parsers and give the same errors as flags.
//! `--config FILE` (or `STRATA_CONFIG`) names the file; there is none by default.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The flag and environment variable that name a config file.
pub const CONFIG_FLAG: &str = "config";
/// See [`CONFIG_FLAG`].
pub const CONFIG_ENV: &str = "STRATA_CONFIG";

/// The tables a config file may hold: one per program, so that one file can serve a host.
pub const TABLES: [&str; 3] = ["agent", "allocator", "local"];

/// The largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is too large to be a config file.
    #[error("the config file {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not TOML.
    #[error("the config file {path} is not valid TOML: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where and what.
        reason: String,
    },
    /// A table is not one of [`TABLES`], or is not a table.
    #[error("the config file {path}: [{table}]: {reason}")]
    Table {
        /// The file.
        path: PathBuf,
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// A key names no flag of this program, or its value has the wrong shape.
    #[error("the config file {path}: [{table}] {key}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The table.
        table: String,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Which tables of a config file a program reads, and which of its flags each may set.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    /// The table's name, e.g. `agent`.
    pub name: &'a str,
    /// The ids of the flags (clap argument ids) this table may set.
    pub flags: &'a [&'a str],
    /// Keys that are flags of another program reading the same table (e.g. the agent's
    /// `allocator` and `work-dir` in `strata local`): skipped, not refused.
    pub elsewhere: &'a [&'a str],
}

/// The config file named by `--config FILE` (or `--config=FILE`) in `args` (the last one
/// wins), else by [`CONFIG_ENV`]. Arguments after `--` are not looked at.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let prefix = format!("--{CONFIG_FLAG}=");
    let mut found = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            continue;
        };
        if text == "--" {
            break;
        }
        if text == flag {
            found = args.next().map(PathBuf::from);
        } else if let Some(path) = text.strip_prefix(&prefix) {
            found = Some(PathBuf::from(path));
        }
    }
    found.or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
}

/// Reads and parses the config file at `path`.
pub fn read(path: &Path) -> Result<toml::Table, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            reason: e.to_string().trim().to_owned(),
        })
}

/// Makes the values of `file`'s `tables` the defaults of the matching flags of `command`, so
/// that the command line and environment still override them. Keys that name no flag the
/// table may set, and values that are tables, are errors.
pub fn apply(
    mut command: clap::Command,
    path: &Path,
    file: &toml::Table,
    tables: &[Table<'_>],
) -> Result<clap::Command, ConfigError> {
    for name in file.keys() {
        if !TABLES.contains(&name.as_str()) {
            return Err(ConfigError::Table {
                path: path.to_path_buf(),
                table: name.clone(),
                reason: format!(
                    "no such table; the tables are [{}] (this program reads [{}])",
                    TABLES.join("], ["),
                    tables
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join("], [")
                ),
            });
        }
    }
    for table in tables {
        let Some(values) = file.get(table.name) else {
            continue;
        };
        let key_err = |key: &str, reason: String| ConfigError::Key {
            path: path.to_path_buf(),
            table: table.name.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let toml::Value::Table(values) = values else {
            return Err(ConfigError::Table {
                path: path.to_path_buf(),
                table: table.name.to_owned(),
                reason: "must be a table: [name] followed by key = value lines".to_owned(),
            });
        };
        for (key, value) in values {
            if table.elsewhere.contains(&key.as_str()) {
                continue;
            }
            let id = command
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .map(|a| a.get_id().as_str().to_owned())
                .filter(|id| table.flags.contains(&id.as_str()))
                .ok_or_else(|| {
                    key_err(
                        key,
                        format!(
                            "no such setting; the keys are the long names of the flags (see `{} --help`)",
                            command.get_name()
                        ),
                    )
                })?;
            let strings = strings_of(value).map_err(|reason| key_err(key, reason))?;
            command = command.mut_arg(id, |arg| {
                arg.default_values(
                    strings
                        .iter()
                        .map(|s| clap::builder::OsStr::from(clap::builder::Str::from(s.clone()))),
                )
            });
        }
    }
    Ok(command)
}

/// A TOML value as the flag arguments it stands for.
fn strings_of(value: &toml::Value) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Integer(i) => Ok(vec![i.to_string()]),
        toml::Value::Float(f) => Ok(vec![f.to_string()]),
        toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    Err("a list may hold only strings, numbers and booleans".to_owned())
                }
                v => strings_of(v).map(|mut s| s.remove(0)),
            })
            .collect(),
        toml::Value::Datetime(d) => Ok(vec![d.to_string()]),
        toml::Value::Table(_) => Err("must be a value, not a table".to_owned()),
    }
}

/// A command line parsed with its config file applied.
#[derive(Debug)]
pub struct Loaded {
    /// The matches of the (sub)command the tables configure.
    pub matches: clap::ArgMatches,
    /// The effective settings, each saying where its value came from (what `--print-config`
    /// prints, through [`render`]).
    pub settings: Vec<Setting>,
}

/// One effective setting: the flag's id and a TOML line `key = value  # source`.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The flag's clap id.
    pub id: String,
    /// The line.
    pub line: String,
}

/// The settings of each table, under its `[name]` header: a config file that sets everything
/// as it is now, with where each value came from in comments.
pub fn render(settings: &[Setting], tables: &[Table<'_>]) -> String {
    let mut out = String::new();
    for table in tables {
        out.push_str(&format!("[{}]\n", table.name));
        for s in settings
            .iter()
            .filter(|s| table.flags.contains(&s.id.as_str()))
        {
            out.push_str(&s.line);
            out.push('\n');
        }
    }
    out
}

/// Parses `argv` (the program name first) with `command`, after applying the config file it
/// names (see [`config_path`]) to `subcommand` (or to `command` itself) through `tables`.
/// A config file that cannot be used is a clap error naming the file, key and problem.
pub fn load(
    command: clap::Command,
    argv: Vec<OsString>,
    tables: &[Table<'_>],
    subcommand: Option<&str>,
) -> Result<Loaded, clap::Error> {
    let path = config_path(&argv);
    let mut command = command;
    let mut from_file = Vec::new();
    if let Some(path) = &path {
        let invalid = |command: &mut clap::Command, e: ConfigError| {
            command.error(clap::error::ErrorKind::InvalidValue, e.to_string())
        };
        let file = match read(path) {
            Ok(file) => file,
            Err(e) => return Err(invalid(&mut command, e)),
        };
        from_file = tables
            .iter()
            .filter_map(|t| file.get(t.name).and_then(toml::Value::as_table))
            .flat_map(|t| t.keys().cloned())
            .collect();
        command = match subcommand {
            Some(name) => {
                let Some(sub) = command.find_subcommand(name).cloned() else {
                    return Err(invalid(
                        &mut command,
                        ConfigError::Table {
                            path: path.clone(),
                            table: name.to_owned(),
                            reason: "internal: no such subcommand".to_owned(),
                        },
                    ));
                };
                match apply(sub, path, &file, tables) {
                    Ok(sub) => command.mut_subcommand(name, |_| sub),
                    Err(e) => return Err(invalid(&mut command, e)),
                }
            }
            None => match apply(command.clone(), path, &file, tables) {
                Ok(applied) => applied,
                Err(e) => return Err(invalid(&mut command, e)),
            },
        };
    }
    let matches = command.clone().try_get_matches_from(argv)?;
    let (sub_command, sub_matches) = match subcommand {
        Some(name) => (
            command.find_subcommand(name).cloned().unwrap_or_default(),
            matches.subcommand_matches(name).cloned(),
        ),
        None => (command.clone(), Some(matches.clone())),
    };
    let settings = sub_matches
        .as_ref()
        .map(|m| settings(&sub_command, m, path.as_deref(), &from_file))
        .unwrap_or_default();
    Ok(Loaded { matches, settings })
}

/// A program's flags as parsed, and its effective settings as a config file (what
/// `--print-config` prints).
#[derive(Debug)]
pub struct Parsed<T> {
    /// The flags.
    pub args: T,
    /// The effective settings, each line saying where its value came from.
    pub settings: String,
}

/// Parses `argv` (the program name first) with `command`, the config file it names applied
/// to the flags (clap ids) `flags` from the table `table`: the whole of what a program with one
/// table does.
pub fn parse<T: clap::FromArgMatches>(
    command: clap::Command,
    argv: Vec<OsString>,
    table: &str,
    flags: &[String],
) -> Result<Parsed<T>, clap::Error> {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tables = [Table {
        name: table,
        flags: &flags,
        elsewhere: &[],
    }];
    let loaded = load(command, argv, &tables, None)?;
    Ok(Parsed {
        args: T::from_arg_matches(&loaded.matches)?,
        settings: render(&loaded.settings, &tables),
    })
}

/// For a binary's `main`: the parsed flags, or the process exits, with clap's message (or
/// help) for a command line that cannot be used, and after printing the settings when
/// `print_config` says `--print-config` was given.
pub fn flags_or_exit<T>(
    parsed: Result<Parsed<T>, clap::Error>,
    print_config: impl Fn(&T) -> bool,
) -> T {
    use std::io::Write as _;
    let parsed = parsed.unwrap_or_else(|e| e.exit());
    if print_config(&parsed.args) {
        let mut out = std::io::stdout();
        // A reader that went away (`| head`) has what it wanted.
        let _ = out.write_all(parsed.settings.as_bytes());
        let _ = out.flush();
        std::process::exit(0);
    }
    parsed.args
}

/// The effective value of every setting of `command` in `matches`, as TOML lines that say
/// where each came from.
fn settings(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    path: Option<&Path>,
    from_file: &[String],
) -> Vec<Setting> {
    use clap::parser::ValueSource;
    let mut out = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if matches!(long, "help" | "version" | CONFIG_FLAG | "print-config") {
            continue;
        }
        let id = arg.get_id().as_str();
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "command line".to_owned(),
            Some(ValueSource::EnvVariable) => format!(
                "environment ({})",
                arg.get_env()
                    .map(|e| e.to_string_lossy())
                    .unwrap_or_default()
            ),
            Some(ValueSource::DefaultValue) if from_file.iter().any(|k| k == long) => format!(
                "config file ({})",
                path.map(|p| p.display().to_string()).unwrap_or_default()
            ),
            Some(_) => "default".to_owned(),
            None => {
                out.push(Setting {
                    id: id.to_owned(),
                    line: format!("# {long}: not set"),
                });
                continue;
            }
        };
        let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
        let value = match (arg.get_action(), quoted.as_slice()) {
            (clap::ArgAction::Append, _) => format!("[{}]", quoted.join(", ")),
            (_, [one]) => one.clone(),
            (_, many) => format!("[{}]", many.join(", ")),
        };
        out.push(Setting {
            id: id.to_owned(),
            line: format!("{long} = {value}  # {source}"),
        });
    }
    out
}

/// The ids of the arguments of `command` that belong to the group `group` (clap's derive
/// makes a group of each `#[derive(Args)]` struct, named after it).
pub fn group_args(command: &clap::Command, group: &str) -> Vec<String> {
    command
        .get_groups()
        .find(|g| g.get_id().as_str() == group)
        .map(|g| g.get_args().map(|id| id.as_str().to_owned()).collect())
        .unwrap_or_default()
}

/// A Markdown reference of `command`'s flags: each flag's long name, value, environment
/// variable, config file key (`[table] key`, for the flags one of `tables` (name, flag ids)
/// may set), default and help. The flags reference in `docs/flags.md` is made of these.
pub fn reference(command: &clap::Command, tables: &[(String, Vec<String>)]) -> String {
    let mut out = String::new();
    out.push_str("| flag | environment variable | config file key | default | what it does |\n");
    out.push_str("|---|---|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if matches!(long, "help" | "version") {
            continue;
        }
        let value = arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        let takes_value = arg.get_action().takes_values();
        let flag = if takes_value {
            format!("`--{long}{value}`")
        } else {
            format!("`--{long}`")
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let key = tables
            .iter()
            .find(|(_, flags)| flags.iter().any(|f| f == arg.get_id().as_str()))
            .map(|(table, _)| format!("`[{table}] {long}`"))
            .unwrap_or_default();
        let default = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .filter(|v| takes_value || v != "false")
            .collect::<Vec<_>>()
            .join(", ");
        let default = if default.is_empty() {
            String::new()
        } else {
            format!("`{default}`")
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|");
        out.push_str(&format!(
            "| {flag} | {env} | {key} | {default} | {help} |\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches as _, Parser};
    use std::ffi::OsString;

    #[derive(Debug, Args)]
    struct Inner {
        /// A duration.
        #[arg(long, env = "STRATA_TEST_CONFIG_GRACE", default_value = "3s")]
        grace: String,
        /// Repeatable.
        #[arg(long = "attribute")]
        attributes: Vec<String>,
        /// A switch.
        #[arg(long)]
        quiet: bool,
    }

    #[derive(Debug, Parser)]
    #[command(name = "prog")]
    struct Prog {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        work_dir: Option<String>,
        #[command(flatten)]
        inner: Inner,
    }

    /// Parses `argv` with `file` as the config file; returns the flags and the settings.
    fn parse_with(file: &str, argv: &[&str]) -> Result<(Prog, String), String> {
        use clap::CommandFactory as _;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("test.toml");
        std::fs::write(&path, file).map_err(|e| e.to_string())?;
        let command = Prog::command();
        let mut flags = group_args(&command, "Inner");
        flags.push("work_dir".to_owned());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let argv = ["prog", "--config", path.to_str().unwrap_or_default()]
            .into_iter()
            .chain(argv.iter().copied())
            .map(OsString::from)
            .collect();
        let tables = [Table {
            name: "agent",
            flags: &flags,
            elsewhere: &["allocator"],
        }];
        let loaded = load(command, argv, &tables, None).map_err(|e| e.to_string())?;
        let prog = Prog::from_arg_matches(&loaded.matches).map_err(|e| e.to_string())?;
        Ok((prog, render(&loaded.settings, &tables)))
    }

    fn parse(file: &str, argv: &[&str]) -> Result<Prog, String> {
        parse_with(file, argv).map(|(p, _)| p)
    }

    #[test]
    fn the_file_sets_defaults_that_flags_override() {
        let file = "[allocator]\nx = 1\n[agent]\ngrace = \"10s\"\nattribute = [\"rack=r1\", \"zone=a\"]\nquiet = true\nwork-dir = \"/w\"\nallocator = \"skipped\"\n";
        let p = parse(file, &[]).unwrap();
        assert_eq!(p.inner.grace, "10s");
        assert_eq!(p.inner.attributes, ["rack=r1", "zone=a"]);
        assert!(p.inner.quiet);
        assert_eq!(p.work_dir.as_deref(), Some("/w"));
        let p = parse(file, &["--grace", "1s", "--attribute", "x=y"]).unwrap();
        assert_eq!(p.inner.grace, "1s");
        assert_eq!(p.inner.attributes, ["x=y"]);
        // No file: the built-in default.
        assert_eq!(parse("", &[]).unwrap().inner.grace, "3s");
    }

    #[test]
    fn the_settings_say_where_each_value_came_from() {
        let (_, settings) =
            parse_with("[agent]\ngrace = \"10s\"\n", &["--attribute", "a=b"]).unwrap();
        assert!(
            settings.contains("grace = \"10s\"  # config file ("),
            "{settings}"
        );
        assert!(
            settings.contains("attribute = [\"a=b\"]  # command line"),
            "{settings}"
        );
        assert!(
            settings.contains("quiet = \"false\"  # default"),
            "{settings}"
        );
        assert!(settings.contains("# work-dir: not set"), "{settings}");
    }

    #[test]
    fn unknown_tables_keys_and_shapes_are_refused_with_what_to_write() {
        let e = parse("[other]\nx = 1\n", &[]).unwrap_err();
        assert!(
            e.contains("no such table; the tables are [agent], [allocator], [local]"),
            "{e}"
        );
        let e = parse("[agent]\ngrase = \"1s\"\n", &[]).unwrap_err();
        assert!(e.contains("[agent] grase: no such setting"), "{e}");
        let e = parse("[agent]\ngrace = { a = 1 }\n", &[]).unwrap_err();
        assert!(e.contains("not a table"), "{e}");
        let e = parse("[prog\n", &[]).unwrap_err();
        assert!(!e.is_empty());
        // `config` is a flag but not one the table may set.
        let e = parse("[agent]\nconfig = \"x\"\n", &[]).unwrap_err();
        assert!(e.contains("no such setting"), "{e}");
    }

    #[test]
    fn the_config_flag_is_found_before_parsing() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["prog", "--config", "a.toml", "--config=b.toml"])),
            Some(PathBuf::from("b.toml"))
        );
        assert_eq!(
            config_path(&args(&["prog", "--", "--config", "task.toml"])),
            std::env::var_os(CONFIG_ENV).map(PathBuf::from)
        );
    }

    #[test]
    fn large_or_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
        assert!(matches!(read(&big), Err(ConfigError::TooLarge { .. })));
        assert!(matches!(
            read(&dir.path().join("none.toml")),
            Err(ConfigError::Read { .. })
        ));
    }
}
