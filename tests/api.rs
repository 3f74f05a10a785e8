//! The library API, one test per feature of issue 7: delivery modes,
//! exact-length frames, per-connection output policy, abort, half-close,
//! close reasons with detail, timers, connect timeouts, crash isolation,
//! several listeners and handlers, socket options, the cross-thread handle.
//!
//! Each test runs a reactor on its own thread with recording handlers —
//! every event is logged, then handed to the test's script — and talks to
//! it over real sockets on the loopback interface. The test acts on a
//! connection from its own thread with [`Server::act`], which runs a
//! closure on the reactor's thread at its next tick (not through the
//! [`Handle`], which has tests of its own).
//!
//! Every wait is bounded ([`WAIT`]). A check that nothing (more) happens
//! waits [`SETTLE`] first: what a broken feature would do happens at once,
//! so the wait only has to outlast one loop iteration. No test puts an
//! upper bound on a duration; timers are checked against lower bounds, on
//! the loop's own clock.

mod common;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::{expect_stream, round_trip, stream_bytes};
use edgeloop::{
    Active, CloseReason, Config, ConnId, ConnectOptions, Counters, Ctx, Errno, Framing, Handle, Handler, HandlerId,
    Keepalive, ListenOptions, OutputPolicy, OverLimit, Reactor, SendError, SocketOptions,
};
use nix::sys::socket::{self as nixsock, sockopt};

/// The longest any wait lasts before the test fails.
const WAIT: Duration = Duration::from_secs(10);
/// How long a check that nothing more happens waits.
const SETTLE: Duration = Duration::from_millis(100);
/// The harness's tick: how soon [`Server::act`] runs.
const TICK: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------- harness

/// An event a handler saw.
#[derive(Clone, PartialEq)]
enum Ev {
    Open(ConnId),
    Frame(ConnId, Vec<u8>),
    Passive(ConnId),
    Eof(ConnId),
    Shutdown(ConnId),
    Busy(ConnId),
    Ready(ConnId),
    Timer(ConnId),
    Close(ConnId, CloseReason),
    /// Handed to the scripts only, never logged.
    Tick,
}

impl Ev {
    fn id(&self) -> Option<ConnId> {
        match *self {
            Ev::Open(id)
            | Ev::Frame(id, _)
            | Ev::Passive(id)
            | Ev::Eof(id)
            | Ev::Shutdown(id)
            | Ev::Busy(id)
            | Ev::Ready(id)
            | Ev::Timer(id)
            | Ev::Close(id, _) => Some(id),
            Ev::Tick => None,
        }
    }
}

impl std::fmt::Debug for Ev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ev::Frame(id, bytes) if bytes.len() > 40 => write!(f, "Frame({id}, {} bytes)", bytes.len()),
            Ev::Frame(id, bytes) => write!(f, "Frame({id}, {:?})", String::from_utf8_lossy(bytes)),
            Ev::Open(id) => write!(f, "Open({id})"),
            Ev::Passive(id) => write!(f, "Passive({id})"),
            Ev::Eof(id) => write!(f, "Eof({id})"),
            Ev::Shutdown(id) => write!(f, "Shutdown({id})"),
            Ev::Busy(id) => write!(f, "Busy({id})"),
            Ev::Ready(id) => write!(f, "Ready({id})"),
            Ev::Timer(id) => write!(f, "Timer({id})"),
            Ev::Close(id, reason) => write!(f, "Close({id}, {reason:?})"),
            Ev::Tick => write!(f, "Tick"),
        }
    }
}

/// One logged event: which handler saw it, when (the loop's clock), and
/// the connection's pending output at that moment.
#[derive(Clone, Debug)]
struct Entry {
    handler: usize,
    at: Instant,
    pending: usize,
    ev: Ev,
}

/// What a test's handler does with an event: `(ctx, event, every handler's id)`.
type Script = Box<dyn FnMut(&mut Ctx<'_>, &Ev, &[HandlerId]) + Send>;
type Job = Box<dyn FnOnce(&mut Ctx<'_>) + Send>;
/// Jobs of [`Server::act`], waiting for the next tick.
type Jobs = Arc<Mutex<Vec<Job>>>;

#[derive(Default)]
struct Shared {
    log: Vec<Entry>,
    /// Each accepted or connected peer's address, for finding a client's id.
    peers: Vec<(SocketAddr, ConnId)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The handler every test uses: logs, then runs the test's script.
/// Handler 0 also runs the jobs of [`Server::act`] and stops the reactor
/// when the test is over.
struct Rec {
    index: usize,
    shared: Arc<Mutex<Shared>>,
    script: Script,
    control: Option<(Jobs, Arc<AtomicBool>)>,
    handlers: Arc<OnceLock<Vec<HandlerId>>>,
}

impl Rec {
    fn event(&mut self, ctx: &mut Ctx<'_>, ev: Ev) {
        if ev != Ev::Tick {
            let pending = ev.id().map_or(0, |id| ctx.pending_output(id));
            let mut shared = lock(&self.shared);
            if let Ev::Open(id) = ev {
                if let Ok(peer) = ctx.peer_addr(id) {
                    shared.peers.push((peer, id));
                }
            }
            shared.log.push(Entry { handler: self.index, at: ctx.now(), pending, ev: ev.clone() });
        }
        let handlers = self.handlers.get().map_or(&[][..], Vec::as_slice);
        (self.script)(ctx, &ev, handlers);
    }
}

impl Handler for Rec {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.event(ctx, Ev::Open(id));
    }
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        self.event(ctx, Ev::Frame(id, frame.to_vec()));
    }
    fn on_passive(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.event(ctx, Ev::Passive(id));
    }
    fn on_eof(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.event(ctx, Ev::Eof(id));
    }
    fn on_shutdown(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.event(ctx, Ev::Shutdown(id));
    }
    fn on_busy(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.event(ctx, Ev::Busy(id));
    }
    fn on_ready(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.event(ctx, Ev::Ready(id));
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.event(ctx, Ev::Timer(id));
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) {
        self.event(ctx, Ev::Close(id, reason));
    }
    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        if let Some((jobs, stop)) = &self.control {
            let jobs = std::mem::take(&mut *lock(jobs));
            for job in jobs {
                job(ctx);
            }
            if stop.load(Ordering::Relaxed) {
                ctx.stop();
            }
        }
        self.event(ctx, Ev::Tick);
    }
}

/// A script that does nothing.
fn quiet() -> impl FnMut(&mut Ctx<'_>, &Ev, &[HandlerId]) + Send + 'static {
    |_, _, _| {}
}

/// A script that sends every frame back.
fn echo() -> impl FnMut(&mut Ctx<'_>, &Ev, &[HandlerId]) + Send + 'static {
    |ctx, ev, _| {
        if let Ev::Frame(id, frame) = ev {
            let _ = ctx.send(*id, frame);
        }
    }
}

/// What a test's reactor is made of, before it starts.
struct Setup {
    config: Config,
    scripts: Vec<Script>,
    listeners: Vec<(usize, SocketAddr, ListenOptions)>,
}

fn setup() -> Setup {
    Setup { config: Config::default(), scripts: Vec::new(), listeners: Vec::new() }
}

impl Setup {
    fn config(mut self, config: Config) -> Setup {
        self.config = config;
        self
    }

    /// Add a handler (handler `i` is the `i`-th added).
    fn handler(mut self, script: impl FnMut(&mut Ctx<'_>, &Ev, &[HandlerId]) + Send + 'static) -> Setup {
        self.scripts.push(Box::new(script));
        self
    }

    /// Listen on 127.0.0.1, port 0, for handler `handler`.
    fn listen(self, handler: usize, framing: Framing) -> Setup {
        self.listen_with(handler, "127.0.0.1:0", ListenOptions { framing, ..ListenOptions::default() })
    }

    fn listen_with(mut self, handler: usize, addr: &str, options: ListenOptions) -> Setup {
        self.listeners.push((handler, addr.parse().unwrap(), options));
        self
    }

    fn start(self) -> Server {
        self.try_start().expect("start the reactor")
    }

    /// Start the reactor on its own thread (named `reactor`); fails if a
    /// listener cannot be set up.
    fn try_start(self) -> io::Result<Server> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (shared2, jobs2, stop2) = (Arc::clone(&shared), Arc::clone(&jobs), Arc::clone(&stop));
        thread::Builder::new()
            .name("reactor".into())
            .spawn(move || {
                let Setup { mut config, scripts, listeners } = self;
                if config.tick.is_zero() {
                    config.tick = TICK;
                }
                let started = (|| {
                    let mut reactor = Reactor::new(config)?;
                    let cell = Arc::new(OnceLock::new());
                    let mut ids = Vec::new();
                    for (index, script) in scripts.into_iter().enumerate() {
                        let control = (index == 0).then(|| (Arc::clone(&jobs2), Arc::clone(&stop2)));
                        let shared = Arc::clone(&shared2);
                        let handlers = Arc::clone(&cell);
                        ids.push(reactor.add_handler(Rec { index, shared, script, control, handlers }));
                    }
                    let mut addrs = Vec::new();
                    for (handler, addr, options) in listeners {
                        addrs.push(reactor.listen(&addr, ids[handler], options)?);
                    }
                    let _ = cell.set(ids);
                    io::Result::Ok((reactor, addrs))
                })();
                match started {
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                    Ok((mut reactor, addrs)) => {
                        let _ = ready_tx.send(Ok((addrs, reactor.handle())));
                        let result = reactor.run().map(|()| reactor.counters().clone());
                        let _ = done_tx.send(result);
                    }
                }
            })
            .unwrap();
        let (addrs, handle) = ready_rx.recv_timeout(WAIT).expect("reactor thread started")?;
        Ok(Server { addrs, shared, jobs, stop, handle, done })
    }
}

/// A reactor running on its own thread. Dropping it asks the reactor to
/// stop (the thread is not joined: a connection a test left open may keep
/// it lingering a while).
struct Server {
    addrs: Vec<SocketAddr>,
    shared: Arc<Mutex<Shared>>,
    jobs: Jobs,
    stop: Arc<AtomicBool>,
    handle: Handle,
    done: mpsc::Receiver<io::Result<Counters>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Server {
    /// Run `f` on the reactor's thread (at its next tick) and return what
    /// it returns.
    fn act<T: Send + 'static>(&self, f: impl FnOnce(&mut Ctx<'_>) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        lock(&self.jobs).push(Box::new(move |ctx: &mut Ctx<'_>| {
            let _ = tx.send(f(ctx));
        }));
        rx.recv_timeout(WAIT).expect("the reactor ran the job")
    }

    fn counters(&self) -> Counters {
        self.act(|ctx| ctx.counters().clone())
    }

    /// A client of listener `listener`.
    fn connect(&self, listener: usize) -> TcpStream {
        let c = TcpStream::connect(self.addrs[listener]).expect("connect");
        c.set_read_timeout(Some(WAIT)).unwrap();
        c
    }

    /// A client of listener `listener` and its id, once the server has it open.
    fn client(&self, listener: usize) -> (TcpStream, ConnId) {
        let c = self.connect(listener);
        let id = self.id_of(&c);
        (c, id)
    }

    /// The id the server gave the client's connection (waits for `on_open`).
    fn id_of(&self, c: &TcpStream) -> ConnId {
        let me = c.local_addr().unwrap();
        let start = Instant::now();
        loop {
            if let Some(&(_, id)) = lock(&self.shared).peers.iter().find(|(peer, _)| *peer == me) {
                return id;
            }
            assert!(start.elapsed() < WAIT, "no on_open for {me}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn log(&self) -> Vec<Entry> {
        lock(&self.shared).log.clone()
    }

    /// The events about connection `id`, whichever handler saw them.
    fn events(&self, id: ConnId) -> Vec<Ev> {
        self.log().into_iter().filter(|e| e.ev.id() == Some(id)).map(|e| e.ev).collect()
    }

    fn frames(&self, id: ConnId) -> Vec<Vec<u8>> {
        self.events(id)
            .into_iter()
            .filter_map(|ev| match ev {
                Ev::Frame(_, f) => Some(f),
                _ => None,
            })
            .collect()
    }

    fn count(&self, ev: &Ev) -> usize {
        lock(&self.shared).log.iter().filter(|e| e.ev == *ev).count()
    }

    /// The first logged entry matching `pred`.
    fn entry(&self, pred: impl Fn(&Ev) -> bool) -> Option<Entry> {
        lock(&self.shared).log.iter().find(|e| pred(&e.ev)).cloned()
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&[Entry]) -> bool) {
        let start = Instant::now();
        loop {
            {
                let shared = lock(&self.shared);
                if cond(&shared.log) {
                    return;
                }
                if start.elapsed() > WAIT {
                    let tail: Vec<_> = shared.log.iter().rev().take(12).rev().map(|e| &e.ev).collect();
                    panic!("timed out waiting for {what}; last events: {tail:?}");
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn wait_ev(&self, ev: Ev) {
        self.wait_for(&format!("{ev:?}"), |log| log.iter().any(|e| e.ev == ev));
    }

    fn wait_frames(&self, id: ConnId, n: usize) {
        self.wait_for(&format!("{n} frames on {id}"), |log| {
            log.iter().filter(|e| matches!(&e.ev, Ev::Frame(i, _) if *i == id)).count() >= n
        });
    }

    /// Wait for `run` to return; its counters.
    fn wait_run_returned(&self) -> Counters {
        self.done.recv_timeout(WAIT).expect("run returned").expect("run succeeded")
    }
}

fn read_n(c: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    c.read_exact(&mut buf).expect("read");
    buf
}

/// Reads until end of stream or an error; what was read, and how it ended.
fn read_until_end(c: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut all = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (all, Ok(())),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (all, Err(e)),
        }
    }
}

/// Nothing more arrives within [`SETTLE`].
fn assert_nothing_to_read(c: &mut TcpStream) {
    c.set_read_timeout(Some(SETTLE)).unwrap();
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected nothing to read, got {other:?}"),
    }
    c.set_read_timeout(Some(WAIT)).unwrap();
}

const CHUNK: usize = 64 * 1024;

/// Writes stream `seed` without blocking until the kernel refuses four
/// times in a row, 25 ms apart (the receiver is not reading: TCP pushes
/// back); returns the bytes written. Fails past `limit` bytes.
fn write_until_pushed_back(c: &TcpStream, seed: u64, limit: usize) -> usize {
    c.set_nonblocking(true).unwrap();
    let (mut sent, mut refused) = (0, 0);
    let mut chunk = stream_bytes(seed, 0, CHUNK);
    let start = Instant::now();
    while refused < 4 {
        assert!(sent < limit, "wrote {sent} bytes and TCP never pushed back: the server kept reading");
        assert!(start.elapsed() < WAIT, "timed out writing");
        match (&*c).write(&chunk) {
            Ok(n) => {
                sent += n;
                refused = 0;
                chunk = stream_bytes(seed, sent, CHUNK);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                refused += 1;
                thread::sleep(Duration::from_millis(25));
            }
            Err(e) => panic!("write after {sent} bytes: {e}"),
        }
    }
    c.set_nonblocking(false).unwrap();
    sent
}

/// Writes stream `seed` without blocking until `done()` or the connection
/// fails; returns the bytes written.
fn write_until(c: &TcpStream, seed: u64, done: impl Fn() -> bool) -> usize {
    c.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out writing ({sent} bytes written)");
        match (&*c).write(&stream_bytes(seed, sent, CHUNK)) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => break, // reset or broken pipe: the server closed it
        }
    }
    sent
}

/// Close with a reset instead of a FIN.
fn reset(c: TcpStream) {
    let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
    nixsock::setsockopt(&c, sockopt::Linger, &linger).unwrap();
    drop(c);
}

// ------------------------------------------------------- 1. delivery modes

/// `Active::Once` delivers one frame of several already buffered, then
/// nothing until re-armed; re-arming delivers the next at once (no new
/// edge will come), whether it waits in the read buffer or in the kernel.
#[test]
fn active_once_delivers_one_frame_per_arming() {
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Open(id) = ev {
                ctx.set_active(*id, Active::Once);
            }
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"a\nb\nc\n").unwrap();
    // Waits for the n-th frame, then checks that no other came.
    let delivered = |expected: &[&str]| {
        server.wait_frames(id, expected.len());
        thread::sleep(SETTLE);
        let expected: Vec<Vec<u8>> = expected.iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(server.frames(id), expected);
    };
    delivered(&["a\n"]);
    server.act(move |ctx| ctx.set_active(id, Active::Once));
    delivered(&["a\n", "b\n"]);
    server.act(move |ctx| ctx.set_active(id, Active::Once));
    delivered(&["a\n", "b\n", "c\n"]);
    // Bytes arriving while paused stay in the kernel; their edge passes.
    c.write_all(b"d\ne\n").unwrap();
    thread::sleep(SETTLE);
    assert_eq!(server.frames(id).len(), 3);
    server.act(move |ctx| ctx.set_active(id, Active::Once));
    delivered(&["a\n", "b\n", "c\n", "d\n"]);
    assert_eq!(server.count(&Ev::Passive(id)), 0, "on_passive is for Active::N only");
}

/// `Active::N`: N frames, then `on_passive` exactly once; a new N adds to
/// what is left (gen_tcp).
#[test]
fn active_n_delivers_n_then_calls_on_passive_once() {
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Open(id) = ev {
                ctx.set_active(*id, Active::N(2));
                ctx.set_active(*id, Active::N(1)); // 2 + 1 = 3
            }
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"1\n2\n3\n4\n5\n6\n").unwrap();
    server.wait_ev(Ev::Passive(id));
    thread::sleep(SETTLE);
    let f = |s: &str| Ev::Frame(id, s.as_bytes().to_vec());
    assert_eq!(server.events(id), [Ev::Open(id), f("1\n"), f("2\n"), f("3\n"), Ev::Passive(id)]);
    server.act(move |ctx| ctx.set_active(id, Active::N(2)));
    server.wait_for("a second on_passive", |log| log.iter().filter(|e| e.ev == Ev::Passive(id)).count() == 2);
    thread::sleep(SETTLE);
    assert_eq!(server.events(id)[5..], [f("4\n"), f("5\n"), Ev::Passive(id)]);
    // One frame left, five allowed: it is delivered and no on_passive follows.
    server.act(move |ctx| ctx.set_active(id, Active::N(5)));
    server.wait_frames(id, 6);
    thread::sleep(SETTLE);
    assert_eq!(server.count(&Ev::Passive(id)), 2);
}

/// `Active::N(0)` with no count left goes passive at once, with
/// `on_passive` (gen_tcp's `{active, 0}`); with a count left it adds
/// nothing.
#[test]
fn active_n_zero_goes_passive_at_once() {
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Open(id) = ev {
                ctx.set_active(*id, Active::N(0));
            }
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"x\ny\n").unwrap();
    server.wait_ev(Ev::Passive(id));
    thread::sleep(SETTLE);
    assert_eq!(server.events(id), [Ev::Open(id), Ev::Passive(id)]);
    server.act(move |ctx| {
        ctx.set_active(id, Active::N(2));
        ctx.set_active(id, Active::N(0));
    });
    server.wait_for("a second on_passive", |log| log.iter().filter(|e| e.ev == Ev::Passive(id)).count() == 2);
    thread::sleep(SETTLE);
    let f = |s: &str| Ev::Frame(id, s.as_bytes().to_vec());
    assert_eq!(server.events(id), [Ev::Open(id), Ev::Passive(id), f("x\n"), f("y\n"), Ev::Passive(id)]);
}

/// `Active::Off` stops reading, so TCP pushes back on a peer that keeps
/// writing; `Active::On` resumes and every byte arrives, in order.
#[test]
fn active_off_pushes_back_on_the_peer_and_on_resumes_in_order() {
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Open(id) = ev {
                ctx.set_active(*id, Active::Off);
            }
        })
        .listen(0, Framing::Raw)
        .start();
    let (c, id) = server.client(0);
    let sent = write_until_pushed_back(&c, 1, 64 << 20);
    assert!(server.frames(id).is_empty(), "a frame was delivered while off");
    server.act(move |ctx| ctx.set_active(id, Active::On));
    server.wait_for("every byte", |log| {
        log.iter()
            .filter_map(|e| if let Ev::Frame(i, f) = &e.ev { (*i == id).then_some(f.len()) } else { None })
            .sum::<usize>()
            >= sent
    });
    assert!(server.frames(id).concat() == stream_bytes(1, 0, sent), "bytes lost or reordered");
}

// ------------------------------------------------- 2. exact-length frames

/// The memcached pattern: a line announces a length, `Exact(n)` takes the
/// block (newlines and all), and the next line is a line again — with
/// everything already in the buffer from one read, and with a block split
/// over two writes.
#[test]
fn exact_framing_switches_with_the_data_already_buffered() {
    let mut in_block = false;
    let server = setup()
        .handler(move |ctx, ev, _| {
            let Ev::Frame(id, frame) = ev else { return };
            if let Some(rest) = frame.strip_prefix(b"VALUE k 0 ") {
                let n: u32 = std::str::from_utf8(rest).unwrap().trim().parse().unwrap();
                ctx.set_framing(*id, Framing::Exact(n + 2));
                in_block = true;
            } else if in_block {
                ctx.set_framing(*id, Framing::Line);
                in_block = false;
            }
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"VALUE k 0 5\r\nhello\r\nEND\r\nVALUE k 0 4\r\na\nb\n\r\nEND\r\n").unwrap();
    server.wait_frames(id, 6);
    c.write_all(b"VALUE k 0 10\r\n01234").unwrap();
    thread::sleep(Duration::from_millis(20));
    c.write_all(b"56789\r\nEND\r\n").unwrap();
    server.wait_frames(id, 9);
    let expected: [&[u8]; 9] = [
        b"VALUE k 0 5\r\n",
        b"hello\r\n",
        b"END\r\n",
        b"VALUE k 0 4\r\n",
        b"a\nb\n\r\n",
        b"END\r\n",
        b"VALUE k 0 10\r\n",
        b"0123456789\r\n",
        b"END\r\n",
    ];
    assert_eq!(server.frames(id), expected);
}

/// `Exact(n)` is bounded by `max_frame`: n = max_frame works, one more
/// closes the connection with `FrameTooLarge`.
#[test]
fn exact_framing_over_max_frame_closes_with_frame_too_large() {
    const MAX: u32 = 4096;
    let server = setup()
        .config(Config { max_frame: MAX as usize, ..Config::default() })
        .handler(|ctx, ev, _| match ev {
            Ev::Frame(id, f) if f == b"max\n" => ctx.set_framing(*id, Framing::Exact(MAX)),
            Ev::Frame(id, f) if f == b"over\n" => ctx.set_framing(*id, Framing::Exact(MAX + 1)),
            Ev::Frame(id, f) if f.len() == MAX as usize => ctx.set_framing(*id, Framing::Line),
            _ => {}
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"max\n").unwrap();
    c.write_all(&[b'x'; MAX as usize]).unwrap();
    c.write_all(b"over\n").unwrap();
    c.write_all(&[b'y'; 100]).unwrap();
    server.wait_ev(Ev::Close(id, CloseReason::FrameTooLarge));
    assert_eq!(server.frames(id), [b"max\n".to_vec(), vec![b'x'; MAX as usize], b"over\n".to_vec()]);
}

// --------------------------------------------------------- 3. output policy

/// `OverLimit::Refuse`: with a peer that does not read, a send is refused
/// with `OverLimit` (nothing queued); `on_busy`, then `on_ready` once the
/// peer reads; then sending works again.
#[test]
fn refuse_policy_returns_over_limit_until_on_ready() {
    const LIMIT: usize = 64 << 10;
    const PIECE: usize = 16 << 10;
    let options = ListenOptions {
        socket: SocketOptions { send_buffer: Some(16 << 10), ..SocketOptions::default() },
        ..ListenOptions::default()
    };
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Open(id) = ev {
                ctx.set_output_policy(*id, OutputPolicy::new(LIMIT, OverLimit::Refuse));
            }
        })
        .listen_with(0, "127.0.0.1:0", options)
        .start();
    let (mut c, id) = server.client(0);
    let (sent, refused) = server.act(move |ctx| {
        for n in 0..2000 {
            if let Err(e) = ctx.send(id, &[b'p'; PIECE]) {
                return (n, Some(e));
            }
        }
        (2000, None)
    });
    match refused {
        Some(SendError::OverLimit { queued, limit }) => {
            assert_eq!(limit, LIMIT);
            assert!(queued + PIECE > LIMIT, "refused with room left: {queued} queued");
        }
        other => panic!("{sent} sends of {PIECE} bytes to a peer that does not read, then {other:?}"),
    }
    server.wait_ev(Ev::Busy(id));
    assert_eq!(read_n(&mut c, sent * PIECE), vec![b'p'; sent * PIECE]);
    server.wait_ev(Ev::Ready(id));
    let log = server.log();
    let busy = log.iter().position(|e| e.ev == Ev::Busy(id)).unwrap();
    let ready = log.iter().position(|e| e.ev == Ev::Ready(id)).unwrap();
    assert!(busy < ready);
    assert_eq!(server.act(move |ctx| ctx.send(id, b"again")), Ok(()));
    assert_eq!(read_n(&mut c, 5), b"again");
    // The refused send was not queued.
    assert_nothing_to_read(&mut c);
}

/// `OverLimit::Disconnect` on one connection closes it with `OutbufFull`;
/// another connection, under the reactor's default (`Pause`), is only
/// paused — TCP pushes back — and gets every byte once it reads.
#[test]
fn disconnect_policy_closes_only_its_connection_while_pause_pauses() {
    const LIMIT: usize = 64 << 10;
    let options = ListenOptions {
        framing: Framing::Raw,
        socket: SocketOptions { send_buffer: Some(16 << 10), ..SocketOptions::default() },
        ..ListenOptions::default()
    };
    let server = setup()
        .config(Config { output: OutputPolicy::new(LIMIT, OverLimit::Pause), ..Config::default() })
        .handler(echo())
        .listen_with(0, "127.0.0.1:0", options)
        .start();
    let (a, ida) = server.client(0);
    let (mut b, idb) = server.client(0);
    server.act(move |ctx| ctx.set_output_policy(ida, OutputPolicy::new(LIMIT, OverLimit::Disconnect)));
    let closed = Ev::Close(ida, CloseReason::OutbufFull);
    write_until(&a, 2, || server.count(&closed) > 0);
    server.wait_ev(closed);

    let sent = write_until_pushed_back(&b, 3, 64 << 20);
    assert!(server.counters().flow_pauses >= 1);
    assert!(!server.events(idb).iter().any(|e| matches!(e, Ev::Close(..))), "the paused connection was closed");
    expect_stream(&mut b, 3, 0, sent);
    round_trip(&mut b, b"still open");
}

/// A high watermark below the limit: `on_busy` fires when the queue
/// passes it, well before the limit; `on_ready` when it is back down to
/// the low watermark.
#[test]
fn watermarks_below_the_limit_fire_busy_and_ready() {
    const LIMIT: usize = 1 << 20;
    const HIGH: usize = 64 << 10;
    const LOW: usize = 16 << 10;
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Open(id) = ev {
                let policy = OutputPolicy {
                    limit: LIMIT,
                    over_limit: OverLimit::Pause,
                    high_watermark: HIGH,
                    low_watermark: LOW,
                };
                ctx.set_output_policy(*id, policy);
            }
        })
        .listen(0, Framing::Raw)
        .start();
    let (mut c, id) = server.client(0);
    server.act(move |ctx| {
        for _ in 0..5 {
            ctx.send(id, &[b'w'; 16 << 10]).unwrap();
        }
    });
    server.wait_ev(Ev::Busy(id));
    let busy = server.entry(|ev| *ev == Ev::Busy(id)).unwrap();
    assert!(busy.pending > 0 && busy.pending < LIMIT, "on_busy with {} bytes pending", busy.pending);
    assert_eq!(read_n(&mut c, 80 << 10), vec![b'w'; 80 << 10]);
    server.wait_ev(Ev::Ready(id));
    let ready = server.entry(|ev| *ev == Ev::Ready(id)).unwrap();
    assert!(ready.pending <= LOW);
    assert_eq!(server.count(&Ev::Busy(id)), 1);
}

// ------------------------------------------------------------------ 4. abort

/// `abort`: the peer's read gets `ECONNRESET`, what was queued never goes
/// out, the reason is `Aborted`.
#[test]
fn abort_resets_the_peer_and_drops_queued_output() {
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Frame(id, f) = ev {
                if f == b"abort\n" {
                    ctx.send(*id, &[b'q'; 1 << 20]).unwrap();
                    ctx.abort(*id);
                }
            }
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"abort\n").unwrap();
    let (got, end) = read_until_end(&mut c);
    assert_eq!(got.len(), 0, "queued output went out");
    assert_eq!(end.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    server.wait_ev(Ev::Close(id, CloseReason::Aborted));
}

// ------------------------------------------------------------ 5. half-close

/// `shutdown_write`: `on_shutdown` comes only once every queued byte is
/// out; the peer reads them all, then end of stream; the connection still
/// receives.
#[test]
fn shutdown_write_reports_on_shutdown_after_queued_bytes() {
    const BIG: usize = 1 << 20;
    let options = ListenOptions {
        framing: Framing::Line,
        socket: SocketOptions { send_buffer: Some(16 << 10), ..SocketOptions::default() },
        ..ListenOptions::default()
    };
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Frame(id, f) = ev {
                if f == b"shut\n" {
                    ctx.send(*id, &stream_bytes(5, 0, BIG)).unwrap();
                    ctx.shutdown_write(*id);
                }
            }
        })
        .listen_with(0, "127.0.0.1:0", options)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"shut\n").unwrap();
    server.wait_frames(id, 1);
    thread::sleep(SETTLE);
    assert_eq!(server.count(&Ev::Shutdown(id)), 0, "on_shutdown before the queue was written");
    let (got, end) = read_until_end(&mut c);
    end.unwrap();
    assert!(got == stream_bytes(5, 0, BIG), "{} bytes before end of stream", got.len());
    server.wait_ev(Ev::Shutdown(id));
    c.write_all(b"after\n").unwrap();
    server.wait_ev(Ev::Frame(id, b"after\n".to_vec()));
    c.shutdown(Shutdown::Write).unwrap();
    server.wait_ev(Ev::Close(id, CloseReason::PeerClosed));
    assert_eq!(server.count(&Ev::Shutdown(id)), 1);
}

/// `set_exit_on_close(id, false)`: the peer's end of stream is `on_eof`,
/// once, after every frame (the final unterminated line too); the server
/// still writes to it afterwards; `close` then ends it (reason `Local`).
#[test]
fn exit_on_close_off_reports_eof_and_keeps_the_write_side() {
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Open(id) = ev {
                ctx.set_exit_on_close(*id, false);
            }
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"one\ntwo\nthree").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    server.wait_ev(Ev::Eof(id));
    thread::sleep(SETTLE);
    let f = |s: &str| Ev::Frame(id, s.as_bytes().to_vec());
    assert_eq!(server.events(id), [Ev::Open(id), f("one\n"), f("two\n"), f("three"), Ev::Eof(id)]);
    assert_eq!(server.act(move |ctx| ctx.send(id, b"after eof\n")), Ok(()));
    assert_eq!(read_n(&mut c, 10), b"after eof\n");
    server.act(move |ctx| ctx.close(id));
    let (rest, end) = read_until_end(&mut c);
    end.unwrap();
    assert!(rest.is_empty());
    server.wait_ev(Ev::Close(id, CloseReason::Local));
    assert_eq!(server.count(&Ev::Eof(id)), 1);
}

/// `shutdown_write` on a connection whose peer already ended its stream
/// (`exit_on_close` off): `on_shutdown` is told, then the connection
/// closes — both directions are done.
#[test]
fn shutdown_write_after_eof_reports_on_shutdown_then_closes() {
    let server = setup()
        .handler(|ctx, ev, _| match ev {
            Ev::Open(id) => ctx.set_exit_on_close(*id, false),
            Ev::Eof(id) => {
                ctx.send(*id, b"bye\n").unwrap();
                ctx.shutdown_write(*id);
            }
            _ => {}
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"x\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, end) = read_until_end(&mut c);
    end.unwrap();
    assert_eq!(got, b"bye\n");
    server.wait_for("a close", |log| log.iter().any(|e| matches!(e.ev, Ev::Close(i, _) if i == id)));
    let frame = Ev::Frame(id, b"x\n".to_vec());
    let closed = Ev::Close(id, CloseReason::PeerClosed);
    assert_eq!(server.events(id), [Ev::Open(id), frame, Ev::Eof(id), Ev::Shutdown(id), closed]);
}

// ---------------------------------------------------- 6. close reasons

/// A peer that resets (`SO_LINGER` 0): `Error(ECONNRESET)`.
#[test]
fn peer_reset_closes_with_econnreset() {
    let server = setup().handler(quiet()).listen(0, Framing::Line).start();
    let (c, id) = server.client(0);
    reset(c);
    server.wait_ev(Ev::Close(id, CloseReason::Error(Errno::ECONNRESET)));
}

/// A connect to a port nobody listens on: `ConnectFailed(ECONNREFUSED)`.
#[test]
fn connect_to_a_closed_port_fails_with_econnrefused() {
    let server = setup().handler(quiet()).start();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let id = server.act(move |ctx| ctx.connect(&closed, &ConnectOptions::default())).unwrap();
    server.wait_ev(Ev::Close(id, CloseReason::ConnectFailed(Errno::ECONNREFUSED)));
    assert_eq!(server.count(&Ev::Open(id)), 0);
}

/// A connect whose SYN goes unanswered gives up after
/// `ConnectOptions::timeout`: `ConnectFailed(ETIMEDOUT)`.
#[test]
fn connect_timeout_fails_with_etimedout() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    // A listener that never accepts, with a backlog of 0 (listen(2) again
    // on a listening socket sets a new backlog): its accept queue holds
    // one connection; once it does, the kernel drops further SYNs.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    nixsock::listen(&listener, nixsock::Backlog::new(0).unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let _filler = TcpStream::connect(addr).unwrap();
    let server = setup().handler(quiet()).start();
    let (id, started) = server.act(move |ctx| {
        let options = ConnectOptions { timeout: Some(TIMEOUT), ..ConnectOptions::default() };
        (ctx.connect(&addr, &options).unwrap(), ctx.now())
    });
    server.wait_for("a close", |log| log.iter().any(|e| matches!(e.ev, Ev::Close(i, _) if i == id)));
    let close = server.entry(|ev| matches!(ev, Ev::Close(i, _) if *i == id)).unwrap();
    assert_eq!(close.ev, Ev::Close(id, CloseReason::ConnectFailed(Errno::ETIMEDOUT)));
    assert!(close.at.duration_since(started) >= TIMEOUT, "gave up early");
    assert_eq!(server.count(&Ev::Open(id)), 0);
}

/// Output stuck behind a peer that never reads past `send_timeout`:
/// `SendTimeout { unsent }`, with the bytes still queued.
#[test]
fn send_timeout_reports_the_unsent_bytes() {
    const BIG: usize = 2 << 20;
    let options = ListenOptions {
        socket: SocketOptions { send_buffer: Some(16 << 10), ..SocketOptions::default() },
        ..ListenOptions::default()
    };
    let server = setup()
        .config(Config { send_timeout: Duration::from_millis(300), ..Config::default() })
        .handler(quiet())
        .listen_with(0, "127.0.0.1:0", options)
        .start();
    let (_c, id) = server.client(0);
    server.act(move |ctx| ctx.send(id, &vec![b's'; BIG])).unwrap();
    server.wait_for("a close", |log| log.iter().any(|e| matches!(e.ev, Ev::Close(i, _) if i == id)));
    let close = server.entry(|ev| matches!(ev, Ev::Close(i, _) if *i == id)).unwrap();
    match close.ev {
        Ev::Close(_, CloseReason::SendTimeout { unsent }) => assert!(unsent > 0 && unsent < BIG, "unsent {unsent}"),
        other => panic!("{other:?}"),
    }
}

// -------------------------------------------------------------- 7. timers

/// A script arming timers on command lines: `arm` 50 ms, `rearm` 40 ms
/// then 250 ms, `cancel`, `fast` 200 µs ten times over.
fn timer_script() -> impl FnMut(&mut Ctx<'_>, &Ev, &[HandlerId]) + Send + 'static {
    let mut fast_left = 0;
    move |ctx, ev, _| match ev {
        Ev::Frame(id, f) => match f.as_slice() {
            b"arm\n" => ctx.set_timer(*id, Duration::from_millis(50)),
            b"rearm\n" => {
                ctx.set_timer(*id, Duration::from_millis(40));
                ctx.set_timer(*id, Duration::from_millis(250));
            }
            b"cancel\n" => ctx.cancel_timer(*id),
            b"fast\n" => {
                fast_left = 9;
                ctx.set_timer(*id, Duration::from_micros(200));
            }
            _ => {}
        },
        Ev::Timer(id) if fast_left > 0 => {
            fast_left -= 1;
            ctx.set_timer(*id, Duration::from_micros(200));
        }
        _ => {}
    }
}

/// The time from the first entry matching `from` to the first matching `to`.
fn between(server: &Server, from: &Ev, to: &Ev) -> Duration {
    let a = server.entry(|ev| ev == from).unwrap().at;
    server.entry(|ev| ev == to).unwrap().at.duration_since(a)
}

#[test]
fn timer_fires_once() {
    let server = setup().handler(timer_script()).listen(0, Framing::Line).start();
    let (mut c, id) = server.client(0);
    c.write_all(b"arm\n").unwrap();
    server.wait_ev(Ev::Timer(id));
    assert!(between(&server, &Ev::Frame(id, b"arm\n".to_vec()), &Ev::Timer(id)) >= Duration::from_millis(50));
    thread::sleep(SETTLE);
    assert_eq!(server.count(&Ev::Timer(id)), 1);
}

/// A second `set_timer` before the first fires replaces it: one fire, at
/// the later time.
#[test]
fn set_timer_again_replaces_the_pending_timer() {
    let server = setup().handler(timer_script()).listen(0, Framing::Line).start();
    let (mut c, id) = server.client(0);
    c.write_all(b"rearm\n").unwrap();
    server.wait_ev(Ev::Timer(id));
    assert!(between(&server, &Ev::Frame(id, b"rearm\n".to_vec()), &Ev::Timer(id)) >= Duration::from_millis(250));
    thread::sleep(SETTLE);
    assert_eq!(server.count(&Ev::Timer(id)), 1);
}

/// `cancel_timer`: the timer never fires (and the next one does).
#[test]
fn cancel_timer_prevents_the_fire() {
    let server = setup().handler(timer_script()).listen(0, Framing::Line).start();
    let (mut c, id) = server.client(0);
    c.write_all(b"arm\ncancel\n").unwrap();
    server.wait_frames(id, 2);
    thread::sleep(Duration::from_millis(50) + 2 * SETTLE);
    assert_eq!(server.count(&Ev::Timer(id)), 0, "a cancelled timer fired");
    c.write_all(b"arm\n").unwrap();
    server.wait_ev(Ev::Timer(id));
}

/// A 200 µs timer fires, no earlier than 200 µs after it was set, ten
/// times in a row (sub-millisecond timers work).
#[test]
fn sub_millisecond_timer_fires() {
    let server = setup().handler(timer_script()).listen(0, Framing::Line).start();
    let (mut c, id) = server.client(0);
    c.write_all(b"fast\n").unwrap();
    server.wait_for("ten timers", |log| log.iter().filter(|e| e.ev == Ev::Timer(id)).count() == 10);
    let log = server.log();
    let times: Vec<Instant> = log
        .iter()
        .filter(|e| e.ev == Ev::Timer(id) || matches!(e.ev, Ev::Frame(i, _) if i == id))
        .map(|e| e.at)
        .collect();
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(gap >= Duration::from_micros(200), "a 200 µs timer fired after {gap:?}");
    }
}

// ------------------------------------------------- 8. connect with a timeout

/// A connect that succeeds with a timeout set is not killed when the
/// timeout would have passed.
#[test]
fn connect_timeout_spares_an_established_connection() {
    const TIMEOUT: Duration = Duration::from_millis(100);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = setup().handler(quiet()).start();
    let id = server.act(move |ctx| {
        let options = ConnectOptions { timeout: Some(TIMEOUT), framing: Framing::Line, ..ConnectOptions::default() };
        ctx.connect(&addr, &options).unwrap()
    });
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    server.wait_ev(Ev::Open(id));
    thread::sleep(3 * TIMEOUT);
    peer.write_all(b"late\n").unwrap();
    server.wait_ev(Ev::Frame(id, b"late\n".to_vec()));
    assert_eq!(server.act(move |ctx| ctx.send(id, b"back\n")), Ok(()));
    assert_eq!(read_n(&mut peer, 5), b"back\n");
    assert_eq!(server.events(id), [Ev::Open(id), Ev::Frame(id, b"late\n".to_vec())]);
}

// ------------------------------------------------------ 9. crash isolation

/// A panic in `on_frame` closes that connection (`Panic`, the peer sees
/// it end), is counted, and the other connection goes on.
#[test]
fn panic_in_a_callback_costs_only_its_connection() {
    let server = setup()
        .handler(|ctx, ev, _| {
            if let Ev::Frame(id, f) = ev {
                assert!(f != b"boom\n", "boom (a deliberate panic)");
                ctx.send(*id, f).unwrap();
            }
        })
        .listen(0, Framing::Line)
        .start();
    let (mut a, ida) = server.client(0);
    let (mut b, _) = server.client(0);
    round_trip(&mut b, b"before\n");
    a.write_all(b"boom\n").unwrap();
    let (got, end) = read_until_end(&mut a);
    assert!(got.is_empty());
    assert!(end.as_ref().map_or_else(|e| e.kind() == ErrorKind::ConnectionReset, |()| true), "{end:?}");
    server.wait_ev(Ev::Close(ida, CloseReason::Panic));
    round_trip(&mut b, b"after\n");
    let counters = server.counters();
    assert_eq!(counters.panics, 1);
    assert_eq!(counters.closed(CloseReason::Panic), 1);
}

/// A panic in `on_tick` (about no connection) is counted, and the reactor
/// goes on: connections are served, ticks keep coming.
#[test]
fn panic_in_on_tick_does_not_stop_the_reactor() {
    let boom = Arc::new(AtomicBool::new(false));
    let ticks = Arc::new(AtomicUsize::new(0));
    let (boom2, ticks2) = (Arc::clone(&boom), Arc::clone(&ticks));
    let server = setup()
        .handler(echo())
        .handler(move |_, ev, _| {
            if *ev == Ev::Tick {
                ticks2.fetch_add(1, Ordering::Relaxed);
                assert!(!boom2.swap(false, Ordering::Relaxed), "tick boom (a deliberate panic)");
            }
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, _) = server.client(0);
    round_trip(&mut c, b"before\n");
    boom.store(true, Ordering::Relaxed);
    let start = Instant::now();
    while server.counters().panics == 0 {
        assert!(start.elapsed() < WAIT, "on_tick never panicked");
    }
    let seen = ticks.load(Ordering::Relaxed);
    round_trip(&mut c, b"after\n");
    let start = Instant::now();
    while ticks.load(Ordering::Relaxed) < seen + 3 {
        assert!(start.elapsed() < WAIT, "no tick after the panic");
        thread::sleep(TICK);
    }
    assert_eq!(server.counters().panics, 1);
}

// ------------------------------- 10. listeners, handlers, filters, hand-over

/// Two listeners, each with its own handler, on one reactor.
#[test]
fn each_listener_serves_its_own_handler() {
    let server = setup()
        .handler(echo())
        .handler(|ctx, ev, _| {
            if let Ev::Frame(id, f) = ev {
                ctx.send(*id, &f.to_ascii_uppercase()).unwrap();
            }
        })
        .listen(0, Framing::Line)
        .listen(1, Framing::Line)
        .start();
    let (mut c0, id0) = server.client(0);
    let (mut c1, id1) = server.client(1);
    round_trip(&mut c0, b"hello\n");
    c1.write_all(b"hello\n").unwrap();
    assert_eq!(read_n(&mut c1, 6), b"HELLO\n");
    for e in server.log() {
        match e.ev.id() {
            Some(id) if id == id0 => assert_eq!(e.handler, 0, "{:?}", e.ev),
            Some(id) if id == id1 => assert_eq!(e.handler, 1, "{:?}", e.ev),
            _ => {}
        }
    }
}

/// An accept filter refusing 127.0.0.1 closes those peers before they are
/// registered: their handler hears nothing, `refused_denied` counts them.
#[test]
fn accept_filter_refuses_before_on_open() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let filter = ListenOptions {
        framing: Framing::Line,
        filter: Some(Arc::new(move |peer: &SocketAddr| {
            lock(&seen2).push(*peer);
            peer.ip() != Ipv4Addr::LOCALHOST
        })),
        ..ListenOptions::default()
    };
    let server =
        setup().handler(echo()).handler(echo()).listen(0, Framing::Line).listen_with(1, "127.0.0.1:0", filter).start();
    let mut refused = server.connect(1);
    let (got, _) = read_until_end(&mut refused); // end of stream (or a reset)
    assert!(got.is_empty());
    assert_eq!(*lock(&seen), [refused.local_addr().unwrap()]);
    let (mut ok, _) = server.client(0);
    round_trip(&mut ok, b"served\n");
    let counters = server.counters();
    assert_eq!((counters.refused_denied, counters.accepted), (1, 2));
    let heard: Vec<Ev> = server.log().into_iter().filter(|e| e.handler == 1).map(|e| e.ev).collect();
    assert!(heard.is_empty(), "the filtered listener's handler heard {heard:?}");
}

/// `hand_over`: the new handler gets `on_open`, then the frames buffered
/// behind the one that triggered it, in order; the old one gets nothing
/// more (not even `on_close`).
#[test]
fn hand_over_moves_a_connection_with_its_buffered_frames() {
    let server = setup()
        .handler(|ctx, ev, handlers| {
            if let Ev::Frame(id, f) = ev {
                if f == b"move\n" {
                    ctx.hand_over(*id, handlers[1]);
                } else {
                    ctx.send(*id, &[b"A:", &f[..]].concat()).unwrap();
                }
            }
        })
        .handler(|ctx, ev, _| {
            if let Ev::Frame(id, f) = ev {
                ctx.send(*id, &[b"B:", &f[..]].concat()).unwrap();
            }
        })
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"a\nmove\nb\nc\n").unwrap();
    assert_eq!(read_n(&mut c, 12), b"A:a\nB:b\nB:c\n");
    c.write_all(b"d\n").unwrap();
    assert_eq!(read_n(&mut c, 4), b"B:d\n");
    c.shutdown(Shutdown::Write).unwrap();
    server.wait_ev(Ev::Close(id, CloseReason::PeerClosed));
    let by = |h: usize| -> Vec<Ev> { server.log().into_iter().filter(|e| e.handler == h).map(|e| e.ev).collect() };
    let f = |s: &str| Ev::Frame(id, s.as_bytes().to_vec());
    assert_eq!(by(0), [Ev::Open(id), f("a\n"), f("move\n")]);
    assert_eq!(by(1), [Ev::Open(id), f("b\n"), f("c\n"), f("d\n"), Ev::Close(id, CloseReason::PeerClosed)]);
}

/// The same when the peer's end of stream is read together with the
/// frames: the new handler still hears `on_open` first, then the frames,
/// then the close — nothing reaches it before it owns the connection.
#[test]
fn hand_over_at_end_of_stream_opens_before_the_frames() {
    let server = setup()
        .handler(|ctx, ev, handlers| match ev {
            // Paused, so that the frames and the FIN are read in one go.
            Ev::Open(id) => ctx.set_active(*id, Active::Off),
            Ev::Frame(id, f) if f == b"move\n" => ctx.hand_over(*id, handlers[1]),
            _ => {}
        })
        .handler(quiet())
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"a\nmove\nb\nc").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    thread::sleep(SETTLE);
    server.act(move |ctx| ctx.set_active(id, Active::On));
    server.wait_for("a close", |log| log.iter().any(|e| matches!(e.ev, Ev::Close(i, _) if i == id)));
    let by = |h: usize| -> Vec<Ev> { server.log().into_iter().filter(|e| e.handler == h).map(|e| e.ev).collect() };
    let f = |s: &str| Ev::Frame(id, s.as_bytes().to_vec());
    assert_eq!(by(0), [Ev::Open(id), f("a\n"), f("move\n")]);
    assert_eq!(by(1), [Ev::Open(id), f("b\n"), f("c"), Ev::Close(id, CloseReason::PeerClosed)]);
}

/// A connection handed over and closed in the same callback: its new
/// handler still hears `on_open` before `on_close` (`on_close` comes only
/// for an id that was opened).
#[test]
fn hand_over_then_abort_opens_before_it_closes() {
    let server = setup()
        .handler(|ctx, ev, handlers| {
            if let Ev::Frame(id, f) = ev {
                if f == b"move and abort\n" {
                    ctx.hand_over(*id, handlers[1]);
                    ctx.abort(*id);
                }
            }
        })
        .handler(quiet())
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"move and abort\n").unwrap();
    server.wait_for("a close", |log| log.iter().any(|e| matches!(e.ev, Ev::Close(i, _) if i == id)));
    let by = |h: usize| -> Vec<Ev> { server.log().into_iter().filter(|e| e.handler == h).map(|e| e.ev).collect() };
    assert_eq!(by(0), [Ev::Open(id), Ev::Frame(id, b"move and abort\n".to_vec())]);
    assert_eq!(by(1), [Ev::Open(id), Ev::Close(id, CloseReason::Aborted)]);
}

/// Events that fall due in the turn of a hand-over — the queue passing its
/// high watermark and draining, a timer — reach the new handler only after
/// its `on_open`.
#[test]
fn hand_over_opens_before_busy_ready_and_timer() {
    let server = setup()
        .handler(|ctx, ev, handlers| {
            if let Ev::Frame(id, f) = ev {
                if f == b"move\n" {
                    let policy = OutputPolicy { high_watermark: 4, low_watermark: 0, ..OutputPolicy::default() };
                    ctx.set_output_policy(*id, policy);
                    ctx.send(*id, b"more than four bytes\n").unwrap();
                    ctx.set_timer(*id, Duration::ZERO);
                    ctx.hand_over(*id, handlers[1]);
                }
            }
        })
        .handler(quiet())
        .listen(0, Framing::Line)
        .start();
    let (mut c, id) = server.client(0);
    c.write_all(b"move\n").unwrap();
    server.wait_for("busy, ready and the timer", |log| {
        [Ev::Busy(id), Ev::Ready(id), Ev::Timer(id)].iter().all(|want| log.iter().any(|e| e.ev == *want))
    });
    let by = |h: usize| -> Vec<Ev> { server.log().into_iter().filter(|e| e.handler == h).map(|e| e.ev).collect() };
    assert_eq!(by(0), [Ev::Open(id), Ev::Frame(id, b"move\n".to_vec())]);
    let new_owner = by(1);
    assert_eq!(new_owner.first(), Some(&Ev::Open(id)), "{new_owner:?}");
}

// ---------------------------------------------------- 11. socket options

/// Options set on accept are read back on the connection; a second
/// listener without them shows the defaults; `set_socket_options` changes
/// them later; `peer_addr`/`local_addr` are the client's two ends.
#[test]
fn socket_options_are_applied_and_read_back() {
    let keepalive = Keepalive { idle: Duration::from_secs(30), interval: Duration::from_secs(5), count: 4 };
    let tuned = SocketOptions {
        nodelay: true,
        keepalive: Some(keepalive),
        send_buffer: Some(64 << 10),
        recv_buffer: Some(96 << 10),
    };
    let plain = SocketOptions { nodelay: false, ..SocketOptions::default() };
    let server = setup()
        .handler(quiet())
        .listen_with(0, "127.0.0.1:0", ListenOptions { socket: tuned, ..ListenOptions::default() })
        .listen_with(0, "127.0.0.1:0", ListenOptions { socket: plain, ..ListenOptions::default() })
        .start();
    let (c0, id0) = server.client(0);
    let (_c1, id1) = server.client(1);
    let (o0, o1, peer, local) = server.act(move |ctx| {
        (
            ctx.socket_options(id0).unwrap(),
            ctx.socket_options(id1).unwrap(),
            ctx.peer_addr(id0).unwrap(),
            ctx.local_addr(id0).unwrap(),
        )
    });
    assert!(o0.nodelay);
    assert_eq!(o0.keepalive, Some(keepalive));
    // Linux doubles what it is given.
    assert!(o0.send_buffer.unwrap() >= 64 << 10, "{o0:?}");
    assert!(o0.recv_buffer.unwrap() >= 96 << 10, "{o0:?}");
    assert!(!o1.nodelay);
    assert_eq!(o1.keepalive, None);
    assert_eq!((peer, local), (c0.local_addr().unwrap(), c0.peer_addr().unwrap()));

    let later = server.act(move |ctx| {
        ctx.set_socket_options(id1, &SocketOptions { keepalive: Some(keepalive), ..SocketOptions::default() }).unwrap();
        ctx.socket_options(id1).unwrap()
    });
    assert!(later.nodelay);
    assert_eq!(later.keepalive, Some(keepalive));
}

/// `reuse_port`: two reactors listen on one port and both serve; without
/// it, a third cannot bind.
#[test]
fn reuse_port_lets_two_reactors_share_a_port() {
    let shared = ListenOptions { framing: Framing::Line, reuse_port: true, ..ListenOptions::default() };
    let a = setup().handler(echo()).listen_with(0, "127.0.0.1:0", shared.clone()).start();
    let addr = a.addrs[0].to_string();
    let b = setup().handler(echo()).listen_with(0, &addr, shared).start();
    assert_eq!(b.addrs[0], a.addrs[0]);
    let third = setup().handler(echo()).listen_with(0, &addr, ListenOptions::default()).try_start();
    assert_eq!(third.err().map(|e| e.kind()), Some(ErrorKind::AddrInUse));
    for i in 0..8 {
        let mut c = TcpStream::connect(a.addrs[0]).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        round_trip(&mut c, format!("client {i}\n").as_bytes());
    }
    let opened = |s: &Server| s.log().iter().filter(|e| matches!(e.ev, Ev::Open(_))).count();
    assert_eq!(opened(&a) + opened(&b), 8);
}

/// `v6_only` on IPv6 listeners: `[::1]` serves IPv6 clients; on `[::]`,
/// `Some(true)` refuses IPv4 clients and `Some(false)` takes them.
#[test]
fn v6_only_decides_whether_an_ipv6_listener_takes_ipv4() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback: skipped");
        return;
    }
    let only = |v6_only| ListenOptions { framing: Framing::Line, v6_only: Some(v6_only), ..ListenOptions::default() };
    let server = setup()
        .handler(echo())
        .listen_with(0, "[::1]:0", only(true))
        .listen_with(0, "[::]:0", only(true))
        .listen_with(0, "[::]:0", only(false))
        .start();
    let (mut c6, id6) = server.client(0);
    round_trip(&mut c6, b"over IPv6\n");
    assert!(server.act(move |ctx| ctx.peer_addr(id6).unwrap()).is_ipv6());
    let v4 = |i: usize| SocketAddr::from((Ipv4Addr::LOCALHOST, server.addrs[i].port()));
    let refused = TcpStream::connect(v4(1));
    assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::ConnectionRefused));
    let mut dual = TcpStream::connect(v4(2)).unwrap();
    dual.set_read_timeout(Some(WAIT)).unwrap();
    round_trip(&mut dual, b"IPv4 on a dual-stack listener\n");
}

// ------------------------------------------------ 12. the cross-thread handle

/// `Handle::submit` from another thread: the job runs on the reactor's
/// thread and its send reaches the client.
#[test]
fn handle_submit_runs_a_job_on_the_reactor_thread() {
    let server = setup().handler(quiet()).listen(0, Framing::Line).start();
    let (mut c, id) = server.client(0);
    let handle = server.handle.clone();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        handle
            .submit(move |ctx| {
                ctx.send(id, b"from afar\n").unwrap();
                let _ = tx.send(thread::current().name().map(str::to_owned));
            })
            .unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(read_n(&mut c, 10), b"from afar\n");
    assert_eq!(rx.recv_timeout(WAIT).unwrap().as_deref(), Some("reactor"));
}

/// `Handle::stop` from another thread: connections close gracefully (the
/// client reads everything queued, then end of stream) and `run` returns.
#[test]
fn handle_stop_closes_gracefully_and_run_returns() {
    const BIG: usize = 1 << 20;
    let options = ListenOptions {
        socket: SocketOptions { send_buffer: Some(16 << 10), ..SocketOptions::default() },
        ..ListenOptions::default()
    };
    let server = setup().handler(quiet()).listen_with(0, "127.0.0.1:0", options).start();
    let (mut c, id) = server.client(0);
    let pending = server.act(move |ctx| {
        ctx.send(id, &stream_bytes(12, 0, BIG)).unwrap();
        ctx.pending_output(id)
    });
    assert!(pending > 0, "nothing left queued for the shutdown to flush");
    let handle = server.handle.clone();
    thread::spawn(move || handle.stop().unwrap()).join().unwrap();
    let (got, end) = read_until_end(&mut c);
    end.unwrap();
    assert!(got == stream_bytes(12, 0, BIG), "{} bytes before end of stream", got.len());
    drop(c);
    let counters = server.wait_run_returned();
    assert_eq!(counters.closed(CloseReason::Shutdown), 1);
    assert_eq!(server.count(&Ev::Close(id, CloseReason::Shutdown)), 1);
}

/// `Handle::wake` alone runs nothing and stops nothing.
#[test]
fn handle_wake_alone_changes_nothing() {
    let server = setup().handler(echo()).listen(0, Framing::Line).start();
    let (mut c, id) = server.client(0);
    round_trip(&mut c, b"before\n");
    let handle = server.handle.clone();
    thread::spawn(move || {
        for _ in 0..100 {
            handle.wake().unwrap();
        }
    })
    .join()
    .unwrap();
    thread::sleep(SETTLE);
    round_trip(&mut c, b"after\n");
    let f = |s: &str| Ev::Frame(id, s.as_bytes().to_vec());
    assert_eq!(server.events(id), [Ev::Open(id), f("before\n"), f("after\n")]);
    let counters = server.counters();
    assert_eq!((counters.panics, counters.closed.iter().sum::<u64>()), (0, 0));
    assert!(server.done.try_recv().is_err(), "run returned");
}
