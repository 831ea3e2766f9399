//! Tenants: the catalog (in memory and in a private Redis) keeps each
//! tenant's tokens, modules and job versions apart; workers fetch modules by
//! hash and compile them once; no tenant runs more than its concurrency cap
//! on one worker; and one tenant's flood does not starve another.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::Client;
use corral::broker::{
    AcquireRequest, Broker, Checkpoint, EmbeddedBroker, Lease, QueueStats, RedisBroker,
    RedisConfig, TaskQuery,
};
use corral::catalog::{Catalog, CatalogError, RedisCatalog};
use corral::registry::{HandlerSpec, JobDefinition, Registry};
use corral::sandbox::{Limits, ModuleHash};
use corral::task::{Task, TaskId, TaskState};
use corral::tenant::{Principal, Tenant, TenantLimits, Token, TokenId};
use corral::worker::WorkerConfig;

use crate::api_support::{self, RedisServer, Store};
use crate::support::spy::UpdateSpy;
use crate::support::{self, RunningWorker};

fn definition(tenant: &str, name: &str, module: &ModuleHash) -> JobDefinition {
    JobDefinition {
        tenant: tenant.into(),
        name: name.into(),
        version: 0,
        handlers: vec![HandlerSpec {
            name: "h".into(),
            module: module.clone(),
        }],
        limits: Limits::default(),
    }
}

/// What every catalog must do; run against both.
async fn catalog_contract(catalog: Arc<dyn Catalog>) {
    let token = Token::generate();
    let acme = Tenant {
        name: "acme".into(),
        limits: TenantLimits {
            max_queued: 7,
            ..TenantLimits::default()
        },
    };
    catalog.create_tenant(&acme, &token.hash()).await.unwrap();
    let again = catalog
        .create_tenant(&acme, &Token::generate().hash())
        .await;
    assert_eq!(again, Err(CatalogError::TenantExists("acme".into())));
    assert_eq!(catalog.tenant("acme").await.unwrap(), Some(acme.clone()));
    assert_eq!(catalog.tenant("nobody").await.unwrap(), None);
    let found = catalog.tenant_for_token(&token.hash()).await.unwrap();
    assert_eq!(found, Some(acme.clone()));
    // The refused second create left no working token behind.
    assert_eq!(
        catalog
            .tenant_for_token(&Token::generate().hash())
            .await
            .unwrap(),
        None
    );

    // Tokens rotate: a second one works beside the first until the first is
    // revoked; only existing tenants get tokens.
    let second = Token::generate();
    catalog.add_token("acme", &second.hash()).await.unwrap();
    assert_eq!(
        catalog.tenant_for_token(&second.hash()).await.unwrap(),
        Some(acme.clone())
    );
    assert_eq!(
        catalog.revoke_token(&token.hash()).await.unwrap(),
        Some("acme".to_owned())
    );
    assert_eq!(catalog.tenant_for_token(&token.hash()).await.unwrap(), None);
    assert_eq!(catalog.revoke_token(&token.hash()).await.unwrap(), None);
    assert_eq!(
        catalog.tenant_for_token(&second.hash()).await.unwrap(),
        Some(acme.clone())
    );
    assert_eq!(
        catalog.add_token("nobody", &Token::generate().hash()).await,
        Err(CatalogError::UnknownTenant("nobody".into()))
    );

    // Tokens are listed by id (never secret or hash), and revoked by id
    // without the secret; an id reaches only its own tenant's token.
    let third = Token::generate();
    catalog.add_token("acme", &third.hash()).await.unwrap();
    let listed: Vec<TokenId> = catalog
        .tokens("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let mut want = vec![second.hash().id(), third.hash().id()];
    want.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, want, "the revoked token is not listed");
    assert_eq!(
        catalog.tokens("nobody").await,
        Err(CatalogError::UnknownTenant("nobody".into()))
    );
    assert!(
        !catalog
            .revoke_token_id("other", &second.hash().id())
            .await
            .unwrap()
    );
    assert!(
        catalog
            .revoke_token_id("acme", &third.hash().id())
            .await
            .unwrap()
    );
    assert_eq!(catalog.tenant_for_token(&third.hash()).await.unwrap(), None);
    assert!(
        !catalog
            .revoke_token_id("acme", &third.hash().id())
            .await
            .unwrap()
    );
    let ids: Vec<TokenId> = catalog
        .tokens("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, vec![second.hash().id()]);
    assert_eq!(
        catalog.tenant_for_token(&second.hash()).await.unwrap(),
        Some(acme.clone())
    );

    // `default`, where tasks without a tenant land, is not for creating;
    // nor is a malformed name.
    for name in ["default", "", "a b", "x/y"] {
        let refused = catalog
            .create_tenant(
                &Tenant {
                    name: name.into(),
                    limits: TenantLimits::default(),
                },
                &Token::generate().hash(),
            )
            .await;
        assert!(
            matches!(&refused, Err(CatalogError::InvalidTenantName(m)) if !m.is_empty()),
            "{name}: {refused:?}"
        );
        assert_eq!(catalog.tenant(name).await.unwrap(), None);
    }

    // Limits change in place; no tenant is made by changing limits.
    let tighter = TenantLimits {
        max_concurrency: 2,
        ..acme.limits
    };
    catalog.set_limits("acme", &tighter).await.unwrap();
    let acme = Tenant {
        limits: tighter,
        ..acme
    };
    assert_eq!(catalog.tenant("acme").await.unwrap(), Some(acme.clone()));
    assert_eq!(
        catalog.set_limits("nobody", &tighter).await,
        Err(CatalogError::UnknownTenant("nobody".into()))
    );
    assert_eq!(catalog.tenant("nobody").await.unwrap(), None);

    // Modules are per tenant.
    let bytes = b"module bytes".to_vec();
    let hash = ModuleHash::of(&bytes);
    catalog.put_module("acme", &hash, &bytes).await.unwrap();
    catalog.put_module("acme", &hash, &bytes).await.unwrap();
    assert_eq!(catalog.module("acme", &hash).await.unwrap(), Some(bytes));
    assert!(catalog.has_module("acme", &hash).await.unwrap());
    assert!(!catalog.has_module("other", &hash).await.unwrap());
    assert_eq!(catalog.module("other", &hash).await.unwrap(), None);

    // Versions: the first is 1; a second needs replace; concurrent replaces
    // each get their own number.
    let v1 = catalog
        .add_job_version(definition("acme", "job:a", &hash), false)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let exists = catalog
        .add_job_version(definition("acme", "job:a", &hash), false)
        .await;
    assert_eq!(
        exists,
        Err(CatalogError::JobExists {
            name: "job:a".into(),
            version: 1
        })
    );
    let mut racers = Vec::new();
    for _ in 0..20 {
        let catalog = catalog.clone();
        let def = definition("acme", "job:a", &hash);
        racers.push(tokio::spawn(async move {
            catalog.add_job_version(def, true).await.unwrap().version
        }));
    }
    let mut versions = Vec::new();
    for r in racers {
        versions.push(r.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=21).collect::<Vec<u32>>());
    let newest = catalog.job("acme", "job:a", None).await.unwrap().unwrap();
    assert_eq!(newest.version, 21);
    let old = catalog
        .job("acme", "job:a", Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old, v1);
    assert_eq!(catalog.job("acme", "job:a", Some(99)).await.unwrap(), None);
    catalog
        .add_job_version(definition("acme", "b", &hash), false)
        .await
        .unwrap();
    let names: Vec<(String, u32)> = catalog
        .jobs("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.version))
        .collect();
    assert_eq!(names, vec![("b".into(), 1), ("job:a".into(), 21)]);
    // Another tenant sees none of it, and may use the same names.
    assert!(catalog.jobs("other").await.unwrap().is_empty());
    assert_eq!(catalog.job("other", "job:a", None).await.unwrap(), None);
    let theirs = catalog
        .add_job_version(definition("other", "job:a", &hash), false)
        .await
        .unwrap();
    assert_eq!(theirs.version, 1);

    // Removing a job removes every version of it, and only that tenant's:
    // the name is then free again, from version 1.
    assert!(catalog.delete_job("acme", "job:a").await.unwrap());
    assert_eq!(catalog.job("acme", "job:a", None).await.unwrap(), None);
    assert_eq!(catalog.job("acme", "job:a", Some(1)).await.unwrap(), None);
    let names: Vec<String> = catalog
        .jobs("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, vec!["b".to_owned()]);
    assert!(!catalog.delete_job("acme", "job:a").await.unwrap());
    assert!(!catalog.delete_job("acme", "never").await.unwrap());
    assert!(!catalog.delete_job("nobody", "job:a").await.unwrap());
    assert_eq!(
        catalog.job("other", "job:a", None).await.unwrap(),
        Some(theirs)
    );
    let again = catalog
        .add_job_version(definition("acme", "job:a", &hash), false)
        .await
        .unwrap();
    assert_eq!(again.version, 1);

    admin_tokens_contract(&catalog, &acme, &second).await;
    tenant_listing_contract(&catalog, &acme).await;
}

/// Admin tokens, in a catalog where tenant `acme` has the token `tenants`.
async fn admin_tokens_contract(catalog: &Arc<dyn Catalog>, acme: &Tenant, tenants: &Token) {
    let admin = Token::generate();
    let info = catalog
        .add_admin_token(&admin.hash(), Some("on-call: ops"))
        .await
        .unwrap();
    assert_eq!(info.id, admin.hash().id());
    assert_eq!(info.name.as_deref(), Some("on-call: ops"));
    // It is the operator's, and no tenant's.
    assert_eq!(
        catalog.principal_for_token(&admin.hash()).await.unwrap(),
        Some(Principal::Admin(admin.hash().id()))
    );
    assert_eq!(catalog.tenant_for_token(&admin.hash()).await.unwrap(), None);
    assert_eq!(
        catalog.principal_for_token(&tenants.hash()).await.unwrap(),
        Some(Principal::Tenant(acme.clone()))
    );
    assert_eq!(
        catalog
            .principal_for_token(&Token::generate().hash())
            .await
            .unwrap(),
        None
    );
    let unnamed = Token::generate();
    catalog
        .add_admin_token(&unnamed.hash(), None)
        .await
        .unwrap();
    let mut listed: Vec<(TokenId, Option<String>)> = catalog
        .admin_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    listed.sort();
    let mut want = vec![
        (admin.hash().id(), Some("on-call: ops".to_owned())),
        (unnamed.hash().id(), None),
    ];
    want.sort();
    assert_eq!(listed, want);

    // A token is one tenant's or an admin's, never both, whichever came
    // first; a refusal changes nothing.
    assert_eq!(
        catalog.add_admin_token(&tenants.hash(), None).await,
        Err(CatalogError::TokenInUse)
    );
    assert_eq!(
        catalog.add_token("acme", &admin.hash()).await,
        Err(CatalogError::TokenInUse)
    );
    assert_eq!(
        catalog.add_admin_token(&admin.hash(), None).await,
        Err(CatalogError::TokenInUse)
    );
    assert_eq!(
        catalog.principal_for_token(&tenants.hash()).await.unwrap(),
        Some(Principal::Tenant(acme.clone()))
    );
    assert_eq!(
        catalog.principal_for_token(&admin.hash()).await.unwrap(),
        Some(Principal::Admin(admin.hash().id()))
    );
    let acme_ids: Vec<TokenId> = catalog
        .tokens("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(acme_ids, vec![tenants.hash().id()]);
    assert_eq!(catalog.admin_tokens().await.unwrap().len(), 2);

    // Tenant revocations never reach an admin token, nor admin ones a
    // tenant's.
    assert_eq!(catalog.revoke_token(&admin.hash()).await.unwrap(), None);
    assert!(
        !catalog
            .revoke_token_id("acme", &admin.hash().id())
            .await
            .unwrap()
    );
    assert!(
        !catalog
            .revoke_admin_token(&tenants.hash().id())
            .await
            .unwrap()
    );
    assert_eq!(
        catalog.principal_for_token(&admin.hash()).await.unwrap(),
        Some(Principal::Admin(admin.hash().id()))
    );
    assert_eq!(
        catalog.tenant_for_token(&tenants.hash()).await.unwrap(),
        Some(acme.clone())
    );

    // Names are a line of printable text.
    for bad in [
        String::new(),
        "a\nb".into(),
        "\u{202e}x".into(),
        "x".repeat(129),
    ] {
        let refused = catalog
            .add_admin_token(&Token::generate().hash(), Some(&bad))
            .await;
        assert!(
            matches!(&refused, Err(CatalogError::InvalidTokenName(m)) if !m.is_empty()),
            "{bad:?}: {refused:?}"
        );
    }
    assert_eq!(catalog.admin_tokens().await.unwrap().len(), 2);

    // Revoked by id: it stops working at once and is no longer listed.
    assert!(
        catalog
            .revoke_admin_token(&admin.hash().id())
            .await
            .unwrap()
    );
    assert_eq!(
        catalog.principal_for_token(&admin.hash()).await.unwrap(),
        None
    );
    assert!(
        !catalog
            .revoke_admin_token(&admin.hash().id())
            .await
            .unwrap()
    );
    let ids: Vec<TokenId> = catalog
        .admin_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, vec![unnamed.hash().id()]);
    assert_eq!(
        catalog.principal_for_token(&unnamed.hash()).await.unwrap(),
        Some(Principal::Admin(unnamed.hash().id()))
    );
}

/// The tenant listing, in a catalog where `acme` (one token) is the only
/// tenant so far.
async fn tenant_listing_contract(catalog: &Arc<dyn Catalog>, acme: &Tenant) {
    let before = chrono::Utc::now();
    for name in ["zed", "bob"] {
        api_support::tenant(catalog, name, TenantLimits::default()).await;
    }
    catalog
        .add_token("zed", &Token::generate().hash())
        .await
        .unwrap();
    let all = catalog.tenants_page(None, 100).await.unwrap();
    let rows: Vec<(&str, u64)> = all
        .iter()
        .map(|t| (t.tenant.name.as_str(), t.tokens))
        .collect();
    assert_eq!(rows, vec![("acme", 1), ("bob", 1), ("zed", 2)]);
    assert_eq!(&all[0].tenant, acme);
    for t in &all[1..] {
        let created = t.created_at.expect("a creation time");
        assert!(created >= before - chrono::TimeDelta::seconds(1), "{t:?}");
    }
    // A page at a time, each starting after the last name of the one
    // before.
    let names = |page: Vec<corral::tenant::TenantInfo>| -> Vec<String> {
        page.into_iter().map(|t| t.tenant.name).collect()
    };
    assert_eq!(
        names(catalog.tenants_page(None, 2).await.unwrap()),
        ["acme", "bob"]
    );
    assert_eq!(
        names(catalog.tenants_page(Some("bob"), 2).await.unwrap()),
        ["zed"]
    );
    assert_eq!(
        names(catalog.tenants_page(Some("b"), 1).await.unwrap()),
        ["bob"]
    );
    assert!(
        catalog
            .tenants_page(Some("zed"), 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(catalog.tenants_page(None, 0).await.unwrap().is_empty());
    // Changing limits keeps the creation time.
    let created = all[2].created_at;
    let tighter = TenantLimits {
        max_jobs: 3,
        ..TenantLimits::default()
    };
    catalog.set_limits("zed", &tighter).await.unwrap();
    let zed = catalog.tenants_page(Some("bob"), 1).await.unwrap();
    assert_eq!(
        (zed[0].tenant.limits, zed[0].created_at),
        (tighter, created)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_catalog_keeps_the_contract() {
    let _limit = crate::limit::minutes(5);
    catalog_contract(Store::Memory.catalog().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_catalog_keeps_the_contract_with_every_key_tenant_tagged() {
    let _limit = crate::limit::minutes(5);
    let store = Store::Redis(RedisServer::start());
    catalog_contract(store.catalog().await).await;
    let Store::Redis(redis) = &store else {
        unreachable!()
    };
    let keys = api_support::keys(redis);
    assert!(!keys.is_empty());
    for key in &keys {
        let tenant_key = [
            "corral:{t:acme}:",
            "corral:{t:other}:",
            "corral:{t:bob}:",
            "corral:{t:zed}:",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        // Tokens and the two listings over every tenant are the only keys
        // outside a tenant's tag.
        let across = key.starts_with("corral:token:")
            || key == "corral:catalog:tenants"
            || key == "corral:catalog:admin_tokens";
        assert!(tenant_key || across, "key without its tenant: {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_stored_only_as_hashes() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let store = Store::Redis(redis);
    let catalog = store.catalog().await;
    let token = api_support::tenant(&catalog, "acme", TenantLimits::default()).await;
    let Store::Redis(redis) = &store else {
        unreachable!()
    };
    api_support::assert_tokens_stored_only_hashed(redis, &[&token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_fetches_modules_by_hash_and_compiles_each_once() {
    let _limit = crate::limit::minutes(5);
    let store = Store::Redis(RedisServer::start());
    // The uploader and the worker share only the Redis catalog: separate
    // connections, separate sandboxes, separate caches.
    let uploader = Registry::with_catalog(support::sandbox(), store.catalog().await);
    let worker_sandbox = support::sandbox();
    let worker_registry = Registry::with_catalog(worker_sandbox.clone(), store.catalog().await);
    api_support::tenant(uploader.catalog(), "acme", TenantLimits::default()).await;
    let files = ["normalize", "count_words", "top_k"].map(support::job);
    uploader
        .register_files("acme", "stats", &files, Limits::default())
        .await
        .unwrap();
    assert_eq!(worker_sandbox.cached_handlers(), 0);

    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let tasks: Vec<Task> = (0..12)
        .map(|i| {
            client
                .task("stats")
                .tenant("acme")
                .arg("text", &format!("word{} word", i % 3))
                .unwrap()
                .build()
        })
        .collect();
    client.enqueue_many(tasks.clone()).await.unwrap();
    let worker = RunningWorker::start(broker, worker_registry, support::worker_config(4));
    for task in &tasks {
        let done = support::wait(&client, task, 60).await;
        assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
        assert_eq!(done.args_map["total"], 2);
    }
    worker.stop().await;
    // Three modules, each fetched and compiled once for twelve tasks.
    assert_eq!(worker_sandbox.cached_handlers(), 3);
}

/// Counts, per tenant, the tasks running the middle handler of a
/// three-handler chain: from the checkpoint after handler 0 to the one after
/// handler 1. That phase lies inside the time the worker holds the task's
/// tenant slot, and a task handed back over its tenant's cap never reaches
/// it, so the count is a lower bound of slots in use that only real runs
/// raise.
#[derive(Default)]
struct Counts {
    running: HashMap<TaskId, String>,
    now: HashMap<String, usize>,
    peak: HashMap<String, usize>,
}

impl Counts {
    fn saw(&mut self, lease: &Lease, cp: &Checkpoint) {
        match cp.current_handler_index {
            // Handler 0 done: the task is running its middle handler.
            1 if self
                .running
                .insert(lease.task_id, lease.tenant.clone())
                .is_none() =>
            {
                let now = {
                    let n = self.now.entry(lease.tenant.clone()).or_default();
                    *n += 1;
                    *n
                };
                let peak = self.peak.entry(lease.tenant.clone()).or_default();
                *peak = (*peak).max(now);
            }
            // The middle handler done.
            2 => {
                if let Some(tenant) = self.running.remove(&lease.task_id)
                    && let Some(n) = self.now.get_mut(&tenant)
                {
                    *n -= 1;
                }
            }
            _ => {}
        }
    }
}

/// Tenant `capped` (cap 2) and tenant `free` share a worker of 8 slots.
async fn concurrency_cap<B: Broker + Clone>(inner: B, catalog: Arc<dyn Catalog>) {
    for (name, cap) in [("capped", 2), ("free", 64)] {
        api_support::tenant(
            &catalog,
            name,
            TenantLimits {
                max_concurrency: cap,
                ..TenantLimits::default()
            },
        )
        .await;
    }
    let registry = Registry::with_catalog(support::sandbox(), catalog);
    for tenant in ["capped", "free"] {
        registry
            .register_files(
                tenant,
                "nap",
                &[
                    support::job("noop"),
                    support::job("sleep"),
                    support::job("noop"),
                ],
                Limits::default(),
            )
            .await
            .unwrap();
    }
    let counts = Arc::new(Mutex::new(Counts::default()));
    let seen = counts.clone();
    let broker = UpdateSpy {
        inner,
        on_update: Arc::new(move |lease, cp| seen.lock().unwrap().saw(lease, cp)),
    };
    let client = Client::new(broker.clone());
    let mut tasks = Vec::new();
    for i in 0..24 {
        let tenant = if i % 2 == 0 { "capped" } else { "free" };
        tasks.push(
            client
                .task("nap")
                .tenant(tenant)
                .arg("ms", &40)
                .unwrap()
                .build(),
        );
    }
    client.enqueue_many(tasks.clone()).await.unwrap();
    let worker = RunningWorker::start(broker.clone(), registry, support::worker_config(8));
    for task in &tasks {
        let done = support::wait(&client, task, 60).await;
        assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
        // A task handed back over the cap did not use up an attempt.
        assert_eq!(done.attempt, 1);
    }
    worker.stop().await;
    let counts = counts.lock().unwrap();
    let capped = counts.peak.get("capped").copied().unwrap_or(0);
    assert!(
        (1..=2).contains(&capped),
        "tenant `capped` ran {capped} tasks at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_runs_more_than_its_concurrency_cap_on_a_worker() {
    let _limit = crate::limit::minutes(5);
    concurrency_cap(EmbeddedBroker::new(), Store::Memory.catalog().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_runs_more_than_its_concurrency_cap_on_a_redis_worker() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let catalog: Arc<dyn Catalog> = Arc::new(RedisCatalog::connect(&redis.url()).await.unwrap());
    concurrency_cap(broker, catalog).await;
}

/// `n` tasks of job `nap` (one `sleep` handler) for `tenant`, each sleeping
/// `ms` milliseconds.
fn naps<B: Broker>(client: &Client<B>, tenant: &str, n: usize, ms: u64) -> Vec<Task> {
    (0..n)
        .map(|_| {
            client
                .task("nap")
                .tenant(tenant)
                .arg("ms", &ms)
                .expect("a number serializes")
                .build()
        })
        .collect()
}

/// One tenant with a cap of 2 on a worker of 8 slots that would wait five
/// minutes for new work: every slot the tenant frees must end that wait
/// (`Broker::interrupt`), so its queue drains in well under the wait. Only
/// the first batch, taken before the worker knew the cap, is handed back.
async fn a_capped_tenant_drains_without_waiting<B: Broker + Clone>(
    broker: B,
    catalog: Arc<dyn Catalog>,
) {
    api_support::tenant(
        &catalog,
        "capped",
        TenantLimits {
            max_concurrency: 2,
            ..TenantLimits::default()
        },
    )
    .await;
    let registry = Registry::with_catalog(support::sandbox(), catalog);
    registry
        .register_files("capped", "nap", &[support::job("sleep")], Limits::default())
        .await
        .unwrap();
    let client = Client::new(broker.clone());
    let tasks: Vec<Task> = naps(&client, "capped", 20, 5);
    client.enqueue_many(tasks.clone()).await.unwrap();
    let config = WorkerConfig {
        block_for: Duration::from_secs(300),
        ..support::worker_config(8)
    };
    let worker = RunningWorker::start(broker, registry, config);
    for task in &tasks {
        let done = support::wait(&client, task, 60).await;
        assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
        assert_eq!(done.attempt, 1);
    }
    let released = worker.stats.released.load(Ordering::Relaxed);
    assert!(
        released <= 6,
        "{released} tasks were handed back; only the first batch (6 over the cap) may be"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_tenant_drains_without_waiting_on_the_embedded_broker() {
    let _limit = crate::limit::minutes(5);
    a_capped_tenant_drains_without_waiting(EmbeddedBroker::new(), Store::Memory.catalog().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_tenant_drains_without_waiting_on_the_redis_broker() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let catalog: Arc<dyn Catalog> = Arc::new(RedisCatalog::connect(&redis.url()).await.unwrap());
    a_capped_tenant_drains_without_waiting(broker, catalog).await;
}

/// A tenant at its cap of 1 runs a 30 s task (its deadline is 60 s, so it
/// is never cut short and retried); its cap is then raised to 4. The worker
/// reads the new cap although the tenant had no task leased meanwhile, so
/// the three short tasks queued behind the long one finish while it still
/// runs its first attempt. Without the refresh they would wait the 30 s and
/// the long task would be over by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_cap_takes_effect_while_the_tenant_is_at_its_cap() {
    let _limit = crate::limit::minutes(5);
    let catalog = Store::Memory.catalog().await;
    api_support::tenant(
        &catalog,
        "capped",
        TenantLimits {
            max_concurrency: 1,
            ..TenantLimits::default()
        },
    )
    .await;
    let registry = Registry::with_catalog(support::sandbox(), catalog.clone());
    let limits = Limits {
        timeout_ms: 60_000,
        ..Limits::default()
    };
    registry
        .register_files("capped", "nap", &[support::job("sleep")], limits)
        .await
        .unwrap();
    let broker = EmbeddedBroker::new();
    let client = Client::new(broker.clone());
    let long = naps(&client, "capped", 1, 30_000).remove(0);
    client.enqueue(long.clone()).await.unwrap();
    let worker = RunningWorker::start(broker.clone(), registry, support::worker_config(8));
    // The long task runs; the tenant is at its cap.
    let started = std::time::Instant::now();
    while broker
        .task("capped", long.task_id)
        .await
        .unwrap()
        .map(|t| t.state)
        != Some(TaskState::Active)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the long task never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let short = naps(&client, "capped", 3, 10);
    client.enqueue_many(short.clone()).await.unwrap();
    let raised = TenantLimits {
        max_concurrency: 4,
        ..TenantLimits::default()
    };
    catalog.set_limits("capped", &raised).await.unwrap();
    for task in &short {
        let done = support::wait(&client, task, 60).await;
        assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
    }
    let long_now = broker.task("capped", long.task_id).await.unwrap().unwrap();
    assert_eq!(
        (long_now.state, long_now.attempt),
        (TaskState::Active, 1),
        "the short tasks waited for the long one: the raised cap was not read"
    );
    worker.stop().await;
}

/// Tenant `flood` enqueues 10,000 tasks, then tenant `small` 10: the small
/// tenant's tasks all complete while most of the flood still waits.
async fn fair_share<B: Broker + Clone>(broker: B, registry: Registry) {
    for tenant in ["flood", "small"] {
        registry
            .register_files(tenant, "nap", &[support::job("sleep")], Limits::default())
            .await
            .unwrap();
    }
    let client = Client::new(broker.clone());
    let flood: Vec<Task> = naps(&client, "flood", 10_000, 20);
    for chunk in flood.chunks(1000) {
        client.enqueue_many(chunk.to_vec()).await.unwrap();
    }
    let small: Vec<Task> = naps(&client, "small", 10, 20);
    client.enqueue_many(small.clone()).await.unwrap();

    let worker = RunningWorker::start(broker.clone(), registry, support::worker_config(4));
    for task in &small {
        let done = support::wait(&client, task, 60).await;
        assert_eq!(done.state, TaskState::Completed, "{:?}", done.error);
    }
    let flood_stats = broker.tenant_stats("flood").await.unwrap();
    worker.stop().await;
    // Served first-come-first-served, the small tenant would have waited for
    // all 10,000 (50 s at 4 × 20 ms); shared fairly, it waited for about as
    // many flood tasks as it has.
    assert!(
        flood_stats.pending >= 9_000,
        "the flood was mostly served first: {flood_stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_starve_another_on_the_embedded_broker() {
    let _limit = crate::limit::minutes(5);
    let catalog = Store::Memory.catalog().await;
    for tenant in ["flood", "small"] {
        api_support::tenant(&catalog, tenant, TenantLimits::default()).await;
    }
    let registry = Registry::with_catalog(support::sandbox(), catalog);
    fair_share(EmbeddedBroker::new(), registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_starve_another_on_the_redis_broker() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let catalog: Arc<dyn Catalog> = Arc::new(RedisCatalog::connect(&redis.url()).await.unwrap());
    for tenant in ["flood", "small"] {
        api_support::tenant(&catalog, tenant, TenantLimits::default()).await;
    }
    let registry = Registry::with_catalog(support::sandbox(), catalog);
    fair_share(broker, registry).await;
}

/// `tenant_room`, `tenant_stats` and `list_tasks` as every broker keeps
/// them.
async fn broker_tenant_calls<B: Broker + Clone>(broker: B) {
    let client = Client::new(broker.clone());
    let mut tasks = Vec::new();
    for (tenant, queue) in [("a", "q1"), ("a", "q2"), ("b", "q1"), ("a", "q1")] {
        tasks.push(client.task("j").tenant(tenant).queue(queue).build());
    }
    let delayed = client
        .task("j")
        .tenant("a")
        .queue("q2")
        .delay(Duration::from_secs(3600))
        .build();
    tasks.push(delayed.clone());
    client.enqueue_many(tasks.clone()).await.unwrap();

    let a = broker.tenant_stats("a").await.unwrap();
    assert_eq!((a.pending, a.scheduled), (3, 1));
    let b = broker.tenant_stats("b").await.unwrap();
    assert_eq!((b.pending, b.scheduled), (1, 0));
    assert_eq!(
        broker.tenant_stats("nobody").await.unwrap(),
        QueueStats::default()
    );

    let all = broker.list_tasks("a", &TaskQuery::default()).await.unwrap();
    let mut want: Vec<TaskId> = tasks
        .iter()
        .filter(|t| t.tenant == "a")
        .map(|t| t.task_id)
        .collect();
    want.sort_by(|x, y| y.cmp(x));
    assert_eq!(all.iter().map(|t| t.task_id).collect::<Vec<_>>(), want);
    let scheduled = broker
        .list_tasks(
            "a",
            &TaskQuery {
                state: Some(TaskState::Scheduled),
                ..TaskQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].task_id, delayed.task_id);
    let q1 = broker
        .list_tasks(
            "a",
            &TaskQuery {
                queue: Some("q1".into()),
                limit: 1,
                ..TaskQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(q1.len(), 1);
    assert_eq!(q1[0].task_id, tasks[3].task_id);

    // A worker at tenant a's cap is served only b's task.
    let req = AcquireRequest {
        queues: vec!["q1".into(), "q2".into()],
        worker: "w".into(),
        max: 10,
        lease_for: Duration::from_secs(30),
        block_for: Duration::ZERO,
        tenant_room: [("a".to_owned(), 0)].into_iter().collect(),
        tenant_caps: Default::default(),
        tenant_rates: Default::default(),
    };
    let got = broker.acquire(&req).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].task.tenant, "b");
    let active = broker
        .list_tasks(
            "b",
            &TaskQuery {
                state: Some(TaskState::Active),
                ..TaskQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(active.len(), 1);
    let got = broker
        .acquire(&AcquireRequest {
            tenant_room: Default::default(),
            tenant_caps: Default::default(),
            tenant_rates: Default::default(),
            ..req
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|l| l.task.tenant == "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_serves_tenant_calls() {
    let _limit = crate::limit::minutes(5);
    broker_tenant_calls(EmbeddedBroker::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_broker_serves_tenant_calls() {
    let _limit = crate::limit::minutes(5);
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    broker_tenant_calls(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_catalog_keeps_the_contract_on_a_cluster() {
    let _limit = crate::limit::minutes(5);
    // The version script names two keys of a tenant; on a cluster it runs
    // only if the tenant's hash tag puts them in one slot.
    let urls = tokio::task::spawn_blocking(|| crate::support::redis::cluster().urls())
        .await
        .expect("cluster start");
    let prefix = crate::support::redis::unique_prefix("catalog");
    let catalog = RedisCatalog::connect_nodes(&urls, true, &prefix)
        .await
        .expect("connect the catalog to the cluster");
    catalog_contract(Arc::new(catalog)).await;
}
