//! A pool of tasks of one kind that finds a free task in a few tries, however many are busy.
//!
//! `#[embassy_executor::task(pool_size = N)]` keeps its tasks in one static array and, to spawn
//! one, tries them in order from the first (a compare-and-swap on each task's header) until one
//! is free. A gateway that holds 18,000 phones in a pool of 20,000 so tries 18,000 headers, one
//! cache miss each, for every phone it accepts: in a profile of a ramp to 19,000 phones
//! (`perf record`, issue #17) that scan was 29 % of the gateway's CPU, more than the Ed25519
//! check of the phone's token. [`TaskPool`] starts where the last spawn left off instead, so a
//! ramp finds each free task at the first try, except once per chunk: when the cursor reaches
//! the end of what is allocated it looks through the allocated tasks once (reusing any that
//! ended) before allocating a new chunk, about 75 tries per spawn on average at 19,000 phones
//! instead of 9,500. A pool whose phones come and go finds one after about
//! `1 / (1 - busy share)` tries (20 at 95 % busy).
//!
//! Its tasks are allocated in chunks the first time they are needed (the static array's pages,
//! too, stayed untouched until used) and live as long as the process, as statics do.

use std::cell::{Cell, RefCell};
use std::future::Future;

use embassy_executor::raw::{AvailableTask, TaskStorage};
use embassy_executor::{SpawnError, SpawnToken};

/// Tasks allocated at once when every allocated task is busy.
const CHUNK: usize = 256;

/// Up to `capacity` tasks running futures of type `F`. For the executor's own thread (not
/// `Sync`): the acceptor that spawns phone tasks owns it.
pub struct TaskPool<F: Future + 'static> {
    /// Chunks of [`CHUNK`] tasks (the last one may be shorter, at the capacity): task `i` is
    /// `chunks[i / CHUNK][i % CHUNK]`.
    chunks: RefCell<Vec<&'static [TaskStorage<F>]>>,
    allocated: Cell<usize>,
    capacity: usize,
    /// Where the next spawn starts looking: the task after the one given out last.
    cursor: Cell<usize>,
    /// Tasks the last spawn tried (for the tests).
    #[cfg(test)]
    tries: Cell<usize>,
}

impl<F: Future + 'static> TaskPool<F> {
    /// A pool that will hold at most `capacity` tasks; none is allocated yet.
    pub fn new(capacity: usize) -> Self {
        Self {
            chunks: RefCell::new(Vec::new()),
            allocated: Cell::new(0),
            capacity,
            cursor: Cell::new(0),
            #[cfg(test)]
            tries: Cell::new(0),
        }
    }

    /// Tasks allocated so far (busy or not).
    pub fn allocated(&self) -> usize {
        self.allocated.get()
    }

    /// Spawns `future` in a free task: the next free one from where the last spawn left off,
    /// else a newly allocated one while the pool is under its capacity. `Busy` when all
    /// `capacity` tasks are running.
    pub fn spawn(&self, future: impl FnOnce() -> F) -> Result<SpawnToken<F>, SpawnError> {
        let task = self.claim().ok_or(SpawnError::Busy)?;
        Ok(task.initialize(future))
    }

    fn claim(&self) -> Option<AvailableTask<F>> {
        let allocated = self.allocated.get();
        let start = self.cursor.get();
        for i in 0..allocated {
            let index = (start + i) % allocated;
            #[cfg(test)]
            self.tries.set(i + 1);
            if let Some(task) = self.task(index).and_then(AvailableTask::claim) {
                self.cursor.set(index + 1);
                return Some(task);
            }
        }
        if allocated >= self.capacity {
            return None;
        }
        let len = CHUNK.min(self.capacity - allocated);
        let chunk: &'static [TaskStorage<F>] =
            Box::leak((0..len).map(|_| TaskStorage::new()).collect::<Vec<_>>().into_boxed_slice());
        self.chunks.borrow_mut().push(chunk);
        self.allocated.set(allocated + len);
        self.cursor.set(allocated + 1);
        AvailableTask::claim(&chunk[0])
    }

    fn task(&self, index: usize) -> Option<&'static TaskStorage<F>> {
        let chunk: &'static [TaskStorage<F>] = self.chunks.borrow().get(index / CHUNK).copied()?;
        chunk.get(index % CHUNK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn quick() {}

    async fn forever() {
        std::future::pending::<()>().await
    }

    /// Tasks spawned but never run (no executor here) stay busy for ever.
    fn busy<F: Future>(pool: &TaskPool<F>, make: impl Fn() -> F, n: usize) {
        for _ in 0..n {
            std::mem::forget(pool.spawn(&make).expect("room"));
        }
    }

    #[test]
    fn grows_by_chunks_up_to_its_capacity_then_refuses() {
        let pool = TaskPool::new(CHUNK + 10);
        assert_eq!(pool.allocated(), 0, "nothing before the first spawn");
        busy(&pool, quick, 1);
        assert_eq!(pool.allocated(), CHUNK);
        busy(&pool, quick, CHUNK + 9);
        assert_eq!(pool.allocated(), CHUNK + 10, "the last chunk stops at the capacity");
        assert!(matches!(pool.spawn(quick), Err(SpawnError::Busy)));
    }

    #[test]
    fn a_spawn_does_not_try_the_busy_tasks_before_the_cursor() {
        let pool = TaskPool::new(4 * CHUNK);
        busy(&pool, quick, 3 * CHUNK - 1);
        let task = pool.claim().expect("a free task");
        assert_eq!(pool.tries.get(), 1, "the task after the last one given out is free: one try");
        std::mem::forget(task.initialize(quick));
    }

    #[test]
    fn a_finished_task_is_spawned_again() {
        let executor: &'static embassy_executor::raw::Executor =
            Box::leak(Box::new(embassy_executor::raw::Executor::new(core::ptr::null_mut())));
        let spawner = executor.spawner();
        let pool: &'static TaskPool<_> = Box::leak(Box::new(TaskPool::new(2)));
        let waiting: &'static TaskPool<_> = Box::leak(Box::new(TaskPool::new(1)));
        spawner.spawn(pool.spawn(quick).unwrap());
        spawner.spawn(waiting.spawn(forever).unwrap());
        busy(pool, quick, 1);
        assert!(matches!(pool.spawn(quick), Err(SpawnError::Busy)), "both busy");
        // SAFETY: one thread, not reentrant.
        unsafe { executor.poll() };
        spawner.spawn(pool.spawn(quick).expect("the first task finished: its place is free again"));
    }
}
