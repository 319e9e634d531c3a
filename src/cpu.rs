//! Heavy CPU work off the async threads: parsing a large message (MIME, content rules, the
//! consent footer), rewriting and DKIM-signing it. Such work on a runtime thread stalls
//! every other session on that thread — two maximum-size messages once delayed a new
//! client's greeting by half a minute — so it runs on the blocking pool, and at most one
//! job per core at once, so that the blocking threads never crowd out the runtime's own:
//! a job waits for a slot rather than adding a thread. A small message's work (up to
//! [`INLINE_MAX`] octets: well under a millisecond) costs less than the hand-over to
//! another thread, so [`run_for`] does it in place.

use std::sync::OnceLock;

use tokio::sync::Semaphore;

/// One slot per core, for the whole process (it stands for the machine's cores).
fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

/// Messages up to this size are parsed, rewritten and signed on the async thread itself.
pub const INLINE_MAX: usize = 64 * 1024;

/// Runs `job`, the work on a message of `size` octets: in place when the message is small
/// ([`INLINE_MAX`]), else as [`run`] does.
pub async fn run_for<T, F>(size: usize, job: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if size <= INLINE_MAX {
        job()
    } else {
        run(job).await
    }
}

/// Runs `job` on the blocking pool once a slot is free, and returns its result. A panic in
/// the job is resumed in the caller, as if it had run inline.
pub async fn run<T, F>(job: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let _slot = slots()
        .acquire()
        .await
        .expect("the CPU slots are never closed");
    match tokio::task::spawn_blocking(job).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn small_work_runs_in_place_and_large_work_on_the_pool() {
        let here = std::thread::current().id();
        let small = run_for(INLINE_MAX, move || std::thread::current().id()).await;
        assert_eq!(small, here);
        let large = run_for(INLINE_MAX + 1, move || std::thread::current().id()).await;
        assert_ne!(large, here);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_beside_the_runtime_at_most_one_per_core() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..16)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for j in jobs {
            j.await.unwrap();
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert!(most.load(Ordering::SeqCst) <= cores);
    }
}
