//! The cross-thread handle: another thread wakes the reactor, hands it
//! work, or asks it to stop.
//!
//! A reactor is single-threaded and its state is not shared: another
//! thread never touches it. What crosses is a request, through an
//! `eventfd` the reactor polls like any socket (registered once,
//! edge-triggered): the other thread queues a job or raises the stop flag
//! and adds 1 to the eventfd's counter; `epoll_wait` returns; the reactor
//! reads the counter back to zero (so the next write is a new edge) and
//! runs the jobs on its own thread, as callbacks. Several writes before
//! the reactor wakes coalesce into one wake-up. This is how several
//! reactors share one process (`--workers`): nothing on the hot path is
//! shared, and a shutdown reaches each through its handle.
//!
//! **After `run` has returned**, nobody will run a job: [`Handle::submit`]
//! then fails (`BrokenPipe`) instead of accepting work that would be
//! dropped. The reactor closes its queue only when it finds the queue
//! empty, under the queue's lock: a job submitted while `run` was on its
//! way out is either run or refused, never accepted and lost.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::Ctx;
use crate::sys;

/// Work for a reactor, run on its thread with its [`Ctx`] (as handler 0).
pub type Job = Box<dyn FnOnce(&mut Ctx<'_>) + Send>;

pub(super) struct Shared {
    eventfd: OwnedFd,
    jobs: Mutex<Queue>,
    stop: AtomicBool,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// `run` has returned (or the reactor is gone): no job will run again.
    closed: bool,
}

impl Shared {
    pub(super) fn new() -> io::Result<Shared> {
        Ok(Shared { eventfd: sys::eventfd()?, jobs: Mutex::default(), stop: AtomicBool::new(false) })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On the reactor's thread, as `run` is about to return: refuse jobs
    /// from now on — unless some are queued, which must run first (they
    /// were accepted); then `false`, and the loop goes on.
    pub(super) fn close_if_idle(&self) -> bool {
        let mut queue = self.queue();
        queue.closed = queue.jobs.is_empty();
        queue.closed
    }

    /// Refuse jobs from now on, whatever is queued (`run` failed, or the
    /// reactor is dropped).
    pub(super) fn close(&self) {
        let mut queue = self.queue();
        queue.closed = true;
        queue.jobs.clear();
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.eventfd.as_fd()
    }

    /// On the reactor's thread: reset the eventfd, then take the requests.
    /// Resetting first means a request made after it raises a new edge.
    pub(super) fn take(&self) -> (bool, Vec<Job>) {
        if let Err(e) = sys::eventfd_drain(self.fd()) {
            log::warn!("waker: {e}");
        }
        let jobs = std::mem::take(&mut self.queue().jobs);
        (self.stop.load(Ordering::Acquire), jobs)
    }
}

/// A handle to a reactor, for other threads: cheap to clone, `Send`.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    pub(super) fn new(shared: Arc<Shared>) -> Handle {
        Handle { shared }
    }

    /// Wake the reactor's `epoll_wait` (one `write(2)` on the eventfd).
    pub fn wake(&self) -> io::Result<()> {
        sys::eventfd_signal(self.shared.fd())
    }

    /// Run `job` on the reactor's thread, soon. A panic in it is caught
    /// and logged; the reactor goes on. Once the reactor's `run` has
    /// returned (or the reactor is dropped), fails with
    /// [`io::ErrorKind::BrokenPipe`]: nothing would run the job.
    pub fn submit(&self, job: impl FnOnce(&mut Ctx<'_>) + Send + 'static) -> io::Result<()> {
        {
            let mut queue = self.shared.queue();
            if queue.closed {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the reactor has stopped: the job would not run",
                ));
            }
            queue.jobs.push(Box::new(job));
        }
        self.wake()
    }

    /// Begin the reactor's shutdown, as SIGTERM does: stop accepting,
    /// close every connection gracefully; its `run` returns when all are
    /// closed.
    pub fn stop(&self) -> io::Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        self.wake()
    }
}
