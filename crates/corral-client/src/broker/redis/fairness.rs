//! Sharing one acquire between tenants, and knowing which tenants have the
//! queues a worker serves.
//!
//! A worker asking for `max` tasks splits `max` between the tenants that
//! have its queues, starting at the next tenant in turn on every call, and
//! gives what one tenant could not use to the others; so one tenant's flood
//! cannot starve another. Within a tenant, queues are served in the order
//! asked. Tenants at their concurrency cap on the asking worker are left
//! out. Which tenants have which of the asked queue names is cached for
//! [`INDEX_TTL`] and learned early from wake tokens.
//!
//! Nothing here talks to a script: each take is [`acquire`](super::acquire)'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::conn::unavailable;
use super::{RedisBroker, keys, lock};
use crate::broker::{AcquireRequest, BrokerError, Leased};
use corral_core::task::DEFAULT_TENANT;

/// How long a worker trusts its cached list of tenants serving its queues.
const INDEX_TTL: Duration = Duration::from_secs(2);

/// Which tenants have which of the queue names a worker asks for: what
/// `acquire` serves, refreshed every [`INDEX_TTL`].
#[derive(Default)]
pub(super) struct ServedCache {
    /// The queue names the entry answers for, sorted (a weighted worker
    /// asks for the same names in a new order every time).
    pub asked: Vec<String>,
    /// Each tenant with those of the names it has.
    pub by_tenant: BTreeMap<String, BTreeSet<String>>,
    pub fetched: Option<Instant>,
}

/// What one take from a queue learned besides its tasks.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Hints {
    /// Some queue that filled its share still has entries.
    pub more: bool,
    /// The earliest due delayed task seen (µs), when nothing was taken.
    pub next_due_us: Option<i64>,
}

impl Hints {
    fn merge(&mut self, other: Hints) {
        self.more |= other.more;
        self.next_due_us = match (self.next_due_us, other.next_due_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

impl RedisBroker {
    /// One fair round of takes across tenants.
    pub(super) async fn take(
        &self,
        req: &AcquireRequest,
    ) -> Result<(Vec<Leased>, Hints), BrokerError> {
        let mut tenants = self.tenants_for(&req.queues).await?;
        // Tenants at their concurrency cap on the asking worker wait.
        tenants.retain(|(tenant, _)| req.room_for(tenant) > 0);
        let n = tenants.len();
        let mut out = Vec::new();
        let mut hints = Hints::default();
        if n == 0 {
            return Ok((out, hints));
        }
        let start = self.inner.next_tenant.load(Ordering::Relaxed) % n;
        let order: Vec<&(String, Vec<String>)> =
            tenants[start..].iter().chain(&tenants[..start]).collect();
        // How many more of each tenant's tasks this call may take.
        let mut room: Vec<usize> = order.iter().map(|(t, _)| req.room_for(t)).collect();
        // Positions in `order` of tenants that may still have tasks; a tenant
        // leaves once it gave fewer than it was offered, or used its room.
        let mut open: Vec<usize> = (0..n).collect();
        let mut remaining = req.max;
        let mut first_error = None;
        let mut last_served = None;
        for _round in 0..n + 2 {
            if remaining == 0 || open.is_empty() {
                break;
            }
            let k = open.len();
            let offers: Vec<(usize, usize)> = open
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    let share = remaining / k + usize::from(i < remaining % k);
                    (t, share.min(room[t]))
                })
                .collect();
            let results = join_all(
                offers
                    .iter()
                    .filter(|(_, share)| *share > 0)
                    .map(|&(t, share)| self.take_tenant(order[t], share, req)),
            )
            .await;
            let mut results = results.into_iter();
            // Tenants offered nothing this round come first in the next one,
            // then those that used their whole share.
            let mut skipped = Vec::new();
            let mut filled = Vec::new();
            for &(t, share) in &offers {
                if share == 0 {
                    if room[t] > 0 {
                        skipped.push(t);
                    }
                    continue;
                }
                match results.next() {
                    Some(Ok((leased, h))) => {
                        room[t] -= leased.len().min(room[t]);
                        if leased.len() == share && room[t] > 0 {
                            filled.push(t);
                        }
                        if !leased.is_empty() {
                            last_served = last_served.max(Some(t));
                        }
                        remaining -= leased.len().min(remaining);
                        hints.merge(h);
                        out.extend(leased);
                    }
                    Some(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    None => {}
                }
            }
            skipped.extend(filled);
            open = skipped;
        }
        // The next call starts after the last tenant served, as the embedded
        // broker's round robin does.
        let next = match last_served {
            Some(pos) => (start + pos + 1) % n,
            None => (start + 1) % n,
        };
        self.inner.next_tenant.store(next, Ordering::Relaxed);
        match first_error {
            // Tasks already leased are returned; the error shows up on the
            // next call if it persists.
            Some(e) if out.is_empty() => Err(e),
            _ => Ok((out, hints)),
        }
    }

    async fn take_tenant(
        &self,
        (tenant, queues): &(String, Vec<String>),
        share: usize,
        req: &AcquireRequest,
    ) -> Result<(Vec<Leased>, Hints), BrokerError> {
        let mut out = Vec::new();
        let mut hints = Hints::default();
        for queue in queues {
            let want = share - out.len();
            if want == 0 {
                break;
            }
            let (leased, h) = self.take_queue(tenant, queue, want, req).await?;
            hints.merge(Hints {
                more: h.more && leased.len() == want,
                ..h
            });
            out.extend(leased);
        }
        Ok((out, hints))
    }

    /// The tenants serving any of `queues`, each with those of its queues
    /// that exist, in the order asked. The default tenant always serves
    /// every queue asked for, so raw pushes into a new queue are found.
    /// Refreshing costs one command per tenant (a membership test of the
    /// names asked), whatever the number of queues tenants have.
    pub(super) async fn tenants_for(
        &self,
        queues: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, BrokerError> {
        let mut asked = queues.to_vec();
        asked.sort_unstable();
        let cached = {
            let served = lock(&self.inner.served);
            (served.asked == asked && served.fetched.is_some_and(|at| at.elapsed() < INDEX_TTL))
                .then(|| served.by_tenant.clone())
        };
        let by_tenant = match cached {
            Some(by_tenant) => by_tenant,
            None => {
                let tenants = self.tenants("acquire").await?;
                let others: Vec<&String> =
                    tenants.iter().filter(|t| *t != DEFAULT_TENANT).collect();
                let found = join_all(others.iter().map(|tenant| async move {
                    let keys = keys::TenantKeys::new(&self.inner.config.prefix, tenant);
                    let has: Vec<bool> = redis::cmd("SMISMEMBER")
                        .arg(&keys.queues)
                        .arg(queues)
                        .query_async(&mut self.conn())
                        .await
                        .map_err(|e| unavailable("acquire", e))?;
                    Ok::<_, BrokerError>(
                        queues
                            .iter()
                            .zip(has)
                            .filter(|(_, has)| *has)
                            .map(|(q, _)| q.clone())
                            .collect::<BTreeSet<String>>(),
                    )
                }))
                .await;
                let mut by_tenant = BTreeMap::new();
                by_tenant.insert(
                    DEFAULT_TENANT.to_owned(),
                    queues.iter().cloned().collect::<BTreeSet<String>>(),
                );
                for (tenant, has) in others.into_iter().zip(found) {
                    let has = has?;
                    if !has.is_empty() {
                        by_tenant.insert(tenant.clone(), has);
                    }
                }
                let mut served = lock(&self.inner.served);
                served.asked = asked;
                served.by_tenant = by_tenant.clone();
                served.fetched = Some(Instant::now());
                by_tenant
            }
        };
        Ok(by_tenant
            .into_iter()
            .map(|(tenant, has)| {
                // In the order asked: a worker lists its queues by priority.
                let mut seen = BTreeSet::new();
                let qs: Vec<String> = queues
                    .iter()
                    .filter(|q| has.contains(*q) && seen.insert(q.as_str()))
                    .cloned()
                    .collect();
                (tenant, qs)
            })
            .collect())
    }

    /// Adds a queue learned from a wake token to the cached list of what
    /// this worker serves, so new work is taken before the next refresh.
    pub(super) fn learn(&self, member: &str) {
        if let Some((tenant, queue)) = keys::parse_pair(member) {
            let mut served = lock(&self.inner.served);
            if served.asked.contains(&queue) {
                served.by_tenant.entry(tenant).or_default().insert(queue);
            }
        }
    }
}
