//! Where the runtime's work runs: on the workers of the current rayon pool,
//! kept awake for the length of a pass.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `op` on a worker thread of the current rayon pool (at once if this
/// thread is one; else on the global pool, this thread blocking until it
/// returns), with the pool's other workers spinning for work until it
/// returns.
///
/// The executor runs each forward and backward pass this way:
/// - the kernels' many parallel splits per pass start from a worker, so a
///   split queues its parts locally for the other workers to steal and runs
///   the part it keeps at once. Called from a thread outside the pool, every
///   split would be injected into the pool and wait on a lock while a
///   sleeping worker is woken: two context switches per split, about a
///   quarter of a batch-1 Fashion-MNIST CNN inference on one thread (futex
///   wake-ups and waits, measured with `perf`);
/// - rayon puts an idle worker to sleep after a few rounds of
///   `sched_yield`, and a split then has to wake it (a futex call, and the
///   split waits for the wake-up). Between the splits of a pass (a pooling
///   layer, a layer too small to split) the other workers would fall
///   asleep; instead each runs a spinner that takes queued work
///   ([`rayon::yield_now`]) until `op` returns, as ONNX Runtime's pool
///   spins. The spinning ends with the pass, so an idle pool sleeps.
///
/// A spinner that lands on the thread running `op` (it may pop its own
/// queue while waiting on a split) returns at once, so `op` never waits on
/// a spinner.
pub(crate) fn on_worker<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return op();
    }
    with_spinners(op)
}

/// Runs `op` in a [`rayon::scope`] of the current pool (on one of its
/// workers), the pool's other workers running spinners until it returns.
fn with_spinners<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        let owner = rayon::current_thread_index();
        let done = &done;
        // Set on return and on unwind: the scope waits for the spinners.
        let _stop = Stop(done);
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(move |_| spin_until(done, owner));
        }
        op()
    })
}

/// Sets its flag when dropped.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs queued rayon jobs, or spins, until `done` (at once on `owner`).
fn spin_until(done: &AtomicBool, owner: Option<usize>) {
    if rayon::current_thread_index() == owner {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn runs_op_on_a_pool_worker_and_returns_its_value() {
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "test threads are not workers"
        );
        let (on, sum) = on_worker(|| {
            let sum: u64 = (0..10_000u64).into_par_iter().map(|v| v * v).sum();
            (rayon::current_thread_index(), sum)
        });
        assert!(on.is_some());
        // Σ v² for v < n is (n - 1) n (2n - 1) / 6.
        assert_eq!(sum, 9_999 * 10_000 * 19_999 / 6);
    }

    #[test]
    fn nested_calls_run_in_place() {
        let (outer, inner) = on_worker(|| {
            let outer = rayon::current_thread_index();
            (outer, on_worker(rayon::current_thread_index))
        });
        assert_eq!(outer, inner);
    }

    #[test]
    fn a_panic_in_op_reaches_the_caller_and_stops_the_spinners() {
        let caught = std::panic::catch_unwind(|| on_worker(|| panic!("boom")));
        assert!(caught.is_err());
        // The pool is free again: a second call completes.
        assert_eq!(on_worker(|| 7), 7);
    }

    #[test]
    fn spinners_on_a_larger_pool_end_with_the_op() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .expect("pool");
        for _ in 0..20 {
            let sum = pool.install(|| {
                with_spinners(|| (0..1000u64).into_par_iter().map(|v| v * 3).sum::<u64>())
            });
            assert_eq!(sum, 3 * 999 * 1000 / 2);
        }
    }
}
