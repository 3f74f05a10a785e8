//! When each message of the open loop is due.
//!
//! Every connection has its own schedule at `R / conns` messages per
//! second. Times are nanoseconds since the run's origin, kept as `f64`
//! (exact to well below a nanosecond for days) so that rounding never
//! accumulates into a drift of the rate.
//!
//! - **fixed**: message `k` is due at `offset + k * gap`. The offsets are
//!   `ordinal / conns` of a gap, so the connections' schedules interleave
//!   evenly: all of them together send every `gap / conns`, instead of all
//!   at once every `gap` (wrk2 started every connection at the same instant,
//!   which turned a smooth rate into microbursts, wrk2#89). `k` is computed,
//!   not counted, so the grid never drifts.
//! - **poisson**: exponential gaps with the same mean, from a small seeded
//!   generator per connection (reproducible runs). A Poisson process is
//!   memoryless, so the first message is one exponential gap after the
//!   connection opened: the schedules are staggered by construction, and
//!   merged they are again a Poisson process at the total rate.
//!
//! A schedule never looks at the clock: the caller takes every message due
//! up to "now" (catching up after a late wake-up, with each late message
//! still timed from when it was due) and sleeps until [`Schedule::due`].

use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp1};

/// How messages are spaced in time (`--arrival`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Evenly spaced.
    Fixed,
    /// Exponential gaps with the same mean (a Poisson process).
    Poisson,
}

impl std::fmt::Display for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arrival::Fixed => "fixed",
            Arrival::Poisson => "poisson",
        })
    }
}

/// One connection's schedule.
#[derive(Debug)]
pub struct Schedule {
    /// Mean gap between two messages, in nanoseconds.
    gap: f64,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Fixed { offset: f64, k: u64 },
    Poisson { next: f64, rng: SmallRng },
}

impl Schedule {
    /// The schedule of connection `ordinal` of `conns` (over all threads),
    /// sending `rate` messages per second, whose first message may go at
    /// `opened` (ns since the origin) or later.
    pub fn new(arrival: Arrival, rate: f64, ordinal: u64, conns: u64, opened: u64) -> Schedule {
        let gap = 1e9 / rate;
        let kind = match arrival {
            Arrival::Fixed => {
                let offset = gap * ordinal as f64 / conns.max(1) as f64;
                // The first slot of this connection's grid at or after `opened`.
                let k = ((opened as f64 - offset) / gap).ceil().max(0.0) as u64;
                Kind::Fixed { offset, k }
            }
            Arrival::Poisson => {
                let mut rng = SmallRng::seed_from_u64(mix(ordinal));
                let first: f64 = Exp1.sample(&mut rng);
                Kind::Poisson { next: opened as f64 + first * gap, rng }
            }
        };
        Schedule { gap, kind }
    }

    /// When the next message is due (ns since the origin, rounded up).
    #[inline]
    pub fn due(&self) -> u64 {
        let t = match &self.kind {
            Kind::Fixed { offset, k } => offset + *k as f64 * self.gap,
            Kind::Poisson { next, .. } => *next,
        };
        t.ceil() as u64
    }

    /// The next message was taken: move on to the one after it.
    #[inline]
    pub fn advance(&mut self) {
        match &mut self.kind {
            Kind::Fixed { k, .. } => *k += 1,
            Kind::Poisson { next, rng } => {
                let e: f64 = Exp1.sample(rng);
                *next += e * self.gap;
            }
        }
    }
}

/// splitmix64: decorrelates the seeds of neighbouring connections.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(s: &mut Schedule, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let t = s.due();
                s.advance();
                t
            })
            .collect()
    }

    #[test]
    fn fixed_gaps_do_not_drift() {
        // 3 msg/s: a gap of 333 333 333.33 ns, which does not round evenly.
        let mut s = Schedule::new(Arrival::Fixed, 3.0, 0, 1, 0);
        let t = take(&mut s, 3_000_001);
        assert_eq!(t[0], 0);
        assert_eq!(t[3_000_000], 1_000_000 * 1_000_000_000);
        for w in t.windows(2).take(1000) {
            assert!((333_333_333..=333_333_334).contains(&(w[1] - w[0])), "{w:?}");
        }
    }

    #[test]
    fn fixed_schedules_interleave_evenly() {
        // 4 connections at 1000 msg/s each: merged, one message every 250 us.
        let conns = 4;
        let mut all: Vec<u64> =
            (0..conns).flat_map(|c| take(&mut Schedule::new(Arrival::Fixed, 1000.0, c, conns, 0), 100)).collect();
        all.sort_unstable();
        for w in all.windows(2) {
            assert_eq!(w[1] - w[0], 250_000, "{w:?}");
        }
    }

    #[test]
    fn a_late_connection_joins_its_grid_without_a_backlog() {
        let s = Schedule::new(Arrival::Fixed, 1000.0, 1, 4, 10_100_000);
        // Its grid is 0.25 ms + k ms: the first slot at or after 10.1 ms.
        assert_eq!(s.due(), 10_250_000);
        let s = Schedule::new(Arrival::Poisson, 1000.0, 1, 4, 10_100_000);
        assert!(s.due() >= 10_100_000);
    }

    #[test]
    fn poisson_gaps_have_the_mean_and_the_spread_of_an_exponential() {
        let rate = 2000.0;
        let n = 200_000;
        let t = take(&mut Schedule::new(Arrival::Poisson, rate, 7, 10, 0), n + 1);
        let gaps: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        let mean = gaps.iter().sum::<f64>() / n as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let cv = var.sqrt() / mean;
        assert!((mean / (1e9 / rate) - 1.0).abs() < 0.01, "mean gap {mean} ns");
        assert!((cv - 1.0).abs() < 0.02, "coefficient of variation {cv}");
        // Another connection draws other gaps.
        let other = take(&mut Schedule::new(Arrival::Poisson, rate, 8, 10, 0), 10);
        assert_ne!(other, t[..10]);
    }
}
