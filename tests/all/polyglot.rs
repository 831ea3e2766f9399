//! Jobs in three languages: the text pipeline with its middle handler in
//! Python (`jobs/python/count-words-py`) and its last in JavaScript
//! (`jobs/js/top-k-js`), after the Rust `normalize`. Args flow through all
//! three, on the embedded broker and on Redis, uploaded through the API as a
//! tenant would, and the result is the all-Rust pipeline's to the byte.

use std::path::PathBuf;
use std::sync::Arc;

use corral::Client;
use corral::api::ApiConfig;
use corral::broker::{EmbeddedBroker, RedisBroker, RedisConfig};
use corral::catalog::{Catalog, RedisCatalog};
use corral::registry::Registry;
use corral::sandbox::Limits;
use corral::task::TaskState;
use corral::tenant::TenantLimits;
use serde_json::{Value, json};

use crate::api_support::{self, RedisServer};
use crate::interpreters::cached_sandbox;
use crate::support::{self, RunningWorker};

const TEXT: &str = "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs!";
const RUST_CHAIN: [&str; 3] = ["normalize", "count_words", "top_k"];
const POLYGLOT_CHAIN: [&str; 3] = ["normalize", "count_words_py", "top_k_js"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_python_javascript_chain_runs_on_the_embedded_broker() {
    let _limit = crate::limit::minutes(10);
    let registry = Registry::new(cached_sandbox());
    for (job, chain) in [("text-stats", RUST_CHAIN), ("polyglot", POLYGLOT_CHAIN)] {
        let files: Vec<PathBuf> = chain.iter().map(|h| support::job(h)).collect();
        registry
            .register_files("default", job, &files, Limits::default())
            .await
            .expect("register job");
    }
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let mut tasks = Vec::new();
    for job in ["text-stats", "polyglot"] {
        let task = client
            .task(job)
            .arg("text", TEXT)
            .expect("arg")
            .arg("k", &3)
            .expect("arg")
            .arg("kept", &json!({"through": ["rust", "python", "js"]}))
            .expect("arg")
            .max_attempts(1)
            .build();
        client.enqueue(task.clone()).await.expect("enqueue");
        tasks.push(task);
    }
    let worker = RunningWorker::start(broker, registry, support::worker_config(2));
    let rust = support::wait(&client, &tasks[0], 120).await;
    let polyglot = support::wait(&client, &tasks[1], 120).await;
    worker.stop().await;
    assert_eq!(rust.state, TaskState::Completed, "{:?}", rust.error);
    assert_eq!(polyglot.state, TaskState::Completed, "{:?}", polyglot.error);
    // Each language's handler did its part, and the others' args came through.
    assert_eq!(polyglot.args_map["total"], 15, "{:?}", polyglot.args_map);
    assert_eq!(polyglot.args_map["counts"]["the"], 4);
    assert_eq!(
        polyglot.args_map["top"],
        json!([["the", 4], ["dog", 2], ["fox", 2]])
    );
    assert_eq!(
        polyglot.args_map["kept"],
        json!({"through": ["rust", "python", "js"]})
    );
    // The same result as the all-Rust pipeline, args and log alike.
    assert_eq!(polyglot.args_map, rust.args_map);
    assert_eq!(polyglot.result_log, rust.result_log);
    assert_eq!(
        polyglot.metering.handlers.len(),
        3,
        "{:?}",
        polyglot.metering
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_python_javascript_chain_uploaded_through_the_api_runs_on_redis() {
    let _limit = crate::limit::minutes(10);
    let redis = RedisServer::start();
    let catalog: Arc<dyn Catalog> = Arc::new(
        RedisCatalog::connect(&redis.url())
            .await
            .expect("connect the Redis catalog"),
    );
    // A tenant's default limits take the interpreters: their modules are
    // under `max_module_bytes` and their memory under `max_memory_bytes`.
    let token = api_support::tenant(&catalog, "polyglot", TenantLimits::default()).await;
    let broker = RedisBroker::connect(RedisConfig::new(redis.url()))
        .await
        .expect("connect the Redis broker");
    let registry = Registry::with_catalog(cached_sandbox(), catalog.clone());
    let api = api_support::serve(broker.clone(), registry.clone(), ApiConfig::default()).await;
    api.register(&token, "polyglot", &POLYGLOT_CHAIN, json!({}))
        .await
        .expect(201, "");
    let worker = RunningWorker::start(broker, registry, support::worker_config(2));
    let id = api
        .enqueue(&token, "polyglot", json!({"text": TEXT, "k": 2}))
        .await;
    let task: Value = api.wait(&token, &id).await;
    worker.stop().await;
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(
        task["args_map"]["top"],
        json!([["the", 4], ["dog", 2]]),
        "{task}"
    );
    assert_eq!(
        task["args_map"]["summary"], "top 2 of 10 distinct: the (4), dog (2)",
        "{task}"
    );
    let log = task["result_log"].as_str().unwrap_or_default();
    assert!(log.contains("counted 15 words, 10 distinct"), "{log}");
}
