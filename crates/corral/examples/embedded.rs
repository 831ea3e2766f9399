//! Embeds Corral in an application: one process enqueues tasks and runs them
//! on a worker over the embedded broker, then reads back the results.
//!
//! Build the example jobs first (`jobs/build.sh`), then:
//!
//! ```text
//! cargo run --release --example embedded
//! ```
//!
//! It registers the text pipeline (normalize → count_words → top_k) as job
//! `text-stats`, enqueues two texts in one call, waits for both, and checks
//! the chain's final args.

use std::path::PathBuf;
use std::time::Duration;

use corral::{
    Client, EmbeddedBroker, Limits, Registry, Sandbox, SandboxConfig, TaskState, Worker,
    WorkerConfig,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../jobs/dist");
    let chain: Vec<PathBuf> = ["normalize", "count_words", "top_k"]
        .iter()
        .map(|name| jobs.join(format!("{name}.wasm")))
        .collect();

    // The registry compiles each module once, through the process's sandbox.
    let registry = Registry::new(Sandbox::new(SandboxConfig::default())?);
    registry
        .register_files("default", "text-stats", &chain, Limits::default())
        .await?;

    // Producer side: build tasks and enqueue them in one broker call.
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let tasks = vec![
        client
            .task("text-stats")
            .arg("text", "a rose is a rose is a rose")?
            .arg("k", &1)?
            .build(),
        client
            .task("text-stats")
            .arg("text", "Buffalo buffalo Buffalo buffalo")?
            .build(),
    ];
    let ids = client.enqueue_many(tasks).await?;

    // Worker side: runs until the shutdown future resolves.
    let worker = Worker::new(broker, registry, WorkerConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    for id in ids {
        let task = client.wait("default", id, Duration::from_secs(30)).await?;
        println!(
            "{} {}: {}",
            task.task_id, task.state, task.args_map["summary"]
        );
        anyhow::ensure!(
            task.state == TaskState::Completed,
            "task {id} ended {}",
            task.state
        );
    }
    let _ = stop.send(());
    running.await??;
    Ok(())
}
