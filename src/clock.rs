//! The time as of the start of the current connection task's poll, read once per poll.
//!
//! A request through legate took about ten clock reads (its start, the upstream's start
//! and answer, activity for the idle timeouts, the pool's idle stamps, its end): ≈ 2.4 % of
//! a sequential request's CPU on this VM's clocksource. As HAProxy's `now_ms` and Envoy's
//! dispatcher-approximate time do, the data path takes one reading per wake-up instead: the
//! work a poll does happens in microseconds, far below the millisecond resolution of the
//! timeouts and stats the time feeds. Outside a connection task's poll (a timer's task, the
//! admin thread) `now` reads the clock.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

thread_local! {
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The cached time inside a `Ticking` poll, else the clock's.
pub fn now() -> Instant {
    NOW.with(Cell::get).unwrap_or_else(Instant::now)
}

pin_project_lite::pin_project! {
    /// Polls `inner` with the time read once at the start of each poll.
    pub struct Ticking<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Ticking<F> {
    pub fn new(inner: F) -> Ticking<F> {
        Ticking { inner }
    }
}

/// Clears the cached time when the poll ends, even by a panic.
struct Tick;

impl Drop for Tick {
    fn drop(&mut self) {
        NOW.with(|now| now.set(None));
    }
}

impl<F: Future> Future for Ticking<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        NOW.with(|now| now.set(Some(Instant::now())));
        let _tick = Tick;
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_sees_one_time_and_outside_polls_the_clock_runs() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut ticking = std::pin::pin!(Ticking::new(std::future::poll_fn(|_| {
            let first = now();
            std::thread::sleep(std::time::Duration::from_millis(2));
            Poll::Ready((first, now()))
        })));
        let Poll::Ready((first, second)) = ticking.as_mut().poll(&mut cx) else { panic!("ready") };
        assert_eq!(first, second, "one reading per poll");
        let outside = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now() > outside, "outside a poll, now reads the clock");
    }
}
