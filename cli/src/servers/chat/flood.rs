//! Flood control: a token bucket per client (`--chat-rate R`).
//!
//! A room is only as fast as its slowest reader allows: one client writing
//! flat out (millions of lines a second on loopback) fills every other
//! member's output queue past `--max-outbuf` within a second, and they,
//! not the flooder, are disconnected. So each client has a bucket of `2R`
//! tokens, refilled at `R` per second, lazily from the loop's clock — no
//! system call, no timer while a client stays within its budget. Every
//! line costs a token, commands included.
//!
//! The line that empties the bucket is handled, then the chat turns the
//! client's delivery off ([`edgeloop::Active::Off`]): its further lines wait
//! in its read buffer (at most one read's worth), the reactor stops
//! reading it, and TCP pushes back on the flooder. A per-connection timer
//! re-arms it when about 10 ms' worth of lines (at least one) is available
//! again; the buffered lines are then delivered at once, in order.
//! Nothing is dropped and nobody is disconnected for flooding.
//!
//! With `--redis` the bucket is charged by the client's own server before
//! anything is published: a flooder costs Redis nothing more than a
//! well-behaved client at the same rate.

use std::time::{Duration, Instant};

/// One client's budget of lines.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    /// Lines the client may send now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl Bucket {
    /// A full bucket (a burst of `2 * rate` lines) at `now`.
    pub fn full(rate: f64, now: Instant) -> Bucket {
        Bucket { tokens: 2.0 * rate, refilled: now }
    }

    /// Charge one line at `now` to a client allowed `rate` lines per
    /// second. `Some(wait)`: the bucket ran dry; stop reading the client
    /// for `wait`, after which about 10 ms' worth of lines (at least one)
    /// is available again.
    pub fn spend(&mut self, rate: f64, now: Instant) -> Option<Duration> {
        let burst = 2.0 * rate;
        self.tokens = (self.tokens + (now - self.refilled).as_secs_f64() * rate).min(burst);
        self.refilled = now;
        self.tokens -= 1.0;
        if self.tokens >= 1.0 {
            return None;
        }
        let wanted = (rate / 100.0).clamp(1.0, burst);
        Some(Duration::from_secs_f64((wanted - self.tokens) / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_twice_the_rate_then_a_pause() {
        let now = Instant::now();
        let mut bucket = Bucket::full(100.0, now);
        // 200 tokens: the 199th line leaves 1, the 200th leaves 0 (dry).
        for _ in 0..199 {
            assert_eq!(bucket.spend(100.0, now), None);
        }
        let wait = bucket.spend(100.0, now).expect("dry after 2R lines");
        // About one line's worth (R/100 = 1 line at 100 lines/s): 10 ms.
        assert!(wait >= Duration::from_millis(9) && wait <= Duration::from_millis(11), "{wait:?}");
        // After the wait that line is handled, and the next one waits again:
        // at 100 lines per second, one line per 10 ms.
        assert!(bucket.spend(100.0, now + wait).is_some());
        // At 1000 lines per second, 10 lines per pause.
        let mut bucket = Bucket::full(1000.0, now);
        let wait = (0..2000).find_map(|_| bucket.spend(1000.0, now)).expect("dry");
        let later = now + wait;
        assert_eq!((0..8).filter_map(|_| bucket.spend(1000.0, later)).count(), 0);
        assert!((0..3).any(|_| bucket.spend(1000.0, later).is_some()));
    }
}
