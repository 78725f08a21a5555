//! The two-thread harness both GCRA benchmarks share, so the figures for
//! Bulkhead's cell and for `governor` are measured the same way.

use std::{
    sync::Barrier,
    thread,
    time::{Duration, Instant},
};

/// The wall time for each of `threads` threads to run `check` `iters`
/// times at once, all released together: criterion divides it by `iters`,
/// so the figure is the time one check takes while the other threads are
/// checking the same state.
pub fn contended(iters: u64, threads: usize, check: &(impl Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                barrier.wait();
                for _ in 0..iters {
                    check();
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}
