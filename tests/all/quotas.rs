//! Catalog quotas and bounded listings, under concurrency.
//!
//! Every quota is raced: 32 writers at once against a limit of 5, through
//! the catalog contract (memory, Redis, Redis Cluster) and through the real
//! HTTP API; exactly the limit succeeds and the rest get the quota's own
//! error. Job output and log limits above the tenant's ceilings are refused
//! at registration. Lists of huge tasks and of many jobs stay under the
//! API's byte budget, saying so and paging. Inputs are generated (seeded
//! sizes, distinct module bytes), never a handful of fixtures.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use corral::api::ApiConfig;
use corral::broker::{Broker, RedisBroker, RedisConfig};
use corral::catalog::{Catalog, CatalogError, Quota, RedisCatalog};
use corral::registry::{HandlerSpec, JobDefinition, Registry};
use corral::sandbox::{Limits, ModuleHash};
use corral::task::{Task, TaskError, TaskId};
use corral::tenant::TenantLimits;
use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::api_support::{self, Api, RedisServer, Store};
use crate::support;

/// How many writers race each quota.
const RACERS: usize = 32;
/// The quota they race against.
const LIMIT: u32 = 5;

/// Distinct bytes of exactly `len` bytes (at least 8).
fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = seed.to_le_bytes().to_vec();
    out.extend((8..len.max(8)).map(|_| rng.random::<u8>()));
    out
}

fn definition(tenant: &str, name: &str, handlers: usize, module: &ModuleHash) -> JobDefinition {
    JobDefinition {
        tenant: tenant.into(),
        name: name.into(),
        version: 0,
        handlers: (0..handlers)
            .map(|i| HandlerSpec {
                name: format!("h{i}"),
                module: module.clone(),
            })
            .collect(),
        limits: Limits::default(),
    }
}

async fn create(catalog: &Arc<dyn Catalog>, name: &str, limits: TenantLimits) {
    api_support::tenant(catalog, name, limits).await;
}

/// Runs `n` copies of `f(i)` at once; their results in order.
async fn race<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.expect("racer panicked"));
    }
    out
}

fn over(quota: Quota, limit: u64) -> CatalogError {
    CatalogError::OverQuota { quota, limit }
}

/// Every catalog keeps every quota exactly, whatever the concurrency.
async fn quota_contract(catalog: Arc<dyn Catalog>) {
    // Module count: 32 distinct modules of generated sizes against 5.
    create(
        &catalog,
        "count",
        TenantLimits {
            max_modules: LIMIT,
            ..TenantLimits::default()
        },
    )
    .await;
    let mut rng = StdRng::seed_from_u64(7);
    let blobs: Vec<Vec<u8>> = (0..RACERS)
        .map(|i| blob(i as u64, rng.random_range(8..4096)))
        .collect();
    let blobs = Arc::new(blobs);
    let results = race(RACERS, |i| {
        let (catalog, blobs) = (catalog.clone(), blobs.clone());
        async move {
            let bytes = &blobs[i];
            catalog
                .put_module("count", &ModuleHash::of(bytes), bytes)
                .await
        }
    })
    .await;
    let stored: Vec<usize> = (0..RACERS).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(stored.len(), LIMIT as usize, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r, &Err(over(Quota::Modules, LIMIT.into())));
    }
    // Storing what is stored is a no-op, even at the quota and at once.
    let again = race(8, |_| {
        let (catalog, blobs) = (catalog.clone(), blobs.clone());
        let i = stored[0];
        async move {
            let bytes = &blobs[i];
            catalog
                .put_module("count", &ModuleHash::of(bytes), bytes)
                .await
        }
    })
    .await;
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    for i in 0..RACERS {
        let has = catalog
            .has_module("count", &ModuleHash::of(&blobs[i]))
            .await
            .unwrap();
        assert_eq!(has, stored.contains(&i), "module {i}");
    }
    // The limit is read as it is at the write: raised by one, one more fits.
    catalog
        .set_limits(
            "count",
            &TenantLimits {
                max_modules: LIMIT + 1,
                ..TenantLimits::default()
            },
        )
        .await
        .unwrap();
    let extra = blob(1000, 64);
    catalog
        .put_module("count", &ModuleHash::of(&extra), &extra)
        .await
        .unwrap();
    let refused = blob(1001, 64);
    assert_eq!(
        catalog
            .put_module("count", &ModuleHash::of(&refused), &refused)
            .await,
        Err(over(Quota::Modules, (LIMIT + 1).into()))
    );

    // Module bytes: equal sizes, exactly five fit.
    create(
        &catalog,
        "bytes",
        TenantLimits {
            max_module_storage_bytes: u64::from(LIMIT) * 1000,
            ..TenantLimits::default()
        },
    )
    .await;
    let results = race(RACERS, |i| {
        let catalog = catalog.clone();
        async move {
            let bytes = blob(100 + i as u64, 1000);
            catalog
                .put_module("bytes", &ModuleHash::of(&bytes), &bytes)
                .await
        }
    })
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, LIMIT as usize, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r, &Err(over(Quota::ModuleStorage, 5000)));
    }

    // Module bytes, generated sizes: what is stored fits, and every refused
    // module would not fit even now (usage only grows).
    let budget = 20_000u64;
    create(
        &catalog,
        "sizes",
        TenantLimits {
            max_module_storage_bytes: budget,
            ..TenantLimits::default()
        },
    )
    .await;
    let mut rng = StdRng::seed_from_u64(11);
    let sizes: Arc<Vec<usize>> =
        Arc::new((0..RACERS).map(|_| rng.random_range(100..4000)).collect());
    let results = race(RACERS, |i| {
        let (catalog, sizes) = (catalog.clone(), sizes.clone());
        async move {
            let bytes = blob(200 + i as u64, sizes[i]);
            catalog
                .put_module("sizes", &ModuleHash::of(&bytes), &bytes)
                .await
        }
    })
    .await;
    let used: u64 = (0..RACERS)
        .filter(|i| results[*i].is_ok())
        .map(|i| sizes[i] as u64)
        .sum();
    assert!(used <= budget, "stored {used} bytes against {budget}");
    for i in (0..RACERS).filter(|i| results[*i].is_err()) {
        assert_eq!(results[i], Err(over(Quota::ModuleStorage, budget)));
        assert!(
            used + sizes[i] as u64 > budget,
            "module {i} was refused but fits"
        );
    }

    // Jobs: 32 new names against 5; replacing an existing one still works.
    let module = ModuleHash::of(b"any");
    create(
        &catalog,
        "jobs",
        TenantLimits {
            max_jobs: LIMIT,
            ..TenantLimits::default()
        },
    )
    .await;
    let results = race(RACERS, |i| {
        let catalog = catalog.clone();
        let def = definition("jobs", &format!("job-{i}"), 1, &module);
        async move { catalog.add_job_version(def, false).await }
    })
    .await;
    let ok: Vec<&JobDefinition> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), LIMIT as usize, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r, &Err(over(Quota::Jobs, LIMIT.into())));
    }
    assert_eq!(catalog.jobs("jobs").await.unwrap().len(), LIMIT as usize);
    let replaced = catalog
        .add_job_version(definition("jobs", &ok[0].name, 1, &module), true)
        .await
        .unwrap();
    assert_eq!(replaced.version, 2);

    // Versions: one, then 32 replaces at once against 5 in all.
    create(
        &catalog,
        "versions",
        TenantLimits {
            max_job_versions: LIMIT,
            ..TenantLimits::default()
        },
    )
    .await;
    catalog
        .add_job_version(definition("versions", "j", 1, &module), false)
        .await
        .unwrap();
    let results = race(RACERS, |_| {
        let catalog = catalog.clone();
        let def = definition("versions", "j", 1, &module);
        async move { catalog.add_job_version(def, true).await }
    })
    .await;
    let mut versions: Vec<u32> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|d| d.version))
        .collect();
    versions.sort();
    assert_eq!(versions, (2..=LIMIT).collect::<Vec<_>>(), "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r, &Err(over(Quota::JobVersions, LIMIT.into())));
    }
    let newest = catalog.job("versions", "j", None).await.unwrap().unwrap();
    assert_eq!(newest.version, LIMIT);

    // Handlers per job: chains of 1 to 8 against 3.
    create(
        &catalog,
        "chains",
        TenantLimits {
            max_handlers_per_job: 3,
            ..TenantLimits::default()
        },
    )
    .await;
    for n in 1..=8usize {
        let got = catalog
            .add_job_version(definition("chains", &format!("c{n}"), n, &module), false)
            .await;
        if n <= 3 {
            assert!(got.is_ok(), "{n}: {got:?}");
        } else {
            assert_eq!(got, Err(over(Quota::HandlersPerJob, 3)), "{n}");
        }
    }

    // A tenant not in the catalog (the embedded setup's `default`) gets the
    // defaults; quotas are per tenant.
    let unlisted = blob(300, 100);
    catalog
        .put_module("unlisted", &ModuleHash::of(&unlisted), &unlisted)
        .await
        .unwrap();
    let long = definition("unlisted", "long", 33, &module);
    assert_eq!(
        catalog.add_job_version(long, false).await,
        Err(over(
            Quota::HandlersPerJob,
            TenantLimits::default().max_handlers_per_job.into()
        ))
    );
    let theirs = blob(301, 100);
    catalog
        .put_module("other", &ModuleHash::of(&theirs), &theirs)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_catalog_keeps_every_quota_exactly() {
    let _limit = crate::limit::minutes(5);
    quota_contract(Store::Memory.catalog().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_catalog_keeps_every_quota_exactly() {
    let _limit = crate::limit::minutes(5);
    let store = Store::Redis(RedisServer::start());
    quota_contract(store.catalog().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_catalog_keeps_every_quota_exactly_on_a_cluster() {
    let _limit = crate::limit::minutes(5);
    let urls = tokio::task::spawn_blocking(|| crate::support::redis::cluster().urls())
        .await
        .expect("cluster start");
    let prefix = crate::support::redis::unique_prefix("quotas");
    let catalog = RedisCatalog::connect_nodes(&urls, true, &prefix)
        .await
        .expect("connect the catalog to the cluster");
    quota_contract(Arc::new(catalog)).await;
}

// ---------------------------------------------------------------------------
// Through the HTTP API
// ---------------------------------------------------------------------------

/// The API over a private Redis, with tenant `t` of `limits`; its token.
struct World {
    _redis: RedisServer,
    catalog: Arc<dyn Catalog>,
    broker: RedisBroker,
    api: Api,
    token: String,
}

async fn world(limits: TenantLimits, config: ApiConfig) -> World {
    let redis = RedisServer::start();
    let catalog: Arc<dyn Catalog> = Arc::new(
        RedisCatalog::connect(&redis.url())
            .await
            .expect("connect the Redis catalog"),
    );
    let token = api_support::tenant(&catalog, "t", limits).await;
    let broker = RedisBroker::connect(RedisConfig::new(redis.url()))
        .await
        .expect("connect the Redis broker");
    let registry = Registry::with_catalog(support::sandbox(), catalog.clone());
    let api = api_support::serve(broker.clone(), registry, config).await;
    World {
        _redis: redis,
        catalog,
        broker,
        api,
        token,
    }
}

/// A handler component that returns its args, built once from WAT: tiny,
/// so validating many variants costs little.
fn tiny_handler() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let core = r#"(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $ptr i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
    (global.set $next (i32.add (local.get $ptr) (local.get 3)))
    (if (i32.gt_u (global.get $next) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (global.get $next) (i32.const 16)) (i32.const 1))) (i32.const -1))
          (then unreachable))))
    (local.get $ptr))
  (func (export "handle")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (param $args i32) (param $len i32)
    (result i32)
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.store (i32.const 4) (local.get $args))
    (i32.store (i32.const 8) (local.get $len))
    (i32.store (i32.const 12) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 0))
    (i32.const 0)))"#;
        let mut resolve = wit_parser::Resolve::default();
        let package = resolve
            .push_source("job.wit", include_str!("../../wit/job.wit"))
            .expect("parse the job WIT");
        let world = resolve
            .select_world(&[package], Some("handler"))
            .expect("the handler world");
        let mut module = wat::parse_str(core).expect("parse WAT");
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
            false,
        )
        .expect("embed metadata");
        wit_component::ComponentEncoder::default()
            .module(&module)
            .expect("component module")
            .validate(true)
            .encode()
            .expect("encode component")
    })
}

/// [`tiny_handler`] with a custom section appended that makes it distinct
/// (`variant`) and exactly `len` bytes long (at least the handler's size
/// plus a few bytes).
fn handler_variant(variant: u64, len: usize) -> Vec<u8> {
    let mut bytes = tiny_handler().to_vec();
    let name = b"corral-test";
    // Section: id 0, size (LEB128), name length, name, payload.
    let overhead = 1 + 5 + 1 + name.len();
    let payload_len = len.saturating_sub(bytes.len() + overhead).max(8);
    let mut payload = variant.to_le_bytes().to_vec();
    payload.resize(payload_len, 0xab);
    let size = (1 + name.len() + payload.len()) as u32;
    bytes.push(0);
    // A fixed five-byte LEB128, so the length is exact.
    for i in 0..5 {
        let mut byte = ((size >> (7 * i)) & 0x7f) as u8;
        if i < 4 {
            byte |= 0x80;
        }
        bytes.push(byte);
    }
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

#[test]
fn handler_variants_are_distinct_and_sized() {
    let _limit = crate::limit::minutes(5);
    let base = tiny_handler().len();
    let a = handler_variant(1, base + 100);
    let b = handler_variant(2, base + 100);
    assert_ne!(a, b);
    assert_eq!(a.len(), base + 100);
    assert_eq!(handler_variant(3, 0).len(), base + 18 + 8);
}

/// Uploads `RACERS` distinct modules at once; their statuses and kinds.
async fn race_uploads(w: &World, len: usize) -> Vec<(u16, String)> {
    let uploads = (0..RACERS).map(|i| {
        let bytes = handler_variant(i as u64, len);
        async move {
            let r = w.api.upload(&w.token, bytes).await;
            (r.status.as_u16(), r.kind().to_owned())
        }
    });
    join_all(uploads).await
}

fn tally(replies: &[(u16, String)], ok: u16, refused: (u16, &str)) -> usize {
    for (status, kind) in replies {
        assert!(
            *status == ok || (*status == refused.0 && kind == refused.1),
            "unexpected answer {status} {kind}: {replies:?}"
        );
    }
    replies.iter().filter(|(s, _)| *s == ok).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_store_exactly_the_module_quota() {
    let _limit = crate::limit::minutes(5);
    let w = world(
        TenantLimits {
            max_modules: LIMIT,
            ..TenantLimits::default()
        },
        ApiConfig::default(),
    )
    .await;
    let replies = race_uploads(&w, 2000).await;
    assert_eq!(
        tally(&replies, 201, (422, "too_many_modules")),
        LIMIT as usize
    );
    let mut stored = 0;
    for i in 0..RACERS {
        let hash = ModuleHash::of(&handler_variant(i as u64, 2000));
        stored += usize::from(w.catalog.has_module("t", &hash).await.unwrap());
    }
    assert_eq!(stored, LIMIT as usize);

    // Bytes: a tenant whose storage holds exactly five of these.
    let size = 3000;
    let w = world(
        TenantLimits {
            max_module_storage_bytes: u64::from(LIMIT) * size as u64,
            ..TenantLimits::default()
        },
        ApiConfig::default(),
    )
    .await;
    let replies = race_uploads(&w, size).await;
    assert_eq!(
        tally(&replies, 201, (422, "module_storage_full")),
        LIMIT as usize
    );
    let refused = replies.iter().find(|(s, _)| *s == 422);
    assert!(refused.is_some());
    let again = w.api.upload(&w.token, handler_variant(999, size)).await;
    again.expect(422, "module_storage_full");
    assert!(
        again.message().contains("max_module_storage_bytes"),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_keep_the_job_version_and_handler_quotas() {
    let _limit = crate::limit::minutes(5);
    let w = world(
        TenantLimits {
            max_jobs: LIMIT,
            max_job_versions: LIMIT,
            max_handlers_per_job: 4,
            ..TenantLimits::default()
        },
        ApiConfig::default(),
    )
    .await;
    let hash = w.api.upload_job(&w.token, "noop").await;
    let post = |body: Value| {
        let (api, token) = (&w.api, &w.token);
        async move {
            let r = api.post("/v1/jobs", token, &body).await;
            (r.status.as_u16(), r.kind().to_owned())
        }
    };

    // Jobs: 32 names at once against 5.
    let replies = join_all(
        (0..RACERS).map(|i| post(json!({"name": format!("job-{i}"), "handlers": [hash]}))),
    )
    .await;
    assert_eq!(tally(&replies, 201, (422, "too_many_jobs")), LIMIT as usize);

    // Versions: 32 replaces of one of them at once, against 5 in all.
    let listed = w.api.get("/v1/jobs", &w.token).await;
    let name = listed.body["jobs"][0]["name"]
        .as_str()
        .expect("a job")
        .to_owned();
    let replies = join_all(
        (0..RACERS).map(|_| post(json!({"name": name, "handlers": [hash], "replace": true}))),
    )
    .await;
    assert_eq!(
        tally(&replies, 201, (422, "too_many_job_versions")),
        LIMIT as usize - 1
    );
    let newest = w.api.get(&format!("/v1/jobs/{name}"), &w.token).await;
    assert_eq!(newest.body["version"], LIMIT);

    // Handlers: generated chain lengths, up to one far past any quota
    // (answered without a store lookup per handler).
    let mut rng = StdRng::seed_from_u64(3);
    let mut lengths: Vec<usize> = (0..12).map(|_| rng.random_range(1..=10)).collect();
    lengths.extend([4, 5, 10_000]);
    for n in lengths {
        let r = w
            .api
            .post(
                "/v1/jobs",
                &w.token,
                &json!({"name": name, "handlers": vec![&hash; n], "replace": true}),
            )
            .await;
        if n <= 4 {
            // The version quota is spent: a chain that fits meets it.
            r.expect(422, "too_many_job_versions");
        } else {
            r.expect(422, "too_many_handlers");
            assert!(r.message().contains("max_handlers_per_job"), "{r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_output_and_log_limits_above_the_tenant_ceilings_are_refused() {
    let _limit = crate::limit::minutes(5);
    let ceilings = TenantLimits {
        max_output_bytes: 64 << 10,
        max_log_bytes: 4 << 10,
        ..TenantLimits::default()
    };
    let w = world(ceilings, ApiConfig::default()).await;
    let hash = w.api.upload_job(&w.token, "noop").await;
    let mut rng = StdRng::seed_from_u64(5);
    let mut asked: Vec<(&str, u64)> = vec![
        ("max_output_bytes", u64::MAX),
        ("max_log_bytes", u64::MAX),
        ("max_output_bytes", ceilings.max_output_bytes + 1),
        ("max_log_bytes", ceilings.max_log_bytes + 1),
    ];
    for _ in 0..8 {
        asked.push(("max_output_bytes", rng.random_range(1..=128 << 10)));
        asked.push(("max_log_bytes", rng.random_range(0..=8 << 10)));
    }
    for (i, (field, value)) in asked.into_iter().enumerate() {
        let ceiling = match field {
            "max_output_bytes" => ceilings.max_output_bytes,
            _ => ceilings.max_log_bytes,
        };
        let r = w
            .api
            .post(
                "/v1/jobs",
                &w.token,
                &json!({"name": format!("j{i}"), "handlers": [hash], "limits": {field: value}}),
            )
            .await;
        if value <= ceiling {
            r.expect(201, "");
            assert_eq!(r.body["limits"][field], value);
        } else {
            r.expect(422, "over_tenant_limit");
            assert!(r.message().contains(field), "{r:?}");
        }
    }
    // Left out, they are the defaults narrowed to the ceilings.
    let r = w
        .api
        .post(
            "/v1/jobs",
            &w.token,
            &json!({"name": "plain", "handlers": [hash]}),
        )
        .await;
    r.expect(201, "");
    assert_eq!(r.body["limits"]["max_output_bytes"], 64 << 10);
    assert_eq!(r.body["limits"]["max_log_bytes"], 4 << 10);
}

// ---------------------------------------------------------------------------
// Listings
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_huge_tasks_stays_under_its_byte_bound() {
    let _limit = crate::limit::minutes(5);
    let budget = 16 << 10;
    let w = world(
        TenantLimits::default(),
        ApiConfig {
            max_list_bytes: budget,
            ..ApiConfig::default()
        },
    )
    .await;
    // Tasks as a worker might leave them: big args, result log, log and
    // error, long names; generated sizes.
    let mut rng = StdRng::seed_from_u64(13);
    let mut text = |max: usize| -> String {
        let n = rng.random_range(0..max);
        (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect()
    };
    let mut tasks = Vec::new();
    let mut stored = 0usize;
    for i in 0..40 {
        let mut task = Task::new(format!("job-{}", text(200)), Default::default());
        task.tenant = "t".into();
        task.queue_name = format!("q{}", i % 3);
        task.original_args_map
            .insert("blob".into(), Value::String(text(200 << 10)));
        task.args_map = task.original_args_map.clone();
        task.result_log = text(200 << 10);
        task.log = text(100 << 10);
        if i % 2 == 0 {
            task.error = Some(TaskError {
                kind: text(300),
                message: text(100 << 10),
                retryable: true,
                handler_index: Some(0),
            });
        }
        stored += task.to_json().len();
        tasks.push(task);
    }
    w.broker.enqueue(tasks.clone()).await.unwrap();
    assert!(stored > 8 * budget, "the tasks hold {stored} bytes");
    // A list's order: by queue name, then state (all pending here), newest
    // first within each.
    let mut order: Vec<(String, TaskId)> = tasks
        .iter()
        .map(|t| (t.queue_name.clone(), t.task_id))
        .collect();
    order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let newest: Vec<TaskId> = order.into_iter().map(|(_, id)| id).collect();

    let raw = |path: String| {
        let (api, token) = (&w.api, &w.token);
        async move {
            let resp = reqwest::Client::new()
                .get(format!("{}{path}", api.base))
                .bearer_auth(token)
                .send()
                .await
                .expect("list");
            assert_eq!(resp.status().as_u16(), 200);
            resp.bytes().await.expect("body")
        }
    };
    let body = raw("/v1/tasks?limit=1000".into()).await;
    assert!(body.len() <= budget, "{} bytes listed", body.len());
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["truncated"], true);
    let rows = json["tasks"].as_array().expect("rows");
    assert!(
        !rows.is_empty() && rows.len() < tasks.len(),
        "{}",
        rows.len()
    );
    // In list order, none skipped; each row a summary.
    for (row, id) in rows.iter().zip(&newest) {
        assert_eq!(row["task_id"], id.to_string());
        let task = tasks.iter().find(|t| t.task_id == *id).unwrap();
        for full in ["args_map", "original_args_map", "result_log", "log"] {
            assert!(row.get(full).is_none(), "a row carries `{full}`");
        }
        assert_eq!(row["result_log_bytes"], task.result_log.len());
        assert_eq!(row["log_bytes"], task.log.len());
        let preview = row["result_preview"].as_str().unwrap();
        assert!(preview.len() <= 256 && task.result_log.starts_with(preview));
        assert!(row["job_name"].as_str().unwrap().len() <= 128);
        if let (Some(error), Some(message)) = (&task.error, row["error"]["message"].as_str()) {
            assert!(message.len() <= 512 && error.message.starts_with(message));
            assert!(row["error"]["kind"].as_str().unwrap().len() <= 64);
        }
    }
    // The rows left out come next: following `next` lists every task once,
    // in order, each answer under the bound.
    let mut listed: Vec<String> = Vec::new();
    let mut next = json["next"].as_str().map(str::to_owned);
    assert!(next.is_some(), "a truncated answer names where to go on");
    listed.extend(
        rows.iter()
            .map(|r| r["task_id"].as_str().unwrap().to_owned()),
    );
    let mut pages = 1;
    while let Some(cursor) = next {
        assert!(pages < 100, "{pages} pages for {} tasks", tasks.len());
        let body = raw(format!("/v1/tasks?limit=1000&cursor={cursor}")).await;
        assert!(body.len() <= budget, "{} bytes listed", body.len());
        let page: Value = serde_json::from_slice(&body).unwrap();
        let rows = page["tasks"].as_array().expect("rows");
        assert!(!rows.is_empty(), "{page}");
        listed.extend(
            rows.iter()
                .map(|r| r["task_id"].as_str().unwrap().to_owned()),
        );
        next = page["next"].as_str().map(str::to_owned);
        pages += 1;
    }
    let expected: Vec<String> = newest.iter().map(TaskId::to_string).collect();
    assert_eq!(listed, expected);
    // Fewer rows than the budget holds: all of them, not truncated.
    let body = raw("/v1/tasks?limit=3".into()).await;
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["truncated"], false);
    assert_eq!(json["tasks"].as_array().map(Vec::len), Some(3));
    // The whole record is one request away.
    let one = w
        .api
        .get(&format!("/v1/tasks/{}", newest[0]), &w.token)
        .await;
    one.expect(200, "");
    assert!(one.body["original_args_map"]["blob"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_list_pages_by_name_under_its_byte_bound() {
    let _limit = crate::limit::minutes(5);
    let budget = 4 << 10;
    let w = world(
        TenantLimits::default(),
        ApiConfig {
            max_list_bytes: budget,
            ..ApiConfig::default()
        },
    )
    .await;
    let hash = w.api.upload_job(&w.token, "noop").await;
    let mut rng = StdRng::seed_from_u64(17);
    let mut names = BTreeSet::new();
    for i in 0..30 {
        let name = format!("{}-{i}", ["a", "b", "c", "d"][rng.random_range(0..4)]);
        let chain: Vec<Value> = (0..rng.random_range(1..8))
            .map(|h| json!({"name": format!("handler-{h}-{}", "x".repeat(rng.random_range(0..100))), "module": hash}))
            .collect();
        w.api
            .post(
                "/v1/jobs",
                &w.token,
                &json!({"name": name, "handlers": chain}),
            )
            .await
            .expect(201, "");
        names.insert(name);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        assert!(page < 100, "paging does not end");
        let path = match &after {
            Some(a) => format!("/v1/jobs?limit=7&after={a}"),
            None => "/v1/jobs?limit=7".to_owned(),
        };
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", w.api.base))
            .bearer_auth(&w.token)
            .send()
            .await
            .unwrap();
        let body = resp.bytes().await.unwrap();
        assert!(body.len() <= budget, "{} bytes listed", body.len());
        let json: Value = serde_json::from_slice(&body).unwrap();
        let rows = json["jobs"].as_array().unwrap();
        assert!(!rows.is_empty() && rows.len() <= 7);
        seen.extend(rows.iter().map(|r| r["name"].as_str().unwrap().to_owned()));
        match json["next"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), seen.last().map(String::as_str));
                after = Some(next.to_owned());
            }
            None => {
                assert_eq!(json["truncated"], false);
                break;
            }
        }
    }
    // Every job once, in name order.
    assert_eq!(seen, names.into_iter().collect::<Vec<_>>());
}
