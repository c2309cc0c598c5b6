//! The injected clock: logic never asks the system for the time itself.

use jiff::Timestamp;

/// The source of the current time, and of waiting for it to pass. Logic takes
/// a `&dyn Clock` so tests can pin it or move it by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    /// Resolves once `duration` has passed on this clock.
    fn sleep(&self, duration: std::time::Duration) -> futures::future::BoxFuture<'static, ()>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep(&self, duration: std::time::Duration) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}
