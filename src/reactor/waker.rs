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
    jobs: Mutex<Vec<Job>>,
    stop: AtomicBool,
}

impl Shared {
    pub(super) fn new() -> io::Result<Shared> {
        Ok(Shared { eventfd: sys::eventfd()?, jobs: Mutex::new(Vec::new()), stop: AtomicBool::new(false) })
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
        let jobs = std::mem::take(&mut *self.jobs.lock().unwrap_or_else(|e| e.into_inner()));
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
    /// and logged; the reactor goes on.
    pub fn submit(&self, job: impl FnOnce(&mut Ctx<'_>) + Send + 'static) -> io::Result<()> {
        self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(job));
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
