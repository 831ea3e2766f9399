//! Settings from a file and the environment: `--config FILE` (or
//! `CORRAL_CONFIG`), a TOML file, and a `CORRAL_*` variable for every
//! setting of `corral worker` and `corral serve`, applied to the command
//! line before it is parsed.
//!
//! Precedence: a flag beats its environment variable, which beats the file,
//! which beats the built-in default. The file is applied by flag name, for
//! any flag: each key becomes the default of the flag with that long name
//! (so clap still takes the environment and the command line over it), and
//! every flag of `worker` and `serve` without a variable of its own is given
//! one here. A flag added to those commands later is settable from the file
//! and the environment with no code in this module.
//!
//! The file (`corral.example.toml` lists every key with its default):
//!
//! - top-level keys: the global options (`log-format`, `verbose`,
//!   `cache-dir`, …) and the Redis connection (`redis`, `prefix`,
//!   `cluster`, `redis-ca-cert`, …), which applies to every command that
//!   takes it;
//! - `[worker]` and `[serve]`: any flag of that command, by its long name
//!   (a Redis key there overrides the top-level one for that command).
//!
//! A string, integer, float or bool is the flag's text (`concurrency = 8`
//! is `--concurrency 8`, `lease = "30s"` is `--lease 30s`); an on/off flag
//! takes a bool, `verbose` a count, a repeatable flag an array (`queue =
//! ["critical", "default"]`). Each value is checked by the flag's own parser
//! when the file is read. An unreadable file, an unknown key or a wrong
//! value stops the command with an error naming the file, the key and what
//! is valid there.
//!
//! Variables: `CORRAL_<FLAG>` for a global option (`CORRAL_VERBOSE`),
//! `CORRAL_WORKER_<FLAG>` and `CORRAL_SERVE_<FLAG>` for the commands' own
//! (`CORRAL_WORKER_CONCURRENCY`), the shared `CORRAL_REDIS_*` for the Redis
//! connection; `--help` names each. A repeatable flag takes one value from
//! its variable (a list needs the file or the command line).
//!
//! `--print-config` prints the settings the command would run with, as TOML
//! that `--config` reads back (passwords in Redis URLs hidden), each marked
//! with where it came from, and exits.
//!
//! This module only prepares and reads the command line; it never panics on
//! what a file or the environment holds.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{
    Arg, ArgAction, ArgMatches, Args as _, Command, CommandFactory as _, FromArgMatches as _,
};

use super::Cli;
use super::broker_cmds::RedisArgs;
use crate::broker::redis::redact;

/// The commands with a table of their own in the file, and variables
/// `CORRAL_<COMMAND>_<FLAG>`.
const TABLES: [&str; 2] = ["worker", "serve"];

/// The variable naming the file when `--config` does not.
const CONFIG_ENV: &str = "CORRAL_CONFIG";

/// Exit status for a file that cannot be used (as for a bad command line).
const BAD_CONFIG: u8 = 2;

/// Where a file's key was applied: (command path, `""` for the top level;
/// the flag's long name).
type Applied = HashSet<(String, String)>;

/// The process's command line, with its config file and environment
/// applied. `Err` is the status to exit with: the command line or the file
/// was wrong (the error is printed), or `--print-config`, `--help` or
/// `--version` already printed what was asked.
pub fn parse() -> Result<Cli, ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut command = with_variables(Cli::command());
    let mut applied = Applied::new();
    let file = config_path(&args);
    if let Some(path) = &file {
        match load(command, path) {
            Ok((loaded, keys)) => {
                command = loaded;
                applied = keys;
            }
            Err(message) => {
                eprintln!("error: {message}");
                return Err(ExitCode::from(BAD_CONFIG));
            }
        }
    }
    let matches = match command.try_get_matches_from_mut(&args) {
        Ok(matches) => matches,
        Err(e) => e.exit(),
    };
    if matches.get_flag("print_config") {
        print_settings(&command, &matches, file.as_deref(), &applied);
        return Err(ExitCode::SUCCESS);
    }
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command).exit())
}

/// `--config FILE` or `--config=FILE` (before any `--`), else
/// `CORRAL_CONFIG`. The full parse checks the option again, so a misplaced
/// one is still reported as clap reports it.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return rest.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether the file and the environment may set `arg`: a flag with a long
/// name, not `--config` itself nor `--print-config`, nor help or version.
fn settable(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !matches!(arg.get_id().as_str(), "config" | "print_config")
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// `CORRAL_[<COMMAND>_]<FLAG>`.
fn variable(command: Option<&str>, long: &str) -> String {
    let mut name = String::from("CORRAL_");
    if let Some(command) = command {
        name.push_str(command);
        name.push('_');
    }
    name.push_str(long);
    name.to_ascii_uppercase().replace('-', "_")
}

/// `command` with a variable for every settable global option and every
/// settable flag of the [`TABLES`] commands that has none yet.
fn with_variables(command: Command) -> Command {
    fn name_them(command: Command, table: Option<&str>) -> Command {
        let missing: Vec<(String, String)> = command
            .get_arguments()
            .filter(|a| settable(a) && a.get_env().is_none())
            .filter_map(|a| Some((a.get_id().to_string(), variable(table, a.get_long()?))))
            .collect();
        missing.into_iter().fold(command, |command, (id, name)| {
            command.mut_arg(id, |a| a.env(name))
        })
    }
    let command = name_them(command, None);
    TABLES.iter().fold(command, |command, table| {
        command.mut_subcommand(table, |sub| name_them(sub, Some(table)))
    })
}

/// Reads `path` and applies it to `command`.
fn load(command: Command, path: &Path) -> Result<(Command, Applied), String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {shown}: {e}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("the config file {shown} is not valid TOML: {e}"))?;
    apply(command, &table, path)
}

/// Applies a parsed file to `command`: top-level keys to the global options
/// and, for the Redis connection, to every command that has it; each
/// [`TABLES`] table to its command.
fn apply(
    mut command: Command,
    file: &toml::Table,
    path: &Path,
) -> Result<(Command, Applied), String> {
    let shown = path.display();
    let mut applied = Applied::new();
    let redis_args = RedisArgs::augment_args(Command::new("redis"));
    let globals: Vec<Arg> = command
        .get_arguments()
        .filter(|a| settable(a))
        .cloned()
        .collect();
    for (key, value) in file {
        if TABLES.contains(&key.as_str()) {
            continue;
        }
        if let Some(arg) = globals.iter().find(|a| a.get_long() == Some(key)) {
            let texts = texts(arg, value).map_err(|e| format!("{shown}: `{key}`: {e}"))?;
            let id = arg.get_id().to_string();
            command = command.mut_arg(id, |a| with_default(a, &texts));
            applied.insert((String::new(), key.clone()));
        } else if let Some(arg) = redis_args
            .get_arguments()
            .find(|a| a.get_long() == Some(key))
        {
            let texts = texts(arg, value).map_err(|e| format!("{shown}: `{key}`: {e}"))?;
            command = everywhere(command, "", key, &texts, &mut applied);
        } else {
            let mut valid: Vec<&str> = globals.iter().filter_map(Arg::get_long).collect();
            valid.extend(redis_args.get_arguments().filter_map(Arg::get_long));
            valid.extend(TABLES);
            let hint = TABLES
                .iter()
                .find(|t| {
                    command
                        .find_subcommand(t)
                        .is_some_and(|c| c.get_arguments().any(|a| a.get_long() == Some(key)))
                })
                .map(|t| format!(" (`{key}` is a setting of `corral {t}`: put it under [{t}])"))
                .unwrap_or_default();
            return Err(format!(
                "{shown}: unknown key `{key}` at the top level{hint}; valid keys there: {}",
                valid.join(", ")
            ));
        }
    }
    for table in TABLES {
        let Some(value) = file.get(table) else {
            continue;
        };
        let Some(entries) = value.as_table() else {
            return Err(format!(
                "{shown}: `{table}` must be a table ([{table}]), not {}",
                value.type_str()
            ));
        };
        let Some(sub) = command.find_subcommand(table) else {
            continue;
        };
        let args: Vec<Arg> = sub
            .get_arguments()
            .filter(|a| settable(a))
            .cloned()
            .collect();
        let mut updates = Vec::new();
        for (key, value) in entries {
            let Some(arg) = args.iter().find(|a| a.get_long() == Some(key)) else {
                let hint = if globals.iter().any(|a| a.get_long() == Some(key)) {
                    format!(" (`{key}` is a global option: put it at the top of the file)")
                } else {
                    String::new()
                };
                let valid: Vec<&str> = args.iter().filter_map(Arg::get_long).collect();
                return Err(format!(
                    "{shown}: unknown key `{key}` in [{table}]{hint}; valid keys there: {}",
                    valid.join(", ")
                ));
            };
            let texts =
                texts(arg, value).map_err(|e| format!("{shown}: [{table}] `{key}`: {e}"))?;
            updates.push((arg.get_id().to_string(), texts));
            applied.insert((table.to_owned(), key.clone()));
        }
        command = command.mut_subcommand(table, |sub| {
            updates.into_iter().fold(sub, |sub, (id, texts)| {
                sub.mut_arg(id, |a| with_default(a, &texts))
            })
        });
    }
    Ok((command, applied))
}

/// Sets `texts` as the default of the flag `long` of `command` and of every
/// subcommand below it that has that flag.
fn everywhere(
    mut command: Command,
    path: &str,
    long: &str,
    texts: &[String],
    applied: &mut Applied,
) -> Command {
    let id = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .map(|a| a.get_id().to_string());
    if let Some(id) = id {
        command = command.mut_arg(id, |a| with_default(a, texts));
        applied.insert((path.to_owned(), long.to_owned()));
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for name in names {
        let below = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        command =
            command.mut_subcommand(&name, |sub| everywhere(sub, &below, long, texts, applied));
    }
    command
}

fn with_default(arg: Arg, texts: &[String]) -> Arg {
    match texts {
        [one] => arg.default_value(one.clone()),
        many => arg.default_values(many.iter().cloned()),
    }
}

/// What a file's `value` means for `arg`: the texts of its default, each
/// checked by the flag's own parser.
fn texts(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    use toml::Value;
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Datetime(_) | Value::Array(_) | Value::Table(_) => None,
    };
    let texts = match (arg.get_action(), value) {
        (ArgAction::SetTrue | ArgAction::SetFalse, Value::Boolean(b)) => {
            return Ok(vec![b.to_string()]);
        }
        (ArgAction::SetTrue | ArgAction::SetFalse, other) => {
            return Err(format!(
                "expected true or false (an on/off flag), found {}",
                other.type_str()
            ));
        }
        (ArgAction::Count, Value::Integer(n)) if (0..=255).contains(n) => {
            return Ok(vec![n.to_string()]);
        }
        (ArgAction::Count, _) => {
            return Err(
                "expected a whole number from 0 to 255 (how many times the flag is given)".into(),
            );
        }
        (ArgAction::Append, Value::Array(items)) => items
            .iter()
            .map(|item| {
                scalar(item).ok_or_else(|| {
                    format!(
                        "expected a list of strings or numbers, found a {} in it",
                        item.type_str()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        (_, Value::Array(_)) => {
            return Err("expected one value, found an array (the flag is not repeatable)".into());
        }
        (_, other) => {
            vec![scalar(other).ok_or_else(|| {
                format!("expected a string or a number, found {}", other.type_str())
            })?]
        }
    };
    if texts.is_empty() {
        return Err("expected at least one value, found an empty array".into());
    }
    for text in &texts {
        check(arg, text)?;
    }
    Ok(texts)
}

/// Runs `text` through `arg`'s parser, as if given on the command line.
fn check(arg: &Arg, text: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or_default();
    let mut probe = Arg::new("value")
        .long(long.to_owned())
        .action(ArgAction::Set)
        .allow_hyphen_values(true)
        .value_parser(arg.get_value_parser().clone());
    if let Some(names) = arg.get_value_names() {
        probe = probe.value_names(names.iter().cloned());
    }
    let tried = Command::new("corral")
        .color(clap::ColorChoice::Never)
        .arg(probe)
        .try_get_matches_from([OsString::from("corral"), format!("--{long}={text}").into()]);
    match tried {
        Ok(_) => Ok(()),
        // clap's message without its `error: ` and `--help` advice, the
        // possible values kept.
        Err(e) => Err(e
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
            .map(|l| l.strip_prefix("error: ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join(" ")),
    }
}

/// `--print-config`: the global options, then the command's own settings
/// under `[command]`, each value with its source.
fn print_settings(command: &Command, matches: &ArgMatches, file: Option<&Path>, applied: &Applied) {
    let from_file = match file {
        Some(path) => format!("the file {}", path.display()),
        None => "no file".to_owned(),
    };
    say!("# Settings in effect ({from_file}): flag > environment > file > default.");
    print_args(command, matches, "", applied, true);
    let mut path = Vec::new();
    let (mut command, mut matches) = (command, matches);
    while let Some((name, sub_matches)) = matches.subcommand() {
        let Some(sub) = command.find_subcommand(name) else {
            break;
        };
        path.push(name.to_owned());
        let joined = path.join(" ");
        say!();
        say!("[{}]", path.join("."));
        print_args(sub, sub_matches, &joined, applied, false);
        (command, matches) = (sub, sub_matches);
    }
}

fn print_args(
    command: &Command,
    matches: &ArgMatches,
    path: &str,
    applied: &Applied,
    globals: bool,
) {
    // By name, the unset ones last, as comments.
    let mut set = Vec::new();
    let mut unset = Vec::new();
    for arg in command.get_arguments() {
        if !settable(arg) || arg.is_global_set() != globals {
            continue;
        }
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|values| values.map(|v| redact(&v.to_string_lossy())).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => format!(
                "env {}",
                arg.get_env()
                    .map(|e| e.to_string_lossy())
                    .unwrap_or_default()
            ),
            Some(_) if applied.contains(&(path.to_owned(), long.to_owned())) => "file".to_owned(),
            Some(_) => "default".to_owned(),
            None => {
                unset.push(format!("# {long}: not set"));
                continue;
            }
        };
        let value = toml_value(arg, raw);
        set.push(format!("{long} = {value}  # {source}"));
    }
    set.sort();
    unset.sort();
    for line in set.iter().chain(&unset) {
        say!("{line}");
    }
}

/// `raw` as the TOML value the file would hold for `arg`.
fn toml_value(arg: &Arg, raw: Vec<String>) -> toml::Value {
    use toml::Value;
    let typed = |text: String| match text.parse::<i64>() {
        Ok(n) if n.to_string() == text => Value::Integer(n),
        _ => Value::String(text),
    };
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            Value::Boolean(raw.first().is_some_and(|v| v == "true"))
        }
        ArgAction::Append => Value::Array(raw.into_iter().map(Value::String).collect()),
        _ => match raw.len() {
            1 => raw
                .into_iter()
                .next()
                .map(typed)
                .unwrap_or(Value::String(String::new())),
            _ => Value::Array(raw.into_iter().map(typed).collect()),
        },
    }
}
