//! A time limit for every test, so a hang fails the run instead of stalling it.
//!
//! Each test opens with `let _limit = limit::minutes(N);`. The guard arms a
//! watchdog thread; dropping it (the test returned or panicked) disarms it.
//! Past the limit the watchdog names the test, SIGKILLs every process this
//! test binary started (Redis servers and their guards, `corral` workers and
//! servers, compile children: the whole tree under this process, found in
//! `/proc`), and exits the binary with status 124, as `timeout` does. libtest
//! cannot abandon one test thread, so ending the binary is the only way to
//! turn a hang into a failure; the other tests of the binary are reported as
//! not run by the missing summary, and the exit status fails `cargo test`.
//!
//! The test command also bounds the whole run (`scripts/test.sh`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

/// Disarms the watchdog when dropped.
#[must_use = "the limit holds only while the guard lives: bind it to `_limit`"]
pub struct Limit {
    _disarm: mpsc::Sender<()>,
}

/// A limit of `n` minutes for the calling test.
pub fn minutes(n: u64) -> Limit {
    within(Duration::from_secs(n * 60))
}

/// A limit of `limit` for the calling test (the test's own thread: libtest
/// names it after the test).
pub fn within(limit: Duration) -> Limit {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let (disarm, armed) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("limit of {test}"))
        .spawn(move || {
            // Dropping the guard disconnects the channel: the test ended.
            if let Err(mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
                eprintln!(
                    "\ntest {test} ran past its limit of {:.1} s: killing the processes it \
                     started and failing this test binary (exit 124)",
                    limit.as_secs_f64()
                );
                kill_descendants();
                std::process::exit(124);
            }
        })
        .expect("spawn a test's watchdog thread");
    Limit { _disarm: disarm }
}

/// SIGKILLs every live descendant of this process, children first found,
/// all of them before any can reap or respawn.
fn kill_descendants() {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = Vec::new();
    let mut next = vec![std::process::id()];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            tree.push(child);
            next.push(child);
        }
    }
    if tree.is_empty() {
        return;
    }
    let killed = std::process::Command::new("kill")
        .arg("-KILL")
        .args(tree.iter().map(u32::to_string))
        .status();
    if !killed.is_ok_and(|s| s.success()) {
        eprintln!("could not SIGKILL all of {tree:?} (some may have exited already)");
    }
}
