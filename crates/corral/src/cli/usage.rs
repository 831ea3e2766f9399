//! `corral usage [TENANT]`: what tenants' tasks cost, day by day.
//!
//! Reads the per-tenant, per-day counters the broker keeps atomically with
//! each stored checkpoint and ack ([`Broker::usage`]): handler calls, fuel,
//! wall and instantiate time, the largest peak memory of a call, and tasks
//! completed, retried and died. Without a tenant it shows every tenant
//! that has had a task on this Redis. A table for people, `--json` (one
//! object per tenant and day) for billing scripts. Read-only.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use chrono::{NaiveDate, Utc};
use clap::Args;

use super::broker_cmds::RedisArgs;
use super::units::mib;
use crate::broker::Broker;
use crate::metering::{DailyUsage, USAGE_KEPT_DAYS, Usage, usage_default_since};

/// Arguments of `corral usage`.
#[derive(Debug, Args)]
pub(super) struct UsageArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The tenant; without it, every tenant that has had a task.
    tenant: Option<String>,
    /// First day shown, `YYYY-MM-DD` (UTC); default: 29 days before `--until`.
    #[arg(long, value_parser = parse_day)]
    since: Option<NaiveDate>,
    /// Last day shown, `YYYY-MM-DD` (UTC); default: today.
    #[arg(long, value_parser = parse_day)]
    until: Option<NaiveDate>,
    /// One JSON object per tenant and day instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_day(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("`{s}` is not a YYYY-MM-DD date: {e}"))
}

/// One tenant's day, as `--json` prints it.
#[derive(serde::Serialize)]
struct Row<'a> {
    tenant: &'a str,
    #[serde(flatten)]
    day: &'a DailyUsage,
}

pub(super) async fn run(args: UsageArgs) -> anyhow::Result<ExitCode> {
    let until = args.until.unwrap_or_else(|| Utc::now().date_naive());
    let since = args.since.unwrap_or_else(|| usage_default_since(until));
    if since > until {
        bail!("--since {since} is after --until {until}");
    }
    if (until - since).num_days() >= i64::from(USAGE_KEPT_DAYS) {
        bail!(
            "usage is kept for {USAGE_KEPT_DAYS} days; ask for fewer (--since {since} --until {until})"
        );
    }
    let broker = args.redis.connect("usage").await?;
    let tenants = match &args.tenant {
        Some(t) => vec![t.clone()],
        None => broker
            .tenants_with_tasks()
            .await
            .context("listing the tenants")?,
    };
    let mut all = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let days = broker
            .usage(&tenant, since..=until)
            .await
            .with_context(|| format!("reading the usage of tenant `{tenant}`"))?;
        all.push((tenant, days));
    }
    if args.json {
        for (tenant, days) in &all {
            for day in days {
                say!("{}", serde_json::to_string(&Row { tenant, day })?);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    say!("usage from {since} to {until} (UTC)");
    let shown: Vec<&(String, Vec<DailyUsage>)> = all
        .iter()
        .filter(|(t, days)| !days.is_empty() || args.tenant.as_deref() == Some(t))
        .collect();
    if shown.is_empty() {
        say!("no tenant ran anything in that time");
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<20} {:<10} {:>9} {:>16} {:>12} {:>12} {:>11} {:>9} {:>7} {:>6}",
        "TENANT",
        "DAY",
        "CALLS",
        "FUEL",
        "WALL",
        "INSTANTIATE",
        "PEAK MEM",
        "COMPLETED",
        "RETRIED",
        "DEAD"
    );
    for (tenant, days) in shown {
        let mut total = Usage::default();
        for d in days {
            row(tenant, &d.day.to_string(), &d.usage);
            total.merge(&d.usage);
        }
        if days.len() != 1 {
            row(tenant, "total", &total);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(tenant: &str, day: &str, u: &Usage) {
    // The tenant's name is the operator's own view of its catalog: shown
    // as stored, but inert (no control characters reach the terminal).
    let tenant = crate::text::Inert(tenant).to_string();
    say!(
        "{:<20} {:<10} {:>9} {:>16} {:>12} {:>12} {:>11} {:>9} {:>7} {:>6}",
        tenant,
        day,
        u.calls,
        u.fuel,
        secs(u.wall_us),
        secs(u.instantiate_us),
        mib(u.peak_memory_bytes),
        u.completed,
        u.retried,
        u.dead
    );
}

/// Microseconds as seconds, three decimals.
fn secs(us: u64) -> String {
    format!("{:.3} s", us as f64 / 1e6)
}
