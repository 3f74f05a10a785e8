//! The three latency histograms of a run, and their percentiles.
//!
//! ```text
//!        due            sent                 echoed
//!  ───────┼───────────────┼────────────────────────┼──────▶ time
//!         │◀─ send lag ──▶│◀───── service time ────▶│
//!         │◀──────────── response time ────────────▶│
//! ```
//!
//! - **response time**, from when the message was *due* to when its echo
//!   was complete: what a user arriving on schedule would have waited. In
//!   the closed loop a message is due when it is sent, so it equals the
//!   service time.
//! - **service time**, from the actual send: what the server (and the
//!   network, and the generator's own read path) took.
//! - **send lag**, how late the generator sent against its own schedule.
//!   Large means the generator, not the server, shaped the numbers.
//!
//! All three are HDR histograms of nanoseconds with 3 significant digits,
//! one set per thread, merged exactly with [`Histogram::add`] at the end
//! (percentiles of the merged counts, never averages of percentiles).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value kept exactly: one hour (larger ones are clamped to it).
pub const MAX_NS: u64 = 3_600_000_000_000;

/// An empty histogram of nanoseconds, 1 ns to [`MAX_NS`], 3 digits.
pub fn histogram() -> Histogram<u64> {
    // ok: constant, valid bounds; no input reaches this.
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

/// Record `ns` (clamped into range: a value is never dropped).
#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.min(MAX_NS));
}

/// Response time, service time and send lag, in nanoseconds.
#[derive(Clone, Debug)]
pub struct Histograms {
    pub response: Histogram<u64>,
    pub service: Histogram<u64>,
    pub lag: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms { response: histogram(), service: histogram(), lag: histogram() }
    }
}

impl Histograms {
    /// One message, `due <= sent <= done` (ns on one clock).
    #[inline]
    pub fn record(&mut self, due: u64, sent: u64, done: u64) {
        record(&mut self.response, done.saturating_sub(due));
        record(&mut self.service, done.saturating_sub(sent));
        record(&mut self.lag, sent.saturating_sub(due));
    }

    pub fn reset(&mut self) {
        self.response.reset();
        self.service.reset();
        self.lag.reset();
    }

    /// Add another thread's counts (same bounds: cannot fail).
    pub fn add(&mut self, other: &Histograms) {
        for (mine, theirs) in
            [(&mut self.response, &other.response), (&mut self.service, &other.service), (&mut self.lag, &other.lag)]
        {
            // ok: every histogram here has the same bounds, and they cover
            // every value recorded (values are clamped on the way in).
            mine.add(theirs).expect("histograms with equal bounds");
        }
    }
}

/// Percentiles of one histogram, in microseconds (3 decimals: exact to the
/// nanosecond, so `max` equals the `.hgrm` file's `Max`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    /// Values recorded.
    pub samples: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |q: f64| us(h.value_at_quantile(q));
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: us(h.max()),
            mean: (h.mean()).round() / 1000.0,
            samples: h.len(),
        }
    }
}

/// Nanoseconds as microseconds.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_percentiles_are_those_of_all_values() {
        let mut a = Histograms::default();
        let mut b = Histograms::default();
        // Thread a: 99 fast messages; thread b: 1 slow one, 5 ms late.
        for i in 0..99 {
            a.record(i * 1000, i * 1000 + 10, i * 1000 + 50_000);
        }
        b.record(0, 5_000_000, 6_000_000);
        a.add(&b);
        let r = Percentiles::of(&a.response);
        assert_eq!(r.samples, 100);
        assert!((r.p50 - 50.0).abs() < 0.05, "{r:?}");
        assert!((r.max - 6000.0).abs() < 6.0, "{r:?}");
        let lag = Percentiles::of(&a.lag);
        assert!((lag.max - 5000.0).abs() < 5.0, "{lag:?}");
        assert_eq!(lag.p50, 0.01);
        let s = Percentiles::of(&a.service);
        assert!((s.max - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn clamped_not_dropped() {
        let mut h = histogram();
        record(&mut h, u64::MAX);
        record(&mut h, 0);
        assert_eq!(h.len(), 2);
    }
}
