//! Schedules: a task enqueued on a timetable, by whichever workers are up.
//!
//! A [`Schedule`] names a job, its args and queue, and a [`Timing`]: a cron
//! expression in a time zone, or every N seconds. It is stored in the
//! broker with its next tick; every worker's maintenance pass asks the
//! broker to fire the ticks that are due, and the broker moves a tick on
//! and stores its task in one atomic step that first checks the tick is
//! still the stored one. So there is no scheduler process to keep alive,
//! and each tick is enqueued exactly once however many workers race for
//! it, and after any restart.
//!
//! A worker that was down (or a fleet that was) finds ticks in the past.
//! A tick is *missed* when it is more than [`GRACE`] late and a later tick
//! is due too; [`Missed`] says what happens to a run of missed ticks: they
//! are skipped, or run once. Ticks late by less than that (a slow pass, a
//! short restart) all run.
//!
//! This module only computes: it never talks to a broker.

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};

use corral_core::clock;
use corral_core::task::{ArgsMap, DEFAULT_QUEUE, Task};
use corral_core::text::valid_name;

/// How late a tick may run and still count as on time.
pub const GRACE: Duration = Duration::from_secs(60);

/// Shortest interval of an every-N-seconds schedule.
pub const MIN_EVERY_SECS: u64 = 1;

/// Most ticks one maintenance pass fires per schedule (the rest wait for
/// the next pass).
pub const MAX_FIRES_PER_PASS: usize = 100;

/// When a schedule's ticks fall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Timing {
    /// A cron expression (five fields, or six with seconds first), in a
    /// time zone (an IANA name; UTC when none).
    Cron {
        /// The expression, e.g. `*/5 * * * *`.
        expr: String,
        /// The zone its fields are read in, e.g. `Europe/Paris`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tz: Option<String>,
    },
    /// Every `secs` seconds, on multiples of `secs` since the Unix epoch
    /// (so every worker computes the same ticks).
    Every {
        /// The interval, at least [`MIN_EVERY_SECS`].
        secs: u64,
    },
}

/// What happens to a run of missed ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// They are dropped: the schedule goes on from the next tick on time.
    #[default]
    Skip,
    /// One task runs for all of them (stamped with the last one).
    Once,
}

/// A task enqueued on a timetable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Its name, unique within the tenant (the rule job names follow).
    pub name: String,
    /// The owning tenant: its tasks are the tenant's.
    pub tenant: String,
    /// When it fires.
    pub timing: Timing,
    /// What happens to missed ticks.
    #[serde(default)]
    pub missed: Missed,
    /// The job each tick runs.
    pub job: String,
    /// The args each task starts with.
    #[serde(default)]
    pub args: ArgsMap,
    /// The queue its tasks wait in.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Attempts per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Priority of its tasks in their queue, 0 (the default) to 9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Wall-clock budget per handler call, narrowing the job's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

/// One step of a due schedule: move its stored tick from `tick` to
/// `next` (none: the timetable has no more ticks), and enqueue its task
/// when `enqueue` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fire {
    /// The tick stored now: the step applies only if it still is.
    pub tick: DateTime<Utc>,
    /// The tick stored after.
    pub next: Option<DateTime<Utc>>,
    /// Whether a task is enqueued (stamped with `stamp`).
    pub enqueue: bool,
    /// The time the task is stamped with (its `created_at`).
    pub stamp: DateTime<Utc>,
}

impl Timing {
    /// Checks the timing: a cron expression that parses, a known zone, an
    /// interval of at least [`MIN_EVERY_SECS`]. The error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Timing::Cron { expr, tz } => {
                cron(expr)?;
                if let Some(tz) = tz {
                    zone(tz)?;
                }
                Ok(())
            }
            Timing::Every { secs } if *secs < MIN_EVERY_SECS => Err(format!(
                "an interval must be at least {MIN_EVERY_SECS} second"
            )),
            Timing::Every { secs } if *secs > 366 * 24 * 3600 => {
                Err("an interval must be at most a year".into())
            }
            Timing::Every { .. } => Ok(()),
        }
    }

    /// The first tick strictly after `t` (`None`: there is none, or the
    /// timing does not parse).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.tick_from(t, false)
    }

    /// The first tick at or after `t`.
    fn first_from(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.tick_from(t, true)
    }

    fn tick_from(&self, t: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        match self {
            Timing::Every { secs } => {
                let step = i64::try_from(secs.saturating_mul(1_000_000)).ok()?.max(1);
                let us = t.timestamp_micros();
                let mut at = us.div_euclid(step) * step;
                if at < us || (at == us && !inclusive) {
                    at = at.checked_add(step)?;
                }
                DateTime::from_timestamp_micros(at)
            }
            Timing::Cron { expr, tz } => {
                let cron = cron(expr).ok()?;
                let tz = match tz {
                    Some(tz) => zone(tz).ok()?,
                    None => chrono_tz::UTC,
                };
                let local = tz.from_utc_datetime(&t.naive_utc());
                cron.find_next_occurrence(&local, inclusive)
                    .ok()
                    .map(|at| at.with_timezone(&Utc))
            }
        }
    }
}

fn cron(expr: &str) -> Result<croner::Cron, String> {
    // Five fields, or six with seconds first.
    croner::Cron::from_str(expr).map_err(|e| format!("cron expression `{expr}`: {e}"))
}

fn zone(tz: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(tz).map_err(|_| format!("unknown time zone `{tz}`"))
}

impl Schedule {
    /// Checks what a broker stores: the names, the timing, the attempts.
    pub fn check(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "invalid schedule name `{}`: use 1 to 128 characters of letters, digits, `-`, `_`, `.`, `:`",
                corral_core::text::Inert(&self.name)
            ));
        }
        if !valid_name(&self.queue) {
            return Err(format!(
                "invalid queue name `{}`",
                corral_core::text::Inert(&self.queue)
            ));
        }
        if self.job.trim().is_empty() || self.tenant.trim().is_empty() {
            return Err("a schedule needs a job and a tenant".into());
        }
        if self.max_attempts == Some(0) || self.timeout_ms == Some(0) {
            return Err("`max_attempts` and `timeout_ms` must be at least 1".into());
        }
        self.timing.check()?;
        // A first task must be a task the broker takes.
        self.task_at(self.created_at)
            .validate_new()
            .map_err(|e| e.reason)
    }

    /// The task of a tick stamped `at`: a fresh task of the schedule's
    /// job, args and queue, created at `at`.
    pub fn task_at(&self, at: DateTime<Utc>) -> Task {
        let mut task = Task::new(self.job.clone(), self.args.clone());
        task.tenant.clone_from(&self.tenant);
        task.queue_name.clone_from(&self.queue);
        if let Some(n) = self.max_attempts {
            task.max_attempts = n.max(1);
        }
        task.priority = self.priority.unwrap_or_default();
        task.timeout_ms = self.timeout_ms;
        task.created_at = at;
        task
    }

    /// The steps that bring a schedule whose stored tick is `tick` up to
    /// `now`: on-time ticks fire one by one, a run of missed ones in one
    /// step (enqueueing once for [`Missed::Once`], nothing for
    /// [`Missed::Skip`]). At most [`MAX_FIRES_PER_PASS`] steps; none when
    /// `tick` is still ahead.
    pub fn plan(&self, tick: DateTime<Utc>, now: DateTime<Utc>) -> Vec<Fire> {
        let mut steps = Vec::new();
        let mut tick = tick;
        let cutoff = clock::sub(now, GRACE);
        if tick < cutoff {
            // Ticks before the first on-time one are missed: the first tick
            // at or after the cutoff if it is due, else the last one before
            // the cutoff (its next is still ahead, so it runs late).
            let resume = match self.timing.first_from(cutoff) {
                Some(f) if f <= now => Some(f),
                _ => self.last_before(tick, cutoff),
            };
            if let Some(resume) = resume.filter(|r| *r > tick) {
                let last_missed = self.last_before(tick, resume).unwrap_or(tick);
                steps.push(Fire {
                    tick,
                    next: Some(resume),
                    enqueue: self.missed == Missed::Once,
                    stamp: last_missed,
                });
                tick = resume;
            }
        }
        while tick <= now && steps.len() < MAX_FIRES_PER_PASS {
            let next = self.timing.next_after(tick);
            steps.push(Fire {
                tick,
                next,
                enqueue: true,
                stamp: tick,
            });
            match next {
                Some(n) => tick = n,
                None => break,
            }
        }
        steps
    }

    /// The last tick at or after `from` and strictly before `before`
    /// (`None` when `from` itself is not before it). Walks at most a
    /// bounded number of ticks for cron timings, whose ticks are
    /// irregular; an interval is computed directly.
    fn last_before(&self, from: DateTime<Utc>, before: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if from >= before {
            return None;
        }
        if let Timing::Every { secs } = self.timing {
            let step = i64::try_from(secs.saturating_mul(1_000_000)).ok()?.max(1);
            let b = before.timestamp_micros();
            let at = (b - 1).div_euclid(step) * step;
            return DateTime::from_timestamp_micros(at.max(from.timestamp_micros()));
        }
        // A cron timing: step forward from `from` (the first tick in the
        // range), at most 100,000 ticks (a minutely cron over ten weeks).
        let mut last = from;
        for _ in 0..100_000 {
            match self.timing.next_after(last) {
                Some(n) if n < before => last = n,
                _ => return Some(last),
            }
        }
        Some(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn every(secs: u64, missed: Missed) -> Schedule {
        Schedule {
            name: "s".into(),
            tenant: "t".into(),
            timing: Timing::Every { secs },
            missed,
            job: "j".into(),
            args: ArgsMap::new(),
            queue: "default".into(),
            max_attempts: None,
            priority: None,
            timeout_ms: None,
            created_at: at("2030-01-01T00:00:00Z"),
        }
    }

    #[test]
    fn intervals_fall_on_multiples_and_cron_reads_its_zone() {
        let t = Timing::Every { secs: 10 };
        assert_eq!(
            t.next_after(at("2030-01-01T00:00:03Z")),
            Some(at("2030-01-01T00:00:10Z"))
        );
        assert_eq!(
            t.next_after(at("2030-01-01T00:00:10Z")),
            Some(at("2030-01-01T00:00:20Z"))
        );
        let five = Timing::Cron {
            expr: "*/5 * * * *".into(),
            tz: None,
        };
        assert!(five.check().is_ok());
        assert_eq!(
            five.next_after(at("2030-01-01T00:07:00Z")),
            Some(at("2030-01-01T00:10:00Z"))
        );
        // 09:00 in Paris is 08:00 UTC in winter.
        let paris = Timing::Cron {
            expr: "0 9 * * *".into(),
            tz: Some("Europe/Paris".into()),
        };
        assert_eq!(
            paris.next_after(at("2030-01-01T00:00:00Z")),
            Some(at("2030-01-01T08:00:00Z"))
        );
        for bad in [
            Timing::Cron {
                expr: "nonsense".into(),
                tz: None,
            },
            Timing::Cron {
                expr: "* * * * *".into(),
                tz: Some("Mars/Base".into()),
            },
            Timing::Every { secs: 0 },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn on_time_ticks_fire_one_by_one() {
        let s = every(10, Missed::Skip);
        let steps = s.plan(at("2030-01-01T00:00:10Z"), at("2030-01-01T00:00:35Z"));
        let ticks: Vec<_> = steps.iter().map(|f| (f.tick, f.enqueue)).collect();
        assert_eq!(
            ticks,
            [
                (at("2030-01-01T00:00:10Z"), true),
                (at("2030-01-01T00:00:20Z"), true),
                (at("2030-01-01T00:00:30Z"), true),
            ]
        );
        assert_eq!(steps[2].next, Some(at("2030-01-01T00:00:40Z")));
        assert!(
            s.plan(at("2030-01-01T00:00:40Z"), at("2030-01-01T00:00:35Z"))
                .is_empty()
        );
    }

    #[test]
    fn missed_ticks_are_skipped_or_run_once() {
        // Down from 00:00:10 to 00:10:05: ticks before 00:09:05 are missed.
        let (tick, now) = (at("2030-01-01T00:00:10Z"), at("2030-01-01T00:10:05Z"));
        let skip = every(10, Missed::Skip).plan(tick, now);
        assert_eq!(skip[0].tick, tick);
        assert_eq!(skip[0].next, Some(at("2030-01-01T00:09:10Z")));
        assert!(!skip[0].enqueue);
        // The on-time minute is run: 00:09:10 to 00:10:00, seven ticks.
        assert_eq!(skip.len(), 1 + 6);
        assert!(skip[1..].iter().all(|f| f.enqueue));
        let once = every(10, Missed::Once).plan(tick, now);
        assert!(once[0].enqueue);
        assert_eq!(once[0].stamp, at("2030-01-01T00:09:00Z"));
        // A late tick whose next is still ahead is not missed: it runs.
        let hourly = every(3600, Missed::Skip);
        let steps = hourly.plan(at("2030-01-01T01:00:00Z"), at("2030-01-01T01:05:00Z"));
        assert_eq!(steps.len(), 1);
        assert!(steps[0].enqueue);
        assert_eq!(steps[0].tick, at("2030-01-01T01:00:00Z"));
    }
}
