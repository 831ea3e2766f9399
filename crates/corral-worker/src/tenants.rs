//! Per-tenant concurrency on one worker: no tenant runs more than its
//! `max_concurrency` tasks here at once; and the caps the worker passes on
//! so the broker holds each tenant to it over the whole fleet.
//!
//! The fleet-wide limit is the broker's: each acquire carries the caps this
//! worker knows ([`AcquireRequest::tenant_caps`]) and the broker leases a
//! tenant's task only while fewer than its cap are active on all workers
//! together. On this worker, enforcement has two more layers, so the limit
//! holds here whatever the broker does:
//!
//! 1. each acquire tells the broker how many more tasks of each known tenant
//!    the worker has room for ([`AcquireRequest::tenant_room`]); a tenant at
//!    its cap is skipped and its tasks stay queued for other workers or a
//!    later call;
//! 2. after the acquire, every leased task must take one of its tenant's
//!    slots ([`TenantSlots::try_start`]); a task whose tenant is full (a
//!    tenant this worker had not seen yet, so the broker had no room for
//!    it, or one whose cap was just lowered) is handed straight back with
//!    `Outcome::Release`, which does not count the attempt.
//!
//! A slot is held by a [`SlotGuard`] inside the task's runner, so a task that
//! finishes, fails or is aborted (lease lost, shutdown) always frees it. A
//! slot freed by a tenant that was at its cap signals [`TenantSlots::freed`],
//! which the fetch loop turns into an interrupt of its waiting acquire.
//! Tenant caps come from the registry (the catalog) and are cached for
//! [`CAP_TTL`], so a changed limit takes effect within seconds without a
//! store round trip per task.
//!
//! This module owns the counting only; it never talks to the broker.
//!
//! [`AcquireRequest::tenant_room`]: corral_client::broker::AcquireRequest::tenant_room
//! [`AcquireRequest::tenant_caps`]: corral_client::broker::AcquireRequest::tenant_caps

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use corral_client::broker::RateLimit;
use corral_registry::registry::Registry;
use corral_registry::tenant::TenantLimits;

/// How long a tenant's concurrency cap is reused before it is read again.
pub const CAP_TTL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    /// Tasks running per tenant.
    running: HashMap<String, u32>,
    /// Each tenant's cap, and when it was read.
    caps: HashMap<String, (u32, Instant)>,
    /// Each catalog tenant's rate limit (`None`: it has none), read with
    /// its cap.
    rates: HashMap<String, Option<RateLimit>>,
}

/// Counts the tasks each tenant runs on this worker.
#[derive(Clone, Default)]
pub(crate) struct TenantSlots {
    state: Arc<Mutex<State>>,
    /// Signalled when a tenant at its cap frees a slot.
    freed: Arc<Notify>,
}

/// One running task's slot; frees it when dropped.
pub(crate) struct SlotGuard {
    slots: TenantSlots,
    tenant: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut st = self.slots.lock();
        let cap = st.caps.get(&self.tenant).map(|(cap, _)| *cap);
        let mut was_full = false;
        if let Some(n) = st.running.get_mut(&self.tenant) {
            was_full = cap.is_some_and(|cap| *n >= cap);
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.running.remove(&self.tenant);
            }
        }
        drop(st);
        if was_full {
            // A permit is stored if nobody waits: the next capped acquire
            // then ends early once, which costs one empty call.
            self.slots.freed.notify_one();
        }
    }
}

impl TenantSlots {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Counters stay consistent under a poisoned lock: each update is one
        // map operation.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `tenant`'s concurrency cap, from the cache or the registry
    /// (`u32::MAX` for a tenant not in the catalog, which has none). When
    /// the registry cannot answer, the last known cap is kept (or the
    /// default limits apply): a catalog outage must not stop the worker.
    pub(crate) async fn cap(&self, registry: &Registry, tenant: &str) -> u32 {
        let cached = self.lock().caps.get(tenant).copied();
        if let Some((cap, at)) = cached
            && at.elapsed() < CAP_TTL
        {
            return cap;
        }
        let cap = match registry.catalog_limits(tenant).await {
            Ok(found) => {
                let mut st = self.lock();
                match &found {
                    Some(limits) => st.rates.insert(tenant.to_owned(), limits.rate_limit),
                    None => st.rates.remove(tenant),
                };
                found.map_or(u32::MAX, |limits| limits.max_concurrency)
            }
            Err(e) => {
                let fallback = cached
                    .map(|(cap, _)| cap)
                    .unwrap_or(TenantLimits::default().max_concurrency);
                tracing::warn!(tenant, error = %e, fallback, "cannot read the tenant's limits");
                fallback
            }
        };
        // A cap of 0 would park the tenant's tasks forever; treat it as 1.
        let cap = cap.max(1);
        self.lock()
            .caps
            .insert(tenant.to_owned(), (cap, Instant::now()));
        cap
    }

    /// Takes one of `tenant`'s slots if it has fewer than `cap` running.
    pub(crate) fn try_start(&self, tenant: &str, cap: u32) -> Option<SlotGuard> {
        let mut st = self.lock();
        let running = st.running.entry(tenant.to_owned()).or_default();
        if *running >= cap {
            return None;
        }
        *running += 1;
        Some(SlotGuard {
            slots: self.clone(),
            tenant: tenant.to_owned(),
        })
    }

    /// The room each tenant with a known cap has left on this worker: its
    /// cap minus the tasks it runs. The cap of a tenant with no room is read
    /// again once stale ([`CAP_TTL`]): such a tenant is not leased, so
    /// nothing else would refresh it, and a raised limit must take effect
    /// while its tasks still run.
    pub(crate) async fn room(&self, registry: &Registry) -> HashMap<String, usize> {
        let (mut room, stale) = self.cached_room();
        for tenant in stale {
            let cap = self.cap(registry, &tenant).await;
            let running = self.lock().running.get(&tenant).copied().unwrap_or(0);
            room.insert(tenant, cap.saturating_sub(running) as usize);
        }
        room
    }

    /// The caps read so far, of the tenants the catalog limits: what each
    /// acquire passes on for the fleet-wide limit.
    pub(crate) fn caps(&self) -> HashMap<String, u32> {
        self.lock()
            .caps
            .iter()
            .filter(|(_, (cap, _))| *cap != u32::MAX)
            .map(|(tenant, (cap, _))| (tenant.clone(), *cap))
            .collect()
    }

    /// The rate limits read so far, of the tenants in the catalog (`None`:
    /// the tenant has none): what each acquire passes on.
    pub(crate) fn rates(&self) -> HashMap<String, Option<RateLimit>> {
        self.lock().rates.clone()
    }

    /// [`room`](Self::room) from the cached caps, with the tenants that have
    /// no room and a stale cap.
    fn cached_room(&self) -> (HashMap<String, usize>, Vec<String>) {
        let st = self.lock();
        let mut stale = Vec::new();
        let room = st
            .caps
            .iter()
            .map(|(tenant, (cap, at))| {
                let left = cap.saturating_sub(st.running.get(tenant).copied().unwrap_or(0));
                if left == 0 && at.elapsed() >= CAP_TTL {
                    stale.push(tenant.clone());
                }
                (tenant.clone(), left as usize)
            })
            .collect();
        (room, stale)
    }

    /// Notified when a tenant that was at its cap frees a slot.
    pub(crate) fn freed(&self) -> &Notify {
        &self.freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;

    #[test]
    fn slots_cap_and_free_on_drop() {
        let slots = TenantSlots::default();
        slots.lock().caps.insert("a".into(), (2, Instant::now()));
        let one = slots.try_start("a", 2).expect("first slot");
        let two = slots.try_start("a", 2).expect("second slot");
        assert!(slots.try_start("a", 2).is_none());
        assert_eq!(slots.cached_room().0.get("a"), Some(&0));
        assert!(slots.try_start("b", 2).is_some());
        drop(one);
        assert_eq!(slots.cached_room().0.get("a"), Some(&1));
        assert!(
            slots.freed().notified().now_or_never().is_some(),
            "a full tenant freeing a slot signals it"
        );
        let three = slots.try_start("a", 2).expect("freed slot");
        drop((two, three));
        assert!(slots.lock().running.is_empty());
    }
}
