//! A producer: a service that enqueues a task on Redis and waits for its
//! result, depending on `corral-client` alone (no wasm runtime, no server).
//!
//! Workers on the same Redis run the task; with the example jobs built
//! (`jobs/build.sh`), a worker that registers them (`text-stats` is
//! normalize → count_words → top_k):
//!
//! ```text
//! corral worker --redis redis://127.0.0.1:6379 --jobs-dir jobs/dist
//! cargo run --release -p corral-client --example producer
//! ```

use std::time::Duration;

use corral_client::{Client, RedisBroker, RedisConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = RedisBroker::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
    let client = Client::new(broker);
    let task = client
        .task("text-stats")
        .arg("text", "Hello hello world")?
        .build();
    let id = client.enqueue(task).await?;
    let done = client.wait("default", id, Duration::from_secs(30)).await?;
    println!("{id} {:?}: {}", done.state, done.result_log);
    Ok(())
}
