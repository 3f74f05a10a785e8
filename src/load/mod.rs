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
mod hgrm;
mod latency;
pub mod pattern;
mod plot;
mod progress;
mod report;
pub mod schedule;
mod verdict;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::{Config, Framing, HandlerId, OutputPolicy, OverLimit, Reactor};
use generator::{Generator, Open, Outcome, Plan};
use pattern::Pattern;
use progress::Shared;
use report::{Merged, Summary};
use schedule::Arrival;

/// Connections beyond this many to a loopback address use several source
/// addresses.
const SPREAD_ABOVE: u32 = 20_000;
/// Connections not up after this long count as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The phase clock (the window, the progress line); the open loop is paced
/// by per-connection timers, not by this.
const TICK: Duration = Duration::from_millis(10);

/// `edgeloop load` options.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Address of the echo server.
    #[arg(long, value_name = "ADDR")]
    pub connect: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// Closed loop: messages kept in flight on each connection.
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
    /// Open loop: R messages per second in total, sent on schedule whether or not replies came back.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Open loop: how messages are spaced in time.
    #[arg(long, value_enum, default_value_t = Arrival::Fixed, value_name = "KIND", requires = "rate")]
    pub arrival: Arrival,
    /// Generator threads (each its own reactor), sharing the connections.
    #[arg(long, default_value_t = 1, value_name = "T", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the latency distribution in HdrHistogram's percentile format (microseconds).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Draw latency by percentile, and msg/s and p99 per second, as one SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is not a valid number of seconds"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e9 => Ok(r),
        _ => Err(format!("'{s}' is not a rate in messages per second (more than 0, at most 1e9)")),
    }
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
    drop(pattern);
    if let Err(e) = crate::sys::raise_nofile_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    let loopback_v4 = matches!(args.connect.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let source_addrs =
        if loopback_v4 && args.conns > SPREAD_ABOVE { args.conns.div_ceil(SPREAD_ABOVE).min(254) as u8 } else { 0 };
    let plan = Plan {
        addr: args.connect,
        conns: args.conns,
        first: 0,
        stride: args.threads,
        depth: args.depth,
        open: args.rate.map(|r| Open { rate_per_conn: r / args.conns as f64, arrival: args.arrival }),
        warmup: args.warmup,
        duration: args.duration,
        connect_timeout: CONNECT_TIMEOUT,
        source_addrs,
    };
    let shared = Arc::new(Shared::new(args.threads, true, args.rate, wire));
    let outcomes = match run_threads(&args, &plan, &shared) {
        Ok(o) => o,
        Err(e) => return fail(format_args!("{e}")),
    };
    let out = Merged::new(&outcomes);
    let summary = Summary::new(&args, wire, &out, shared.origin.elapsed());
    let mut stdout = std::io::stdout().lock();
    let printed = if args.json {
        serde_json::to_writer(&mut stdout, &summary).map_err(std::io::Error::from).and_then(|_| writeln!(stdout))
    } else {
        stdout.write_all(summary.text().as_bytes())
    };
    let _ = printed.and_then(|_| stdout.flush());
    drop(stdout);
    if let Err(code) = write_files(&args, &out, &shared) {
        return code;
    }

    if out.opened == 0 {
        let reason = out.connect_error.unwrap_or_else(|| probe(&args.connect));
        return fail(format_args!("all {} connections to {} failed: {reason}", args.conns, args.connect));
    }
    if out.errors.mismatch > 0 {
        return fail(format_args!("{} echoes differed from what was sent", out.errors.mismatch));
    }
    if !out.interrupted {
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
    }
    match summary.verdict {
        Some(v) if v != verdict::Verdict::Ok => {
            eprintln!("edgeloop load: verdict {}: {}", v.name(), summary.verdict_reasons.join("; "));
            ExitCode::from(3)
        }
        _ => ExitCode::SUCCESS,
    }
}

/// T reactors on T threads: this thread runs the first (and takes the
/// signals), the others run on their own threads. The first reactor is
/// built before the others start: building it blocks SIGINT/SIGTERM in
/// this thread, the others inherit that mask, and so a signal always
/// reaches the first reactor's `signalfd` (which tells the others).
fn run_threads(args: &LoadArgs, plan: &Plan, shared: &Arc<Shared>) -> Result<Vec<Outcome>, String> {
    let mut first = build(Plan { first: 0, ..plan.clone() }, args, shared, true)?;
    let workers: Vec<_> = (1..args.threads)
        .map(|t| {
            let plan = Plan { first: t, ..plan.clone() };
            let (framing, size, shared) = (args.framing, args.size, Arc::clone(shared));
            std::thread::Builder::new().name(format!("load-{t}")).spawn(move || {
                let mut reactor = build_with(plan, framing, size, &shared, false)?;
                finish(&mut reactor)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    let mut error = None;
    match finish(&mut first) {
        Ok(o) => outcomes.push(o),
        Err(e) => error = Some(e),
    }
    for w in workers {
        let joined = w
            .map_err(|e| format!("cannot start a thread: {e}"))
            .and_then(|h| h.join().unwrap_or_else(|_| Err("a generator thread panicked".to_string())));
        match joined {
            Ok(o) => outcomes.push(o),
            Err(e) => error = error.or(Some(e)),
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(outcomes),
    }
}

/// A thread's reactor and the id of its generator.
type Built = (Reactor, HandlerId);

fn build(plan: Plan, args: &LoadArgs, shared: &Arc<Shared>, signals: bool) -> Result<Built, String> {
    build_with(plan, args.framing, args.size, shared, signals)
}

/// One thread's reactor and generator.
fn build_with(plan: Plan, framing: Framing, size: usize, shared: &Arc<Shared>, signals: bool) -> Result<Built, String> {
    let pattern = Pattern::new(framing, size)?;
    let config = Config {
        max_conns: (plan.conns.div_ceil(plan.stride) as usize).max(1),
        // The closed loop bounds what is in flight by depth; the open loop
        // queues what the kernel does not take yet and counts it (never
        // pause, never drop).
        output: OutputPolicy::new(usize::MAX, OverLimit::Pause),
        send_timeout: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        tick: TICK,
        handle_signals: signals,
        drain_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let mut reactor = Reactor::new(config).map_err(|e| format!("cannot start the reactor: {e}"))?;
    let generator = reactor.add_handler(Generator::new(plan, pattern, Arc::clone(shared)));
    Ok((reactor, generator))
}

/// Run one thread's reactor to the end; its outcome.
fn finish((reactor, generator): &mut Built) -> Result<Outcome, String> {
    reactor.run().map_err(|e| format!("event loop failed: {e}"))?;
    reactor
        .handler::<Generator>(*generator)
        .map(Generator::outcome)
        .ok_or_else(|| "the generator is missing after the run".to_string())
}

/// `--hgrm` and `--plot`.
fn write_files(args: &LoadArgs, out: &Merged, shared: &Shared) -> Result<(), ExitCode> {
    if let Some(path) = &args.hgrm {
        let written = std::fs::File::create(path).and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            hgrm::write(&mut w, &out.hist.response)?;
            w.flush()
        });
        if let Err(e) = written {
            return Err(fail(format_args!("cannot write {}: {}", path.display(), crate::sys::describe(&e))));
        }
    }
    if let Some(path) = &args.plot {
        let seconds = shared.timeline();
        let mode = match args.rate {
            Some(r) => format!("open loop, {} arrivals at {r} msg/s", args.arrival),
            None => format!("closed loop, depth {}", args.depth),
        };
        let title = format!("edgeloop load → {}: {}, {} conns, {} B", args.connect, mode, args.conns, args.size);
        let curves = if args.rate.is_some() {
            vec![
                ("response time (from due)", &out.hist.response),
                ("service time (from send)", &out.hist.service),
                ("send lag", &out.hist.lag),
            ]
        } else {
            vec![("latency (from send; hides stalls)", &out.hist.response)]
        };
        let p = plot::Plot { title, curves, seconds: &seconds, target: args.rate };
        if let Err(e) = plot::write(path, &p) {
            return Err(fail(format_args!("cannot write {}: {e}", path.display())));
        }
    }
    Ok(())
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
