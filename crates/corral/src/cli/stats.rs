//! `corral stats`: counts of tasks by state, per queue, with each tenant's
//! total and (over several tenants) the total of all; and what finished in
//! the last minute. Read-only; one small read per queue.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::fleet::{Table, Target, refused};
use crate::broker::{Broker, QueueInfo, QueueStats};

/// Arguments of `corral stats`.
#[derive(Debug, Args)]
pub(super) struct StatsArgs {
    #[command(flatten)]
    target: Target,
    /// One JSON object per tenant, `{"tenant", "queues", "total"}`, instead
    /// of a table.
    #[arg(long)]
    json: bool,
}

/// One tenant, as `--json` prints it.
#[derive(Serialize)]
struct TenantStats<'a> {
    tenant: &'a str,
    queues: &'a [QueueInfo],
    total: QueueStats,
}

const HEADERS: [&str; 11] = [
    "TENANT",
    "QUEUE",
    ">PENDING",
    ">SCHEDULED",
    ">RETRYING",
    ">ACTIVE",
    ">COMPLETED",
    ">DEAD",
    ">CANCELLED",
    ">DONE/MIN",
    ">FAILED/MIN",
];

/// A row; `queue` `None` is a total.
fn cells(tenant: &str, queue: Option<&str>, s: &QueueStats) -> Vec<String> {
    let queue = match queue {
        Some(q) if s.paused => format!("{q} (paused)"),
        Some(q) => q.to_owned(),
        None => "(total)".to_owned(),
    };
    vec![
        tenant.to_owned(),
        queue,
        s.pending.to_string(),
        s.scheduled.saturating_sub(s.retrying).to_string(),
        s.retrying.to_string(),
        s.active.to_string(),
        s.completed.to_string(),
        s.dead.to_string(),
        s.cancelled.to_string(),
        s.completed_last_minute.to_string(),
        s.failed_last_minute.to_string(),
    ]
}

pub(super) async fn run(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let broker = args.target.broker("stats").await?;
    let mut table = Table::new(&HEADERS);
    let mut all = QueueStats::default();
    let mut shown = 0;
    for tenant in args.target.tenants(&broker).await? {
        let queues = broker
            .queues(&tenant)
            .await
            .map_err(|e| refused(e, &tenant))?;
        let mut total = QueueStats::default();
        for q in &queues {
            total.add(&q.stats);
        }
        all.add(&total);
        if args.json {
            let row = TenantStats {
                tenant: &tenant,
                queues: &queues,
                total,
            };
            say!("{}", serde_json::to_string(&row)?);
            continue;
        }
        if queues.is_empty() {
            continue;
        }
        shown += 1;
        for q in &queues {
            table.row(cells(&tenant, Some(&q.queue), &q.stats));
        }
        if queues.len() > 1 {
            table.row(cells(&tenant, None, &total));
        }
    }
    if args.json {
        return Ok(ExitCode::SUCCESS);
    }
    if table.is_empty() {
        say!("no tasks");
        return Ok(ExitCode::SUCCESS);
    }
    if shown > 1 {
        table.row(cells("(all)", None, &all));
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
