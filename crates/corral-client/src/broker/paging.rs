//! Paging through a tenant's tasks with a cursor, over any [`Broker`].
//!
//! A page walks the tenant's queues in name order and, in each, the states
//! in [`TaskState::ALL`] order, taking from each with
//! [`Broker::tasks_in`] until the page is full. The cursor names where the
//! next page starts (queue, state, offset), so a page costs what it
//! returns plus one small read per queue and state it skips: never a walk
//! of the tenant's tasks. This module only composes broker calls; it holds
//! no state and knows no backend.

use super::{Broker, BrokerError, MAX_PAGE, PageQuery, TaskPage};
use corral_core::task::TaskState;

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    state: TaskState,
    offset: usize,
    queue: String,
}

impl Cursor {
    fn encode(&self) -> String {
        format!("{}:{}:{}", self.state, self.offset, self.queue)
    }

    fn parse(text: &str) -> Result<Self, BrokerError> {
        let bad = || BrokerError::Invalid {
            op: "list_page",
            reason: "the cursor is not one a page returned".into(),
        };
        let mut parts = text.splitn(3, ':');
        let state = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let offset = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let queue = parts.next().ok_or_else(bad)?.to_owned();
        Ok(Self {
            state,
            offset,
            queue,
        })
    }
}

/// [`Broker::list_page`] for every broker.
pub(super) async fn list_page<B: Broker + ?Sized>(
    broker: &B,
    tenant: &str,
    query: &PageQuery,
) -> Result<TaskPage, BrokerError> {
    if query.limit == 0 || query.limit > MAX_PAGE {
        return Err(BrokerError::Invalid {
            op: "list_page",
            reason: format!("a page holds 1 to {MAX_PAGE} tasks, not {}", query.limit),
        });
    }
    let queues = match &query.queue {
        Some(q) => vec![q.clone()],
        None => broker.queue_names(tenant).await?,
    };
    let states: Vec<TaskState> = match query.state {
        Some(s) => vec![s],
        None => TaskState::ALL.to_vec(),
    };
    let start = query.cursor.as_deref().map(Cursor::parse).transpose()?;
    // The first queue at or after the cursor's (it may have gone since).
    let (first_queue, mut first_state, mut offset) = match &start {
        Some(c) => {
            let q = queues.partition_point(|name| name < &c.queue);
            if queues.get(q) == Some(&c.queue) {
                let s = states.iter().position(|s| *s == c.state).unwrap_or(0);
                (q, s, c.offset)
            } else {
                (q, 0, 0)
            }
        }
        None => (0, 0, 0),
    };
    let mut tasks = Vec::new();
    // Each part is read in steps of bounded size; a page stops after this
    // many steps even if not full (its cursor goes on from there).
    let mut steps = 0;
    for (qi, queue) in queues.iter().enumerate().skip(first_queue) {
        for (si, state) in states.iter().enumerate().skip(first_state) {
            loop {
                let need = query.limit - tasks.len();
                let (got, next) = broker.tasks_in(tenant, queue, *state, offset, need).await?;
                tasks.extend(got);
                steps += 1;
                let Some(next) = next else {
                    break;
                };
                offset = next;
                if tasks.len() >= query.limit || steps >= MAX_STEPS {
                    let cursor = Cursor {
                        state: *state,
                        offset,
                        queue: queue.clone(),
                    };
                    return Ok(TaskPage {
                        tasks,
                        next: Some(cursor.encode()),
                    });
                }
            }
            offset = 0;
            if tasks.len() >= query.limit || steps >= MAX_STEPS {
                // This part is done: the next page starts after it.
                let next = if si + 1 < states.len() {
                    Some(Cursor {
                        state: states[si + 1],
                        offset: 0,
                        queue: queue.clone(),
                    })
                } else {
                    queues.get(qi + 1).map(|q| Cursor {
                        state: states[0],
                        offset: 0,
                        queue: q.clone(),
                    })
                };
                return Ok(TaskPage {
                    tasks,
                    next: next.map(|c| c.encode()),
                });
            }
        }
        first_state = 0;
    }
    Ok(TaskPage { tasks, next: None })
}

/// Most reads one page makes before it returns what it has.
const MAX_STEPS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor {
            state: TaskState::Dead,
            offset: 40,
            queue: "a:b".into(),
        };
        assert_eq!(Cursor::parse(&c.encode()).ok(), Some(c));
        for bad in ["", "dead", "dead:x:q", "zombie:1:q", "dead:-1:q"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
