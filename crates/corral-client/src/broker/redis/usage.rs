//! [`Broker::usage`](crate::broker::Broker::usage) on Redis: reading a
//! tenant's usage counters back, a day at a time.
//!
//! The counters themselves are written by `lua/update.lua` and
//! `lua/ack.lua` (the `bill` helper of `lua/common.lua`), in the same step
//! as the progress they bill; one hash per tenant and day
//! ([`TenantKeys::usage`](super::keys::TenantKeys::usage)), in the
//! tenant's slot. Reading costs one `HGETALL` per day asked (at most
//! [`USAGE_KEPT_DAYS`]), sent as one pipeline, whatever the tenant has
//! run. Read-only.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use chrono::NaiveDate;

use super::RedisBroker;
use super::conn::{reachable, unavailable};
use super::keys::TenantKeys;
use crate::broker::{BrokerError, check_usage_days};
use corral_core::metering::{DailyUsage, USAGE_KEPT_DAYS, Usage};

impl RedisBroker {
    /// `tenant`'s usage on each day of `days` that had any.
    pub(super) async fn daily_usage(
        &self,
        tenant: &str,
        days: RangeInclusive<NaiveDate>,
    ) -> Result<Vec<DailyUsage>, BrokerError> {
        const OP: &str = "usage";
        check_usage_days(&days)?;
        let keys = TenantKeys::new(&self.inner.config.prefix, tenant);
        let dates: Vec<NaiveDate> = days
            .start()
            .iter_days()
            .take_while(|d| d <= days.end())
            .take(USAGE_KEPT_DAYS as usize)
            .collect();
        let mut pipe = redis::pipe();
        for day in &dates {
            pipe.hgetall(keys.usage(*day));
        }
        let hashes: Vec<HashMap<String, String>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| unavailable(OP, e))?;
        reachable();
        let mut out = Vec::new();
        for (day, fields) in dates.into_iter().zip(hashes) {
            if fields.is_empty() {
                continue;
            }
            let usage = parse_usage(&fields).map_err(|reason| BrokerError::Corrupt {
                op: OP,
                reason: format!("usage of tenant `{tenant}` on {day}: {reason}"),
            })?;
            out.push(DailyUsage { day, usage });
        }
        Ok(out)
    }
}

/// The counters of one usage hash; fields it does not know are ignored
/// (a newer version may count more).
fn parse_usage(fields: &HashMap<String, String>) -> Result<Usage, String> {
    let get = |name: &str| -> Result<u64, String> {
        match fields.get(name) {
            None => Ok(0),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| format!("`{name}` is `{v}`, not a count")),
        }
    };
    Ok(Usage {
        calls: get("calls")?,
        fuel: get("fuel")?,
        wall_us: get("wall_us")?,
        instantiate_us: get("instantiate_us")?,
        peak_memory_bytes: get("peak_memory_bytes")?,
        completed: get("completed")?,
        retried: get("retried")?,
        dead: get("dead")?,
    })
}
