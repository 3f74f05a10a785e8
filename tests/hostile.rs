//! Hostile clients (issue 11) against the real `edgeloop echo` binary on
//! 127.0.0.1: what SPEC.md's "Promises under load and bad input" say a
//! peer cannot do to the server, tried with many real sockets.
//!
//! - **Slowloris**: 1 000 connections, each dribbling one byte of a line
//!   that never ends every 100 ms, from one thread. Without limits they
//!   cost the server their partial lines and nothing more, and a normal
//!   client is served promptly beside them. `--idle-timeout` closes a
//!   connection that "neither sends nor receives" (SPEC.md), and receiving
//!   means a whole frame: dribblers are cut once the timeout has passed,
//!   while a client whose slow lines do end is kept. Without a timeout,
//!   `--max-frame` cuts a dribbler once its line reaches the limit.
//! - **Flood**: one client writing (and reading its echo) as fast as it
//!   can while 100 others ping-pong; their p99 round trip stays under the
//!   issue's generous 50 ms, and the measured figures are printed.
//! - **Connect/close storm**: 100 000 connections opened and closed in
//!   batches (at most 2 000 at once), half of them with a reset, some
//!   after a round trip; afterwards the server holds exactly the
//!   descriptors and connections it had before, and still echoes.
//! - **Malformed frames** on `--workers 2`, for every framing: oversized
//!   headers and lines, zero-length frames, frames split byte by byte,
//!   binary garbage, streams cut inside a frame, resets mid-frame. Each
//!   outcome is checked against a decoder written here, independently of
//!   the crate; bystanders on both workers are served throughout.
//!
//! Descriptor exhaustion, and recovery when clients leave, is
//! `tests/limits.rs::descriptor_exhaustion_neither_spins_nor_stops_service`.
//!
//! The tests run one at a time (each loads the machine on purpose, and the
//! flood's latency figure would otherwise measure its neighbours). No test
//! measures speed except the flood's p99 bound, which the issue sets; the
//! other time limits are generous bounds that only keep a broken server
//! from hanging the suite. `cargo test --release --test hostile --
//! --nocapture` shows the figures.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::metrics::{metric, scrape, start_with_metrics};
use common::*;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use nix::sys::time::{TimeVal, TimeValLike};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Helpers shared by the tests
// ---------------------------------------------------------------------------

/// Serialises the tests of this file: each one loads the machine on
/// purpose. A test that failed (a poisoned lock) does not stop the others.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The server is still running and has logged no panic. A panic inside a
/// callback only closes its connection, which a hostile client would not
/// notice: the log is where it shows.
fn assert_alive_without_panic(server: &mut Server) {
    assert!(server.child.try_wait().unwrap().is_none(), "server exited; stderr:\n{}", server.stderr_text());
    let log = server.stderr_text();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// The server's descriptor count once it stops changing (five equal
/// readings 50 ms apart): closes in flight settle first.
fn settled_fds(server: &Server) -> usize {
    let mut last = server.open_fds();
    let mut same = 0;
    let start = Instant::now();
    while same < 5 {
        assert!(start.elapsed() < Duration::from_secs(20), "the server's descriptor count never settled");
        thread::sleep(Duration::from_millis(50));
        let now = server.open_fds();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Whether the server has closed this non-blocking stream: `Some(true)`
/// on end of stream or reset, `Some(false)` if nothing has arrived, and
/// `None` with the bytes appended to `got` if something has.
fn poll_closed(stream: &mut TcpStream, got: &mut Vec<u8>) -> Option<bool> {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => Some(true),
        Ok(n) => {
            got.extend_from_slice(&buf[..n]);
            None
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => Some(false),
        Err(e) if is_reset(&e) => Some(true),
        Err(e) => panic!("read: {e}"),
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe)
}

/// Reads until the server closes the connection (end of stream or reset)
/// and returns what came first; fails if it is still open after 10 s.
fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_reset(&e) => return got,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: the server did not close the connection ({e}); it sent {got:?}"),
        }
    }
}

/// The value below which `fraction` of `sorted` lies.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------

const DRIBBLERS: usize = 1000;
const DRIBBLE_EVERY: Duration = Duration::from_millis(100);

/// One slowloris connection: the bytes of its unfinished line so far.
struct Dribbler {
    stream: TcpStream,
    sent: Vec<u8>,
    closed: bool,
}

/// Many slowloris connections, driven from one thread over non-blocking
/// sockets, as a real attacker would: one byte to each every 100 ms.
struct Dribblers {
    conns: Vec<Dribbler>,
    ticks: usize,
    next_tick: Instant,
}

impl Dribblers {
    fn connect(server: &Server, n: usize) -> Dribblers {
        let conns = (0..n)
            .map(|_| {
                let stream = server.connect();
                // Each byte leaves as its own segment, at once.
                stream.set_nodelay(true).unwrap();
                stream.set_nonblocking(true).unwrap();
                Dribbler { stream, sent: Vec::new(), closed: false }
            })
            .collect();
        Dribblers { conns, ticks: 0, next_tick: Instant::now() }
    }

    /// Waits for the next tick, sends one byte (never `\n`) to every open
    /// connection that `dribbles(i)`, then notes which ones the server has
    /// closed. The server must echo nothing: no line ever ends.
    fn tick(&mut self, dribbles: impl Fn(usize) -> bool) {
        if let Some(wait) = self.next_tick.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        self.next_tick += DRIBBLE_EVERY;
        let byte = b'a' + (self.ticks % 26) as u8;
        self.ticks += 1;
        for (i, d) in self.conns.iter_mut().enumerate().filter(|(_, d)| !d.closed) {
            if dribbles(i) {
                match d.stream.write(&[byte]) {
                    Ok(1) => d.sent.push(byte),
                    Err(e) if is_reset(&e) => d.closed = true,
                    other => panic!("dribbler {i}: write: {other:?}"),
                }
            }
            let mut echoed = Vec::new();
            match poll_closed(&mut d.stream, &mut echoed) {
                Some(closed) => d.closed |= closed,
                None => panic!("dribbler {i}: the server echoed {echoed:?} of a line that has no end"),
            }
        }
    }

    /// Ticks for `how_long`.
    fn run_for(&mut self, how_long: Duration, dribbles: impl Fn(usize) -> bool) {
        let end = Instant::now() + how_long;
        while Instant::now() < end {
            self.tick(&dribbles);
        }
    }

    /// Ticks until `done`, for at most `limit`.
    fn run_until(
        &mut self,
        limit: Duration,
        what: &str,
        dribbles: impl Fn(usize) -> bool,
        mut done: impl FnMut(&Dribblers) -> bool,
    ) {
        let end = Instant::now() + limit;
        while !done(self) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            self.tick(&dribbles);
        }
    }

    fn closed(&self, which: impl Fn(usize) -> bool) -> usize {
        self.conns.iter().enumerate().filter(|&(i, d)| which(i) && d.closed).count()
    }

    /// Ends the line of every open connection that `which(i)`, and checks
    /// that each comes back whole: the server kept every dribbled byte.
    fn finish_lines(&mut self, which: impl Fn(usize) -> bool) -> usize {
        let mut finished = 0;
        for (i, d) in self.conns.iter_mut().enumerate().filter(|(i, d)| which(*i) && !d.closed) {
            assert!(!d.sent.is_empty(), "dribbler {i} never sent a byte");
            d.stream.set_nonblocking(false).unwrap();
            d.stream.write_all(b"\n").expect("write the end of the line");
            d.sent.push(b'\n');
            let mut line = vec![0u8; d.sent.len()];
            d.stream.read_exact(&mut line).expect("read the whole line");
            assert!(line == d.sent, "dribbler {i}: sent {:?}, the line came back as {line:?}", d.sent);
            finished += 1;
        }
        finished
    }
}

/// A normal client beside the attack: a line every 100 ms, each round trip
/// timed, until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<Duration>>,
}

impl Prober {
    fn start(server: &Server) -> Prober {
        let mut client = server.connect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut times = Vec::new();
            for i in 0.. {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let start = Instant::now();
                round_trip(&mut client, format!("probe {i}\n").as_bytes());
                times.push(start.elapsed());
                thread::sleep(Duration::from_millis(100));
            }
            times
        });
        Prober { stop, thread }
    }

    /// Stops it; returns (round trips, slowest).
    fn finish(self) -> (usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let times = self.thread.join().expect("the normal client lost its echo");
        (times.len(), times.iter().copied().max().unwrap_or_default())
    }
}

/// Slowloris without limits: 1 000 dribblers cost the server their partial
/// lines (RSS growth bounded, printed), a normal client's round trip stays
/// prompt, nobody is cut, and every dribbled byte comes back once the lines
/// end.
#[test]
fn slowloris_without_idle_timeout_costs_only_partial_lines() {
    let _serial = one_at_a_time();
    raise_open_file_limit();
    let mut server = Server::start(&["echo", "--framing", "line"]);
    // A round trip first, so that buffer pools and the like are in the
    // baseline rather than charged to the dribblers.
    round_trip(&mut server.connect(), b"warm up\n");
    let rss_before = server.rss_kib();

    let mut dribblers = Dribblers::connect(&server, DRIBBLERS);
    let prober = Prober::start(&server);
    let cpu_before = cpu_ticks(&server);
    dribblers.run_for(Duration::from_secs(5), |_| true);
    let cpu = (cpu_ticks(&server) - cpu_before) as f64 / ticks_per_second() as f64;
    let rss_after = server.rss_kib();
    let (probes, slowest) = prober.finish();
    assert_eq!(dribblers.closed(|_| true), 0, "dribblers were cut, with no limit that applies to them");

    let line_bytes: usize = dribblers.conns.iter().map(|d| d.sent.len()).sum();
    let growth_kib = rss_after.saturating_sub(rss_before);
    let per_conn = (growth_kib * 1024) as f64 / DRIBBLERS as f64;
    eprintln!(
        "slowloris: {DRIBBLERS} dribblers holding {line_bytes} bytes of unfinished lines; server RSS \
         {rss_before} KiB -> {rss_after} KiB ({per_conn:.0} bytes per dribbler), {cpu:.2} s of CPU in 5 s; a \
         normal client's slowest of {probes} round trips: {:.1} ms",
        ms(slowest)
    );
    // An idle connection costs under 1 KiB (tests/limits.rs); a dribbler
    // adds its partial line of ~50 bytes. A read buffer pinned by each
    // partial line would cost tens of KiB each.
    assert!(per_conn < 2048.0, "the server's RSS grew by {per_conn:.0} bytes per dribbler");
    assert!(probes > 0, "the normal client made no round trip");
    assert!(slowest < Duration::from_secs(1), "a normal round trip took {slowest:?} beside the dribblers");

    assert_eq!(dribblers.finish_lines(|_| true), DRIBBLERS);
    assert_alive_without_panic(&mut server);
}

/// Slowloris with `--idle-timeout 2`: receiving means a whole frame, so
/// dribblers of a line that never ends are idle and cut about 2 s after
/// they connected, however often they send; a client whose slow lines do
/// end (one byte every 100 ms, a line every 0.9 s) and a normal client are
/// kept, with every line echoed.
#[test]
fn slowloris_is_cut_by_idle_timeout_while_slow_whole_lines_are_kept() {
    const IDLE: Duration = Duration::from_secs(2);
    let _serial = one_at_a_time();
    raise_open_file_limit();
    let mut server = Server::start(&["echo", "--framing", "line", "--idle-timeout", "2"]);
    let prober = Prober::start(&server);
    let slow_lines = {
        let mut client = server.connect();
        client.set_nodelay(true).unwrap();
        thread::spawn(move || {
            let end = Instant::now() + IDLE * 3;
            let mut lines = 0;
            while Instant::now() < end {
                for &byte in b"slowline" {
                    client.write_all(&[byte]).expect("the slow-line client was cut");
                    thread::sleep(DRIBBLE_EVERY);
                }
                client.write_all(b"\n").expect("the slow-line client was cut");
                let mut echo = [0u8; 9];
                client.read_exact(&mut echo).expect("the slow-line client lost its echo");
                assert_eq!(&echo, b"slowline\n");
                lines += 1;
            }
            lines
        })
    };
    let mut dribblers = Dribblers::connect(&server, DRIBBLERS);
    let start = Instant::now();
    // A deadline that dribbled bytes pushed back would never fire: this
    // would time out.
    dribblers.run_until(
        Duration::from_secs(15),
        "the dribblers to be cut as idle",
        |_| true,
        |d| {
            // None before its time (with a little slack for the tick).
            assert!(
                d.closed(|_| true) == 0 || start.elapsed() >= IDLE - DRIBBLE_EVERY,
                "a dribbler was cut before the timeout"
            );
            d.closed(|_| true) == DRIBBLERS
        },
    );
    let cut_after = start.elapsed();
    let lines = slow_lines.join().expect("the slow-line client");
    let (probes, slowest) = prober.finish();
    eprintln!(
        "slowloris --idle-timeout 2: {DRIBBLERS} dribblers cut {:.1} s after they connected; a slow-line client \
         kept for {lines} lines; a normal client's slowest of {probes} round trips: {:.1} ms",
        cut_after.as_secs_f64(),
        ms(slowest)
    );
    assert!(lines >= 5, "only {lines} slow lines");
    round_trip(&mut server.connect(), b"a normal client\n");
    assert_alive_without_panic(&mut server);
}

/// Slowloris against `--max-frame 32`: what cuts a dribbler that never
/// pauses is its line reaching the limit; none is cut before it has sent
/// that many bytes, all are cut soon after, and a normal client is served.
#[test]
fn slowloris_line_is_cut_when_it_reaches_max_frame() {
    const MAX_FRAME: usize = 32;
    let _serial = one_at_a_time();
    raise_open_file_limit();
    let mut server = Server::start(&["echo", "--framing", "line", "--max-frame", &MAX_FRAME.to_string()]);
    let prober = Prober::start(&server);
    let mut dribblers = Dribblers::connect(&server, DRIBBLERS);
    let start = Instant::now();
    dribblers.run_until(
        Duration::from_secs(20),
        "every dribbler to be cut at the limit",
        |_| true,
        |d| {
            for (i, c) in d.conns.iter().enumerate().filter(|(_, c)| c.closed) {
                // The server cannot hold more than was sent: a dribbler closed
                // with fewer bytes sent was cut under the limit.
                assert!(c.sent.len() >= MAX_FRAME, "dribbler {i} was cut after only {} bytes", c.sent.len());
            }
            d.closed(|_| true) == DRIBBLERS
        },
    );
    let (probes, slowest) = prober.finish();
    eprintln!(
        "slowloris --max-frame {MAX_FRAME}: {DRIBBLERS} dribblers cut {:.1} s after they started ({:.1} s of \
         bytes); a normal client's slowest of {probes} round trips: {:.1} ms",
        start.elapsed().as_secs_f64(),
        (MAX_FRAME as u32 * DRIBBLE_EVERY).as_secs_f64(),
        ms(slowest)
    );
    assert!(slowest < Duration::from_secs(1), "a normal round trip took {slowest:?} beside the dribblers");
    round_trip(&mut server.connect(), b"a normal client after\n");
    assert_alive_without_panic(&mut server);
}

// ---------------------------------------------------------------------------
// Flood
// ---------------------------------------------------------------------------

/// Ping-pong clients of the flood test, and how long they measure.
const PING_PONG_CLIENTS: usize = 100;
const FLOOD_FOR: Duration = Duration::from_secs(5);
/// The bound on the ping-pong clients' p99 round trip.
const FLOOD_P99_BOUND: Duration = Duration::from_millis(50);

/// The flooder's bytes repeat with this period: a 1 MiB pseudo-random
/// pattern, so that its echo is checked with a comparison, not a
/// computation per byte (the checker must not steal the server's CPU).
const PATTERN: usize = MIB;

/// One client writes as fast as it can (and reads its echo, or flow
/// control would simply stop reading it) while 100 others ping-pong: their
/// p99 stays within the 50 ms; figures printed.
#[test]
fn flood_from_one_client_leaves_ping_pong_clients_a_low_p99() {
    let _serial = one_at_a_time();
    let mut server = Server::start(&["echo"]);
    let pattern: Arc<Vec<u8>> = Arc::new(stream_bytes(11, 0, PATTERN).repeat(2));
    let stop = Arc::new(AtomicBool::new(false));
    let flood_echoed = Arc::new(AtomicU64::new(0));

    let flooder = server.connect();
    let writer = {
        let (mut out, pattern, stop) = (flooder.try_clone().unwrap(), Arc::clone(&pattern), Arc::clone(&stop));
        out.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        thread::spawn(move || {
            const CHUNK: usize = 256 * 1024;
            let mut written = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let at = written % PATTERN;
                out.write_all(&pattern[at..at + CHUNK]).expect("flooder: write");
                written += CHUNK;
            }
            out.shutdown(Shutdown::Write).unwrap();
            written
        })
    };
    let reader = {
        let (mut inp, pattern, echoed) =
            (flooder.try_clone().unwrap(), Arc::clone(&pattern), Arc::clone(&flood_echoed));
        thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0usize;
            loop {
                let n = match inp.read(&mut buf) {
                    Ok(0) => return got,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => panic!("flooder: read after {got} bytes: {e}"),
                };
                let at = got % PATTERN;
                assert!(buf[..n] == pattern[at..at + n], "flooder: echo bytes {got}..{} differ", got + n);
                got += n;
                echoed.store(got as u64, Ordering::Relaxed);
            }
        })
    };
    wait_until(Duration::from_secs(10), "the flood to be under way", || {
        flood_echoed.load(Ordering::Relaxed) > 8 * MIB as u64
    });

    let go = Arc::new(Barrier::new(PING_PONG_CLIENTS + 1));
    let clients: Vec<_> = (0..PING_PONG_CLIENTS)
        .map(|c| {
            let mut stream = server.connect();
            stream.set_nodelay(true).unwrap();
            let go = Arc::clone(&go);
            thread::spawn(move || {
                go.wait();
                let end = Instant::now() + FLOOD_FOR;
                let mut times = Vec::new();
                for round in 0.. {
                    if Instant::now() >= end {
                        break;
                    }
                    let mut msg = format!("client {c} round {round} ").into_bytes();
                    msg.resize(64, b'.');
                    let start = Instant::now();
                    round_trip(&mut stream, &msg);
                    times.push(start.elapsed());
                    // A steady ping-pong, not a second flood.
                    thread::sleep(Duration::from_millis(5));
                }
                times
            })
        })
        .collect();
    go.wait();
    let echoed_before = flood_echoed.load(Ordering::Relaxed);
    let window = Instant::now();
    let mut times: Vec<Duration> =
        clients.into_iter().flat_map(|c| c.join().expect("a ping-pong client lost its echo")).collect();
    let window = window.elapsed();
    let echoed_during = flood_echoed.load(Ordering::Relaxed) - echoed_before;

    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("flooder writer");
    let echoed = reader.join().expect("flooder reader");
    assert_eq!(echoed, written, "the flooder's echo is not every byte it wrote");

    times.sort();
    let p99 = percentile(&times, 0.99);
    eprintln!(
        "flood: {PING_PONG_CLIENTS} ping-pong clients p50 = {:.2} ms, p99 = {:.2} ms, max = {:.2} ms over {} round \
         trips; the flooder wrote {} MB ({:.0} MB/s echoed while they ran), every byte echoed exactly",
        ms(percentile(&times, 0.5)),
        ms(p99),
        ms(*times.last().unwrap()),
        times.len(),
        written / 1_000_000,
        echoed_during as f64 / 1e6 / window.as_secs_f64()
    );
    // The flood must have gone on while they ran (not paused by flow
    // control), or the figure says nothing.
    assert!(echoed_during > 4 * MIB as u64, "the flooder was served only {echoed_during} bytes meanwhile");
    assert!(p99 <= FLOOD_P99_BOUND, "ping-pong p99 {:.2} ms beside a flood (bound {FLOOD_P99_BOUND:?})", ms(p99));
    assert_alive_without_panic(&mut server);
}

// ---------------------------------------------------------------------------
// Connect/close storm
// ---------------------------------------------------------------------------

const STORM_CONNS: usize = 100_000;
const STORM_THREADS: usize = 4;
/// Each thread opens this many, then serves and closes them: at most
/// STORM_THREADS × STORM_BATCH connections are open at once.
const STORM_BATCH: usize = 500;
/// Source addresses 127.0.0.2..=127.0.0.(N + 1). A client that closes
/// first keeps its port in TIME_WAIT for a minute; 50 000 of them would
/// nearly exhaust the ~28 000 ephemeral ports of one source address. And
/// 127.0.0.1 is left alone: its free ports are what other tests pick to
/// listen on.
const STORM_SOURCES: usize = 8;

/// How a storm connection ends; half of the kinds reset.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Reset at once, perhaps before the server has even accepted it.
    ResetAtOnce,
    /// Close at once (a FIN), perhaps before the server has accepted it.
    CloseAtOnce,
    /// A round trip, then a reset.
    ResetAfterEcho,
    /// A round trip, then a close.
    CloseAfterEcho,
    /// 4 KiB sent and a reset without reading: the server is writing.
    ResetMidWrite,
    /// A message, half-close, the echo then end of stream, then close.
    HalfClose,
}

const ENDINGS: [Ending; 6] = [
    Ending::ResetAtOnce,
    Ending::CloseAtOnce,
    Ending::ResetAfterEcho,
    Ending::CloseAfterEcho,
    Ending::ResetMidWrite,
    Ending::HalfClose,
];

/// A connection from `source` (bound before connecting; the port is chosen
/// by connect, so it may be shared by distinct 4-tuples). Connecting gives
/// up after 10 s (`SO_SNDTIMEO` bounds a blocking connect on Linux), so a
/// server that stops accepting fails the test instead of hanging it.
fn connect_from(source: Ipv4Addr, server: SocketAddrV4) -> TcpStream {
    let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    socket::setsockopt(&fd, sockopt::IpBindAddressNoPort, &true).expect("IP_BIND_ADDRESS_NO_PORT");
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::seconds(10)).expect("SO_SNDTIMEO");
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(source, 0))).expect("bind");
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(server))
        .unwrap_or_else(|e| panic!("connect from {source} to {server}: {e}"));
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

/// One storm connection's life after connect.
fn end_storm_connection(mut stream: TcpStream, i: usize, ending: Ending) {
    let msg = format!("storm connection {i}\n").into_bytes();
    match ending {
        Ending::ResetAtOnce => reset(stream),
        Ending::CloseAtOnce => drop(stream),
        Ending::ResetAfterEcho => {
            round_trip(&mut stream, &msg);
            reset(stream);
        }
        Ending::CloseAfterEcho => {
            round_trip(&mut stream, &msg);
            drop(stream);
        }
        Ending::ResetMidWrite => {
            stream.write_all(&stream_bytes(i as u64, 0, 4096)).expect("write");
            reset(stream);
        }
        Ending::HalfClose => {
            stream.write_all(&msg).expect("write");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            assert_eq!(read_to_eof(&mut stream), msg, "connection {i}: echo before end of stream");
        }
    }
}

/// 100 000 connections opened and closed in batches (≤ 2 000 at once),
/// half reset, some after a round trip or mid-write: afterwards the server
/// holds exactly its baseline descriptors and no connection, and echoes.
#[test]
fn connect_close_storm_leaks_no_descriptor() {
    let _serial = one_at_a_time();
    raise_open_file_limit();
    let (mut server, metrics) = start_with_metrics(&["echo"]);
    let SocketAddr::V4(addr) = server.addr else { panic!("not IPv4: {}", server.addr) };
    round_trip(&mut server.connect(), b"warm up");
    let baseline = settled_fds(&server);

    let start = Instant::now();
    let served = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..STORM_THREADS)
        .map(|t| {
            let served = Arc::clone(&served);
            thread::spawn(move || {
                let mine: Vec<usize> = (t..STORM_CONNS).step_by(STORM_THREADS).collect();
                for batch in mine.chunks(STORM_BATCH) {
                    let open: Vec<(usize, TcpStream)> = batch
                        .iter()
                        .map(|&i| (i, connect_from(Ipv4Addr::new(127, 0, 0, 2 + (i % STORM_SOURCES) as u8), addr)))
                        .collect();
                    for (i, stream) in open {
                        end_storm_connection(stream, i, ENDINGS[i % ENDINGS.len()]);
                    }
                    served.fetch_add(batch.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a storm thread failed");
    }
    let storm_time = start.elapsed();
    assert_eq!(served.load(Ordering::Relaxed), STORM_CONNS);

    let settle = Instant::now();
    let mut fds = server.open_fds();
    let limit = Duration::from_secs(30);
    while fds != baseline {
        assert!(
            settle.elapsed() < limit,
            "the server holds {fds} descriptors {limit:?} after the storm, {baseline} before it"
        );
        thread::sleep(Duration::from_millis(50));
        fds = server.open_fds();
    }
    let settle_time = settle.elapsed();
    // The metrics are snapshots the workers publish now and then: wait for
    // one taken after the last close. A slot leaked without its descriptor
    // shows here.
    wait_until(Duration::from_secs(10), "no connection left in the metrics", || {
        metric(&scrape(metrics), "edgeloop_connections", None) == 0.0
    });
    let s = scrape(metrics);
    let closed = |reason| metric(&s, "edgeloop_connections_closed_total", Some(("reason", reason)));
    eprintln!(
        "storm: {STORM_CONNS} connections ({} reset) in {:.1} s from {STORM_THREADS} threads, at most {} open at \
         once; server: {} accepted, closed peer_closed={} error={} local={}; descriptors back to {baseline} {:.2} s \
         after the last close",
        STORM_CONNS / 2,
        storm_time.as_secs_f64(),
        STORM_THREADS * STORM_BATCH,
        metric(&s, "edgeloop_connections_accepted_total", None),
        closed("peer_closed"),
        closed("error"),
        closed("local"),
        settle_time.as_secs_f64()
    );
    round_trip(&mut server.connect(), b"still serving after the storm");
    assert_alive_without_panic(&mut server);
}

// ---------------------------------------------------------------------------
// Malformed frames
// ---------------------------------------------------------------------------

/// `--max-frame` for the malformed-frame tests: small enough that a
/// `{packet, 1}` header can announce more.
const MAX_FRAME: usize = 100;
/// Each scenario runs on this many fresh connections, so that both
/// workers see each one (the kernel spreads connections at random).
const CONNS_PER_SCENARIO: usize = 4;
const BYSTANDERS: usize = 20;

/// A framing as the wire sees it; `header` 0 is `line`.
#[derive(Clone, Copy, Debug)]
struct Wire {
    name: &'static str,
    header: usize,
}

const FRAMINGS: [Wire; 4] = [
    Wire { name: "line", header: 0 },
    Wire { name: "1", header: 1 },
    Wire { name: "2", header: 2 },
    Wire { name: "4", header: 4 },
];

/// What a correct server does with bytes sent on one connection.
#[derive(Debug)]
struct Expected {
    /// The frames it echoes, on the wire (with header or `\n`).
    echo: Vec<u8>,
    /// A frame over `MAX_FRAME` comes first: the server closes the
    /// connection, sending at most a prefix of `echo`, and must do so
    /// without waiting for more bytes or the end of the stream.
    too_large: bool,
}

impl Wire {
    fn is_line(self) -> bool {
        self.header == 0
    }

    /// One frame on the wire: a line with its `\n`, or a length header and
    /// the payload.
    fn frame(self, payload: &[u8]) -> Vec<u8> {
        if self.is_line() {
            assert!(!payload.contains(&b'\n'), "a line payload holds no newline");
            [payload, b"\n"].concat()
        } else {
            [self.length_header(payload.len() as u64), payload.to_vec()].concat()
        }
    }

    /// A length header announcing `len` (truncated to the header's width).
    fn length_header(self, len: u64) -> Vec<u8> {
        len.to_be_bytes()[8 - self.header..].to_vec()
    }

    /// The largest payload within `MAX_FRAME` (a line's `\n` counts).
    fn largest_payload(self) -> usize {
        if self.is_line() {
            MAX_FRAME - 1
        } else {
            MAX_FRAME
        }
    }

    /// Random bytes; for a line payload, without `\n` (every other value,
    /// `\r` and NUL included).
    fn payload(self, rng: &mut StdRng, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| loop {
                let b: u8 = rng.gen();
                if !(self.is_line() && b == b'\n') {
                    break b;
                }
            })
            .collect()
    }

    /// SPEC.md's framing rules, written here from the spec and not from the
    /// crate: what a server with `--max-frame MAX_FRAME` does with `wire`,
    /// if the client then shuts down its write side (unless `too_large`).
    fn expected(self, wire: &[u8]) -> Expected {
        let mut echo = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let rest = &wire[at..];
            if self.is_line() {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) if i < MAX_FRAME => {
                        echo.extend_from_slice(&rest[..=i]);
                        at += i + 1;
                    }
                    // A line whose first MAX_FRAME bytes hold no `\n` can
                    // only be over the limit: refused once they are in.
                    _ if rest.len() >= MAX_FRAME => return Expected { echo, too_large: true },
                    Some(_) => unreachable!(),
                    None => {
                        // The final, unterminated line, at end of stream.
                        echo.extend_from_slice(rest);
                        break;
                    }
                }
            } else {
                if rest.len() < self.header {
                    break; // cut in the header: discarded at end of stream
                }
                let len = rest[..self.header].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
                if len > MAX_FRAME {
                    return Expected { echo, too_large: true };
                }
                if rest.len() < self.header + len {
                    break; // cut in the payload: discarded at end of stream
                }
                echo.extend_from_slice(&rest[..self.header + len]);
                at += self.header + len;
            }
        }
        Expected { echo, too_large: false }
    }
}

/// How a scenario's bytes are sent, and how the connection ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Delivery {
    /// One write; then half-close (or wait for the server's close).
    Whole,
    /// One write per byte, each its own segment, a pause between them.
    ByteByByte,
    /// One write, then a reset: the server must just drop it.
    ThenReset,
}

struct Scenario {
    name: &'static str,
    wire: Vec<u8>,
    send: Delivery,
}

/// Every kind of malformed and awkward input for `f`; `seed` varies the
/// random parts from one connection to the next.
fn scenarios(f: Wire, seed: u64) -> Vec<Scenario> {
    let mut rng = StdRng::seed_from_u64(seed);
    let largest = f.largest_payload();
    let mut zero_length: Vec<u8> = (0..20).flat_map(|_| f.frame(b"")).collect();
    zero_length.extend(f.frame(b"between"));
    zero_length.extend((0..5).flat_map(|_| f.frame(b"")));
    let at_limit = [f.frame(&f.payload(&mut rng, largest)), f.frame(b""), f.frame(&f.payload(&mut rng, largest))];
    let one_over = [f.frame(b"ok"), f.frame(b""), f.frame(&f.payload(&mut rng, largest + 1))];
    // The largest header the width allows; for line, a 10 000-byte line.
    let huge = if f.is_line() { f.payload(&mut rng, 10_000) } else { vec![0xff; f.header] };
    // Only a header (or only MAX_FRAME bytes of a line): the server must
    // decide from these alone, with nothing more coming.
    let over_alone = if f.is_line() { f.payload(&mut rng, MAX_FRAME) } else { f.length_header(MAX_FRAME as u64 + 1) };
    let split =
        [f.frame(b""), f.frame(b"x"), f.frame(&f.payload(&mut rng, 50)), f.frame(&f.payload(&mut rng, largest))]
            .concat();
    let binary: Vec<u8> = (0..50)
        .flat_map(|_| {
            let len = rng.gen_range(0..=largest);
            f.frame(&f.payload(&mut rng, len))
        })
        .collect();
    let garbage: Vec<u8> = (0..2000).map(|_| rng.gen()).collect();
    let cut_payload = [f.frame(b"complete"), f.frame(b"cut short")[..7].to_vec()].concat();
    let cut_header = [f.frame(b"complete"), f.length_header(5)[..f.header.saturating_sub(1)].to_vec()].concat();
    let reset_mid_frame = [f.frame(b"fine"), f.frame(&f.payload(&mut rng, 50))[..20].to_vec()].concat();

    let mut all = vec![
        Scenario { name: "zero-length frames", wire: zero_length, send: Delivery::Whole },
        Scenario { name: "frames at the limit", wire: at_limit.concat(), send: Delivery::Whole },
        Scenario { name: "one byte over the limit after good frames", wire: one_over.concat(), send: Delivery::Whole },
        Scenario { name: "the largest header", wire: huge, send: Delivery::Whole },
        Scenario { name: "an over-limit header alone", wire: over_alone.clone(), send: Delivery::Whole },
        Scenario { name: "frames split byte by byte", wire: split, send: Delivery::ByteByByte },
        Scenario { name: "an over-limit header byte by byte", wire: over_alone, send: Delivery::ByteByByte },
        Scenario { name: "binary payloads", wire: binary, send: Delivery::Whole },
        Scenario { name: "random garbage", wire: garbage, send: Delivery::Whole },
        Scenario { name: "stream cut inside a payload", wire: cut_payload, send: Delivery::Whole },
        Scenario { name: "reset in the middle of a frame", wire: reset_mid_frame, send: Delivery::ThenReset },
    ];
    if f.header > 1 {
        all.push(Scenario { name: "stream cut inside a header", wire: cut_header, send: Delivery::Whole });
    }
    all
}

/// Runs one scenario on a fresh connection and checks the outcome against
/// [`Wire::expected`]; returns whether the server had to close it for a
/// frame over the limit.
fn run_scenario(server: &Server, f: Wire, sc: &Scenario) -> bool {
    let what = format!("--framing {}: {}", f.name, sc.name);
    let expected = f.expected(&sc.wire);
    let mut stream = server.connect();
    stream.set_nodelay(true).unwrap();
    let pieces: Vec<&[u8]> = match sc.send {
        Delivery::ByteByByte => sc.wire.chunks(1).collect(),
        Delivery::Whole | Delivery::ThenReset => vec![&sc.wire],
    };
    for piece in pieces {
        match stream.write_all(piece) {
            Ok(()) => {}
            // The server may close before the last byte is in, when it
            // need not read further.
            Err(e) if expected.too_large && is_reset(&e) => break,
            Err(e) => panic!("{what}: write: {e}"),
        }
        if sc.send == Delivery::ByteByByte {
            thread::sleep(Duration::from_micros(300));
        }
    }
    if sc.send == Delivery::ThenReset {
        reset(stream);
        return false;
    }
    if expected.too_large {
        // No half-close: the frame must be refused on what was sent.
        let got = read_until_closed(&mut stream, &what);
        assert!(expected.echo.starts_with(&got), "{what}: echoed {got:?}, not a prefix of {:?}", expected.echo);
    } else {
        stream.shutdown(Shutdown::Write).unwrap();
        let got = read_to_eof(&mut stream);
        assert!(got == expected.echo, "{what}: echoed {got:?}, expected {:?}", expected.echo);
    }
    expected.too_large
}

/// `--workers 2`, every framing: oversized headers and lines close only
/// their connection (without waiting for more), zero-length, split,
/// binary and cut frames come back as SPEC.md says, garbage is judged as
/// a decoder written from the spec judges it; bystanders on both workers
/// are served throughout, nothing panics, nothing leaks, and a new client
/// is served at the end.
#[test]
fn malformed_frames_on_two_workers_cost_only_their_connection() {
    let _serial = one_at_a_time();
    for f in FRAMINGS {
        let max_frame = MAX_FRAME.to_string();
        let (mut server, metrics) =
            start_with_metrics(&["echo", "--workers", "2", "--framing", f.name, "--max-frame", &max_frame]);
        let mut bystanders: Vec<TcpStream> = (0..BYSTANDERS).map(|_| server.connect()).collect();
        wait_until(Duration::from_secs(5), "bystanders on both workers", || {
            let s = scrape(metrics);
            let w0 = metric(&s, "edgeloop_worker_connections", Some(("worker", "0")));
            let w1 = metric(&s, "edgeloop_worker_connections", Some(("worker", "1")));
            w0 > 0.0 && w1 > 0.0 && w0 + w1 == BYSTANDERS as f64
        });

        let mut too_large = 0;
        let mut runs = 0;
        for conn in 0..CONNS_PER_SCENARIO {
            for sc in scenarios(f, 1000 * f.header as u64 + conn as u64) {
                too_large += usize::from(run_scenario(&server, f, &sc));
                runs += 1;
                for (i, b) in bystanders.iter_mut().enumerate() {
                    round_trip(b, &f.frame(format!("bystander {i} after {}", sc.name).as_bytes()));
                }
            }
        }

        // Every refusal was for the frame, and nothing else stayed open.
        wait_until(Duration::from_secs(10), "the refusals counted and the others closed", || {
            let s = scrape(metrics);
            metric(&s, "edgeloop_connections_closed_total", Some(("reason", "frame_too_large"))) == too_large as f64
                && metric(&s, "edgeloop_connections", None) == BYSTANDERS as f64
        });
        assert_eq!(metric(&scrape(metrics), "edgeloop_panics_total", None), 0.0, "--framing {}", f.name);
        let mut newcomer = server.connect();
        for payload in [&b""[..], b"a well-behaved client", &[0u8, 13, 255]] {
            round_trip(&mut newcomer, &f.frame(payload));
        }
        assert_alive_without_panic(&mut server);
        eprintln!(
            "malformed --framing {} --workers 2: {runs} hostile connections, {too_large} refused for a frame over \
             {MAX_FRAME} bytes; {BYSTANDERS} bystanders and a newcomer served",
            f.name
        );
    }
}
