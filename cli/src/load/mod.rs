//! `edgeloop load`: a load generator for echo servers that cannot lie,
//! built on the same reactor as the servers (the client side of
//! [`edgeloop::Ctx`]: [`edgeloop::Ctx::connect`], [`edgeloop::Ctx::set_timer`]).
//!
//! # Two ways to load a server
//!
//! ```text
//!  closed loop (no --rate)               open loop (--rate R)
//!  send ─▶ wait for the echo ─▶ send     send on a schedule, echoes or not
//!  the server sets the pace              the schedule sets the pace
//!  measures throughput                   measures latency at a given load
//! ```
//!
//! - **Closed loop.** Each connection keeps exactly `--depth` messages in
//!   flight: when it opens, `depth` messages are queued at once; afterwards
//!   every message that comes back completely is answered by one new
//!   message. The offered load adapts to the server: a faster server gets
//!   more messages per second, never a backlog ("ping-pong"; depth > 1 is
//!   pipelining). Latency is timed from each message's send. Good for
//!   throughput, bad for latency: see the next section.
//! - **Open loop.** `--rate R` messages per second in total, `R / conns` on
//!   each connection, each on its own schedule ([`schedule`]: `fixed`
//!   spacing with staggered start offsets, or `poisson` arrivals with
//!   exponential gaps). Sends are driven by one reactor timer per
//!   connection ([`edgeloop::Ctx::set_timer`], microsecond precision; each
//!   generator thread sets its timer slack to 1 ns), never by sleeps, and
//!   never wait for replies: a connection may have any number of messages
//!   in flight. What the kernel's send buffer does not take yet is queued
//!   in the reactor and counted (the progress line's "queued"), never
//!   dropped or skipped. A wake-up that comes late sends every message
//!   that fell due meanwhile at once, each still timed from when it was
//!   due; and every callback (a read, a timer) ends by sending what has
//!   fallen due on any connection, so a busy loop iteration does not hold
//!   the sends back until its timers run. Nothing is ever sent early.
//! - **Send window.** `--send-window US` (default 1 µs, at most 500) trades
//!   precision for cost. Time is cut into windows of US microseconds on
//!   one grid for all of a thread's connections; a message is sent once
//!   its window has closed, so the messages due in one window share one
//!   wake-up, go out back to back, and their echoes tend to come back
//!   together. Each message is up to one window late, and that lateness
//!   is measured like any other (the send lag; the response time still
//!   counts from the due time). On a VM the wake-ups, not the sends, are
//!   most of a generator's cost at moderate rates (BENCHMARKS.md, "The load
//!   generator's own cost"): a window of a few hundred microseconds
//!   roughly halves it, the way tcpkali's 1 ms timer does — except that
//!   here the price is shown.
//!
//! # Coordinated omission
//!
//! A closed-loop generator *coordinates* with the server: while the server
//! stalls, it stops sending, so the stall delays only the few messages in
//! flight, and a 0.5 s freeze among 100 000 fast messages moves the p99 not
//! at all. Real users do not wait for each other; they would have kept
//! arriving, and every one of them would have waited. So the open loop
//! times each message from the moment it was *due* on the schedule (as
//! wrk2 does): a stall shows in every message it delayed. That is not the
//! same as HdrHistogram's `record_correct`, which invents the missing
//! samples after the fact from an expected interval; here every sample is
//! a real message. The closed loop's summary says that its latency hides
//! stalls.
//!
//! # Three histograms
//!
//! Per message, in the open loop (`src/load/latency.rs`): the **response time**
//! from the due time to the complete echo (the headline `latency_us`), the
//! **service time** from the actual send, and the **send lag**, actual
//! send minus due: how late the generator was against its own schedule.
//! A response time far above the service time means messages waited
//! before they were sent — in the generator (then the send lag is large)
//! or, with a small send lag, in the connection's queues behind a slow
//! server. Each thread keeps its own HDR histograms (nanoseconds, 3
//! significant digits); they are merged exactly with
//! `hdrhistogram::Histogram::add`. Messages still unanswered when the
//! window closes are recorded with their wait so far (a lower bound), so a
//! stall at the very end is not dropped either.
//!
//! # The verdict
//!
//! An open-loop run ends with a verdict (`src/load/verdict.rs`): `ok` when the
//! achieved rate (echoes per second in the window) was at least 99 % of R
//! and the send lag's p99 at most 1 ms; otherwise `generator_behind` if a
//! generator thread used 90 % of a core or more (measured per thread with
//! `CLOCK_THREAD_CPUTIME_ID`: then the figures describe the generator), or
//! `server_behind`. A verdict other than `ok` prints the reasons and exits
//! with status 3: a rate silently not met (wrk2#28) is not a result.
//!
//! # How a run goes
//!
//! ```text
//!  start ── connecting ──┬── warm-up ──┬──── measured window ────┬── stop
//!          (≤ 512 connects│  (--warmup) │      (--duration)        │ Ctx::stop:
//!           in flight per │  load runs, │  messages, latency and   │ flush, FIN,
//!           thread, ≤ 10 s│  not counted│  client CPU are counted  │ close, exit
//! ```
//!
//! - **Threads.** `--threads T` runs T reactors on T threads; thread `t`
//!   opens connections `t, t + T, t + 2T, ...`, so schedules and payloads
//!   are staggered over all of them as if one thread ran them. The threads
//!   share nothing on the hot path: they meet once when all have connected
//!   (the last one starts everyone's warm-up, so all measure the same
//!   window), once a second to merge the progress line (`src/load/progress.rs`), and
//!   at the end, when their histograms and counters are merged into one
//!   summary. A signal reaches the first thread, which tells the others.
//! - **Connecting.** `--conns` non-blocking connects are started, at most
//!   512 in progress per thread (a new one starts when one completes), so
//!   the server's accept queue is not flooded. A connection that is not up
//!   within 10 s counts as failed, and so does a refused or reset one;
//!   failures are reported, not fatal, unless no connection opened at all
//!   (exit status 1 with the reason). More than 10 000 connections to a
//!   loopback IPv4 address are spread over the source addresses 127.0.0.1,
//!   127.0.0.2, ..., at most 10 000 on each. One source address has about
//!   28 000 ephemeral ports, but Linux hands `connect()` the even half of
//!   them cheaply: past about 14 000 connections from one address, every
//!   `connect()` walks the whole range checking each port against the
//!   established table — milliseconds each, in the generator's own thread
//!   (measured with `scripts/scale.sh` at 19 000: connects slowed from
//!   ~10 µs to 2–20 ms, the load stalled and 2 500 connects timed out).
//! - **Warm-up, then the window.** The load starts on each connection as
//!   soon as it opens. Once every connect has resolved, the warm-up runs for
//!   `--warmup` seconds, then the measured window for `--duration` seconds:
//!   only messages echoed inside the window are counted and timed, and the
//!   rates divide by the window's real length (read from the clock when the
//!   phase changes, on a 10 ms tick). Then every connection is closed
//!   gracefully and the summary printed: human lines on stdout, or one JSON
//!   object with `--json`. A progress line goes to stderr every second:
//!   messages per second (and the target), MB/s, the p99 of that second,
//!   live connections, messages in flight (and queued in the generator).
//! - **Files.** `--hgrm FILE` writes the response-time distribution in
//!   HdrHistogram's percentile text format (`src/load/hgrm.rs`); `--plot FILE.svg`
//!   draws it on a "nines" axis beside messages per second and the p99 of
//!   each second (`src/load/plot.rs`).
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
//! status 1, in either loop.
//!
//! # Why it is fair, and cheap
//!
//! - Every server gets the same byte stream, the same connection count,
//!   depth or schedule, and is verified the same way.
//! - The hot path does no allocation (beyond the in-flight queue growing to
//!   its high-water mark) and no formatting: per read, one clock reading;
//!   per message, a `memcmp`, a counter update and three histogram records.
//!   Short messages (up to 2 KiB on the wire) are built once, all 251 of
//!   them, and sent by reference with [`edgeloop::Ctx::send_shared`] — no
//!   copy — when a wake-up sends up to 4 of them; more are copied into one
//!   buffer and queued with one [`edgeloop::Ctx::send`].
//! - The summary reports the generator's own CPU time in the window, per
//!   thread: pin the server and the generator to different cores
//!   (`taskset -c 0` / `taskset -c 1`) and compare servers under identical
//!   settings, alternating them.
//! - Latencies include the generator's own queueing (the time until its
//!   loop gets to a read), the same for every server; the send lag shows
//!   how much of it was the generator's.

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

use edgeloop::{Config, Framing, HandlerId, OutputPolicy, OverLimit, Reactor};
use generator::{Generator, Open, Outcome, Plan};
use pattern::Pattern;
use progress::Shared;
use report::{Merged, Summary};
use schedule::Arrival;

/// Connections beyond this many to a loopback address use several source
/// addresses, this many at most on each: below half of a default
/// ephemeral port range (32768–60999), where `connect()` stays cheap (see
/// the module docs).
const SPREAD_ABOVE: u32 = 10_000;
/// Connections not up after this long count as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The phase clock (the window, the progress line); the open loop is paced
/// by per-connection timers, not by this.
const TICK: Duration = Duration::from_millis(10);

/// The widest `--send-window`: half the verdict's bound on the send lag's
/// p99 ([`verdict::MAX_LAG_P99`]), so that a window alone never fails a run.
const MAX_SEND_WINDOW_US: u64 = 500;

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
    /// Open loop: messages due in the same window of US microseconds (at most 500) are sent together at its end: fewer wake-ups, up to one window of send lag.
    #[arg(long, default_value_t = 1, value_name = "US", value_parser = clap::value_parser!(u64).range(1..=MAX_SEND_WINDOW_US), requires = "rate")]
    pub send_window: u64,
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
    if let Err(e) = edgeloop::sys::raise_nofile_limit() {
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
        open: args.rate.map(|r| Open {
            rate_per_conn: r / args.conns as f64,
            arrival: args.arrival,
            window_ns: args.send_window * 1000,
        }),
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

    if out.tally.opened == 0 {
        let reason = out.tally.connect_error.unwrap_or_else(|| probe(&args.connect));
        return fail(format_args!("all {} connections to {} failed: {reason}", args.conns, args.connect));
    }
    if out.tally.errors.mismatch > 0 {
        return fail(format_args!("{} echoes differed from what was sent", out.tally.errors.mismatch));
    }
    if !out.tally.interrupted {
        if out.tally.survived == 0 {
            let e = out.tally.errors;
            return fail(format_args!(
                "all {} connections failed before the end of the run ({} reset, {} closed by the server, {} did not connect)",
                args.conns, e.reset, e.closed, e.connect_failed
            ));
        }
        if out.tally.messages == 0 {
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
            hgrm::write(&mut w, &out.tally.hist.response)?;
            w.flush()
        });
        if let Err(e) = written {
            return Err(fail(format_args!("cannot write {}: {}", path.display(), edgeloop::sys::describe(&e))));
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
                ("response time (from due)", &out.tally.hist.response),
                ("service time (from send)", &out.tally.hist.service),
                ("send lag", &out.tally.hist.lag),
            ]
        } else {
            vec![("latency (from send; hides stalls)", &out.tally.hist.response)]
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
        Err(e) => edgeloop::sys::describe(&e),
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
