//! `corral tasks …`: the operator's view of tasks on the shared broker.
//!
//! - `ls` pages through tasks ([`Broker::list_page`]): by queue name, then
//!   state, newest first; `--cursor` goes on where a page stopped (it is
//!   one tenant's, so it needs `--tenant`). Without `--tenant`, the first
//!   page of every tenant that has had a task.
//! - `retry ID` runs a dead or cancelled task again, within its tenant's
//!   `max_queued` (the catalog's limits, as an enqueue would be);
//! - `cancel ID` cancels a waiting task, or tells a running task's worker
//!   to stop it;
//! - `delete ID` deletes a task that is not running (asks first);
//! - `retry-dead QUEUE` runs every dead task of a queue again (asks first).
//!
//! Without `--tenant`, a verb acts for the tenant that has the task or
//! queue ([`super::fleet`]). Asking is [`super::confirm`]: `--yes` skips
//! it, and without a terminal to ask on, the command refuses.

use std::process::ExitCode;

use anyhow::bail;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::confirm::confirm;
use super::fleet::{Table, Target, check_queue, refused};
use crate::broker::{Broker, Cancelled, MAX_PAGE, PageQuery};
use crate::task::{Task, TaskError, TaskId, TaskState};
use crate::text::Inert;

/// `corral tasks …`.
#[derive(Debug, Args)]
pub struct TasksArgs {
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Debug, Subcommand)]
enum TasksCommand {
    /// List tasks, a page at a time: by queue, then state, newest first.
    Ls(LsArgs),
    /// Run a dead or cancelled task again, from its last checkpoint.
    Retry(IdArgs),
    /// Cancel a task: a waiting one at once, a running one by its worker.
    Cancel(IdArgs),
    /// Delete a task (not while it runs: cancel it first).
    Delete(DeleteArgs),
    /// Run every dead task of a queue again.
    RetryDead(RetryDeadArgs),
}

#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    target: Target,
    /// Only tasks in this state (pending, scheduled, active, retrying,
    /// completed, dead, cancelled).
    #[arg(long)]
    state: Option<TaskState>,
    /// Only tasks of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Most tasks listed (per tenant without --tenant).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Go on where a page stopped (the cursor it printed); needs --tenant.
    #[arg(long, requires = "tenant")]
    cursor: Option<String>,
    /// One JSON object per tenant's page, `{"tenant", "tasks", "next"}`,
    /// instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct IdArgs {
    #[command(flatten)]
    target: Target,
    /// The task's id.
    id: TaskId,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    #[command(flatten)]
    task: IdArgs,
    /// Do not ask.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
struct RetryDeadArgs {
    #[command(flatten)]
    target: Target,
    /// The queue.
    queue: String,
    /// Do not ask.
    #[arg(long)]
    yes: bool,
}

/// Runs `corral tasks …`.
pub(super) async fn run(args: TasksArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TasksCommand::Ls(args) => ls(args).await,
        TasksCommand::Retry(args) => retry(args).await,
        TasksCommand::Cancel(args) => cancel(args).await,
        TasksCommand::Delete(args) => delete(args).await,
        TasksCommand::RetryDead(args) => retry_dead(args).await,
    }
}

/// A task as `ls --json` shows it: what it is and where it stands, not its
/// args, results or log (`corral status ID --json` has the whole record).
#[derive(Debug, Serialize)]
struct Row<'a> {
    task_id: TaskId,
    tenant: &'a str,
    queue: &'a str,
    job: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_version: Option<u32>,
    state: TaskState,
    attempt: u32,
    max_attempts: u32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a TaskError>,
}

impl<'a> Row<'a> {
    fn of(task: &'a Task) -> Self {
        Self {
            task_id: task.task_id,
            tenant: &task.tenant,
            queue: &task.queue_name,
            job: &task.job_name,
            job_version: task.job_version,
            state: task.state,
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            created_at: task.created_at,
            updated_at: task.updated_at,
            run_at: task.run_at,
            error: task.error.as_ref(),
        }
    }
}

/// One tenant's page, as `ls --json` prints it.
#[derive(Debug, Serialize)]
struct Page<'a> {
    tenant: &'a str,
    tasks: Vec<Row<'a>>,
    next: Option<&'a str>,
}

/// Most characters of an error shown in a table row.
const ERROR_SHOWN: usize = 60;

async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    if args.limit == 0 || args.limit > MAX_PAGE {
        bail!("--limit must be 1 to {MAX_PAGE}");
    }
    if let Some(queue) = &args.queue {
        check_queue(queue)?;
    }
    let broker = args.target.broker("tasks ls").await?;
    let query = PageQuery {
        state: args.state,
        queue: args.queue.clone(),
        limit: args.limit,
        cursor: args.cursor.clone(),
    };
    let mut pages = Vec::new();
    for tenant in args.target.tenants(&broker).await? {
        let page = broker
            .list_page(&tenant, &query)
            .await
            .map_err(|e| refused(e, &tenant))?;
        pages.push((tenant, page));
    }
    if args.json {
        for (tenant, page) in &pages {
            let json = Page {
                tenant,
                tasks: page.tasks.iter().map(Row::of).collect(),
                next: page.next.as_deref(),
            };
            say!("{}", serde_json::to_string(&json)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "TASK", "TENANT", "QUEUE", "JOB", "STATE", ">ATTEMPT", "UPDATED", "ERROR",
    ]);
    for (_, page) in &pages {
        for t in &page.tasks {
            let error = t
                .error
                .as_ref()
                .map(|e| {
                    let text = format!("{}: {}", e.kind, e.message);
                    if text.chars().count() > ERROR_SHOWN {
                        let cut: String = text.chars().take(ERROR_SHOWN - 1).collect();
                        format!("{cut}…")
                    } else {
                        text
                    }
                })
                .unwrap_or_default();
            table.row(vec![
                t.task_id.to_string(),
                t.tenant.clone(),
                t.queue_name.clone(),
                t.job_name.clone(),
                t.state.to_string(),
                format!("{}/{}", t.attempt, t.max_attempts),
                t.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                error,
            ]);
        }
    }
    if table.is_empty() {
        say!("no tasks");
    } else {
        table.print();
    }
    for (tenant, page) in &pages {
        if let Some(next) = &page.next {
            say!(
                "more of tenant {}: --tenant {} --cursor '{}'",
                Inert(tenant),
                Inert(tenant),
                Inert(next)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry(args: IdArgs) -> anyhow::Result<ExitCode> {
    let broker = args.target.broker("tasks retry").await?;
    let tenant = args.target.tenant_of_task(&broker, args.id).await?;
    let quota = args.target.quota(&tenant).await?;
    broker
        .retry(&tenant, args.id, &quota)
        .await
        .map_err(|e| refused(e, &tenant))?;
    say!(
        "task {} of tenant {} is pending again",
        args.id,
        Inert(&tenant)
    );
    Ok(ExitCode::SUCCESS)
}

async fn cancel(args: IdArgs) -> anyhow::Result<ExitCode> {
    let broker = args.target.broker("tasks cancel").await?;
    let tenant = args.target.tenant_of_task(&broker, args.id).await?;
    match broker
        .cancel(&tenant, args.id)
        .await
        .map_err(|e| refused(e, &tenant))?
    {
        Cancelled::Now => say!("task {} of tenant {} cancelled", args.id, Inert(&tenant)),
        Cancelled::Requested { worker } => say!(
            "task {} of tenant {} is running: worker {} was told to stop it",
            args.id,
            Inert(&tenant),
            Inert(&worker)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let target = &args.task.target;
    let id = args.task.id;
    let broker = target.broker("tasks delete").await?;
    let tenant = target.tenant_of_task(&broker, id).await?;
    if !confirm(
        &format!("delete task {id} of tenant {}", Inert(&tenant)),
        args.yes,
    )? {
        bail!("nothing deleted");
    }
    broker
        .delete(&tenant, id)
        .await
        .map_err(|e| refused(e, &tenant))?;
    say!("task {id} of tenant {} deleted", Inert(&tenant));
    Ok(ExitCode::SUCCESS)
}

async fn retry_dead(args: RetryDeadArgs) -> anyhow::Result<ExitCode> {
    let broker = args.target.broker("tasks retry-dead").await?;
    let queue = &args.queue;
    let tenant = args.target.tenant_of_queue(&broker, queue).await?;
    let dead = broker
        .stats(&tenant, queue)
        .await
        .map_err(|e| refused(e, &tenant))?
        .dead;
    if !confirm(
        &format!(
            "run the {dead} dead task(s) of queue {} of tenant {} again",
            Inert(queue),
            Inert(&tenant)
        ),
        args.yes,
    )? {
        bail!("nothing retried");
    }
    let quota = args.target.quota(&tenant).await?;
    let retried = broker
        .retry_dead(&tenant, queue, &quota)
        .await
        .map_err(|e| refused(e, &tenant))?;
    say!(
        "{retried} dead task(s) of queue {} of tenant {} pending again",
        Inert(queue),
        Inert(&tenant)
    );
    Ok(ExitCode::SUCCESS)
}
