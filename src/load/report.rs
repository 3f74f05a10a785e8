//! The summary at the end of a run: a few human lines, or one JSON object.

use serde::Serialize;

use super::generator::{Errors, Outcome};
use super::LoadArgs;

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    /// Messages whose latency was recorded (those echoed in the window).
    pub samples: u64,
}

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
/// the bottleneck (a `client_cpu_util` near 1.0 means one full core).
#[derive(Debug, Serialize)]
pub struct ClientCost {
    pub cpu_s: f64,
    pub cpu_util: f64,
    pub cpu_us_per_msg: f64,
}

/// The summary of a run, as printed by `--json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub generator: &'static str,
    pub version: &'static str,
    pub target: String,
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
    pub latency_us: Latency,
    pub errors: ErrorCounts,
    pub client: ClientCost,
    /// Ended early by SIGINT/SIGTERM.
    pub interrupted: bool,
}

impl Summary {
    pub fn new(args: &LoadArgs, wire_bytes: usize, out: &Outcome) -> Summary {
        let window = out.window.as_secs_f64();
        let rate = if window > 0.0 { out.messages as f64 / window } else { 0.0 };
        let h = &out.latency;
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        let empty = h.is_empty();
        let q = |q: f64| if empty { 0.0 } else { us(h.value_at_quantile(q)) };
        let cpu = out.cpu.as_secs_f64();
        Summary {
            generator: "edgeloop load",
            version: env!("CARGO_PKG_VERSION"),
            target: args.connect.to_string(),
            conns: args.conns,
            depth: args.depth,
            size: args.size,
            framing: args.framing.to_string(),
            wire_bytes,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            window_s: round3(window),
            elapsed_s: round3(out.elapsed.as_secs_f64()),
            connected: out.opened,
            messages: out.messages,
            msgs_per_sec: rate.round(),
            mb_per_sec: round3(rate * wire_bytes as f64 / 1e6),
            latency_us: Latency {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: if empty { 0.0 } else { us(h.max()) },
                mean: if empty { 0.0 } else { (h.mean() / 100.0).round() / 10.0 },
                samples: h.len(),
            },
            errors: out.errors.into(),
            client: ClientCost {
                cpu_s: round3(cpu),
                cpu_util: if window > 0.0 { round3(cpu / window) } else { 0.0 },
                cpu_us_per_msg: if out.messages > 0 { round3(cpu * 1e6 / out.messages as f64) } else { 0.0 },
            },
            interrupted: out.interrupted,
        }
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        let l = &self.latency_us;
        let e = &self.errors;
        format!(
            "target      {} ({} conns x depth {}, {} B {} messages, {} B on the wire)\n\
             window      {:.2} s after {} s warm-up{}\n\
             messages    {} ({:.0} msg/s)\n\
             throughput  {:.2} MB/s each way\n\
             latency us  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n\
             errors      connect_failed {}  reset {}  closed {}  mismatch {}\n\
             client cpu  {:.2} s ({:.0}% of a core, {:.2} us/msg)\n",
            self.target,
            self.conns,
            self.depth,
            self.size,
            self.framing,
            self.wire_bytes,
            self.window_s,
            self.warmup_s,
            if self.interrupted { " (interrupted)" } else { "" },
            self.messages,
            self.msgs_per_sec,
            self.mb_per_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            e.connect_failed,
            e.reset,
            e.closed,
            e.mismatch,
            self.client.cpu_s,
            self.client.cpu_util * 100.0,
            self.client.cpu_us_per_msg,
        )
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
