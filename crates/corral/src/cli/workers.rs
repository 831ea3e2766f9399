//! `corral workers`: the live workers on the shared broker, as each
//! registers itself (id, host, pid, version, queues, concurrency, the
//! tasks it runs now) and refreshes while it runs. A worker that stopped
//! cleanly is gone at once; one that died, once its entry's time is up.
//! Read-only.

use std::process::ExitCode;

use chrono::SecondsFormat;
use clap::Args;

use super::broker_cmds::RedisArgs;
use super::fleet::Table;
use crate::broker::Broker;

/// Arguments of `corral workers`.
#[derive(Debug, Args)]
pub(super) struct WorkersArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// One JSON object per worker instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(args: WorkersArgs) -> anyhow::Result<ExitCode> {
    let broker = args.redis.connect("workers").await?;
    let workers = broker.workers().await?;
    if args.json {
        for w in &workers {
            say!("{}", serde_json::to_string(w)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if workers.is_empty() {
        say!("no workers");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "WORKER", "HOST", ">PID", "VERSION", ">RUNNING", "QUEUES", "STARTED", "SEEN",
    ]);
    for w in &workers {
        table.row(vec![
            w.id.clone(),
            w.host.clone(),
            w.pid.to_string(),
            w.version.clone(),
            format!("{}/{}", w.tasks.len(), w.concurrency),
            w.queues.join(","),
            w.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            w.seen_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
