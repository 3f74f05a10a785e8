//! Deadlines: idle timeout, send timeout, and the linger after a graceful
//! close, for every connection, in one min-heap with lazy deletion.
//!
//! Time is a `u64` count of milliseconds since the reactor started, read
//! once per loop iteration ("now" does not move while a batch of events is
//! handled, as in libuv). `0` means "no deadline".
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

/// Milliseconds since the reactor's clock started; 0 is "never".
pub type Millis = u64;

/// The reactor's clock: a monotonic origin and the "now" of this iteration.
pub struct Clock {
    origin: Instant,
    now: Millis,
}

impl Clock {
    pub fn new() -> Clock {
        // Start at 1 so that 0 can mean "no deadline".
        Clock { origin: Instant::now(), now: 1 }
    }

    /// Read the time once for this iteration.
    pub fn tick(&mut self) -> Millis {
        self.now = self.origin.elapsed().as_millis() as Millis + 1;
        self.now
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    /// A deadline `after` from now (0 when `after` is zero: disabled). At
    /// least a millisecond away, and saturating: a huge timeout means
    /// "never", not a wrapped-around "now".
    pub fn after(&self, after: Duration) -> Millis {
        if after.is_zero() {
            return 0;
        }
        let ms = Millis::try_from(after.as_millis()).unwrap_or(Millis::MAX).max(1);
        self.now.saturating_add(ms)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The earlier of two deadlines, where 0 means "none".
pub fn earliest(a: Millis, b: Millis) -> Millis {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// A min-heap of `(deadline, key)` with lazy deletion (see the module docs).
#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Millis, usize)>>,
}

impl Deadlines {
    /// Make sure `key` will be looked at no later than `due`. `scheduled` is
    /// the connection's record of its earliest pending entry.
    pub fn schedule(&mut self, key: usize, due: Millis, scheduled: &mut Millis) {
        if due != 0 && (*scheduled == 0 || due < *scheduled) {
            self.heap.push(Reverse((due, key)));
            *scheduled = due;
        }
    }

    /// The earliest entry's time, if any (may be stale: waking for it is
    /// harmless).
    pub fn next(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((due, _))| *due)
    }

    /// Pop one entry that is due at `now`: `(key, the time it was pushed
    /// for)`. The caller checks it against the connection's `scheduled`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(usize, Millis)> {
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
    pub fn retain(&mut self, mut live: impl FnMut(usize, Millis) -> bool) {
        self.heap.retain(|Reverse((due, key))| live(*key, *due));
    }
}

/// The `epoll_wait` timeout for a deadline: rounded *up* to whole
/// milliseconds by construction (deadlines are whole milliseconds and the
/// clock truncates), so a wake-up is never early enough to find nothing due
/// and spin with a zero timeout — mio's lesson.
pub fn wait_timeout(now: Millis, due: Option<Millis>) -> i32 {
    match due {
        None => -1,
        Some(due) => due.saturating_sub(now).min(i32::MAX as u64) as i32,
    }
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
        assert_eq!(clock.after(Duration::from_secs(u64::MAX)), Millis::MAX);
        assert_eq!(clock.after(Duration::from_micros(10)), clock.now() + 1);
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
        assert_eq!(wait_timeout(10, Some(5)), 0);
        assert_eq!(wait_timeout(10, Some(15)), 5);
        assert_eq!(wait_timeout(10, None), -1);
    }
}
