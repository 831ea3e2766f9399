//! The test binary's global allocator: the system allocator, counting.
//!
//! It keeps the bytes live on the heap, the highest that figure reached and
//! the largest single request since the last [`reset`], so the driver can
//! assert after every case that the code under test allocated in proportion
//! to its input, not to a length an attacker wrote into it. It must never
//! allocate itself, nor unwind.
//!
//! A single request over [`HARD_CAP`] is refused (the process then aborts
//! with "memory allocation of N bytes failed") after naming the case that
//! made it, because no input of these targets justifies one and letting it
//! through could take the machine's memory with it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// No single allocation of the test binary may ask for more.
pub const HARD_CAP: usize = 1 << 30;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// The seed of the case running now (0: none), for the hard-cap message.
static CASE_SEED: AtomicU64 = AtomicU64::new(0);

/// The counting allocator; install with `#[global_allocator]`.
pub struct Counting;

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

fn over_cap(size: usize) -> bool {
    if size <= HARD_CAP {
        return false;
    }
    // A fixed buffer and one write: nothing here allocates.
    let mut line = [0u8; 160];
    let mut cursor = std::io::Cursor::new(&mut line[..]);
    let _ = writeln!(
        cursor,
        "fuzz: refused an allocation of {size} bytes in case CORRAL_FUZZ_SEED={:#018x}",
        CASE_SEED.load(Ordering::Relaxed)
    );
    let end = cursor.position() as usize;
    let _ = std::io::stderr().write_all(&line[..end]);
    true
}

// SAFETY: every call is passed to `System` unchanged; the counters are
// atomics, and nothing here allocates or unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if over_cap(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

/// Bytes live on the heap now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The most bytes live since the last [`reset`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// The largest single request since the last [`reset`].
pub fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// Starts a new measurement for the case with `seed`.
pub fn reset(seed: u64) {
    CASE_SEED.store(seed, Ordering::Relaxed);
    PEAK.store(live(), Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
}
