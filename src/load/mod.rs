//! `edgeloop load`: a closed-loop load generator for echo servers, built on
//! the same reactor as the servers (the client side of [`crate::Ctx`]:
//! [`crate::Ctx::connect`]).
//!
//! # How a run goes
//!
//! ```text
//!  start ── connecting ──┬── warm-up ──┬──── measured window ────┬── stop
//!          (≤ 512 connects│  (--warmup) │      (--duration)        │ Ctx::stop:
//!           in flight,    │  load runs, │  messages, latency and   │ flush, FIN,
//!           ≤ 10 s)       │  not counted│  client CPU are counted  │ close, exit
//! ```
//!
//! - **Connecting.** `--conns` non-blocking connects are started, at most
//!   512 in progress at once (a new one starts when one completes), so the
//!   server's accept queue is not flooded. A connection that is still not
//!   up 10 s after the start counts as failed, and so does a refused or
//!   reset one; failures are reported, not fatal, unless no connection
//!   opened at all (exit status 1 with the reason). More than 20 000
//!   connections to a loopback IPv4 address are spread over the source
//!   addresses 127.0.0.1, 127.0.0.2, ... (one source address has only about
//!   28 000 ephemeral ports).
//! - **Warm-up, then the window.** The load starts on each connection as
//!   soon as it opens. Once every connect has resolved, the warm-up runs for
//!   `--warmup` seconds, then the measured window for `--duration` seconds:
//!   only messages echoed inside the window are counted and timed, and the
//!   rates divide by the window's real length (read from the clock when the
//!   phase changes, on a 10 ms tick). Then every connection is closed
//!   gracefully and the summary printed: human lines on stdout, or one JSON
//!   object with `--json`. A progress line goes to stderr every second.
//!
//! # The closed loop
//!
//! Each connection keeps exactly `--depth` messages in flight: when it
//! opens, `depth` messages are queued at once; afterwards every message
//! that comes back completely is answered by one new message, and all the
//! new messages one read produced are queued together (the reactor writes
//! a connection's queue with one `sendmsg` per loop iteration). So the offered
//! load adapts to the server: a faster server gets more messages per
//! second, never a backlog, and the numbers measure the server's round trip
//! rather than queues in the generator (a closed-loop or "ping-pong"
//! benchmark; depth > 1 is pipelining).
//!
//! # Framing and verification
//!
//! The client reads in `raw` mode whatever the `--framing`: it knows the
//! exact byte stream it sent (every message is the same length on the
//! wire, see [`pattern`]) and an echo server must return exactly that
//! stream, header bytes and `\n` included. So it does not decode frames at
//! all: it counts bytes, and message `k` is complete when byte
//! `(k + 1) * wire_len` has arrived. Every echoed byte is compared with the
//! byte sent at that position (one `memcmp` against a slice of a template,
//! see [`pattern`]); the payload varies with the connection and the message
//! number, so a server that corrupts, drops, duplicates, reorders or mixes
//! up bytes is caught. A mismatch is counted, described on stderr (the
//! first few), and closes that connection; any mismatch makes the exit
//! status 1.
//!
//! # Latency
//!
//! Each message's send time is kept in a per-connection ring of `depth`
//! slots; echoes come back in order (TCP, one stream), so the message
//! completed next is always the oldest in flight (FIFO). Its latency is the
//! time from the `send` call that queued it to the read that completed it,
//! recorded in an HDR histogram (nanoseconds, 3 significant digits) and
//! reported as p50/p90/p99/p99.9/max in microseconds. The clock is read
//! once per read (per `on_frame` call), not per message.
//!
//! # Why it is fair, and cheap
//!
//! - Every server gets the same byte stream, the same connection count and
//!   depth, and is verified the same way; nothing depends on the server
//!   beyond its echo.
//! - The generator is one thread on one reactor, like the server it
//!   measures, and its hot path does no allocation and no formatting: per
//!   read, one clock reading; per message, a `memcmp`, a counter update and
//!   a histogram record. Short messages (up to 2 KiB on the wire) are built
//!   once, all 251 of them, and sent by reference with
//!   [`crate::Ctx::send_shared`] — no copy, no output buffer — when a read
//!   completes up to 4 of them; more are copied into one buffer and queued
//!   with one [`crate::Ctx::send`]. On a 2-core machine the generator is
//!   still often the bottleneck, so the
//!   summary reports the generator's own CPU time in the window
//!   (`client.cpu_util` near 1.0 means it was saturated, and the server's
//!   figure is a lower bound): pin the server and the generator to
//!   different cores (`taskset -c 0` / `taskset -c 1`) and compare servers
//!   under identical settings, alternating them.
//! - Latencies include the generator's own queueing (the time until its
//!   loop gets to a read), the same for every server.

mod generator;
pub mod pattern;
mod report;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::{Config, Framing, Reactor};
use generator::{Generator, Plan};
use pattern::Pattern;
use report::Summary;

/// Connections beyond this many to a loopback address use several source
/// addresses.
const SPREAD_ABOVE: u32 = 20_000;
/// Connections not up after this long count as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `edgeloop load` options.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Address of the echo server.
    #[arg(long, value_name = "ADDR")]
    pub connect: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// Messages kept in flight on each connection.
    #[arg(long, default_value_t = 1, value_name = "D", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub depth: u32,
    /// Bytes per message (line: including the \n; 1|2|4: the payload, without the header).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
    /// Framing of the messages: raw, line, 1, 2 or 4 (as the server's).
    #[arg(long, default_value = "raw", value_name = "F")]
    pub framing: Framing,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub duration: Duration,
    /// Load before the measured window, not counted, in seconds.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = parse_secs)]
    pub warmup: Duration,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is not a valid number of seconds"))
}

/// Run the generator as the command line asks; prints the summary.
pub fn run(args: LoadArgs) -> ExitCode {
    let pattern = match Pattern::new(args.framing, args.size) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    if args.duration.is_zero() {
        return usage("--duration must be more than 0");
    }
    let wire = pattern.wire_len();
    if let Err(e) = crate::sys::raise_nofile_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    let loopback_v4 = matches!(args.connect.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let source_addrs =
        if loopback_v4 && args.conns > SPREAD_ABOVE { args.conns.div_ceil(SPREAD_ABOVE).min(254) as u8 } else { 0 };
    let plan = Plan {
        addr: args.connect,
        conns: args.conns,
        depth: args.depth,
        warmup: args.warmup,
        duration: args.duration,
        connect_timeout: CONNECT_TIMEOUT,
        source_addrs,
        progress: true,
    };
    let config = Config {
        max_conns: args.conns as usize,
        // In flight per connection is bounded by depth; never pause.
        output: crate::OutputPolicy::new(usize::MAX, crate::OverLimit::Pause),
        send_timeout: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        tick: Duration::from_millis(10),
        handle_signals: true,
        drain_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let mut reactor = match Reactor::new(config) {
        Ok(r) => r,
        Err(e) => return fail(format_args!("cannot start the reactor: {e}")),
    };
    let generator = reactor.add_handler(Generator::new(plan, pattern));
    if let Err(e) = reactor.run() {
        return fail(format_args!("event loop failed: {e}"));
    }
    let Some(out) = reactor.handler::<Generator>(generator).map(Generator::outcome) else {
        return fail(format_args!("the generator is missing after the run"));
    };
    let summary = Summary::new(&args, wire, &out);
    let mut stdout = std::io::stdout().lock();
    let printed = if args.json {
        serde_json::to_writer(&mut stdout, &summary).map_err(std::io::Error::from).and_then(|_| writeln!(stdout))
    } else {
        stdout.write_all(summary.text().as_bytes())
    };
    let _ = printed.and_then(|_| stdout.flush());
    drop(stdout);

    if out.opened == 0 {
        let reason = out.connect_error.unwrap_or_else(|| probe(&args.connect));
        return fail(format_args!("all {} connections to {} failed: {reason}", args.conns, args.connect));
    }
    if out.errors.mismatch > 0 {
        return fail(format_args!("{} echoes differed from what was sent", out.errors.mismatch));
    }
    if out.interrupted {
        return ExitCode::SUCCESS;
    }
    if out.survived == 0 {
        let e = out.errors;
        return fail(format_args!(
            "all {} connections failed before the end of the run ({} reset, {} closed by the server, {} did not connect)",
            args.conns, e.reset, e.closed, e.connect_failed
        ));
    }
    if out.messages == 0 {
        return fail(format_args!("no message was echoed in the measured window"));
    }
    ExitCode::SUCCESS
}

/// Why connecting fails, when the reactor did not say: one blocking try.
fn probe(addr: &SocketAddr) -> String {
    match TcpStream::connect_timeout(addr, Duration::from_secs(2)) {
        Ok(_) => "connect failed (a test connection made afterwards succeeded)".to_string(),
        Err(e) => crate::sys::describe(&e),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\n\nFor more information, try 'edgeloop load --help'.");
    ExitCode::from(2)
}

fn fail(msg: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("edgeloop load: {msg}");
    ExitCode::from(1)
}
