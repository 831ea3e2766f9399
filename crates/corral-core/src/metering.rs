//! What running a task cost: fuel, linear memory and time, per handler call
//! and in total over every attempt.
//!
//! The sandbox measures one call ([`CallMetering`]); the worker adds it to
//! the task ([`TaskMetering::record`]) and stores it with the task's
//! checkpoint, so a task resumed on another worker keeps what it has cost
//! so far. Only workers write metering: a task enqueued with metering of its
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

/// A task's metering: each handler's latest call, and the total of all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMetering {
    /// The latest call of each handler that has run, in chain order (one
    /// entry per handler, however many attempts it took).
    pub handlers: Vec<HandlerMetering>,
    /// Every call, summed.
    pub total: MeteringTotal,
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
        let t = &mut self.total;
        t.calls = t.calls.saturating_add(1);
        t.fuel = t.fuel.saturating_add(cost.fuel);
        t.peak_memory_bytes = t.peak_memory_bytes.max(cost.peak_memory_bytes);
        t.wall_us = t.wall_us.saturating_add(cost.wall_us);
        t.instantiate_us = t.instantiate_us.saturating_add(cost.instantiate_us);
    }
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
        m.record(0, 3, cost(u64::MAX, 0));
        assert_eq!(m.total.fuel, u64::MAX);
    }

    #[test]
    fn its_json_is_flat_per_handler() {
        let mut m = TaskMetering::default();
        m.record(0, 1, cost(5, 64));
        let json = serde_json::to_value(&m).expect("serialize");
        assert_eq!(json["handlers"][0]["fuel"], 5);
        assert_eq!(json["handlers"][0]["handler_index"], 0);
        assert_eq!(json["total"]["calls"], 1);
        let back: TaskMetering = serde_json::from_value(json).expect("parse");
        assert_eq!(back, m);
    }
}
