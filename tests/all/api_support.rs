//! Helpers of the API and tenant tests: Redis inspection (servers come from
//! `support::redis`), the API served on `127.0.0.1:0` in the test's runtime,
//! tenants with tokens, a small HTTP client, and the hostile modules that
//! are not in `jobs/dist` (built from WAT here).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::api::{self, ApiConfig, ApiState};
use corral::broker::Broker;
use corral::catalog::{Catalog, MemoryCatalog, RedisCatalog};
use corral::registry::Registry;
use corral::tenant::{Tenant, TenantLimits, Token};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::support;

pub use crate::support::redis::RedisServer;

/// Every key in `server`.
pub fn keys(server: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut conn = client.get_connection().expect("redis connection");
    redis::cmd("KEYS").arg("*").query(&mut conn).expect("KEYS")
}

/// Everything stored in `server`, as bytes: every key's name and every
/// value of every type (strings; lists; sets; sorted-set members; hash
/// fields and values; stream ids, fields and values). A type it does not
/// know fails the test, so a new kind of key cannot slip past the checks
/// that read this.
pub fn everything_stored(server: &RedisServer) -> Vec<Vec<u8>> {
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut conn = client.get_connection().expect("redis connection");
    let mut out = Vec::new();
    for key in keys(server) {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).expect("TYPE");
        let mut read = |cmd: &mut redis::Cmd| -> Vec<Vec<u8>> {
            cmd.query(&mut conn)
                .unwrap_or_else(|e| panic!("reading {key} ({kind}): {e}"))
        };
        let values = match kind.as_str() {
            "string" => read(redis::cmd("GET").arg(&key)),
            "list" => read(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1)),
            "set" => read(redis::cmd("SMEMBERS").arg(&key)),
            "zset" => read(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1)),
            "hash" => read(redis::cmd("HGETALL").arg(&key)),
            "stream" => {
                let entries: Vec<(Vec<u8>, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query(&mut conn)
                    .expect("XRANGE");
                entries
                    .into_iter()
                    .flat_map(|(id, fields)| std::iter::once(id).chain(fields))
                    .collect()
            }
            "none" => Vec::new(), // expired since KEYS
            other => panic!("key {key} has a type this check does not read: {other}"),
        };
        out.push(key.into_bytes());
        out.extend(values);
    }
    out
}

/// Checks that `server` holds each of `tokens` only as its hash: the hash
/// is there (so the check looks where tokens go), the token nowhere.
pub fn assert_tokens_stored_only_hashed(server: &RedisServer, tokens: &[&str]) {
    let stored: Vec<String> = everything_stored(server)
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    for token in tokens {
        let hash = Token::from_presented(token).hash().0;
        assert!(
            stored.iter().any(|v| v.contains(&hash)),
            "the hash of a token is not stored: {stored:?}"
        );
        let bare = token.trim_start_matches("crl_");
        for value in &stored {
            assert!(!value.contains(bare), "a token is stored in clear: {value}");
        }
    }
}

/// Where a test's catalog lives.
pub enum Store {
    /// In this process.
    Memory,
    /// In a private Redis server (kept alive as long as the store).
    Redis(RedisServer),
}

impl Store {
    /// A catalog over this store.
    pub async fn catalog(&self) -> Arc<dyn Catalog> {
        match self {
            Store::Memory => Arc::new(MemoryCatalog::new()),
            Store::Redis(server) => Arc::new(
                RedisCatalog::connect(&server.url())
                    .await
                    .expect("connect the Redis catalog"),
            ),
        }
    }
}

/// Creates a tenant with `limits`; returns its token.
pub async fn tenant(catalog: &Arc<dyn Catalog>, name: &str, limits: TenantLimits) -> String {
    let token = Token::generate();
    catalog
        .create_tenant(
            &Tenant {
                name: name.to_owned(),
                limits,
            },
            &token.hash(),
        )
        .await
        .expect("create tenant");
    token.expose().to_owned()
}

/// The API of a test, served in the background until dropped.
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves the API over `broker` and `registry` on a free loopback port.
pub async fn serve<B: Broker + Clone>(broker: B, registry: Registry, config: ApiConfig) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let router = api::router(ApiState {
        broker,
        registry,
        config: config.clone(),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        api::serve_with(listener, router, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    Api {
        base,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            // Below the shortest idle timeout a test gives the server (1 s):
            // a pooled connection the server is closing is never reused.
            .pool_idle_timeout(Duration::from_millis(500))
            .build()
            .expect("http client"),
        stop: Some(stop),
    }
}

/// An answer: status and JSON body (`Value::Null` when not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The error kind of an error answer.
    pub fn kind(&self) -> &str {
        self.body["error"]["kind"].as_str().unwrap_or("")
    }

    /// The error message of an error answer.
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    /// Asserts the status and, for errors, the kind.
    #[track_caller]
    pub fn expect(&self, status: u16, kind: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        if !kind.is_empty() {
            assert_eq!(self.kind(), kind, "{self:?}");
            assert!(!self.message().is_empty(), "{self:?}");
        }
        self
    }
}

impl Api {
    /// A client of an API served elsewhere (another process) at `base`.
    pub fn connect(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_idle_timeout(Duration::from_millis(500))
                .build()
                .expect("http client"),
            stop: None,
        }
    }

    /// Sends a request; `token` `None` sends no Authorization header.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if let Some((content_type, bytes)) = body {
            req = req.header("Content-Type", content_type).body(bytes);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("HTTP body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body }
    }

    /// GET with a token.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, Some(token), None).await
    }

    /// POST of JSON with a token.
    pub async fn post(&self, path: &str, token: &str, json: &Value) -> Reply {
        let bytes = serde_json::to_vec(json).expect("json");
        self.send(
            Method::POST,
            path,
            Some(token),
            Some(("application/json", bytes)),
        )
        .await
    }

    /// Uploads module bytes; returns the reply.
    pub async fn upload(&self, token: &str, bytes: Vec<u8>) -> Reply {
        self.send(
            Method::POST,
            "/v1/modules",
            Some(token),
            Some(("application/wasm", bytes)),
        )
        .await
    }

    /// Uploads a built job component; returns its hash.
    pub async fn upload_job(&self, token: &str, name: &str) -> String {
        let reply = self.upload(token, support::job_bytes(name)).await;
        reply.expect(201, "");
        reply.body["hash"].as_str().expect("hash").to_owned()
    }

    /// Uploads the named components and registers them as job `job`.
    pub async fn register(
        &self,
        token: &str,
        job: &str,
        handlers: &[&str],
        limits: Value,
    ) -> Reply {
        let mut chain = Vec::new();
        for h in handlers {
            let hash = self.upload_job(token, h).await;
            chain.push(serde_json::json!({"name": h, "module": hash}));
        }
        self.post(
            "/v1/jobs",
            token,
            &serde_json::json!({"name": job, "handlers": chain, "limits": limits}),
        )
        .await
    }

    /// Enqueues a task of `job` with `args`; returns its id.
    pub async fn enqueue(&self, token: &str, job: &str, args: Value) -> String {
        let reply = self
            .post(
                "/v1/tasks",
                token,
                &serde_json::json!({"job": job, "args": args, "max_attempts": 1}),
            )
            .await;
        reply.expect(202, "");
        reply.body["task_id"].as_str().expect("task_id").to_owned()
    }

    /// Long-polls a task until it is final (fails the test after 60 s).
    pub async fn wait(&self, token: &str, id: &str) -> Value {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let reply = self
                .get(&format!("/v1/tasks/{id}/wait?timeout_ms=10000"), token)
                .await;
            reply.expect(200, "");
            let state = reply.body["state"].as_str().unwrap_or("").to_owned();
            if state == "completed" || state == "dead" {
                return reply.body;
            }
            assert!(
                Instant::now() < give_up,
                "task {id} still {state} after 60 s"
            );
        }
    }
}

/// Hostile modules the upload must refuse, built here: (what, bytes, the
/// error kind expected).
pub fn refused_modules() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let wat = |text: &str| wat::parse_str(text).expect("fixture WAT parses");
    vec![
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "not_wasm",
        ),
        ("empty body", Vec::new(), "not_wasm"),
        (
            "a core module",
            wat(r#"(module (func (export "handle")))"#),
            "core_module",
        ),
        (
            "a truncated component",
            {
                let mut bytes = support::job_bytes("noop");
                bytes.truncate(bytes.len() / 2);
                bytes
            },
            "invalid_component",
        ),
        (
            "blocks nested past the compile bound",
            {
                let depth = corral::sandbox::MAX_NESTING_DEPTH as usize + 1;
                wat(&format!(
                    "(component (core module (func {} {})))",
                    "(block".repeat(depth),
                    ")".repeat(depth)
                ))
            },
            "compile_limit",
        ),
        (
            "three memories, past the two an instance may have",
            wat(r#"(component
                (core module $m (memory 1))
                (core instance (instantiate $m))
                (core instance (instantiate $m))
                (core instance (instantiate $m)))"#),
            "over_engine_limits",
        ),
        (
            "an initial memory larger than a pool slot",
            wat(r#"(component
                (core module $m (memory 10000))
                (core instance (instantiate $m)))"#),
            "over_engine_limits",
        ),
        (
            "a component exporting nothing",
            wat("(component)"),
            "wrong_world",
        ),
        (
            "a component whose handle has the wrong type",
            wat(r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (export "handle" (func $f)))"#),
            "wrong_world",
        ),
        (
            "a component importing what the host does not provide",
            wat(r#"(component
                (import "evil:net/raw-socket" (instance
                    (export "open" (func (param "port" u32)))))
            )"#),
            "unsupported_import",
        ),
    ]
}
