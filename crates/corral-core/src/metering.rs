//! What running a task cost: fuel, linear memory and time, per handler call
//! and in total over every attempt.
//!
//! The sandbox measures one call ([`CallMetering`]); the worker adds it to
//! the task ([`TaskMetering::record`]) and stores it with the task's
//! checkpoint, so a task resumed on another worker keeps what it has cost
//! so far. The broker adds each stored call to its tenant's [`Usage`] of
//! the day, in the same atomic step as it stores the progress. Only workers write metering: a task enqueued with metering of its
//! own is refused ([`crate::task::Task::validate`]). This module does
//! arithmetic and nothing else; it never measures.

use serde::{Deserialize, Serialize};

/// One handler call, as the sandbox metered it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallMetering {
    /// Fuel consumed (about one unit per wasm instruction).
    pub fuel: u64,
    /// The most linear memory the instance held, in bytes, all memories
    /// together.
    pub peak_memory_bytes: u64,
    /// Wall-clock time of the whole call, instantiation included, in µs.
    pub wall_us: u64,
    /// Of which instantiating the component took, in µs.
    pub instantiate_us: u64,
}

/// A handler's latest call within a task, with the attempt it ran in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerMetering {
    /// The handler's position in the chain.
    pub handler_index: u32,
    /// The attempt of that call.
    pub attempt: u32,
    /// What the call cost.
    #[serde(flatten)]
    pub cost: CallMetering,
}

/// Sums over every handler call of a task, retries and resumed attempts
/// included: what the task cost its tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteringTotal {
    /// Handler calls metered.
    pub calls: u64,
    /// Fuel consumed by all of them.
    pub fuel: u64,
    /// The largest peak of any one call, in bytes.
    pub peak_memory_bytes: u64,
    /// Wall-clock time of all of them, in µs.
    pub wall_us: u64,
    /// Of which instantiating, in µs.
    pub instantiate_us: u64,
}

impl MeteringTotal {
    /// Adds one call. Sums saturate instead of wrapping.
    pub fn add(&mut self, cost: &CallMetering) {
        self.calls = self.calls.saturating_add(1);
        self.fuel = self.fuel.saturating_add(cost.fuel);
        self.peak_memory_bytes = self.peak_memory_bytes.max(cost.peak_memory_bytes);
        self.wall_us = self.wall_us.saturating_add(cost.wall_us);
        self.instantiate_us = self.instantiate_us.saturating_add(cost.instantiate_us);
    }

    /// Whether no call is counted.
    pub fn is_empty(&self) -> bool {
        self.calls == 0
    }
}

/// A task's metering: each handler's latest call, and the total of all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMetering {
    /// The latest call of each handler that has run, in chain order (one
    /// entry per handler, however many attempts it took).
    pub handlers: Vec<HandlerMetering>,
    /// Every call, summed.
    pub total: MeteringTotal,
    /// The calls recorded since the task's progress was last stored: the
    /// broker adds them to the tenant's [`Usage`] in the same atomic step
    /// as it stores the progress that includes them, so each call is
    /// billed once, and only by the worker that holds the lease. Never
    /// stored (a stored checkpoint has been billed).
    #[serde(skip)]
    pub unbilled: MeteringTotal,
}

impl TaskMetering {
    /// Whether nothing was metered yet.
    pub fn is_empty(&self) -> bool {
        self.total.calls == 0 && self.handlers.is_empty()
    }

    /// Adds the call of handler `handler_index` in `attempt`: it replaces
    /// that handler's latest call and is added to the total. Sums saturate
    /// instead of wrapping.
    pub fn record(&mut self, handler_index: u32, attempt: u32, cost: CallMetering) {
        let entry = HandlerMetering {
            handler_index,
            attempt,
            cost,
        };
        match self
            .handlers
            .binary_search_by_key(&handler_index, |h| h.handler_index)
        {
            Ok(i) => self.handlers[i] = entry,
            Err(i) => self.handlers.insert(i, entry),
        }
        self.total.add(&cost);
        self.unbilled.add(&cost);
    }

    /// Marks the recorded calls billed: their progress is stored.
    pub fn billed(&mut self) {
        self.unbilled = MeteringTotal::default();
    }
}

/// What one tenant's tasks cost on one day (UTC): the usage counters the
/// broker keeps for quotas and billing. Handler calls are counted when the
/// progress that includes them is stored; tasks when they finish or are
/// sent back for a retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Handler calls metered.
    pub calls: u64,
    /// Fuel they consumed.
    pub fuel: u64,
    /// Their wall-clock time, in µs.
    pub wall_us: u64,
    /// Of which instantiating, in µs.
    pub instantiate_us: u64,
    /// The largest peak linear memory of any one call, in bytes.
    pub peak_memory_bytes: u64,
    /// Tasks completed.
    pub completed: u64,
    /// Failed attempts sent back for a retry.
    pub retried: u64,
    /// Tasks that died.
    pub dead: u64,
}

impl Usage {
    /// Adds `calls` (unbilled metering of a task).
    pub fn add_calls(&mut self, calls: &MeteringTotal) {
        self.calls = self.calls.saturating_add(calls.calls);
        self.fuel = self.fuel.saturating_add(calls.fuel);
        self.wall_us = self.wall_us.saturating_add(calls.wall_us);
        self.instantiate_us = self.instantiate_us.saturating_add(calls.instantiate_us);
        self.peak_memory_bytes = self.peak_memory_bytes.max(calls.peak_memory_bytes);
    }

    /// Adds another day's or tenant's counters.
    pub fn merge(&mut self, other: &Usage) {
        self.calls = self.calls.saturating_add(other.calls);
        self.fuel = self.fuel.saturating_add(other.fuel);
        self.wall_us = self.wall_us.saturating_add(other.wall_us);
        self.instantiate_us = self.instantiate_us.saturating_add(other.instantiate_us);
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
        self.completed = self.completed.saturating_add(other.completed);
        self.retried = self.retried.saturating_add(other.retried);
        self.dead = self.dead.saturating_add(other.dead);
    }
}

/// One tenant's [`Usage`] on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyUsage {
    /// The day, UTC.
    pub day: chrono::NaiveDate,
    /// What the tenant's tasks cost that day.
    #[serde(flatten)]
    pub usage: Usage,
}

/// Most days one usage query may span: counters are kept this long.
pub const USAGE_KEPT_DAYS: u32 = 400;

/// Days a usage query covers when it names no first day: the last 30,
/// `until` included.
pub const USAGE_DEFAULT_DAYS: u64 = 30;

/// The first day of a usage query ending `until` that names none.
pub fn usage_default_since(until: chrono::NaiveDate) -> chrono::NaiveDate {
    until
        .checked_sub_days(chrono::Days::new(USAGE_DEFAULT_DAYS - 1))
        .unwrap_or(chrono::NaiveDate::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(fuel: u64, memory: u64) -> CallMetering {
        CallMetering {
            fuel,
            peak_memory_bytes: memory,
            wall_us: 10,
            instantiate_us: 2,
        }
    }

    #[test]
    fn a_retried_handler_keeps_its_latest_call_and_the_total_counts_both() {
        let mut m = TaskMetering::default();
        assert!(m.is_empty());
        m.record(1, 1, cost(100, 1 << 20));
        m.record(0, 1, cost(50, 2 << 20));
        m.record(1, 2, cost(70, 1 << 16));
        assert_eq!(
            m.handlers
                .iter()
                .map(|h| (h.handler_index, h.attempt))
                .collect::<Vec<_>>(),
            [(0, 1), (1, 2)]
        );
        assert_eq!(m.handlers[1].cost.fuel, 70);
        assert_eq!(
            m.total,
            MeteringTotal {
                calls: 3,
                fuel: 220,
                peak_memory_bytes: 2 << 20,
                wall_us: 30,
                instantiate_us: 6,
            }
        );
        assert_eq!(m.unbilled, m.total);
        m.billed();
        m.record(0, 3, cost(u64::MAX, 0));
        assert_eq!(m.total.fuel, u64::MAX);
        assert_eq!((m.unbilled.calls, m.unbilled.fuel), (1, u64::MAX));
    }

    #[test]
    fn its_json_is_flat_per_handler() {
        let mut m = TaskMetering::default();
        m.record(0, 1, cost(5, 64));
        assert_eq!(m.unbilled.fuel, 5);
        m.billed();
        let json = serde_json::to_value(&m).expect("serialize");
        assert_eq!(json["handlers"][0]["fuel"], 5);
        assert_eq!(json["handlers"][0]["handler_index"], 0);
        assert_eq!(json["total"]["calls"], 1);
        let back: TaskMetering = serde_json::from_value(json).expect("parse");
        assert_eq!(back, m);
    }
}
