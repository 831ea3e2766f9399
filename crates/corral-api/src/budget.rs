//! The byte budget of request bodies in flight: what bounds the memory the
//! API holds for bodies, however many requests arrive at once.
//!
//! Every body the API reads ([`super::body`]) first reserves its bytes here:
//! its declared `Content-Length` (up to the route's cap) at once, or, without
//! one, in growing steps as chunks arrive. The reservation is held until the
//! request is done with the bytes (a module upload keeps it through
//! validation) and released when dropped. Two bounds hold at every instant,
//! checked and counted under one lock, so concurrent requests cannot
//! overshoot them:
//!
//! - all reservations together stay within [`BodyBudget::capacity`];
//! - one tenant's reservations stay within [`BodyBudget::per_tenant`], except
//!   that a tenant with nothing in flight may always reserve one body (up to
//!   the whole capacity), so a per-tenant share below a tenant's module cap
//!   slows its uploads down rather than refusing every one.
//!
//! A reservation that does not fit is refused at once (the API answers 503
//! with `Retry-After`); nothing waits here, so a flood cannot queue behind
//! the budget. This module only counts: it never reads bodies and never
//! decides caps.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Default of [`BodyBudget::capacity`]: 256 MiB.
pub const DEFAULT_CAPACITY: u64 = 256 << 20;
/// Default of [`BodyBudget::per_tenant`]: 64 MiB.
pub const DEFAULT_PER_TENANT: u64 = 64 << 20;

/// A shared budget of body bytes in flight. Clones share one budget: every
/// router built from one [`ApiConfig`](super::ApiConfig) draws on the same
/// bytes.
#[derive(Clone)]
pub struct BodyBudget {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: u64,
    per_tenant: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_use: u64,
    peak: u64,
    refused: u64,
    by_tenant: HashMap<String, u64>,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Bodies in flight already hold the whole budget.
    Full,
    /// This tenant already holds its share.
    TenantShare,
}

impl BodyBudget {
    /// A budget of `capacity` bytes, of which one tenant may hold at most
    /// `per_tenant` (but always one body).
    pub fn new(capacity: u64, per_tenant: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                capacity,
                per_tenant,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The most bytes all bodies in flight may hold together.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The most bytes one tenant's bodies may hold together (but always one).
    pub fn per_tenant(&self) -> u64 {
        self.inner.per_tenant
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.inner.lock().in_use
    }

    /// The most bytes ever reserved at once.
    pub fn peak(&self) -> u64 {
        self.inner.lock().peak
    }

    /// Reservations refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.lock().refused
    }

    /// Reserves `bytes` for a body of `tenant`, or says why not.
    pub fn reserve(&self, tenant: &str, bytes: u64) -> Result<Reservation, Refusal> {
        let mut reservation = Reservation {
            inner: self.inner.clone(),
            tenant: tenant.to_owned(),
            bytes: 0,
        };
        reservation.grow_to(bytes)?;
        Ok(reservation)
    }
}

impl Default for BodyBudget {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_PER_TENANT)
    }
}

impl fmt::Debug for BodyBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyBudget")
            .field("capacity", &self.inner.capacity)
            .field("per_tenant", &self.inner.per_tenant)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters updated in single statements; a panic
        // elsewhere cannot leave them half-written, so a poisoned lock is
        // still sound to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes held for one body; released when dropped.
pub struct Reservation {
    inner: Arc<Inner>,
    tenant: String,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the reservation to `total` bytes (no-op if it holds as much).
    pub fn grow_to(&mut self, total: u64) -> Result<(), Refusal> {
        let Some(more) = total.checked_sub(self.bytes).filter(|m| *m > 0) else {
            return Ok(());
        };
        let mut state = self.inner.lock();
        let tenant_now = state.by_tenant.get(&self.tenant).copied().unwrap_or(0);
        let refusal = if state.in_use.saturating_add(more) > self.inner.capacity {
            Some(Refusal::Full)
        } else if tenant_now > self.bytes && tenant_now.saturating_add(more) > self.inner.per_tenant
        {
            // The tenant holds more than this body: it has others in flight,
            // and together they would pass its share.
            Some(Refusal::TenantShare)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            state.refused += 1;
            return Err(refusal);
        }
        state.in_use += more;
        state.peak = state.peak.max(state.in_use);
        *state.by_tenant.entry(self.tenant.clone()).or_default() += more;
        self.bytes = total;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut state = self.inner.lock();
        state.in_use = state.in_use.saturating_sub(self.bytes);
        if let Some(held) = state.by_tenant.get_mut(&self.tenant) {
            *held = held.saturating_sub(self.bytes);
            if *held == 0 {
                state.by_tenant.remove(&self.tenant);
            }
        }
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("tenant", &self.tenant)
            .field("bytes", &self.bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_pass_the_capacity_or_a_tenants_share() {
        let budget = BodyBudget::new(100, 40);
        let a1 = budget.reserve("a", 30).unwrap();
        // A second body of `a` would pass its share of 40.
        assert_eq!(budget.reserve("a", 20).unwrap_err(), Refusal::TenantShare);
        let a2 = budget.reserve("a", 10).unwrap();
        // `b` has nothing in flight: one body may pass the share.
        let mut b1 = budget.reserve("b", 50).unwrap();
        assert_eq!(budget.in_use(), 90);
        assert_eq!(budget.reserve("c", 11).unwrap_err(), Refusal::Full);
        assert_eq!(b1.grow_to(61).unwrap_err(), Refusal::Full);
        b1.grow_to(60).unwrap();
        assert_eq!(budget.peak(), 100);
        drop((a1, a2));
        assert_eq!(budget.in_use(), 60);
        drop(b1);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.refused(), 3);
        assert_eq!(budget.peak(), 100);
    }

    #[test]
    fn concurrent_reservations_never_overshoot() {
        let budget = BodyBudget::new(1000, 1000);
        let held = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for t in 0..8 {
                let budget = budget.clone();
                let held = held.clone();
                s.spawn(move || {
                    for i in 0..200u64 {
                        if let Ok(r) = budget.reserve(&format!("t{t}"), 1 + (i * 7 + t) % 97) {
                            held.lock().unwrap().push(r);
                        }
                    }
                });
            }
        });
        let total: u64 = held.lock().unwrap().iter().map(Reservation::bytes).sum();
        assert_eq!(total, budget.in_use());
        assert!(budget.peak() <= 1000 && budget.in_use() <= 1000);
        held.lock().unwrap().clear();
        assert_eq!(budget.in_use(), 0);
    }
}
