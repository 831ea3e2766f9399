//! Schedules run by the fleet: `corral schedules add` stores ten
//! every-second schedules, three real `corral worker` processes fire them
//! (one of them SIGKILLed and restarted half way), and every tick of each,
//! between its first and its last, is enqueued exactly once: no tick lost,
//! none doubled. The workers run their maintenance passes every 5 ms, so
//! they race for nearly every tick. (The conformance suite checks the same
//! with a controlled clock, over the embedded broker, Redis and a Cluster,
//! and the missed-tick policies after an outage.)

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use corral::broker::{Broker, PageQuery, RedisBroker, RedisConfig};
use corral::task::TaskState;

use crate::support::redis::{RedisServer, WorkerProcess, unique_prefix};

/// Schedules the test stores.
const SCHEDULES: i64 = 10;

fn corral(url: &str, prefix: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .args(["--redis", url, "--prefix", prefix])
        .env("NO_COLOR", "1")
        .output()
        .expect("run corral");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_enqueue_every_tick_once_through_a_sigkill() {
    let _limit = crate::limit::minutes(5);
    let server = RedisServer::start();
    let url = server.url();
    let prefix = unique_prefix("sched");
    let broker = RedisBroker::connect(RedisConfig::new(url.clone()).prefix(prefix.clone()))
        .await
        .expect("connect");
    let logs = tempfile::tempdir().expect("log dir");
    let start = |i: usize| {
        let mut w = WorkerProcess::start(
            &url,
            &prefix,
            &["--concurrency", "4", "--maintain-every", "5ms"],
            logs.path().join(format!("worker-{i}.log")),
        );
        w.wait_started();
        w
    };
    let mut workers: Vec<WorkerProcess> = (0..3).map(start).collect();

    for i in 0..SCHEDULES {
        let name = format!("every-second-{i}");
        let arg = format!("n={i}");
        let add = [
            "schedules",
            "add",
            &name,
            "--every",
            "1s",
            "--job",
            "noop",
            "--json-arg",
            &arg,
        ];
        let (ok, out, err) = corral(&url, &prefix, &add);
        assert!(ok, "{out}{err}");
        assert!(
            out.contains(&format!("schedule {name} stored; next tick")),
            "{out}"
        );
    }
    let (ok, out, err) = corral(&url, &prefix, &["schedules", "ls"]);
    assert!(
        ok && out.contains("every-second-9") && out.contains("every 1s"),
        "{out}{err}"
    );

    tokio::time::sleep(Duration::from_secs(4)).await;
    workers[0].kill();
    workers[0] = start(3);
    tokio::time::sleep(Duration::from_secs(4)).await;
    for i in 0..SCHEDULES {
        let name = format!("every-second-{i}");
        let (ok, out, err) = corral(&url, &prefix, &["schedules", "rm", &name]);
        assert!(ok, "{out}{err}");
    }

    // Only to turn a hang into a failure, never a measure of speed.
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let s = broker.stats("default", "default").await.expect("stats");
        if s.pending + s.active + s.scheduled == 0 && s.completed > 0 {
            break;
        }
        assert!(Instant::now() < give_up, "tasks unfinished: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in &mut workers {
        w.stop();
    }

    // Every task is a tick's: count them by schedule and by the second
    // they were stamped with.
    let page = broker
        .list_page(
            "default",
            &PageQuery {
                limit: 1000,
                ..PageQuery::default()
            },
        )
        .await
        .expect("list");
    let mut per_tick: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    for t in &page.tasks {
        assert_eq!(t.state, TaskState::Completed, "{:?}", t.error);
        assert_eq!(
            t.created_at.timestamp_subsec_micros(),
            0,
            "a tick is on a second"
        );
        let n = t.original_args_map["n"]
            .as_i64()
            .expect("the schedule's arg");
        *per_tick.entry((n, t.created_at.timestamp())).or_default() += 1;
    }
    let doubled: Vec<_> = per_tick.iter().filter(|(_, c)| **c > 1).collect();
    assert!(doubled.is_empty(), "ticks enqueued twice: {doubled:?}");
    for i in 0..SCHEDULES {
        let seconds: Vec<i64> = per_tick
            .keys()
            .filter(|(n, _)| *n == i)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            seconds.len() >= 6,
            "schedule {i}: only {} ticks in 8 s",
            seconds.len()
        );
        let (first, last) = (seconds[0], seconds[seconds.len() - 1]);
        let missing: Vec<i64> = (first..=last).filter(|s| !seconds.contains(s)).collect();
        assert!(missing.is_empty(), "schedule {i}: ticks lost: {missing:?}");
    }
    let (ok, out, _) = corral(&url, &prefix, &["schedules", "ls"]);
    assert!(ok && !out.contains("every-second"), "{out}");
}
