//! Slowloris: 1 000 connections dribbling a line that never ends.

use super::*;

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
