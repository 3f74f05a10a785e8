//! Deadlines: idle timeout, send timeout, connect timeout, the linger
//! after a graceful close, and the application's own timers, for every
//! connection, in one min-heap with lazy deletion.
//!
//! Time is a `u64` count of microseconds since the reactor started, read
//! once per loop iteration ("now" does not move while a batch of events is
//! handled, as in libuv). `0` means "no deadline". Microseconds, not the
//! milliseconds of `epoll_wait`, because the loop waits with
//! `epoll_pwait2`, whose timeout is a `timespec`: an open-loop load
//! generator needs sub-millisecond schedules.
//!
//! Each connection keeps its own deadlines and the one deadline it is
//! currently `scheduled` under. Pushing the new deadline on every read
//! would flood the heap, so the heap is lazy:
//!
//! - when a deadline moves *later* (activity), nothing is pushed; the old
//!   entry fires early, finds the connection's real deadline still ahead,
//!   and is pushed again at that time;
//! - when a deadline moves *earlier* than the scheduled one, a new entry is
//!   pushed; the old one becomes stale;
//! - an entry whose time differs from the connection's `scheduled` value
//!   is stale and skipped (this also covers a slab key reused by a newer
//!   connection).
//!
//! So each live connection has at most a couple of entries in the heap,
//! touching the heap costs O(log n) only when a deadline is first set, and
//! activity costs one store. A closed connection's entries stay until they
//! are due, or until the reactor sweeps them out when stale entries
//! outnumber the live connections ([`Deadlines::retain`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Microseconds since the reactor's clock started; 0 is "never".
pub type Micros = u64;

/// The reactor's clock: a monotonic origin and the "now" of this iteration.
pub struct Clock {
    origin: Instant,
    now: Micros,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        // Start at 1 so that 0 can mean "no deadline".
        Clock { origin: Instant::now(), now: 1 }
    }

    /// Read the time once for this iteration.
    pub fn tick(&mut self) -> Micros {
        self.now = self.origin.elapsed().as_micros() as Micros + 1;
        self.now
    }

    /// This iteration's "now".
    pub fn now(&self) -> Micros {
        self.now
    }

    /// A deadline `after` from now (0 when `after` is zero: disabled). At
    /// least a microsecond away, and saturating: a huge timeout means
    /// "never", not a wrapped-around "now".
    pub fn after(&self, after: Duration) -> Micros {
        if after.is_zero() {
            return 0;
        }
        let us = Micros::try_from(after.as_micros()).unwrap_or(Micros::MAX).max(1);
        self.now.saturating_add(us)
    }

    /// The `Instant` of this iteration's "now".
    pub fn instant(&self) -> Instant {
        self.origin + Duration::from_micros(self.now - 1)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The earlier of two deadlines, where 0 means "none".
pub fn earliest(a: Micros, b: Micros) -> Micros {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// A min-heap of `(deadline, key)` with lazy deletion (see the module docs).
#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Micros, usize)>>,
}

impl Deadlines {
    /// Make sure `key` will be looked at no later than `due`. `scheduled` is
    /// the connection's record of its earliest pending entry.
    pub fn schedule(&mut self, key: usize, due: Micros, scheduled: &mut Micros) {
        if due != 0 && (*scheduled == 0 || due < *scheduled) {
            self.heap.push(Reverse((due, key)));
            *scheduled = due;
        }
    }

    /// The earliest entry's time, if any (may be stale: waking for it is
    /// harmless).
    pub fn next(&self) -> Option<Micros> {
        self.heap.peek().map(|Reverse((due, _))| *due)
    }

    /// Pop one entry that is due at `now`: `(key, the time it was pushed
    /// for)`. The caller checks it against the connection's `scheduled`.
    pub fn pop_due(&mut self, now: Micros) -> Option<(usize, Micros)> {
        match self.heap.peek() {
            Some(Reverse((due, _))) if *due <= now => self.heap.pop().map(|Reverse((due, key))| (key, due)),
            _ => None,
        }
    }

    /// Entries in the heap, live or stale.
    pub fn entries(&self) -> usize {
        self.heap.len()
    }

    /// Keep only the entries for which `live(key, due)` holds: a sweep for
    /// the stale entries of connections that are gone.
    pub fn retain(&mut self, mut live: impl FnMut(usize, Micros) -> bool) {
        self.heap.retain(|Reverse((due, key))| live(*key, *due));
    }
}

/// The `epoll_pwait2` timeout for a deadline (`None`: wait forever). It
/// is never early: deadlines are whole microseconds and the clock
/// truncates, so after sleeping `due - now` the clock reads at least
/// `due`, and a wake-up never finds nothing due and spins with a zero
/// timeout — mio's lesson, which it learned rounding milliseconds.
pub fn wait_timeout(now: Micros, due: Option<Micros>) -> Option<Duration> {
    due.map(|due| Duration::from_micros(due.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_deadline_pushes_later_one_does_not() {
        let mut d = Deadlines::default();
        let mut scheduled = 0;
        d.schedule(7, 100, &mut scheduled);
        d.schedule(7, 150, &mut scheduled);
        assert_eq!((d.entries(), scheduled), (1, 100));
        d.schedule(7, 50, &mut scheduled);
        assert_eq!((d.entries(), scheduled), (2, 50));
        assert_eq!(d.pop_due(49), None);
        assert_eq!(d.pop_due(60), Some((7, 50)));
        // The 100 entry is now stale for a connection scheduled at 50.
        assert_eq!(d.pop_due(100), Some((7, 100)));
    }

    #[test]
    fn earliest_ignores_zero() {
        assert_eq!(earliest(0, 5), 5);
        assert_eq!(earliest(5, 0), 5);
        assert_eq!(earliest(3, 5), 3);
        assert_eq!(earliest(0, 0), 0);
    }

    #[test]
    fn huge_timeouts_saturate_instead_of_wrapping() {
        let clock = Clock::new();
        assert_eq!(clock.after(Duration::from_secs(u64::MAX)), Micros::MAX);
        assert_eq!(clock.after(Duration::from_nanos(10)), clock.now() + 1);
        assert_eq!(clock.after(Duration::from_millis(2)), clock.now() + 2000);
        assert_eq!(clock.after(Duration::ZERO), 0);
    }

    #[test]
    fn retain_sweeps_stale_entries() {
        let mut d = Deadlines::default();
        let (mut a, mut b) = (0, 0);
        d.schedule(1, 10, &mut a);
        d.schedule(2, 20, &mut b);
        d.retain(|key, _| key == 2);
        assert_eq!(d.entries(), 1);
        assert_eq!(d.pop_due(100), Some((2, 20)));
    }

    #[test]
    fn timeout_never_negative() {
        assert_eq!(wait_timeout(10, Some(5)), Some(Duration::ZERO));
        assert_eq!(wait_timeout(10, Some(15)), Some(Duration::from_micros(5)));
        assert_eq!(wait_timeout(10, None), None);
    }
}
