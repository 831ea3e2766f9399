//! `corral schedules …`: a tenant's schedules on the shared broker.
//!
//! - `add NAME --cron EXPR [--tz ZONE] | --every DURATION --job JOB
//!   [--arg k=v] [--json-arg k=JSON] [--queue Q] [--missed skip|once]`
//!   stores a schedule (replacing one of the same name), within the
//!   tenant's `max_schedules`; its tasks are enqueued within the tenant's
//!   queue quota, as `corral enqueue` would;
//! - `ls` lists them with their next tick (every tenant's without
//!   `--tenant`);
//! - `rm NAME` removes one (the tasks it enqueued stay).
//!
//! Workers fire the ticks (there is no scheduler process): see
//! [`crate::schedule`].

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::fleet::{Table, Target, refused};
use super::units::parse_duration;
use crate::broker::Broker;
use crate::schedule::{Missed, Schedule, Timing};
use crate::submit::{find_job, find_tenant};
use crate::task::{DEFAULT_QUEUE, parse_arg_pairs};
use crate::text::Inert;

/// `corral schedules …`.
#[derive(Debug, Args)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    command: SchedulesCommand,
}

#[derive(Debug, Subcommand)]
enum SchedulesCommand {
    /// Store a schedule: a job's task enqueued on a cron timetable or
    /// every so often, by whichever workers are up.
    Add(AddArgs),
    /// List schedules with their next tick.
    Ls(LsArgs),
    /// Remove a schedule.
    Rm(RmArgs),
}

#[derive(Debug, Args)]
struct AddArgs {
    #[command(flatten)]
    target: Target,
    /// The schedule's name (1 to 128 of letters, digits, `-`, `_`, `.`, `:`).
    name: String,
    /// A cron expression: five fields (`*/5 * * * *`), or six with
    /// seconds first.
    #[arg(long, conflicts_with = "every", required_unless_present = "every")]
    cron: Option<String>,
    /// The time zone `--cron` is read in (an IANA name such as
    /// `Europe/Paris`; UTC by default).
    #[arg(long, requires = "cron")]
    tz: Option<String>,
    /// Or: every this long (`30s`, `5m`), on multiples of it since the Unix
    /// epoch.
    #[arg(long, value_parser = parse_duration)]
    every: Option<Duration>,
    /// The job each tick runs (the tenant's, at its version current then).
    #[arg(long)]
    job: String,
    /// An arg as `key=value` (a string).
    #[arg(short, long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// An arg as `key=JSON`.
    #[arg(long = "json-arg", value_name = "KEY=JSON")]
    json_args: Vec<String>,
    /// The queue its tasks wait in.
    #[arg(long, default_value = DEFAULT_QUEUE)]
    queue: String,
    /// What ticks missed while no worker was up become: `skip` them, or
    /// run `once` for all of them.
    #[arg(long, default_value = "skip", value_parser = parse_missed)]
    missed: Missed,
    /// Attempts per task.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Priority of its tasks in their queue, 0 (the default) to 9.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
}

#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    target: Target,
    /// One JSON object per schedule instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RmArgs {
    #[command(flatten)]
    target: Target,
    /// The schedule.
    name: String,
}

fn parse_missed(s: &str) -> Result<Missed, String> {
    match s {
        "skip" => Ok(Missed::Skip),
        "once" => Ok(Missed::Once),
        other => Err(format!("`{other}`: expected `skip` or `once`")),
    }
}

/// Runs `corral schedules …`.
pub(super) async fn run(args: SchedulesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SchedulesCommand::Add(args) => add(args).await,
        SchedulesCommand::Ls(args) => ls(args).await,
        SchedulesCommand::Rm(args) => rm(args).await,
    }
}

async fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let timing = match (&args.cron, args.every) {
        (Some(expr), None) => Timing::Cron {
            expr: expr.clone(),
            tz: args.tz.clone(),
        },
        (None, Some(every)) => {
            if every.subsec_nanos() != 0 || every.is_zero() {
                bail!("--every must be a whole number of seconds, at least 1");
            }
            Timing::Every {
                secs: every.as_secs(),
            }
        }
        _ => bail!("give --cron or --every"),
    };
    let tenant = args.target.tenant_or_default();
    let schedule = Schedule {
        name: args.name.clone(),
        tenant: tenant.clone(),
        timing,
        missed: args.missed,
        job: args.job.clone(),
        args: parse_arg_pairs(
            args.args.iter().map(String::as_str),
            args.json_args.iter().map(String::as_str),
        )?,
        queue: args.queue.clone(),
        max_attempts: args.max_attempts,
        priority: args.priority,
        timeout_ms: None,
        created_at: chrono::Utc::now(),
    };
    schedule.check().map_err(|e| anyhow::anyhow!(e))?;
    let broker = args.target.broker("schedules add").await?;
    let catalog = args.target.catalog("schedules").await?;
    let found = find_tenant(&catalog, &tenant).await?;
    find_job(&catalog, &tenant, &schedule.job, None)
        .await
        .with_context(|| {
            format!(
                "job `{}` of tenant `{}`: register it first",
                Inert(&schedule.job),
                Inert(&tenant)
            )
        })?;
    let stored = broker
        .put_schedule(
            &schedule,
            &found.limits.queue_quota(),
            found.limits.max_schedules,
        )
        .await
        .map_err(|e| refused(e, &tenant))?;
    match stored.next_tick {
        Some(at) => say!(
            "schedule {} stored; next tick {}",
            Inert(&schedule.name),
            at.to_rfc3339()
        ),
        None => say!(
            "schedule {} stored; its timetable has no more ticks",
            Inert(&schedule.name)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn timing_text(t: &Timing) -> String {
    match t {
        Timing::Cron { expr, tz: Some(tz) } => format!("cron {expr} ({tz})"),
        Timing::Cron { expr, tz: None } => format!("cron {expr}"),
        Timing::Every { secs } => format!("every {secs}s"),
    }
}

async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let broker = args.target.broker("schedules ls").await?;
    let mut table = Table::new(&[
        "TENANT",
        "NAME",
        "WHEN",
        "MISSED",
        "JOB",
        "QUEUE",
        "NEXT TICK",
    ]);
    for tenant in args.target.tenants(&broker).await? {
        for s in broker
            .schedules(&tenant)
            .await
            .map_err(|e| refused(e, &tenant))?
        {
            if args.json {
                say!("{}", serde_json::to_string(&s)?);
                continue;
            }
            table.row(vec![
                tenant.clone(),
                s.schedule.name.clone(),
                timing_text(&s.schedule.timing),
                match s.schedule.missed {
                    Missed::Skip => "skip",
                    Missed::Once => "once",
                }
                .to_owned(),
                s.schedule.job.clone(),
                s.schedule.queue.clone(),
                s.next_tick
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "-".to_owned()),
            ]);
        }
    }
    if !args.json {
        table.print_or("no schedules");
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let broker = args.target.broker("schedules rm").await?;
    let tenant = args.target.tenant_or_default();
    if broker
        .remove_schedule(&tenant, &args.name)
        .await
        .map_err(|e| refused(e, &tenant))?
    {
        say!("schedule {} removed", Inert(&args.name));
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "no schedule `{}` for tenant `{}`",
            Inert(&args.name),
            Inert(&tenant)
        );
        Ok(ExitCode::FAILURE)
    }
}
