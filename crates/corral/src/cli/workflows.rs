//! `corral workflow …`: a tenant's workflows on the shared broker.
//!
//! - `submit FILE` (`-` for stdin) stores a workflow written as JSON,
//!   `{"flow": ..., "on_failure": "fail_fast"|"wait"}` (the body of
//!   `POST /v1/workflows`), within the tenant's `max_workflows`; each job
//!   pinned to its current version;
//! - `status ID` prints its state, its steps' states, its first error and
//!   its result (`--wait` for it to end; `--json` for the whole status);
//! - `ls` lists the tenant's workflows (every tenant's without `--tenant`).
//!
//! Workers advance workflows as their steps end: see [`crate::workflow`].

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Deserialize;

use super::fleet::{Table, Target, refused};
use super::units::parse_duration;
use crate::broker::Broker;
use crate::submit::{find_tenant, submit_workflow};
use crate::text::Inert;
use crate::workflow::{
    Flow, OnFailure, StepState, Workflow, WorkflowId, WorkflowState, WorkflowStatus,
};

/// `corral workflow …`.
#[derive(Debug, Args)]
pub struct WorkflowArgs {
    #[command(subcommand)]
    command: WorkflowCommand,
}

#[derive(Debug, Subcommand)]
enum WorkflowCommand {
    /// Store a workflow (chains, groups and chords of tasks) from JSON.
    Submit(SubmitArgs),
    /// Show a workflow: its state, steps, error and result.
    Status(StatusArgs),
    /// List workflows, running ones first.
    Ls(LsArgs),
}

#[derive(Debug, Args)]
struct SubmitArgs {
    #[command(flatten)]
    target: Target,
    /// The workflow's JSON file, or `-` for stdin.
    file: String,
    /// Then wait this long (`30s`, `5m`) for it to end and print it.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// The workflow's id.
    id: String,
    /// Wait this long (`30s`, `5m`) for it to end first.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    /// The whole status as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    target: Target,
    /// One JSON object per workflow instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `submit` reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    flow: Flow,
    #[serde(default)]
    on_failure: OnFailure,
}

/// Runs `corral workflow …`.
pub(super) async fn run(args: WorkflowArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        WorkflowCommand::Submit(args) => submit(args).await,
        WorkflowCommand::Status(args) => status(args).await,
        WorkflowCommand::Ls(args) => ls(args).await,
    }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the workflow from stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", Inert(&args.file)))?
    };
    let file: WorkflowFile =
        serde_json::from_str(&text).context("the workflow's JSON is not {flow, on_failure?}")?;
    let tenant = args.target.tenant_or_default();
    let broker = args.target.broker("workflow submit").await?;
    let catalog = args.target.catalog("workflow").await?;
    let found = find_tenant(&catalog, &tenant).await?;
    let workflow = Workflow {
        id: WorkflowId::new(),
        tenant: tenant.clone(),
        flow: file.flow,
        on_failure: file.on_failure,
    };
    let id = submit_workflow(&catalog, &broker, &found, workflow).await?;
    say!("workflow {id} submitted");
    match args.wait {
        Some(wait) => show(&broker, &tenant, id, Some(wait), false).await,
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let id: WorkflowId = args
        .id
        .parse()
        .map_err(|_| anyhow::anyhow!("`{}` is not a workflow id (a UUID)", Inert(&args.id)))?;
    let tenant = args.target.tenant_or_default();
    let broker = args.target.broker("workflow status").await?;
    show(&broker, &tenant, id, args.wait, args.json).await
}

/// Prints workflow `id`, after waiting up to `wait` for it to end; exits 0
/// completed, 1 failed or still running, 2 not found.
async fn show<B: Broker>(
    broker: &B,
    tenant: &str,
    id: WorkflowId,
    wait: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let status = loop {
        let status = broker
            .workflow(tenant, id)
            .await
            .map_err(|e| refused(e, tenant))?;
        match (&status, wait) {
            (Some(s), Some(wait))
                if s.state == WorkflowState::Running && started.elapsed() < wait =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => break status,
        }
    };
    let Some(status) = status else {
        eprintln!("no workflow {id} for tenant `{}`", Inert(tenant));
        return Ok(ExitCode::from(2));
    };
    if json {
        say!("{}", serde_json::to_string(&status)?);
    } else {
        print_status(&status);
    }
    Ok(if status.state == WorkflowState::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_status(status: &WorkflowStatus) {
    say!("workflow {} ({})", status.id, Inert(&status.tenant));
    say!("state     {}", status.state);
    let counts: Vec<String> = [
        StepState::Waiting,
        StepState::Enqueued,
        StepState::Completed,
        StepState::Failed,
        StepState::Skipped,
    ]
    .into_iter()
    .filter_map(|s| {
        let n = status.count(s);
        (n > 0).then(|| format!("{n} {}", step_state(s)))
    })
    .collect();
    say!("steps     {} ({})", status.steps.len(), counts.join(", "));
    if let Some(e) = &status.error {
        say!(
            "error     task {}: {}",
            e.task_id,
            Inert(&e.error.to_string())
        );
    }
    if let Some(result) = &status.result {
        let text = serde_json::to_string(result).unwrap_or_default();
        say!("result    {}", Inert(&text));
    }
    if status.steps.len() <= 50 {
        let mut table = Table::new(&["STEP", "TASK", "JOB", "QUEUE", "STATE"]);
        for (i, s) in status.steps.iter().enumerate() {
            table.row(vec![
                i.to_string(),
                s.task_id.to_string(),
                s.job.clone(),
                s.queue.clone(),
                step_state(s.state).to_owned(),
            ]);
        }
        table.print();
    }
}

fn step_state(s: StepState) -> &'static str {
    match s {
        StepState::Waiting => "waiting",
        StepState::Enqueued => "enqueued",
        StepState::Completed => "completed",
        StepState::Failed => "failed",
        StepState::Skipped => "skipped",
    }
}

async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let broker = args.target.broker("workflow ls").await?;
    let mut table = Table::new(&["TENANT", "ID", "STATE", "STEPS", "CREATED", "ENDED"]);
    for tenant in args.target.tenants(&broker).await? {
        for w in broker
            .workflows(&tenant)
            .await
            .map_err(|e| refused(e, &tenant))?
        {
            if args.json {
                say!("{}", serde_json::to_string(&w)?);
                continue;
            }
            table.row(vec![
                tenant.clone(),
                w.id.to_string(),
                w.state.to_string(),
                w.steps.to_string(),
                w.created_at.to_rfc3339(),
                w.finished_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "-".to_owned()),
            ]);
        }
    }
    if !args.json {
        table.print_or("no workflows");
    }
    Ok(ExitCode::SUCCESS)
}
