//! The summary at the end of a run, merged over the threads: a few human
//! lines, or one JSON object.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::generator::{Errors, Outcome, Tally};
use super::latency::Percentiles;
use super::schedule::Arrival;
use super::verdict::{self, Evidence, Verdict};
use super::LoadArgs;

#[derive(Debug, Serialize)]
pub struct ErrorCounts {
    pub connect_failed: u64,
    pub reset: u64,
    pub closed: u64,
    pub mismatch: u64,
}

impl From<Errors> for ErrorCounts {
    fn from(e: Errors) -> Self {
        ErrorCounts { connect_failed: e.connect_failed, reset: e.reset, closed: e.closed, mismatch: e.mismatch }
    }
}

/// What the generator itself cost: tells whether it, not the server, was
/// the bottleneck.
#[derive(Debug, Serialize)]
pub struct ClientCost {
    /// CPU time of the generator threads inside the window, added up.
    pub cpu_s: f64,
    /// `cpu_s` over the window: cores' worth used.
    pub cpu_util: f64,
    pub cpu_us_per_msg: f64,
    /// Each thread's CPU time over the window (1.0: a whole core).
    pub thread_cpu_util: Vec<f64>,
}

/// The summary of a run, as printed by `--json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub generator: &'static str,
    pub version: &'static str,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub target: String,
    pub threads: u32,
    pub conns: u32,
    pub depth: u32,
    /// `--size`: bytes per message (for 1|2|4 the payload, without header).
    pub size: usize,
    pub framing: String,
    /// Bytes of one message on the wire, each way (header included).
    pub wire_bytes: usize,
    /// `--duration` and `--warmup`, as asked.
    pub duration_s: f64,
    pub warmup_s: f64,
    /// The measured window, as it really was (rates divide by this).
    pub window_s: f64,
    /// From start to end, connecting and warm-up included.
    pub elapsed_s: f64,
    /// Connections that opened.
    pub connected: u32,
    /// Messages echoed, checked and timed inside the window.
    pub messages: u64,
    pub msgs_per_sec: f64,
    /// `msgs_per_sec * wire_bytes / 1e6`, one direction.
    pub mb_per_sec: f64,
    /// Closed loop: from each message's send. Open loop: the response
    /// time, from each message's due time.
    pub latency_us: Percentiles,
    /// Open loop: `--rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrival: Option<Arrival>,
    /// Open loop: `--send-window`, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_window_us: Option<u64>,
    /// Open loop: messages echoed per second (= `msgs_per_sec`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub achieved_rate: Option<f64>,
    /// Open loop: messages sent per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_us: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<Percentiles>,
    /// Open loop: messages unanswered at the end of the window, recorded
    /// with their wait so far (included in `latency_us.samples`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unanswered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verdict_reasons: Vec<String>,
    pub errors: ErrorCounts,
    pub client: ClientCost,
    /// Ended early by SIGINT/SIGTERM.
    pub interrupted: bool,
}

/// The threads' outcomes, merged.
pub struct Merged {
    pub tally: Tally,
    /// From the first thread's start of its window to the last one's end.
    pub window: Duration,
    pub thread_cpu: Vec<Duration>,
    pub thread_window: Vec<Duration>,
}

impl Merged {
    pub fn new(outcomes: &[Outcome]) -> Merged {
        let mut tally = Tally::default();
        let mut span: Option<(Instant, Instant)> = None;
        for o in outcomes {
            tally.add(&o.tally);
            if let Some((a, b)) = o.window {
                span = Some(span.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
            }
        }
        Merged {
            tally,
            window: span.map_or(Duration::ZERO, |(a, b)| b - a),
            thread_cpu: outcomes.iter().map(|o| o.cpu).collect(),
            thread_window: outcomes.iter().map(|o| o.window.map_or(Duration::ZERO, |(a, b)| b - a)).collect(),
        }
    }
}

impl Summary {
    pub fn new(args: &LoadArgs, wire_bytes: usize, m: &Merged, elapsed: Duration) -> Summary {
        let window = m.window.as_secs_f64();
        let per_sec = |n: u64| if window > 0.0 { n as f64 / window } else { 0.0 };
        let rate = per_sec(m.tally.messages);
        let cpu: f64 = m.thread_cpu.iter().map(Duration::as_secs_f64).sum();
        let thread_util: Vec<f64> = m
            .thread_cpu
            .iter()
            .zip(&m.thread_window)
            .map(|(c, w)| if w.is_zero() { 0.0 } else { round3(c.as_secs_f64() / w.as_secs_f64()) })
            .collect();
        let open = args.rate.is_some();
        let (verdict, reasons) = match args.rate {
            Some(asked) => {
                let lag_p99 = if m.tally.hist.lag.is_empty() { 0 } else { m.tally.hist.lag.value_at_quantile(0.99) };
                let (v, why) = verdict::judge(&Evidence {
                    rate: asked,
                    achieved: rate,
                    lag_p99: Duration::from_nanos(lag_p99),
                    thread_util: thread_util.clone(),
                });
                (Some(v), why)
            }
            None => (None, Vec::new()),
        };
        Summary {
            generator: "edgeloop load",
            version: env!("CARGO_PKG_VERSION"),
            mode: if open { "open" } else { "closed" },
            target: args.connect.to_string(),
            threads: args.threads,
            conns: args.conns,
            depth: args.depth,
            size: args.size,
            framing: args.framing.to_string(),
            wire_bytes,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            window_s: round3(window),
            elapsed_s: round3(elapsed.as_secs_f64()),
            connected: m.tally.opened,
            messages: m.tally.messages,
            msgs_per_sec: rate.round(),
            mb_per_sec: round3(rate * wire_bytes as f64 / 1e6),
            latency_us: Percentiles::of(&m.tally.hist.response),
            rate: args.rate,
            arrival: open.then_some(args.arrival),
            send_window_us: open.then_some(args.send_window),
            achieved_rate: open.then_some(rate.round()),
            sent_rate: open.then(|| per_sec(m.tally.sent).round()),
            service_us: open.then(|| Percentiles::of(&m.tally.hist.service)),
            send_lag_us: open.then(|| Percentiles::of(&m.tally.hist.lag)),
            unanswered: open.then_some(m.tally.unanswered),
            verdict,
            verdict_reasons: reasons,
            errors: m.tally.errors.into(),
            client: ClientCost {
                cpu_s: round3(cpu),
                cpu_util: if window > 0.0 { round3(cpu / window) } else { 0.0 },
                cpu_us_per_msg: if m.tally.messages > 0 { round3(cpu * 1e6 / m.tally.messages as f64) } else { 0.0 },
                thread_cpu_util: thread_util,
            },
            interrupted: m.tally.interrupted,
        }
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| {
            s.push_str(&format!("{k:<12}{v}\n"));
        };
        let pct = |p: &Percentiles| {
            format!("p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}", p.p50, p.p90, p.p99, p.p999, p.max)
        };
        match (self.rate, self.arrival, self.send_window_us) {
            (Some(rate), Some(arrival), Some(window)) => line(
                "mode",
                format!(
                    "open loop, {arrival} arrivals at {rate} msg/s{}; latency from each message's due time",
                    if window > 1 { format!(", sent in {window} us windows") } else { String::new() }
                ),
            ),
            _ => line(
                "mode",
                "closed loop: measures throughput; its latency hides stalls (coordinated omission: \
                 a stalled server delays only the few messages in flight); use --rate to measure latency"
                    .to_string(),
            ),
        }
        line(
            "target",
            format!(
                "{} ({} conns x depth {} on {} thread{}, {} B {} messages, {} B on the wire)",
                self.target,
                self.conns,
                self.depth,
                self.threads,
                if self.threads == 1 { "" } else { "s" },
                self.size,
                self.framing,
                self.wire_bytes
            ),
        );
        line(
            "window",
            format!(
                "{:.2} s after {} s warm-up{}",
                self.window_s,
                self.warmup_s,
                if self.interrupted { " (interrupted)" } else { "" }
            ),
        );
        match (self.rate, self.sent_rate) {
            (Some(rate), Some(sent)) => line(
                "messages",
                format!(
                    "{} ({:.0} msg/s achieved of {rate} asked, {sent:.0} msg/s sent)",
                    self.messages, self.msgs_per_sec
                ),
            ),
            _ => line("messages", format!("{} ({:.0} msg/s)", self.messages, self.msgs_per_sec)),
        }
        line("throughput", format!("{:.2} MB/s each way", self.mb_per_sec));
        match (&self.service_us, &self.send_lag_us) {
            (Some(service), Some(lag)) => {
                line("response us", format!("{}  (from due time)", pct(&self.latency_us)));
                line("service us", format!("{}  (from actual send)", pct(service)));
                line("send lag us", format!("{}  (actual send - due)", pct(lag)));
                if let Some(n) = self.unanswered.filter(|&n| n > 0) {
                    line("unanswered", format!("{n} at the end of the window (counted with their wait so far)"));
                }
            }
            _ => line("latency us", pct(&self.latency_us)),
        }
        let e = &self.errors;
        line(
            "errors",
            format!(
                "connect_failed {}  reset {}  closed {}  mismatch {}",
                e.connect_failed, e.reset, e.closed, e.mismatch
            ),
        );
        let busiest = self.client.thread_cpu_util.iter().copied().fold(0.0, f64::max);
        line(
            "client cpu",
            format!(
                "{:.2} s ({:.2} us/msg; busiest thread {:.0}% of a core)",
                self.client.cpu_s,
                self.client.cpu_us_per_msg,
                busiest * 100.0
            ),
        );
        if let Some(v) = self.verdict {
            line("verdict", v.name().to_string());
            for why in &self.verdict_reasons {
                line("", format!("- {why}"));
            }
        }
        s
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
