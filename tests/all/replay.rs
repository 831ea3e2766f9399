//! `corral replay ID` as scripts use it, against a real Redis, a real
//! `corral worker` process and the example components: a finished task
//! runs again outside the broker and the command says (and exits 0, 1 or 2
//! by) whether the replay matches what the worker stored.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::support::redis::{RedisServer, WorkerProcess, unique_prefix};

/// A private Redis with a `corral worker` on it (the example jobs, plus
/// `probe`, the `wasi-probe` component), under a prefix of its own.
struct Fleet {
    server: RedisServer,
    prefix: String,
    _worker: WorkerProcess,
    _logs: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Self {
        let server = RedisServer::start();
        let prefix = unique_prefix("replay");
        let logs = tempfile::tempdir().expect("log dir");
        let probe = format!("probe={}", crate::support::job("wasi_probe").display());
        let mut worker = WorkerProcess::start(
            &server.url(),
            &prefix,
            &["--job", &probe],
            logs.path().join("worker.log"),
        );
        // `corral enqueue` checks the catalog: the jobs must be there.
        worker.wait_started();
        Self {
            server,
            prefix,
            _worker: worker,
            _logs: logs,
        }
    }

    /// Runs `corral ARGS --redis URL --prefix P` to its end.
    fn corral(&self, args: &[&str]) -> Output {
        corral_at(&self.server.url(), &self.prefix, args)
    }

    /// Enqueues `job` with `args` (and `extra` options); returns its id.
    fn enqueue(&self, job: &str, args: &[&str], extra: &[&str]) -> String {
        let mut all = vec!["enqueue", job];
        for a in args {
            all.extend(["--arg", a]);
        }
        all.extend(extra);
        let out = self.corral(&all);
        assert!(out.status.success(), "enqueue: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }

    /// Waits for task `id` to finish; returns `corral wait`'s exit status.
    fn wait(&self, id: &str) -> Option<i32> {
        self.corral(&["wait", id, "--timeout", "60s"]).status.code()
    }

    /// `corral replay ID --json`: the exit status and the report.
    fn replay_json(&self, id: &str) -> (Option<i32>, Value) {
        let out = self.corral(&["replay", id, "--json"]);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "replay --json printed no JSON ({e}): {}\n{}",
                text(&out.stdout),
                text(&out.stderr)
            )
        });
        (out.status.code(), report)
    }

    /// The hash field holding task `id`'s last checkpoint.
    fn progress_key(&self) -> String {
        format!("{}:{{q:default}}:default:progress", self.prefix)
    }
}

fn corral_at(url: &str, prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corral"))
        .arg("--no-disk-cache")
        .args(args)
        .args(["--redis", url, "--prefix", prefix])
        .env_remove("CORRAL_REDIS_URL")
        .env_remove("CORRAL_REDIS_PREFIX")
        .env_remove("CORRAL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run corral")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A completed text-stats task replays identically: exit 0, every
/// handler's fuel and peak memory equal to what the worker stored, no clock
/// or random use; and the text report says so.
#[test]
fn a_completed_task_replays_with_the_same_fuel_per_handler() {
    let _limit = crate::limit::minutes(5);
    let fleet = Fleet::start();
    let id = fleet.enqueue(
        "text-stats",
        &["text=The cat and the hat and the bat"],
        &["--json-arg", "k=2"],
    );
    assert_eq!(fleet.wait(&id), Some(0), "the task did not complete");

    let (code, report) = fleet.replay_json(&id);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["matches"], true, "{report:#}");
    assert_eq!(report["differences"], Value::Array(vec![]), "{report:#}");
    assert_eq!(report["stored"]["state"], "completed");
    assert_eq!(report["replay"]["state"], "completed");
    assert_eq!(
        report["replay"]["args"]["top"],
        serde_json::json!([["the", 3], ["and", 2]])
    );
    let handlers = report["handlers"].as_array().expect("handlers");
    let names: Vec<&str> = handlers.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(names, ["normalize", "count_words", "top_k"]);
    for h in handlers {
        let replayed = h["replay"]["metering"]["fuel"]
            .as_u64()
            .expect("replay fuel");
        let stored = h["stored"]["metering"]["fuel"]
            .as_u64()
            .expect("stored fuel");
        assert!(replayed > 0, "{h:#}");
        assert_eq!(replayed, stored, "{h:#}");
        assert_eq!(
            h["replay"]["metering"]["peak_memory_bytes"],
            h["stored"]["metering"]["peak_memory_bytes"],
            "{h:#}"
        );
        assert_eq!(h["replay"]["wasi"]["any"], false, "{h:#}");
        assert_eq!(h["replay"]["log"], h["stored"]["log"], "{h:#}");
    }
    // Handler 1 got what handler 0 returned.
    assert_eq!(
        handlers[1]["replay"]["args_in"]["text"],
        "the cat and the hat and the bat"
    );

    let out = fleet.corral(&["replay", &id]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let fuel = handlers[2]["stored"]["metering"]["fuel"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        stdout.contains(&format!("fuel: replay {fuel}, stored the same")),
        "{stdout}"
    );
    assert!(stdout.contains("wasi (replay): no WASI calls"), "{stdout}");
    assert!(stdout.contains("same: the replay matches"), "{stdout}");
}

/// Dead tasks (`always-fails`) replay to the same failure: a fatal one in
/// one attempt, and a retryable one that used up two attempts (its stored
/// metering is the last call's).
#[test]
fn a_dead_task_replays_to_the_same_failure() {
    let _limit = crate::limit::minutes(5);
    let fleet = Fleet::start();
    let fatal = fleet.enqueue(
        "always-fails",
        &["kind=fatal", "message=no such customer"],
        &["--max-attempts", "1"],
    );
    let retried = fleet.enqueue(
        "always-fails",
        &["kind=retryable", "message=upstream down"],
        &["--max-attempts", "2"],
    );
    assert_eq!(fleet.wait(&fatal), Some(1), "the task did not die");
    assert_eq!(fleet.wait(&retried), Some(1), "the task did not die");

    let (code, report) = fleet.replay_json(&fatal);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["stored"]["state"], "dead");
    assert_eq!(report["replay"]["state"], "failed");
    assert_eq!(report["replay"]["error"], report["stored"]["error"]);
    assert_eq!(report["replay"]["error"]["kind"], "guest_error");
    assert_eq!(report["replay"]["error"]["handler_index"], 0);
    assert!(
        report["replay"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no such customer")),
        "{report:#}"
    );

    let (code, report) = fleet.replay_json(&retried);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["stored"]["calls"], 2, "{report:#}");
    assert_eq!(report["replay"]["error"], report["stored"]["error"]);
    assert_eq!(report["replay"]["error"]["retryable"], true);
    // The replay tells the handler the attempt of the stored last call.
    assert_eq!(report["handlers"][0]["replay"]["attempt"], 2, "{report:#}");

    let out = fleet.corral(&["replay", &fatal]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("outcome: stored dead at handler 0 (`fail`) with kind guest_error"),
        "{stdout}"
    );
    assert!(
        stdout.contains("replay failed at handler 0 (`fail`) with kind guest_error"),
        "{stdout}"
    );
}

/// Changing what Redis holds for a finished task (a handler's fuel, then
/// the final args) makes the replay differ, exit 1 and name the field.
#[test]
fn a_tampered_record_makes_the_replay_differ() {
    let _limit = crate::limit::minutes(5);
    let fleet = Fleet::start();
    let id = fleet.enqueue("text-stats", &["text=one two two three three three"], &[]);
    assert_eq!(fleet.wait(&id), Some(0), "the task did not complete");
    let (code, _) = fleet.replay_json(&id);
    assert_eq!(code, Some(0), "the untouched record should match");

    let key = fleet.progress_key();
    let original = fleet.server.cli(&["HGET", &key, &id]);
    let original = original.trim_end_matches('\n');
    let checkpoint: Value = serde_json::from_str(original).expect("the checkpoint is JSON");
    let store = |checkpoint: &Value| {
        let json = checkpoint.to_string();
        fleet.server.cli(&["HSET", &key, &id, &json]);
    };

    // One more unit of fuel for count_words.
    let mut tampered = checkpoint.clone();
    let fuel = tampered["metering"]["handlers"][1]["fuel"]
        .as_u64()
        .expect("count_words's fuel");
    tampered["metering"]["handlers"][1]["fuel"] = (fuel + 1).into();
    store(&tampered);
    let out = fleet.corral(&["replay", &id]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "handler 1 (`count_words`): fuel differs: stored {}, replay {fuel}",
            fuel + 1
        )),
        "{stdout}"
    );
    assert!(stdout.contains("differs (1):"), "{stdout}");
    let (code, report) = fleet.replay_json(&id);
    assert_eq!(code, Some(1));
    assert_eq!(report["matches"], false);
    assert_eq!(report["differences"][0]["field"], "handlers[1].fuel");

    // A different summary in the final args.
    let mut tampered = checkpoint.clone();
    tampered["args_map"]["summary"] = "top 1 of 1 distinct: four (4)".into();
    store(&tampered);
    let out = fleet.corral(&["replay", &id]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("the final args differ: `summary` stored"),
        "{stdout}"
    );

    // Put back as it was, it matches again.
    store(&checkpoint);
    let (code, report) = fleet.replay_json(&id);
    assert_eq!(code, Some(0), "{report:#}");
}

/// What cannot be replayed is refused with status 2 and a reason: a task
/// not finished yet, an id that names no task, a task whose module is gone
/// from the catalog.
#[test]
fn what_cannot_be_replayed_is_refused() {
    let _limit = crate::limit::minutes(5);
    let fleet = Fleet::start();
    // A delayed task stays scheduled; a task on a queue no worker takes
    // stays pending.
    let scheduled = fleet.enqueue("noop", &[], &["--delay", "1h"]);
    let pending = fleet.enqueue("noop", &[], &["--queue", "nobody-takes-this"]);
    let out = fleet.corral(&["replay", &scheduled]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("task {scheduled} is scheduled: only a finished")),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
    let out = corral_at(
        &fleet.server.url(),
        &fleet.prefix,
        &["replay", &pending, "--json"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is pending: only a finished"), "{stderr}");

    let missing = "01a22e00-289f-7332-b0c8-2e8bdbb01925";
    let out = fleet.corral(&["replay", missing]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("task {missing} not found")),
        "{stderr}"
    );

    // A finished task whose module is deleted from the catalog.
    let id = fleet.enqueue("noop", &["x=1"], &[]);
    assert_eq!(fleet.wait(&id), Some(0));
    let (code, report) = fleet.replay_json(&id);
    assert_eq!(code, Some(0), "{report:#}");
    let hash = report["handlers"][0]["module"]
        .as_str()
        .expect("the module hash")
        .to_owned();
    let key = format!("{}:{{t:default}}:module:{hash}", fleet.prefix);
    assert_eq!(fleet.server.cli(&["DEL", &key]).trim(), "1", "no key {key}");
    let out = fleet.corral(&["replay", &id]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "module {hash} of job `noop` is no longer in the catalog"
        )),
        "{stderr}"
    );
}

/// A guest that reads the clocks and random numbers (`wasi-probe`): the
/// replay counts those calls, and any difference it reports names them.
#[test]
fn clock_and_random_reads_are_counted_and_named() {
    let _limit = crate::limit::minutes(5);
    let fleet = Fleet::start();
    let id = fleet.enqueue("probe", &[], &[]);
    assert_eq!(fleet.wait(&id), Some(0), "the probe did not complete");
    let (code, report) = fleet.replay_json(&id);
    let wasi = &report["handlers"][0]["replay"]["wasi"];
    assert_eq!(wasi["any"], true, "{report:#}");
    assert_eq!(wasi["wall_clock"], 1, "{report:#}");
    assert_eq!(wasi["random"], 1, "{report:#}");
    assert!(
        wasi["monotonic_clock"].as_u64().unwrap_or(0) >= 2,
        "{report:#}"
    );
    // Its wall-clock seconds and its loop over the monotonic clock may or
    // may not come out the same; whatever differs is put down to them.
    match code {
        Some(0) => assert_eq!(report["matches"], true),
        Some(1) => {
            for d in report["differences"].as_array().expect("differences") {
                let message = d["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("handler 0 (`wasi_probe`) read a clock or random numbers"),
                    "{message}"
                );
            }
        }
        other => panic!("replay exited {other:?}: {report:#}"),
    }
}
