//! Workflows: tasks composed into chains, groups and chords.
//!
//! A [`Flow`] is a tree: a task, a chain (each part's output is the next
//! part's input), a group (parts run in parallel; its output is the list
//! of their outputs, in order) or a chord (a group, then one callback that
//! receives the group's list). Trees nest: a chain of groups, a chord whose
//! callback is a chain.
//!
//! A task's output is its final args map. A step's input is the output of
//! what comes before it: a single task's map as it is, a list as
//! `{"results": [...]}`; the step's own args are merged over it (so a
//! callback can carry settings of its own). The first steps get their own
//! args only.
//!
//! Submitting compiles the tree once into a [`Plan`]: a flat list of steps,
//! each with its task id fixed in advance, the steps it waits for (their
//! count) and the steps that wait for it. The broker stores the plan and
//! advances it as steps finish: a step's last finishing predecessor makes it
//! ready in the same atomic step as the predecessor's own ack, and a ready
//! step is enqueued by whoever gets there first under a compare-and-set on
//! its ready entry. So a step (a chord's callback among them) is enqueued
//! exactly once, whichever worker acks its last predecessor and whatever
//! crashes in between (maintenance enqueues ready steps a crashed worker
//! left). [`Progress`] is that state machine, in Rust, for the embedded
//! broker; the Redis broker runs the same steps in Lua.
//!
//! When a step fails for good (dead or cancelled), the workflow fails with
//! its error. [`OnFailure`] says whether it fails at once (nothing more is
//! enqueued) or waits for the steps that do not depend on the failed one.
//!
//! This module only computes: it never talks to a broker.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use corral_core::task::{
    ArgsMap, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, MAX_ARG_DEPTH, MAX_PRIORITY, Task, TaskError,
    TaskId, WorkflowStep, nested_deeper_than,
};
use corral_core::text::valid_name;

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Most steps (tasks) in one workflow.
pub const MAX_STEPS: usize = 20_000;
/// Most "waits for" links between steps in one workflow (a chain of two
/// groups of N and M links N × M).
pub const MAX_LINKS: usize = 200_000;
/// Deepest nesting of chains, groups and chords.
pub const MAX_DEPTH: usize = 32;
/// Most bytes of outputs one step's input may gather (a chord's callback
/// reads every member's): past it, the step fails with kind
/// [`INPUT_TOO_LARGE`] instead of making whoever enqueues it assemble an
/// unbounded task.
pub const MAX_INPUT_BYTES: usize = 16 << 20;
/// The error kind of a step whose input would pass [`MAX_INPUT_BYTES`].
pub const INPUT_TOO_LARGE: &str = "input_too_large";

/// The error of a step whose predecessors' outputs add up to `bytes`.
pub fn input_too_large(bytes: usize) -> TaskError {
    TaskError {
        kind: INPUT_TOO_LARGE.to_owned(),
        message: format!(
            "the step's input would gather {bytes} bytes of outputs, more than the {MAX_INPUT_BYTES} a step may take"
        ),
        retryable: false,
        handler_index: None,
    }
}

/// The args key a list input arrives under.
pub const RESULTS_KEY: &str = "results";

/// A workflow's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkflowId(pub Uuid);

impl WorkflowId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for WorkflowId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for WorkflowId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// One task of a flow: the job and what it runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTask {
    /// The job to run.
    pub job: String,
    /// Args merged over the step's input (all of a first step's input).
    #[serde(default, skip_serializing_if = "ArgsMap::is_empty")]
    pub args: ArgsMap,
    /// The queue to wait in (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Attempts before the step dies (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Priority in its queue, 0 (the default) to 9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Wall-clock budget per handler call, narrowing the job's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run this version of the job (set by the API to the version current
    /// at submission when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

impl FlowTask {
    /// Sets one arg (merged over the step's input).
    pub fn arg(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.args.insert(key.into(), value.into());
        self
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Sets the attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Sets the priority in its queue (0 to 9).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets the per-call wall-clock budget.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }
}

/// A tree of tasks: what a workflow runs.
///
/// ```
/// use corral_client::workflow::Flow;
///
/// // Ten squares in parallel, then their sum: a chord.
/// let flow = Flow::chord(
///     (0..10).map(|n| Flow::task("square").arg("n", n)),
///     Flow::task("sum"),
/// );
/// let json = serde_json::to_string(&flow).unwrap();
/// assert!(json.starts_with(r#"{"chord":{"group":[{"task":{"job":"square""#));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Flow {
    /// One task.
    Task(FlowTask),
    /// Parts in order, each one's output the next one's input.
    Chain(Vec<Flow>),
    /// Parts in parallel; the output is the list of their outputs.
    Group(Vec<Flow>),
    /// A group, then a callback that receives the group's list.
    Chord {
        /// The parts run in parallel.
        group: Vec<Flow>,
        /// What runs once they all completed.
        callback: Box<Flow>,
    },
}

impl Flow {
    /// One task of `job`.
    pub fn task(job: impl Into<String>) -> FlowTask {
        FlowTask {
            job: job.into(),
            args: ArgsMap::new(),
            queue: None,
            max_attempts: None,
            priority: None,
            timeout_ms: None,
            version: None,
        }
    }

    /// A chain of `parts`.
    pub fn chain<F: Into<Flow>>(parts: impl IntoIterator<Item = F>) -> Self {
        Flow::Chain(parts.into_iter().map(Into::into).collect())
    }

    /// A group of `parts`.
    pub fn group<F: Into<Flow>>(parts: impl IntoIterator<Item = F>) -> Self {
        Flow::Group(parts.into_iter().map(Into::into).collect())
    }

    /// A chord: `group`, then `callback` with the group's results.
    pub fn chord<F: Into<Flow>>(
        group: impl IntoIterator<Item = F>,
        callback: impl Into<Flow>,
    ) -> Self {
        Flow::Chord {
            group: group.into_iter().map(Into::into).collect(),
            callback: Box::new(callback.into()),
        }
    }

    /// Every task of the tree, in order (what an API checks and pins).
    pub fn tasks_mut(&mut self) -> Vec<&mut FlowTask> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(flow) = stack.pop() {
            match flow {
                Flow::Task(task) => out.push(task),
                Flow::Chain(parts) | Flow::Group(parts) => stack.extend(parts.iter_mut().rev()),
                Flow::Chord { group, callback } => {
                    stack.push(callback);
                    stack.extend(group.iter_mut().rev());
                }
            }
        }
        out
    }
}

impl From<FlowTask> for Flow {
    fn from(task: FlowTask) -> Self {
        Flow::Task(task)
    }
}

/// What a workflow does when one of its steps fails for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// It fails at once: no step is enqueued after that (steps already
    /// queued or running still run).
    #[default]
    FailFast,
    /// Steps that do not depend on the failed one go on; the workflow
    /// fails when they are done. Steps that do depend on it are skipped.
    Wait,
}

impl OnFailure {
    fn code(self) -> &'static str {
        match self {
            OnFailure::FailFast => "f",
            OnFailure::Wait => "w",
        }
    }
}

/// A workflow as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Its id (new when not given).
    #[serde(default)]
    pub id: WorkflowId,
    /// The owning tenant: its steps are the tenant's tasks.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// What it runs.
    pub flow: Flow,
    /// What a failed step does to it.
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_tenant() -> String {
    corral_core::task::DEFAULT_TENANT.to_owned()
}

/// Where a step's input comes from: a step's output, or a list of inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// The output of the step at this index.
    Step(u32),
    /// A list, one item per part.
    List(Vec<Input>),
}

impl Input {
    /// The steps this input reads, each once, in order.
    pub fn steps(&self) -> Vec<u32> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(input) = stack.pop() {
            match input {
                Input::Step(i) => {
                    if seen.insert(*i) {
                        out.push(*i);
                    }
                }
                Input::List(items) => stack.extend(items.iter().rev()),
            }
        }
        out
    }

    /// The value this input has, given each step's output (`None` when a
    /// step it reads has none).
    pub fn value<'a>(
        &self,
        output: &impl Fn(u32) -> Option<&'a ArgsMap>,
    ) -> Option<serde_json::Value> {
        Some(match self {
            Input::Step(i) => serde_json::Value::Object(output(*i)?.clone()),
            Input::List(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|item| item.value(output))
                    .collect::<Option<Vec<_>>>()?,
            ),
        })
    }

    /// The args map this input gives a step (a list under
    /// [`RESULTS_KEY`]).
    pub fn args<'a>(&self, output: &impl Fn(u32) -> Option<&'a ArgsMap>) -> Option<ArgsMap> {
        Some(match self.value(output)? {
            serde_json::Value::Object(map) => map,
            other => {
                let mut map = ArgsMap::new();
                map.insert(RESULTS_KEY.to_owned(), other);
                map
            }
        })
    }
}

/// One step of a [`Plan`]: a task to be, and where its input comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The task id the step runs under, fixed at submission.
    pub id: TaskId,
    /// The job.
    pub job: String,
    /// The queue.
    pub queue: String,
    /// Its own args, merged over its input.
    #[serde(default, skip_serializing_if = "ArgsMap::is_empty")]
    pub args: ArgsMap,
    /// Attempts.
    pub max_attempts: u32,
    /// Priority in its queue.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// Per-call budget, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The job version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Where its input comes from (`None`: a first step, own args only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Input>,
}

impl Step {
    /// The steps it waits for.
    pub fn waits_for(&self) -> Vec<u32> {
        self.input.as_ref().map(Input::steps).unwrap_or_default()
    }

    /// The task of this step (index `index` of `tenant`'s workflow
    /// `workflow`), given its predecessors' outputs; `None` when one of
    /// them has none.
    pub fn task<'a>(
        &self,
        workflow: WorkflowId,
        tenant: &str,
        index: u32,
        output: &impl Fn(u32) -> Option<&'a ArgsMap>,
    ) -> Option<Task> {
        let mut args = match &self.input {
            Some(input) => input.args(output)?,
            None => ArgsMap::new(),
        };
        for (k, v) in &self.args {
            args.insert(k.clone(), v.clone());
        }
        let mut task = Task::new(self.job.clone(), args);
        task.task_id = self.id;
        task.tenant = tenant.to_owned();
        task.queue_name = self.queue.clone();
        task.max_attempts = self.max_attempts;
        task.priority = self.priority;
        task.timeout_ms = self.timeout_ms;
        task.job_version = self.version;
        task.workflow = Some(WorkflowStep {
            id: workflow.0,
            step: index,
        });
        Some(task)
    }
}

/// What a plan is apart from its steps: small, read on every status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanHead {
    /// The workflow's id.
    pub id: WorkflowId,
    /// Its tenant.
    pub tenant: String,
    /// What a failed step does.
    pub on_failure: OnFailure,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// How many steps it has.
    pub steps: u32,
    /// Where the workflow's result comes from.
    pub output: Input,
}

/// A workflow compiled to steps: what the broker stores and advances.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Id, tenant, policy and output.
    pub head: PlanHead,
    /// The steps, each with its index the position here.
    pub steps: Vec<Step>,
    /// For each step, the steps that wait for it.
    pub next: Vec<Vec<u32>>,
}

impl Plan {
    /// Compiles `workflow`: checks names, attempts and bounds, fixes each
    /// step's task id, and links the steps.
    pub fn compile(workflow: &Workflow, now: DateTime<Utc>) -> Result<Plan, String> {
        let mut steps = Vec::new();
        let output = compile(&workflow.flow, None, &mut steps, 0)?;
        let mut next: Vec<Vec<u32>> = vec![Vec::new(); steps.len()];
        let mut links = 0usize;
        for (i, step) in steps.iter().enumerate() {
            for before in step.waits_for() {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!(
                        "the workflow links its steps more than {MAX_LINKS} times (a chain of two large groups links every pair): put a chord with one callback between them"
                    ));
                }
                next[before as usize].push(i as u32);
            }
        }
        Ok(Plan {
            head: PlanHead {
                id: workflow.id,
                tenant: workflow.tenant.clone(),
                on_failure: workflow.on_failure,
                created_at: now,
                steps: steps.len() as u32,
                output,
            },
            steps,
            next,
        })
    }

    /// The steps that wait for nothing: enqueued at submission.
    pub fn first_steps(&self) -> Vec<u32> {
        (0..self.steps.len() as u32)
            .filter(|&i| self.steps[i as usize].input.is_none())
            .collect()
    }

    /// The policy as the stores keep it (`f` fail fast, `w` wait).
    pub fn on_failure_code(&self) -> &'static str {
        self.head.on_failure.code()
    }
}

fn compile(
    flow: &Flow,
    input: Option<Input>,
    steps: &mut Vec<Step>,
    depth: usize,
) -> Result<Input, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "the workflow nests chains, groups and chords more than {MAX_DEPTH} deep"
        ));
    }
    match flow {
        Flow::Task(task) => {
            if steps.len() >= MAX_STEPS {
                return Err(format!("the workflow has more than {MAX_STEPS} tasks"));
            }
            check_task(task)?;
            let index = steps.len() as u32;
            steps.push(Step {
                id: TaskId::new(),
                job: task.job.clone(),
                queue: task
                    .queue
                    .clone()
                    .unwrap_or_else(|| DEFAULT_QUEUE.to_owned()),
                args: task.args.clone(),
                max_attempts: task.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
                priority: task.priority.unwrap_or_default(),
                timeout_ms: task.timeout_ms,
                version: task.version,
                input,
            });
            Ok(Input::Step(index))
        }
        Flow::Chain(parts) => {
            if parts.is_empty() {
                return Err("a chain needs at least one part".into());
            }
            let mut input = input;
            let mut out = None;
            for part in parts {
                let o = compile(part, input.take(), steps, depth + 1)?;
                input = Some(o.clone());
                out = Some(o);
            }
            out.ok_or_else(|| "a chain needs at least one part".into())
        }
        Flow::Group(parts) => {
            if parts.is_empty() {
                return Err("a group needs at least one part".into());
            }
            let outs = parts
                .iter()
                .map(|part| compile(part, input.clone(), steps, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Input::List(outs))
        }
        Flow::Chord { group, callback } => {
            if group.is_empty() {
                return Err("a chord's group needs at least one part".into());
            }
            let outs = group
                .iter()
                .map(|part| compile(part, input.clone(), steps, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            compile(callback, Some(Input::List(outs)), steps, depth + 1)
        }
    }
}

fn check_task(task: &FlowTask) -> Result<(), String> {
    if !valid_name(&task.job) {
        return Err(format!(
            "invalid job name `{}`",
            corral_core::text::Inert(&task.job)
        ));
    }
    if let Some(queue) = &task.queue
        && !valid_name(queue)
    {
        return Err(format!(
            "invalid queue name `{}`: use 1 to 128 characters of letters, digits, `-`, `_`, `.`, `:`",
            corral_core::text::Inert(queue)
        ));
    }
    if task.max_attempts == Some(0) {
        return Err("`max_attempts` must be at least 1".into());
    }
    if task.priority.is_some_and(|p| p > MAX_PRIORITY) {
        return Err(format!("`priority` must be 0 to {MAX_PRIORITY}"));
    }
    if task.timeout_ms == Some(0) {
        return Err("`timeout_ms` must be at least 1".into());
    }
    if task
        .args
        .values()
        .any(|v| nested_deeper_than(v, MAX_ARG_DEPTH))
    {
        return Err(format!(
            "`args` of job `{}` nest deeper than {MAX_ARG_DEPTH} levels",
            task.job
        ));
    }
    Ok(())
}

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// Steps are still to run.
    Running,
    /// Every step completed; the result is the output's value.
    Completed,
    /// A step failed for good.
    Failed,
}

impl fmt::Display for WorkflowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkflowState::Running => "running",
            WorkflowState::Completed => "completed",
            WorkflowState::Failed => "failed",
        })
    }
}

/// Where one step is, as its workflow sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for the steps before it.
    Waiting,
    /// Its task is in the broker (queued, running or retrying).
    Enqueued,
    /// Its task completed.
    Completed,
    /// Its task died or was cancelled.
    Failed,
    /// Never to run: a step it waits for failed.
    Skipped,
}

impl StepState {
    /// Reads a stored code (a ready step, `q`, is still waiting).
    pub fn from_code(code: &str) -> StepState {
        match code.as_bytes().first() {
            Some(b'e') => StepState::Enqueued,
            Some(b'c') => StepState::Completed,
            Some(b'd') => StepState::Failed,
            Some(b'k') => StepState::Skipped,
            _ => StepState::Waiting,
        }
    }
}

/// One step in a [`WorkflowStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStatus {
    /// Its task's id (a waiting or skipped step's task does not exist yet).
    pub task_id: TaskId,
    /// The job.
    pub job: String,
    /// The queue.
    pub queue: String,
    /// Where it is.
    pub state: StepState,
}

/// A workflow's state, steps, error and result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowStatus {
    /// Its id.
    pub id: WorkflowId,
    /// Its tenant.
    pub tenant: String,
    /// Where it is.
    pub state: WorkflowState,
    /// What a failed step does.
    pub on_failure: OnFailure,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The first step failure, with the failed task's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    /// The output's value once completed: the last step's args, or
    /// `{"results": [...]}` for a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ArgsMap>,
    /// Every step, in plan order.
    pub steps: Vec<StepStatus>,
}

impl WorkflowStatus {
    /// How many steps are in `state`.
    pub fn count(&self, state: StepState) -> usize {
        self.steps.iter().filter(|s| s.state == state).count()
    }
}

/// The failure that failed a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// The failed step's task.
    pub task_id: TaskId,
    /// Its error.
    pub error: TaskError,
}

/// A short summary of a stored workflow: what listings show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowSummary {
    /// Its id.
    pub id: WorkflowId,
    /// Where it is.
    pub state: WorkflowState,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// How many steps it has.
    pub steps: u32,
}

/// A workflow's progress, advanced step by step: the embedded broker's
/// store, and the reference the Redis broker's scripts follow.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The plan.
    pub plan: Plan,
    /// Each step's state.
    pub states: Vec<StepState>,
    /// Each step's count of predecessors not completed yet.
    waits: Vec<u32>,
    /// Each completed step's output.
    pub outputs: Vec<Option<ArgsMap>>,
    /// Steps ready to enqueue (their predecessors completed).
    pub ready: BTreeSet<u32>,
    /// Steps not final yet (what ends a waiting workflow).
    left: usize,
    /// Where the workflow is.
    pub state: WorkflowState,
    /// The first failure.
    pub error: Option<StepError>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Progress {
    /// A new workflow's progress: its first steps are ready.
    pub fn new(plan: Plan) -> Self {
        let n = plan.steps.len();
        let waits = plan
            .steps
            .iter()
            .map(|s| s.waits_for().len() as u32)
            .collect();
        let ready = plan.first_steps().into_iter().collect();
        Self {
            plan,
            states: vec![StepState::Waiting; n],
            waits,
            outputs: vec![None; n],
            ready,
            left: n,
            state: WorkflowState::Running,
            error: None,
            finished_at: None,
        }
    }

    /// The task of ready step `i` (its inputs are there).
    pub fn task(&self, i: u32) -> Option<Task> {
        let output = |j: u32| self.outputs.get(j as usize).and_then(Option::as_ref);
        let head = &self.plan.head;
        self.plan
            .steps
            .get(i as usize)?
            .task(head.id, &head.tenant, i, &output)
    }

    /// How many bytes of outputs ready step `i`'s input gathers (as JSON).
    pub fn input_bytes(&self, i: u32) -> usize {
        let Some(step) = self.plan.steps.get(i as usize) else {
            return 0;
        };
        step.waits_for()
            .iter()
            .filter_map(|&j| self.outputs.get(j as usize).and_then(Option::as_ref))
            .map(|o| serde_json::to_vec(o).map_or(0, |v| v.len()))
            .sum()
    }

    /// Ready step `i` fails before it is enqueued (its input is too large).
    pub fn fail_ready(&mut self, i: u32, error: TaskError, now: DateTime<Utc>) {
        if !self.ready.contains(&i) {
            return;
        }
        self.enqueued(i);
        let id = self.plan.steps[i as usize].id;
        self.finish(i, id, Err(error), now);
    }

    /// Ready step `i`'s task was stored.
    pub fn enqueued(&mut self, i: u32) {
        self.ready.remove(&i);
        if let Some(s) = self.states.get_mut(i as usize) {
            *s = StepState::Enqueued;
        }
    }

    /// Step `i`'s task `id` ended: completed with `result`'s output, or
    /// failed with its error. Ignored unless the step is enqueued under
    /// that id (a stray or repeated report changes nothing).
    pub fn finish(
        &mut self,
        i: u32,
        id: TaskId,
        result: Result<ArgsMap, TaskError>,
        now: DateTime<Utc>,
    ) {
        let Some(step) = self.plan.steps.get(i as usize) else {
            return;
        };
        if step.id != id || self.states[i as usize] != StepState::Enqueued {
            return;
        }
        let ok = result.is_ok();
        match result {
            Ok(output) => {
                self.states[i as usize] = StepState::Completed;
                self.outputs[i as usize] = Some(output);
            }
            Err(error) => {
                self.states[i as usize] = StepState::Failed;
                self.error.get_or_insert(StepError { task_id: id, error });
            }
        }
        if self.state != WorkflowState::Running {
            return;
        }
        self.left -= 1;
        if ok {
            for &s in &self.plan.next[i as usize] {
                let w = &mut self.waits[s as usize];
                *w = w.saturating_sub(1);
                if *w == 0 && self.states[s as usize] == StepState::Waiting {
                    self.ready.insert(s);
                }
            }
        } else if self.plan.head.on_failure == OnFailure::FailFast {
            self.end(WorkflowState::Failed, now);
            return;
        } else {
            let mut stack = vec![i];
            while let Some(j) = stack.pop() {
                for &s in &self.plan.next[j as usize] {
                    if self.states[s as usize] == StepState::Waiting {
                        self.states[s as usize] = StepState::Skipped;
                        self.ready.remove(&s);
                        self.left -= 1;
                        stack.push(s);
                    }
                }
            }
        }
        if self.left == 0 {
            let state = if self.error.is_some() {
                WorkflowState::Failed
            } else {
                WorkflowState::Completed
            };
            self.end(state, now);
        }
    }

    fn end(&mut self, state: WorkflowState, now: DateTime<Utc>) {
        self.state = state;
        self.finished_at = Some(now);
        self.ready.clear();
    }

    /// The workflow's summary.
    pub fn summary(&self) -> WorkflowSummary {
        WorkflowSummary {
            id: self.plan.head.id,
            state: self.state,
            created_at: self.plan.head.created_at,
            finished_at: self.finished_at,
            steps: self.plan.head.steps,
        }
    }

    /// The workflow's status.
    pub fn status(&self) -> WorkflowStatus {
        let output = |j: u32| self.outputs.get(j as usize).and_then(Option::as_ref);
        WorkflowStatus {
            id: self.plan.head.id,
            tenant: self.plan.head.tenant.clone(),
            state: self.state,
            on_failure: self.plan.head.on_failure,
            created_at: self.plan.head.created_at,
            finished_at: self.finished_at,
            error: self.error.clone(),
            result: if self.state == WorkflowState::Completed {
                self.plan.head.output.args(&output)
            } else {
                None
            },
            steps: self
                .plan
                .steps
                .iter()
                .zip(&self.states)
                .map(|(step, state)| StepStatus {
                    task_id: step.id,
                    job: step.job.clone(),
                    queue: step.queue.clone(),
                    state: *state,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(job: &str) -> Flow {
        Flow::task(job).into()
    }

    fn out(n: i64) -> ArgsMap {
        let mut m = ArgsMap::new();
        m.insert("n".into(), n.into());
        m
    }

    #[test]
    fn a_chain_of_a_chord_links_each_member_to_the_callback_once() {
        let wf = Workflow {
            id: WorkflowId::new(),
            tenant: "acme".into(),
            flow: Flow::chain([
                t("a"),
                Flow::chord([t("b"), t("c")], Flow::chain([t("d"), t("e")])),
            ]),
            on_failure: OnFailure::FailFast,
        };
        let plan = Plan::compile(&wf, Utc::now()).unwrap();
        let jobs: Vec<&str> = plan.steps.iter().map(|s| s.job.as_str()).collect();
        assert_eq!(jobs, ["a", "b", "c", "d", "e"]);
        assert_eq!(plan.first_steps(), [0]);
        assert_eq!(
            plan.next,
            vec![vec![1, 2], vec![3], vec![3], vec![4], vec![]]
        );
        assert_eq!(plan.head.output, Input::Step(4));
        let mut p = Progress::new(plan);
        let now = Utc::now();
        let ids: Vec<TaskId> = p.plan.steps.iter().map(|s| s.id).collect();
        p.enqueued(0);
        p.finish(0, ids[0], Ok(out(1)), now);
        assert_eq!(p.ready.iter().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(p.task(1).unwrap().args_map, out(1));
        p.enqueued(1);
        p.enqueued(2);
        p.finish(2, ids[2], Ok(out(3)), now);
        assert!(p.ready.is_empty());
        // A repeat, or a report under another id, changes nothing.
        p.finish(2, ids[2], Ok(out(9)), now);
        p.finish(1, ids[0], Ok(out(9)), now);
        assert!(p.ready.is_empty());
        p.finish(1, ids[1], Ok(out(2)), now);
        let callback = p.task(3).unwrap();
        assert_eq!(
            serde_json::Value::Object(callback.args_map),
            serde_json::json!({"results": [{"n": 2}, {"n": 3}]})
        );
        p.enqueued(3);
        p.finish(3, ids[3], Ok(out(5)), now);
        p.enqueued(4);
        p.finish(4, ids[4], Ok(out(6)), now);
        let status = p.status();
        assert_eq!(status.state, WorkflowState::Completed);
        assert_eq!(status.result, Some(out(6)));
    }

    #[test]
    fn a_failure_fails_fast_or_skips_what_depends_on_it() {
        for policy in [OnFailure::FailFast, OnFailure::Wait] {
            let wf = Workflow {
                id: WorkflowId::new(),
                tenant: "acme".into(),
                flow: Flow::group([Flow::chain([t("a"), t("b")]), t("c")]),
                on_failure: policy,
            };
            let mut p = Progress::new(Plan::compile(&wf, Utc::now()).unwrap());
            let ids: Vec<TaskId> = p.plan.steps.iter().map(|s| s.id).collect();
            let now = Utc::now();
            p.enqueued(0);
            p.enqueued(2);
            let error = TaskError {
                kind: "guest_error".into(),
                message: "no".into(),
                retryable: false,
                handler_index: Some(0),
            };
            p.finish(0, ids[0], Err(error), now);
            match policy {
                OnFailure::FailFast => assert_eq!(p.state, WorkflowState::Failed),
                OnFailure::Wait => {
                    assert_eq!(p.state, WorkflowState::Running);
                    assert_eq!(p.states[1], StepState::Skipped);
                    p.finish(2, ids[2], Ok(out(1)), now);
                    assert_eq!(p.state, WorkflowState::Failed);
                }
            }
            assert_eq!(p.status().error.unwrap().task_id, ids[0]);
        }
    }

    #[test]
    fn bounds_and_names_are_checked() {
        let wf = |flow| Workflow {
            id: WorkflowId::new(),
            tenant: "acme".into(),
            flow,
            on_failure: OnFailure::FailFast,
        };
        let now = Utc::now();
        assert!(Plan::compile(&wf(Flow::group(Vec::<Flow>::new())), now).is_err());
        assert!(Plan::compile(&wf(t("bad name")), now).is_err());
        let big = Flow::group((0..MAX_STEPS + 1).map(|_| t("a")));
        assert!(Plan::compile(&wf(big), now).unwrap_err().contains("tasks"));
        let wide = Flow::chain([
            Flow::group((0..1000).map(|_| t("a"))),
            Flow::group((0..1000).map(|_| t("b"))),
        ]);
        assert!(Plan::compile(&wf(wide), now).unwrap_err().contains("links"));
        let mut deep = t("a");
        for _ in 0..MAX_DEPTH + 1 {
            deep = Flow::chain([deep]);
        }
        assert!(Plan::compile(&wf(deep), now).unwrap_err().contains("deep"));
    }
}
