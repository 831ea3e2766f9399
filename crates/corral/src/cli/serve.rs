//! `corral serve`: the HTTP API, with in-process workers.
//!
//! Without `--redis` it is a whole Corral in one process: the embedded
//! broker, an in-memory catalog, `--workers N` task slots running what the
//! API enqueues, and the tenants named by `--tenant` created at start (their
//! tokens printed once; all of it is gone when the process ends; `local`
//! when none is named, since `default` is reserved). With
//! `--redis URL` the broker and the catalog live in Redis (under `--prefix`;
//! `--cluster` and the TLS options as for `corral worker`): tenants come from
//! `corral tenants create`, any number of `corral serve` processes share the
//! work, and `--workers 0` makes a process an API front end only.
//!
//! `--metrics-listen ADDR` serves Prometheus metrics (the in-process
//! worker's) and the probes on a port of their own (`cli/metrics_port.rs`).
//!
//! It prints `listening on http://ADDR` once the socket is bound (tests and
//! scripts read the port from it when `--listen` asks for port 0), and stops
//! on SIGINT/SIGTERM: the API stops taking requests, then the worker shuts
//! down as [`crate::worker`] describes.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;

use super::sandbox_args::sandbox_config;
use crate::api::{self, ApiConfig, ApiState, BodyBudget};
use crate::broker::{Broker, EmbeddedBroker, RedisBroker};
use crate::catalog::{Catalog, MemoryCatalog};
use crate::registry::Registry;
use crate::sandbox::Sandbox;
use crate::tenant::{Tenant, TenantLimits, Token, check_new_tenant_name};
use crate::worker::{Worker, WorkerConfig, shutdown_signal};

/// Arguments of `corral serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Redis for the broker and the catalog (`--redis URL`, `--prefix`,
    /// `--cluster`, TLS); without a URL, everything is in this process's
    /// memory.
    #[command(flatten)]
    redis: super::broker_cmds::RedisArgs,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Tasks the in-process worker runs at once; 0 runs no worker.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Without Redis: tenants to create at start, each token printed once.
    /// (`default` is reserved for tasks enqueued without a tenant.)
    #[arg(long = "tenant", default_value = "local")]
    tenants: Vec<String>,
    /// Largest JSON request body, in KiB.
    #[arg(
        long = "max-json-kib",
        value_name = "KIB",
        default_value = "1024",
        value_parser = super::units::parse_kib
    )]
    max_json_bytes: u64,
    /// HTTP connections served at once; more wait in the listen backlog
    /// (lowered to fit the open-file limit).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Time a connection has to send a request head, from being accepted or
    /// from its previous response (so also the keep-alive idle timeout), ms.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_ms: u64,
    /// Largest request head (request line and headers), in KiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=(1 << 20)))]
    max_header_kib: u32,
    /// Longest a request body may stall, or a response stay unread, ms.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_ms: u64,
    /// Slowest average rate of a request body, and of a response the client
    /// is slow to read, in bytes a second (0: no rate, only the stall bound).
    #[arg(long, default_value_t = 64 << 10)]
    min_body_rate: u64,
    /// Longest a request may take, body included (`wait` gets its maximum
    /// wait more), ms.
    #[arg(long, default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
    /// Request bodies held in memory at once, all tenants together, in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=(u64::MAX >> 20)))]
    max_bodies_in_flight_mib: u64,
    /// Request bodies one tenant may hold in memory at once, in MiB (a
    /// tenant with none in flight may always send one).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=(u64::MAX >> 20)))]
    max_bodies_in_flight_per_tenant_mib: u64,
    /// Largest list answer (`GET /v1/tasks`, `GET /v1/jobs`), in KiB; rows
    /// past it are left out and the answer says `truncated`.
    #[arg(
        long = "max-list-kib",
        value_name = "KIB",
        default_value = "1024",
        value_parser = super::units::parse_kib
    )]
    max_list_bytes: u64,
    #[command(flatten)]
    metrics: super::metrics_port::MetricsArgs,
}

impl ServeArgs {
    /// The API settings these flags ask for.
    fn api_config(&self) -> ApiConfig {
        ApiConfig {
            max_json_bytes: self.max_json_bytes,
            max_list_bytes: usize::try_from(self.max_list_bytes).unwrap_or(usize::MAX),
            max_connections: self.max_connections as usize,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            max_header_bytes: (self.max_header_kib as usize) << 10,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            min_body_rate: self.min_body_rate,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            body_budget: BodyBudget::new(
                self.max_bodies_in_flight_mib << 20,
                self.max_bodies_in_flight_per_tenant_mib << 20,
            ),
            ..ApiConfig::default()
        }
    }
}

/// Runs `corral serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new(sandbox_config()).context("starting the sandbox")?;
    match args.redis.redis {
        Some(_) => serve_redis(args, sandbox).await,
        None => {
            let catalog = Arc::new(MemoryCatalog::new());
            for name in &args.tenants {
                check_new_tenant_name(name).map_err(anyhow::Error::msg)?;
                let token = Token::generate();
                let tenant = Tenant {
                    name: name.clone(),
                    limits: TenantLimits::default(),
                };
                catalog
                    .create_tenant(&tenant, &token.hash())
                    .await
                    .with_context(|| format!("creating tenant `{name}`"))?;
                say!("tenant {name} token {}", token.expose());
            }
            let registry = Registry::with_catalog(sandbox, catalog);
            serve(args, EmbeddedBroker::new(), registry).await
        }
    }
}

async fn serve_redis(args: ServeArgs, sandbox: Sandbox) -> anyhow::Result<ExitCode> {
    let config = args.redis.config("serve")?;
    let url = crate::broker::redis::redact(args.redis.redis.as_deref().unwrap_or_default());
    let broker = RedisBroker::connect(config)
        .await
        .with_context(|| format!("connecting to the broker at {url}"))?;
    let catalog = args.redis.catalog("serve").await?;
    let registry = Registry::with_catalog(sandbox, Arc::new(catalog));
    serve(args, broker, registry).await
}

/// Serves the API over `broker` and `registry`, with the in-process worker.
async fn serve<B: Broker + Clone>(
    args: ServeArgs,
    broker: B,
    registry: Registry,
) -> anyhow::Result<ExitCode> {
    // Connections are bounded below the open-file limit: make that as high
    // as this process may.
    if let Some(fds) = api::raise_fd_limit() {
        tracing::debug!(fds, "open-file limit");
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let port = args.metrics.bind().await?;
    let config = args.api_config();
    let router = api::router(ApiState {
        broker: broker.clone(),
        registry: registry.clone(),
        config: config.clone(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = port.as_ref().map(|p| p.metrics.clone());
    if let Some(port) = port {
        port.serve(broker.clone(), registry.clone())?;
    }
    let worker = (args.workers > 0).then(|| {
        let mut worker = Worker::new(
            broker,
            registry,
            WorkerConfig {
                concurrency: args.workers,
                ..WorkerConfig::default()
            },
        );
        if let Some(metrics) = metrics {
            worker = worker.with_metrics(metrics);
        }
        let mut stop = stop_rx.clone();
        tokio::spawn(worker.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });

    say!("listening on http://{addr}");
    tracing::info!(%addr, workers = args.workers, "API listening");
    let served = api::serve_with(listener, router, &config, async move {
        shutdown_signal().await;
    });
    let result = served.await;
    let _ = stop_tx.send(true);
    if let Some(worker) = worker {
        worker
            .await
            .context("the worker task failed")?
            .context("the worker stopped with an error")?;
    }
    result.context("serving the API")?;
    Ok(ExitCode::SUCCESS)
}
