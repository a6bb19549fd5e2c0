//! Worker threads: each runs a current-thread tokio runtime with a `LocalSet`, accepts on
//! its own `SO_REUSEPORT` socket per listener and owns its connection pools, so nothing on
//! the request path is shared between workers except atomics (stats, host health) and
//! the published snapshots.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use tokio::time::{Instant, Sleep};

use crate::upstream::pool::WorkerPools;

/// A hyper executor that spawns onto the current worker's `LocalSet`, so connection and
/// stream tasks may hold the worker's `!Send` state.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// One worker's private state.
#[derive(Default)]
pub struct Worker {
    pub pools: WorkerPools,
    /// Timers lent to streams for their deadlines.
    pub timers: Rc<TimerPool>,
    /// Which worker this is (`worker_<index>` in per-worker stats).
    pub index: usize,
}

/// Timers lent to streams for their deadlines (route timeout, stream idle timeout), so a
/// request does not register and cancel a timer of its own. Registering a timer takes the
/// time driver's lock, and one due earlier than any other wakes the driver through its
/// eventfd (a `write` syscall); a 15 s route timeout would do both on every request.
/// A lent timer is only moved earlier, never later: one that is due before the deadline a
/// stream asks for fires early, the stream sees its deadline has not passed and asks
/// again, and only then is the timer re-armed. A stream of requests each 15 s from its
/// start thus re-arms a timer about once per 15 s, not once per request.
#[derive(Default)]
pub struct TimerPool {
    idle: RefCell<Vec<Pin<Box<Sleep>>>>,
}

/// How many idle timers a worker keeps (about its peak concurrent streams).
const MAX_IDLE_TIMERS: usize = 4096;

impl TimerPool {
    /// Lends a timer; it goes back to the pool when the `LentTimer` drops.
    pub fn lend(self: &Rc<Self>) -> LentTimer {
        LentTimer { pool: self.clone(), sleep: None }
    }
}

/// A timer borrowed from a worker's `TimerPool`. A timer returned to the pool stays
/// registered and may wake its last user once more when it fires: a spurious poll.
pub struct LentTimer {
    pool: Rc<TimerPool>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LentTimer {
    /// A timer that fires at `at` or earlier: when it fires, the caller checks its own
    /// deadlines against the clock and, if none has passed, calls this again.
    pub fn until(&mut self, at: Instant) -> Pin<&mut Sleep> {
        let sleep = self.sleep.get_or_insert_with(|| {
            self.pool.idle.borrow_mut().pop().unwrap_or_else(|| Box::pin(tokio::time::sleep_until(at)))
        });
        if sleep.deadline() > at || sleep.is_elapsed() {
            sleep.as_mut().reset(at);
        }
        sleep.as_mut()
    }
}

impl Drop for LentTimer {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            let mut idle = self.pool.idle.borrow_mut();
            if idle.len() < MAX_IDLE_TIMERS {
                idle.push(sleep);
            }
        }
    }
}
