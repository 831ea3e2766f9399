//! The signal that stops a running handler call from outside.
//!
//! Owns [`CancelSignal`]: a flag set once and never cleared, that the store's
//! epoch callback and call hook read without locking and that an async call
//! can wait for. It never stops anything itself: the sandbox decides where
//! the flag is looked at (see [`Sandbox::call_cancellable`]), and who sets
//! it (a worker told that its task was cancelled) is none of its business.
//!
//! [`Sandbox::call_cancellable`]: crate::Sandbox::call_cancellable

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A one-way switch that cancels the handler calls it is passed to.
///
/// Clones share the switch: give one to the call and keep one to pull.
/// Once [`cancel`](Self::cancel)led it stays cancelled; a call given a
/// cancelled signal never starts.
///
/// ```
/// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # runtime.block_on(async {
/// let signal = corral_sandbox::CancelSignal::new();
/// let for_the_call = signal.clone();
/// signal.cancel();
/// assert!(for_the_call.is_cancelled());
/// for_the_call.cancelled().await; // returns at once
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelSignal {
    inner: Arc<Switch>,
}

#[derive(Debug, Default)]
struct Switch {
    /// Read on every epoch tick of a running call: an atomic, not a lock.
    cancelled: AtomicBool,
    /// Wakes the calls waiting in [`CancelSignal::cancelled`].
    woken: Notify,
}

impl CancelSignal {
    /// A signal not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every call this signal (or a clone of it) was or will be
    /// passed to. Idempotent; cheap enough for any thread, async or not.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.inner.woken.notify_waiters();
    }

    /// Whether [`cancel`](Self::cancel) has been called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Returns once the signal is cancelled (at once if it already is).
    pub async fn cancelled(&self) {
        let notified = self.inner.woken.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered as a waiter before the flag is read: a `cancel` between
        // the read and the wait still wakes this one (`notify_waiters` only
        // wakes waiters already registered).
        notified.as_mut().enable();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_when_another_task_cancels() {
        let signal = CancelSignal::new();
        assert!(!signal.is_cancelled());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.cancelled().await }
        });
        tokio::task::yield_now().await;
        signal.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter woke")
            .expect("the waiter ran");
        assert!(signal.is_cancelled());
        // Already cancelled: returns at once, and cancelling again is fine.
        signal.cancel();
        signal.cancelled().await;
    }
}
