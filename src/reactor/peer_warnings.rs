//! Warnings that a peer can cause — a frame over the limit, a stream cut
//! inside a frame, a client that never reads — are rate-limited per
//! reactor. A hostile client that opens connection after connection to
//! send one bad header must cost only those connections, not the
//! operator's disk or the other lines of the log: at most
//! [`PER_SECOND`] such lines a second are written, and the next line that
//! gets through says how many were not. Monitoring loses nothing: the
//! close counters (`--stats`, `/metrics`) count every event.

use crate::timer::Micros;

/// Peer-caused warning lines written per second, at most.
pub const PER_SECOND: u32 = 10;

#[derive(Debug, Default)]
pub(super) struct PeerWarnings {
    window_start: Micros,
    written: u32,
    held_back: u64,
}

impl PeerWarnings {
    /// Whether a warning may be written at `now` (µs); if not, it is
    /// counted. The first one written after some were held back is
    /// preceded by their count.
    pub fn allow(&mut self, now: Micros) -> bool {
        if now >= self.window_start + 1_000_000 {
            self.window_start = now;
            self.written = 0;
        }
        if self.written == PER_SECOND {
            self.held_back += 1;
            return false;
        }
        self.written += 1;
        // Taken out of the macro: its arguments are not evaluated when
        // warnings are not enabled.
        let held_back = std::mem::take(&mut self.held_back);
        if held_back > 0 {
            log::warn!(
                "{held_back} more warnings caused by peers were not logged (at most {PER_SECOND} a second; the counters have every event)"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_a_second_then_silence_until_the_next_second() {
        let mut w = PeerWarnings::default();
        let t0 = 5_000_000;
        assert!((0..PER_SECOND).all(|i| w.allow(t0 + i as u64)));
        assert!(!w.allow(t0 + 10));
        assert!(!w.allow(t0 + 999_999));
        assert_eq!(w.held_back, 2);
        assert!(w.allow(t0 + 1_000_000));
        assert_eq!(w.held_back, 0, "the count is written with the next line");
        assert!((1..PER_SECOND).all(|i| w.allow(t0 + 1_000_000 + i as u64)));
        assert!(!w.allow(t0 + 1_500_000));
    }
}
