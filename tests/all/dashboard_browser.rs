//! The dashboard in a real headless Chromium, over a real `corral serve`
//! and a real `corral worker` process sharing a real Redis: a user types a
//! token into the form, sees a dead task, presses its Retry and watches it
//! complete, opens a task's detail, cancels a running task, pauses and
//! resumes a queue; then an admin picks another tenant in the switcher and
//! deletes one of its tasks, all through the page; the page reports no error
//! (no exception, no `console.error`, no CSP or Trusted Types violation)
//! and the token never shows in its address.
//!
//! The browser is Debian's `chromium-headless-shell` (the test command
//! installs it), driven over the DevTools protocol ([`support::browser`]).
//! Without a browser the test fails, saying what to install.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use corral::broker::{Broker, RedisBroker, RedisConfig, TenantQuota};
use corral::catalog::{Catalog, RedisCatalog};
use corral::schedule::{Missed, Schedule, Timing};
use corral::tenant::{TenantLimits, Token};
use corral::{ArgsMap, Client, Task};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::api_support::{self, Api, RedisServer};
use crate::support::browser::Browser;

/// The bound on each wait for the page to show something.
const SHOWN: Duration = Duration::from_secs(60);

fn corral() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
    // Compiled components stay in memory: never the user's cache directory.
    cmd.arg("--no-disk-cache")
        .env_remove("CORRAL_CACHE_DIR")
        .env_remove("CORRAL_REDIS_URL")
        .env_remove("CORRAL_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `corral serve` on Redis with no worker of its own; its API.
async fn serve(url: &str) -> (Child, Api) {
    let mut child = corral()
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", url])
        .args(["--workers", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn corral serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("corral serve printed a line in time")
            .expect("stdout is readable")
            .expect("corral serve is still running");
        if let Some(base) = line.strip_prefix("listening on ") {
            return (child, Api::connect(base));
        }
    }
}

/// The text of the element `selector` names, `''` when there is none.
fn text_of(selector: &str) -> String {
    let selector = serde_json::to_string(selector).expect("selector as JSON");
    format!("((document.querySelector({selector}) || {{}}).textContent || '')")
}

/// An expression true once the task row of `id` shows `state`.
fn row_in_state(id: &str, state: &str) -> String {
    format!(
        "{} === '{state}'",
        text_of(&format!("tr[data-task=\"{id}\"] .state"))
    )
}

/// The task `id` as the API answers it.
async fn task(api: &Api, token: &str, id: &str) -> Value {
    let reply = api.get(&format!("/v1/tasks/{id}"), token).await;
    reply.expect(200, "");
    reply.body.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_retries_a_dead_task_and_cancels_a_running_one_in_chromium() {
    let _limit = crate::limit::minutes(6);
    // First, so that a missing browser fails the test before anything else.
    let browser = Browser::launch().await;

    let redis = RedisServer::start();
    let url = redis.url();
    let catalog: Arc<dyn Catalog> = Arc::new(
        RedisCatalog::connect(&url)
            .await
            .expect("connect the Redis catalog"),
    );
    // Fuel enough that `spin` runs until it is cancelled.
    let limits = TenantLimits {
        max_fuel: 1 << 50,
        ..TenantLimits::default()
    };
    let token = api_support::tenant(&catalog, "acme", limits).await;
    let (_api_process, api) = serve(&url).await;
    let _worker = corral()
        .args(["worker", "--redis", &url, "--concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn corral worker");

    // A producer enqueued a task of job `later` before anyone registered
    // it: the worker finds no such job and the task is dead.
    let broker = RedisBroker::connect(RedisConfig::new(url.clone()))
        .await
        .expect("connect the Redis broker");
    let mut args = ArgsMap::new();
    args.insert("text".into(), "Hello, Dashboard!".into());
    let mut early = Task::new("later", args);
    early.tenant = "acme".into();
    early.max_attempts = 1;
    let dead_id = early.task_id.to_string();
    Client::new(broker)
        .enqueue(early)
        .await
        .expect("enqueue a task of a job not registered yet");
    let dead = api.wait(&token, &dead_id).await;
    assert_eq!(dead["state"], "dead", "{dead}");
    assert_eq!(dead["error"]["kind"], "unknown_job", "{dead}");

    // The page alone: it holds no data and asks for a token.
    browser.goto(&format!("{}/", api.base)).await;
    browser
        .wait_for(
            "the page to ask for a token",
            &format!("{} === 'Enter a token.'", text_of("#status")),
            SHOWN,
        )
        .await;
    // Logging in: the token typed into the form.
    browser.type_into("#token", &token).await;
    browser.click("#show").await;
    browser
        .wait_for(
            "the dead task in the list",
            &row_in_state(&dead_id, "dead"),
            SHOWN,
        )
        .await;
    // The form is emptied, the token kept in the tab's session storage
    // only: never in the address, and no tenant switcher for a tenant.
    assert_eq!(
        browser.eval("document.getElementById('token').value").await,
        ""
    );
    let address = browser.eval("location.href").await;
    assert!(
        !address.as_str().unwrap_or("").contains(&token),
        "{address}"
    );
    assert_eq!(
        browser.eval("sessionStorage.getItem('corral-token')").await,
        json!(token)
    );
    assert_eq!(
        browser
            .eval("document.getElementById('tenant-box').hidden")
            .await,
        json!(true)
    );
    // The queue's counts.
    browser
        .wait_for(
            "the default queue with one dead task",
            &format!(
                "{} === '1'",
                text_of("tr[data-queue=\"default\"] td:nth-child(7)")
            ),
            SHOWN,
        )
        .await;

    // The worker that serves the queue.
    browser
        .wait_for(
            "the worker in the list",
            &format!(
                "{}.includes('default')",
                text_of("#workers tr td:nth-child(5)")
            ),
            SHOWN,
        )
        .await;

    // The tenant's schedules, with their next tick.
    let schedules = RedisBroker::connect(RedisConfig::new(url.clone()))
        .await
        .expect("connect the Redis broker");
    let nightly = Schedule {
        name: "nightly".into(),
        tenant: "acme".into(),
        timing: Timing::Cron {
            expr: "0 3 * * *".into(),
            tz: Some("Europe/Paris".into()),
        },
        missed: Missed::Once,
        job: "later".into(),
        args: ArgsMap::new(),
        queue: "default".into(),
        max_attempts: None,
        priority: None,
        timeout_ms: None,
        created_at: chrono::Utc::now(),
    };
    schedules
        .put_schedule(&nightly, &TenantQuota::UNLIMITED, 10)
        .await
        .expect("put a schedule");
    browser
        .wait_for(
            "the schedule in the list",
            &format!(
                "{} === 'cron 0 3 * * * (Europe/Paris)'",
                text_of("tr[data-schedule=\"nightly\"] td:nth-child(2)")
            ),
            SHOWN,
        )
        .await;

    // The task's detail: its error, its args in.
    browser
        .click_until(
            &format!("tr[data-task=\"{dead_id}\"] a"),
            "the task's detail",
            "!document.getElementById('detail').hidden",
            SHOWN,
        )
        .await;
    browser
        .wait_for(
            "the dead task's detail",
            &format!(
                "!document.getElementById('detail').hidden && {}.includes('unknown_job')",
                text_of("#d-error")
            ),
            SHOWN,
        )
        .await;
    assert!(
        browser
            .eval(&text_of("#d-args-in"))
            .await
            .as_str()
            .is_some_and(|s| s.contains("Hello, Dashboard!")),
        "{:?}",
        browser.eval(&text_of("#d-args-in")).await
    );

    // The job is registered now; Retry, and the task completes.
    api.register(&token, "later", &["normalize"], json!({}))
        .await
        .expect(201, "");
    browser
        .click(&format!("tr[data-task=\"{dead_id}\"] button.retry"))
        .await;
    browser
        .wait_for(
            "the retried task to complete",
            &row_in_state(&dead_id, "completed"),
            SHOWN,
        )
        .await;
    let done = task(&api, &token, &dead_id).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["args_map"]["text"], "hello dashboard", "{done}");
    // The detail follows: the handler done, its args out and its log.
    browser
        .wait_for(
            "the detail of the completed task",
            &format!(
                "{}.includes('hello dashboard') && {}.includes('normalized 17 chars')",
                text_of("#d-args-out"),
                text_of("#d-result")
            ),
            SHOWN,
        )
        .await;
    assert_eq!(
        browser
            .eval(&text_of("#d-handlers tr:first-child td:nth-child(3)"))
            .await,
        "done"
    );

    // A running task, cancelled from the page.
    api.register(
        &token,
        "spin",
        &["spin"],
        json!({"fuel": 1u64 << 50, "timeout_ms": 300_000}),
    )
    .await
    .expect(201, "");
    let spinning = api.enqueue(&token, "spin", json!({})).await;
    browser
        .wait_for(
            "the spinning task to run",
            &row_in_state(&spinning, "active"),
            SHOWN,
        )
        .await;
    browser
        .click(&format!("tr[data-task=\"{spinning}\"] button.cancel"))
        .await;
    browser
        .wait_for(
            "the running task to be cancelled",
            &row_in_state(&spinning, "cancelled"),
            SHOWN,
        )
        .await;
    let cancelled = task(&api, &token, &spinning).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert!(
        browser
            .reports()
            .dialogs
            .iter()
            .any(|d| d.contains(&format!("Cancel task {spinning}"))),
        "{:?}",
        browser.reports()
    );

    // Pause and resume the queue.
    browser
        .click("tr[data-queue=\"default\"] button.pause")
        .await;
    browser
        .wait_for(
            "the queue to show paused",
            &format!(
                "{} === 'paused'",
                text_of("tr[data-queue=\"default\"] td:nth-child(9)")
            ),
            SHOWN,
        )
        .await;
    let queues = api.get("/v1/queues", &token).await;
    assert_eq!(
        queues.body["queues"][0]["stats"]["paused"], true,
        "{queues:?}"
    );
    browser
        .click("tr[data-queue=\"default\"] button.resume")
        .await;
    browser
        .wait_for(
            "the queue to show running",
            &format!(
                "{} === 'no'",
                text_of("tr[data-queue=\"default\"] td:nth-child(9)")
            ),
            SHOWN,
        )
        .await;

    // The tenant's workflows, with their state (in a queue no worker
    // serves: the workflow stays running, its first step queued). Last of
    // the tenant's part: its new task row would shift the rows clicked
    // above.
    let flow = corral::workflow::Workflow {
        id: corral::workflow::WorkflowId::new(),
        tenant: "acme".into(),
        flow: corral::workflow::Flow::chain([
            corral::workflow::Flow::task("later").queue("flows"),
            corral::workflow::Flow::task("later").queue("flows"),
        ]),
        on_failure: corral::workflow::OnFailure::FailFast,
    };
    let plan = corral::workflow::Plan::compile(&flow, chrono::Utc::now()).expect("compiles");
    schedules
        .submit_workflow(&plan, &TenantQuota::UNLIMITED, 10)
        .await
        .expect("submit a workflow");
    browser
        .wait_for(
            "the workflow in the list",
            &format!(
                "{} === 'running' && {} === '2'",
                text_of(&format!(
                    "tr[data-workflow=\"{}\"] td:nth-child(2)",
                    flow.id
                )),
                text_of(&format!(
                    "tr[data-workflow=\"{}\"] td:nth-child(3)",
                    flow.id
                )),
            ),
            SHOWN,
        )
        .await;

    // An admin token: the tenant switcher, and acting on the tenant picked.
    let zed = api_support::tenant(&catalog, "zed", TenantLimits::default()).await;
    api.register(&zed, "words", &["normalize"], json!({}))
        .await
        .expect(201, "");
    let zed_task = api.enqueue(&zed, "words", json!({"text": "Zed"})).await;
    let done = api.wait(&zed, &zed_task).await;
    assert_eq!(done["state"], "completed", "{done}");
    let admin = Token::generate();
    catalog
        .add_admin_token(&admin.hash(), Some("dashboard test"))
        .await
        .expect("store an admin token");
    let admin = admin.expose().to_owned();
    browser.click("#forget").await;
    browser
        .wait_for(
            "the page to forget the token",
            &format!(
                "{} === 'Enter a token.' && !document.querySelector('#tasks tr')",
                text_of("#status")
            ),
            SHOWN,
        )
        .await;
    browser.type_into("#token", &admin).await;
    browser.click("#show").await;
    // The first tenant by name is shown first: acme, with its tasks.
    browser
        .wait_for(
            "the switcher, on acme",
            &format!(
                "!document.getElementById('tenant-box').hidden && \
                 document.getElementById('tenant').value === 'acme' && {}",
                row_in_state(&dead_id, "completed")
            ),
            SHOWN,
        )
        .await;
    assert_eq!(
        browser
            .eval("[...document.getElementById('tenant').options].map((o) => o.value)")
            .await,
        json!(["acme", "zed"])
    );
    // The admin sees the fleet's one worker.
    browser
        .wait_for(
            "the worker in the admin's list",
            "document.querySelectorAll('#workers tr').length === 1",
            SHOWN,
        )
        .await;
    // Zed picked from the keyboard: its task, none of acme's.
    browser
        .eval("document.getElementById('tenant').focus()")
        .await;
    browser.press("ArrowDown", 40).await;
    browser
        .wait_for(
            "zed's task, without acme's",
            &format!(
                "{} && !document.querySelector('tr[data-task=\"{dead_id}\"]')",
                row_in_state(&zed_task, "completed")
            ),
            SHOWN,
        )
        .await;
    // The admin deletes it; zed's own token finds it gone.
    browser
        .click(&format!("tr[data-task=\"{zed_task}\"] button.delete"))
        .await;
    browser
        .wait_for(
            "zed's task to go",
            &format!("!document.querySelector('tr[data-task=\"{zed_task}\"]')"),
            SHOWN,
        )
        .await;
    api.get(&format!("/v1/tasks/{zed_task}"), &zed)
        .await
        .expect(404, "task_not_found");
    assert!(
        browser
            .reports()
            .dialogs
            .iter()
            .any(|d| d.contains(&format!("Delete task {zed_task}"))),
        "{:?}",
        browser.reports()
    );
    let address = browser.eval("location.href").await;
    assert!(
        !address.as_str().unwrap_or("").contains(&admin),
        "{address}"
    );

    // Nothing went wrong on the page. The browser logs every answer over
    // 399 as a failed load; two were expected: a tenant's token asking for
    // the tenant list (how the page learns it is no admin's), and the
    // detail asking for job `later` while it did not exist yet.
    let reports = browser.reports();
    let expected = |e: &str| {
        e.starts_with("network error: Failed to load resource")
            && (e.ends_with("/v1/tenants)") || e.ends_with("/v1/jobs/later)"))
    };
    let errors: Vec<&String> = reports.errors.iter().filter(|e| !expected(e)).collect();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    assert_ne!(
        browser
            .eval("document.getElementById('status').className")
            .await,
        "err",
        "status line: {}",
        browser.eval(&text_of("#status")).await
    );
    let address = browser.eval("location.href").await;
    assert!(
        !address.as_str().unwrap_or("").contains(&token),
        "{address}"
    );
}
