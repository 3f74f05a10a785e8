//! What the generator threads share: the start of the warm-up, a stop
//! request, and one report per thread per second, merged into the
//! progress line and the timeline that `--plot` draws.
//!
//! Nothing here is on the hot path: each thread touches it once when its
//! connects have resolved, and once a second (a mutex and one histogram
//! `add`). Between those, a thread's counters and histograms are its own.
//!
//! Seconds are counted from one origin for all threads. A second is
//! complete when every thread still running has reported it; the thread
//! that completes it prints the progress line, so there is exactly one
//! line per second however many threads run.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::latency;

/// One second of the run, as plotted (and printed with `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Second {
    /// Seconds since the start, at the end of this second.
    pub t: f64,
    /// Messages echoed per second.
    pub msgs: f64,
    /// p99 of the response time of the messages echoed in this second.
    pub p99_us: f64,
    /// Inside the measured window (not connecting, not warm-up).
    pub measured: bool,
}

/// One thread's account of one second.
pub struct Report<'a> {
    /// The reporting thread (0..threads).
    pub thread: u32,
    /// Which second (1 is the first second after the origin).
    pub second: u64,
    /// Seconds this report covers (about 1; less for the last one).
    pub dt: f64,
    pub msgs: u64,
    /// Response times of the messages echoed in it.
    pub hist: &'a Histogram<u64>,
    pub live: u32,
    pub in_flight: u64,
    /// Of those in flight, messages still in the generator's own output
    /// queues at that instant: handed to the reactor, not yet written to
    /// the socket (the kernel's send buffer was full, or the loop had not
    /// flushed them yet).
    pub queued: u64,
    pub phase: &'static str,
    pub measured: bool,
}

struct Acc {
    reported: u32,
    rate: f64,
    hist: Histogram<u64>,
    live: u64,
    in_flight: u64,
    queued: u64,
    phase: &'static str,
    measured: bool,
}

struct Seconds {
    /// Per thread: the last second it reported, and whether it has ended
    /// (then it reports no more).
    last: Vec<u64>,
    done: Vec<bool>,
    open: BTreeMap<u64, Acc>,
    timeline: Vec<Second>,
}

/// Shared by every generator thread of a run.
pub struct Shared {
    pub threads: u32,
    /// The clock's origin for every thread: schedules and seconds.
    pub origin: Instant,
    /// Print the progress line.
    pub show: bool,
    /// `--rate`, for the progress line.
    pub target: Option<f64>,
    pub wire_len: usize,
    resolved: AtomicU32,
    go: OnceLock<Instant>,
    stop: AtomicBool,
    seconds: Mutex<Seconds>,
}

impl Shared {
    pub fn new(threads: u32, show: bool, target: Option<f64>, wire_len: usize) -> Shared {
        Shared {
            threads,
            origin: Instant::now(),
            show,
            target,
            wire_len,
            resolved: AtomicU32::new(0),
            go: OnceLock::new(),
            stop: AtomicBool::new(false),
            seconds: Mutex::new(Seconds {
                last: vec![0; threads as usize],
                done: vec![false; threads as usize],
                open: BTreeMap::new(),
                timeline: Vec::new(),
            }),
        }
    }

    /// This thread's connects have all resolved. The last thread to say
    /// so starts the warm-up for everyone, so that all threads measure the
    /// same window.
    pub fn resolved(&self, now: Instant) {
        if self.resolved.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            let _ = self.go.set(now);
        }
    }

    /// When the warm-up began, once every thread has connected.
    pub fn go(&self) -> Option<Instant> {
        self.go.get().copied()
    }

    /// Ask every thread to end the run (a signal reached one of them).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Seconds> {
        // A thread that panicked holding the lock left plain numbers behind:
        // still usable.
        self.seconds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A thread's report for one second.
    pub fn report(&self, r: Report<'_>) {
        let mut s = self.lock();
        let acc = s.open.entry(r.second).or_insert_with(|| Acc {
            reported: 0,
            rate: 0.0,
            hist: latency::histogram(),
            live: 0,
            in_flight: 0,
            queued: 0,
            phase: r.phase,
            measured: r.measured,
        });
        acc.reported += 1;
        if r.dt > 0.0 {
            acc.rate += r.msgs as f64 / r.dt;
        }
        // ok: same bounds as every histogram of the run.
        acc.hist.add(r.hist).expect("histograms with equal bounds");
        acc.live += r.live as u64;
        acc.in_flight += r.in_flight;
        acc.queued += r.queued;
        acc.measured &= r.measured;
        if let Some(last) = s.last.get_mut(r.thread as usize) {
            *last = (*last).max(r.second);
        }
        self.complete(&mut s);
    }

    /// A thread has finished (its last second is reported).
    pub fn thread_done(&self, thread: u32) {
        let mut s = self.lock();
        if let Some(done) = s.done.get_mut(thread as usize) {
            *done = true;
        }
        self.complete(&mut s);
    }

    /// Close, in order, every second that each thread has reported or
    /// will never report (it ended before it).
    fn complete(&self, s: &mut Seconds) {
        loop {
            let Some((&second, _)) = s.open.first_key_value() else { return };
            let waiting = s.last.iter().zip(&s.done).any(|(&last, &done)| last < second && !done);
            if waiting {
                return;
            }
            let Some(acc) = s.open.remove(&second) else { return };
            let p99 = if acc.hist.is_empty() { 0.0 } else { latency::us(acc.hist.value_at_quantile(0.99)) };
            s.timeline.push(Second { t: second as f64, msgs: acc.rate.round(), p99_us: p99, measured: acc.measured });
            if self.show {
                self.print(second, &acc, p99);
            }
        }
    }

    fn print(&self, second: u64, acc: &Acc, p99: f64) {
        let mb = acc.rate * self.wire_len as f64 / 1e6;
        let target = self.target.map_or(String::new(), |r| format!(" (target {r:.0})"));
        let queued = if acc.queued > 0 { format!(", {} queued", acc.queued) } else { String::new() };
        let _ = writeln!(
            std::io::stderr().lock(),
            "[{second:>3}s] {:.0} msg/s{target}  {mb:.1} MB/s  p99 {}  {} conns  {} in flight{queued}{}",
            acc.rate,
            human_us(p99),
            acc.live,
            acc.in_flight,
            acc.phase,
        );
    }

    /// Every completed second, in order.
    pub fn timeline(&self) -> Vec<Second> {
        self.lock().timeline.clone()
    }
}

/// Microseconds with a unit that fits: "87 us", "12.3 ms", "1.20 s".
pub fn human_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e4 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(s: &Shared, thread: u32, second: u64, msgs: u64, hist: &Histogram<u64>) {
        s.report(Report {
            thread,
            second,
            dt: 1.0,
            msgs,
            hist,
            live: 1,
            in_flight: 0,
            queued: 0,
            phase: "",
            measured: true,
        });
    }

    #[test]
    fn a_second_completes_when_every_running_thread_reported() {
        let s = Shared::new(2, false, None, 64);
        let mut h = latency::histogram();
        h.record(1000).unwrap();
        report(&s, 0, 1, 10, &h);
        assert!(s.timeline().is_empty());
        report(&s, 0, 2, 10, &h);
        report(&s, 1, 1, 5, &h);
        let t = s.timeline();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].msgs, 15.0);
        // Thread 0 ends after reporting second 2: it still waits for thread 1.
        s.thread_done(0);
        assert_eq!(s.timeline().len(), 1);
        report(&s, 1, 2, 5, &h);
        assert_eq!(s.timeline().len(), 2);
        // Thread 1 ends too: nothing more to wait for.
        report(&s, 1, 3, 5, &h);
        assert_eq!(s.timeline().len(), 3);
        s.thread_done(1);
    }

    #[test]
    fn the_last_thread_to_connect_starts_the_warm_up() {
        let s = Shared::new(2, false, None, 64);
        s.resolved(Instant::now());
        assert!(s.go().is_none());
        s.resolved(Instant::now());
        assert!(s.go().is_some());
    }
}
