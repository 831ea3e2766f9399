//! The driver: runs a target's case function on generated inputs, seeded so
//! that any failure can be replayed, and checks each case's allocations.
//!
//! Every case gets its own 64-bit seed; its input is a byte string drawn
//! from that seed alone, read through [`arbitrary::Unstructured`]. Three
//! modes, chosen by environment variables:
//!
//! - default (what `cargo test` runs): `Target::cases` cases whose seeds
//!   derive from the target's name, the same on every run;
//! - `CORRAL_FUZZ_SECONDS=N`: cases from a fresh random base seed (printed)
//!   until N seconds have passed; `CORRAL_FUZZ_CASES=N` runs N cases instead;
//! - `CORRAL_FUZZ_SEED=0x…`: the one case with that seed (the value a
//!   failure prints).
//!
//! A case fails by panicking (an assertion); the driver then prints the
//! line that replays it and lets the panic go on. Targets run one at a time
//! (a lock), so the heap figures of a case are its own.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbitrary::Unstructured;

use crate::alloc;

/// One fuzz target: its name and bounds.
pub struct Target {
    /// The name `scripts/fuzz.sh` takes (the test is `fuzz_<name>`).
    pub name: &'static str,
    /// Cases run on fixed seeds by `cargo test`.
    pub cases: u64,
    /// Most input bytes per case (most cases get far fewer).
    pub max_input: usize,
    /// Most bytes any single allocation of a case may ask for.
    pub max_alloc: usize,
    /// Most bytes the heap may grow by during a case, above what was live
    /// when it started.
    pub max_heap_growth: usize,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Cases run.
    pub cases: u64,
    /// Cases whose input ran out before it made a whole case.
    pub rejected: u64,
    /// The largest single allocation any case asked for.
    pub largest_alloc: usize,
    /// The most any case grew the heap by.
    pub heap_growth: usize,
}

/// Targets run one at a time, so heap figures are not mixed.
static SERIAL: Mutex<()> = Mutex::new(());

/// SplitMix64: a tiny, fixed generator, so a seed means the same input on
/// every machine and in every version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The input of the case with `seed`: a length skewed towards small (half
/// the cases get at most 1/16 of `max`), then bytes.
fn input(seed: u64, max: usize) -> Vec<u8> {
    let mut rng = SplitMix(seed);
    let cap = match rng.next() % 4 {
        0 | 1 => max / 16,
        2 => max / 4,
        _ => max,
    };
    let len = (rng.next() % (cap as u64 + 1)) as usize;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let raw = raw.trim();
    let parsed = match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => raw.parse(),
    };
    match parsed {
        Ok(v) => Some(v),
        Err(e) => panic!("{name}={raw} is not a number: {e}"),
    }
}

/// FNV-1a of the target's name: its fixed base seed.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `case` on `target`'s inputs (see the module docs for the modes) and
/// returns what the run did. `case` returns `Err` only when its input ran
/// out before it made a whole case (counted, not a failure); it fails by
/// panicking.
pub fn run(
    target: &Target,
    mut case: impl FnMut(&mut Unstructured<'_>) -> arbitrary::Result<()>,
) -> Summary {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let name = target.name;
    let (base, count, until) = if let Some(seed) = env_u64("CORRAL_FUZZ_SEED") {
        eprintln!("[fuzz {name}] replaying the case with seed {seed:#018x}");
        (None, 1, None)
    } else if let Some(secs) = env_u64("CORRAL_FUZZ_SECONDS") {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let base = SplitMix(clock.as_nanos() as u64 ^ u64::from(std::process::id())).next();
        let count = env_u64("CORRAL_FUZZ_CASES").unwrap_or(u64::MAX);
        eprintln!("[fuzz {name}] base seed {base:#018x}, for {secs} s");
        let until = Instant::now() + Duration::from_secs(secs);
        (Some(base), count, Some(until))
    } else {
        let count = env_u64("CORRAL_FUZZ_CASES").unwrap_or(target.cases);
        (Some(name_seed(name)), count, None)
    };
    // A hang fails the run. Counted from here, after the lock: targets wait
    // for each other. A run of a chosen number of cases has no bound in time.
    let _limit = match (until, env_u64("CORRAL_FUZZ_CASES")) {
        (Some(until), _) => Some(crate::limit::within(
            until.saturating_duration_since(Instant::now()) + Duration::from_secs(300),
        )),
        (None, Some(_)) => None,
        (None, None) => Some(crate::limit::minutes(10)),
    };

    let started = Instant::now();
    let mut summary = Summary::default();
    for i in 0..count {
        if until.is_some_and(|until| Instant::now() >= until) {
            break;
        }
        let seed = match base {
            Some(base) => SplitMix(base ^ i.wrapping_mul(0xd6e8_feb8_6659_fd93)).next(),
            None => env_u64("CORRAL_FUZZ_SEED").unwrap_or_default(),
        };
        let bytes = input(seed, target.max_input);
        alloc::reset(seed);
        let start_live = alloc::live();
        let outcome = catch_unwind(AssertUnwindSafe(|| case(&mut Unstructured::new(&bytes))));
        let replay = format!("CORRAL_FUZZ_SEED={seed:#018x} scripts/fuzz.sh {name}");
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(_)) => summary.rejected += 1,
            Err(panic) => {
                eprintln!("[fuzz {name}] case {i} failed; replay it with: {replay}");
                resume_unwind(panic);
            }
        }
        let largest = alloc::largest();
        let growth = alloc::peak().saturating_sub(start_live);
        assert!(
            largest <= target.max_alloc,
            "[fuzz {name}] case {i} asked for {largest} bytes at once (bound {}); replay it with: {replay}",
            target.max_alloc
        );
        assert!(
            growth <= target.max_heap_growth,
            "[fuzz {name}] case {i} grew the heap by {growth} bytes (bound {}); replay it with: {replay}",
            target.max_heap_growth
        );
        summary.cases += 1;
        summary.largest_alloc = summary.largest_alloc.max(largest);
        summary.heap_growth = summary.heap_growth.max(growth);
    }
    alloc::reset(0);
    eprintln!(
        "[fuzz {name}] {} cases ({} ran out of input) in {:.1} s; largest allocation {} KiB, heap growth at most {} KiB",
        summary.cases,
        summary.rejected,
        started.elapsed().as_secs_f64(),
        summary.largest_alloc >> 10,
        summary.heap_growth >> 10,
    );
    let replaying = base.is_none();
    assert!(
        replaying || summary.rejected < summary.cases.max(1),
        "[fuzz {name}] every case ran out of input: the generator needs fewer bytes"
    );
    summary
}
