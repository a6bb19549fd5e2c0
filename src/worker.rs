//! Worker threads: each runs a current-thread tokio runtime with a `LocalSet`, accepts on
//! its own `SO_REUSEPORT` socket per listener and owns its connection pools, so nothing on
//! the request path is shared between workers except atomics (stats, host health) and
//! the published snapshots.

use std::future::Future;

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
    /// Which worker this is (`worker_<index>` in per-worker stats).
    pub index: usize,
}
