//! `corral queues …`: tenants' queues on the shared broker.
//!
//! - `ls` lists each queue with its counts by state and whether it is
//!   paused (every tenant's without `--tenant`);
//! - `pause QUEUE` makes workers skip the queue (it still takes tasks, and
//!   stays paused across restarts), `resume QUEUE` undoes it;
//! - `purge QUEUE --state S` deletes every task of the queue in that state
//!   (not `active`: cancel those), after asking.
//!
//! Without `--tenant`, a verb acts for the one tenant that has the queue
//! ([`super::fleet`]); asking is [`super::confirm`].

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::confirm::confirm;
use super::fleet::{Table, Target, refused};
use crate::broker::{Broker, QueueStats};
use crate::task::TaskState;
use crate::text::Inert;

/// `corral queues …`.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    #[command(subcommand)]
    command: QueuesCommand,
}

#[derive(Debug, Subcommand)]
enum QueuesCommand {
    /// List queues with their counts by state, and whether paused.
    Ls(LsArgs),
    /// Pause a queue: workers take none of its tasks until it is resumed.
    Pause(QueueArgs),
    /// Resume a paused queue.
    Resume(QueueArgs),
    /// Delete every task of a queue in one state.
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    target: Target,
    /// One JSON object per queue, `{"tenant", "queue", "stats"}`, instead
    /// of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct QueueArgs {
    #[command(flatten)]
    target: Target,
    /// The queue.
    queue: String,
}

#[derive(Debug, Args)]
struct PurgeArgs {
    #[command(flatten)]
    queue: QueueArgs,
    /// The state whose tasks are deleted: pending, scheduled, retrying,
    /// completed, dead or cancelled.
    #[arg(long)]
    state: TaskState,
    /// Do not ask.
    #[arg(long)]
    yes: bool,
}

/// Runs `corral queues …`.
pub(super) async fn run(args: QueuesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        QueuesCommand::Ls(args) => ls(args).await,
        QueuesCommand::Pause(args) => pause(args, true).await,
        QueuesCommand::Resume(args) => pause(args, false).await,
        QueuesCommand::Purge(args) => purge(args).await,
    }
}

async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let broker = args.target.broker("queues ls").await?;
    let mut table = Table::new(&[
        "TENANT",
        "QUEUE",
        "PAUSED",
        ">PENDING",
        ">SCHEDULED",
        ">RETRYING",
        ">ACTIVE",
        ">COMPLETED",
        ">DEAD",
        ">CANCELLED",
    ]);
    for tenant in args.target.tenants(&broker).await? {
        let queues = broker
            .queues(&tenant)
            .await
            .map_err(|e| refused(e, &tenant))?;
        for q in queues {
            if args.json {
                say!("{}", serde_json::to_string(&q)?);
                continue;
            }
            let s: QueueStats = q.stats;
            table.row(vec![
                q.tenant,
                q.queue,
                if s.paused { "yes" } else { "no" }.to_owned(),
                s.pending.to_string(),
                // Delayed only: retrying ones have their own column.
                s.scheduled.saturating_sub(s.retrying).to_string(),
                s.retrying.to_string(),
                s.active.to_string(),
                s.completed.to_string(),
                s.dead.to_string(),
                s.cancelled.to_string(),
            ]);
        }
    }
    if !args.json {
        if table.is_empty() {
            say!("no queues");
        } else {
            table.print();
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn pause(args: QueueArgs, paused: bool) -> anyhow::Result<ExitCode> {
    let command = if paused {
        "queues pause"
    } else {
        "queues resume"
    };
    let broker = args.target.broker(command).await?;
    let tenant = args.target.tenant_of_queue(&broker, &args.queue).await?;
    broker
        .pause(&tenant, &args.queue, paused)
        .await
        .map_err(|e| refused(e, &tenant))?;
    say!(
        "queue {} of tenant {} {}",
        Inert(&args.queue),
        Inert(&tenant),
        if paused { "paused" } else { "resumed" }
    );
    Ok(ExitCode::SUCCESS)
}

async fn purge(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let target = &args.queue.target;
    let queue = &args.queue.queue;
    if args.state == TaskState::Active {
        bail!("active tasks are not purged: cancel them (`corral tasks cancel ID`)");
    }
    let broker = target.broker("queues purge").await?;
    let tenant = target.tenant_of_queue(&broker, queue).await?;
    if !confirm(
        &format!(
            "delete every {} task of queue {} of tenant {}",
            args.state,
            Inert(queue),
            Inert(&tenant)
        ),
        args.yes,
    )? {
        bail!("nothing purged");
    }
    let purged = broker
        .purge(&tenant, queue, args.state)
        .await
        .map_err(|e| refused(e, &tenant))?;
    say!(
        "{purged} {} task(s) of queue {} of tenant {} deleted",
        args.state,
        Inert(queue),
        Inert(&tenant)
    );
    Ok(ExitCode::SUCCESS)
}
