//! The library API, in process: a reactor runs a scripted handler on its
//! own thread, and the test talks to it over real sockets on 127.0.0.1.
//!
//! These check the promises the command-line servers do not reach:
//! `Active::Off`/`Active::On`, a framing switch with bytes already
//! buffered, `shutdown_write`, `send_shared`, client `connect`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use edgeloop::{Active, CloseReason, Config, ConnId, ConnectOptions, Ctx, Framing, Handler, ListenOptions, Reactor};

/// What the scripted server saw, shared with the test.
#[derive(Default)]
struct Log {
    frames: Vec<Vec<u8>>,
    closed: Vec<CloseReason>,
}

/// Line commands: `pause` (resumed by the next tick), `len2` (switch to
/// 2-byte prefixes), `shut` (send "bye", shut down the write side),
/// `all <text>` (send_shared to every connection); anything else echoes.
struct Scripted {
    log: Arc<Mutex<Log>>,
    open: Vec<ConnId>,
    paused: Vec<ConnId>,
    stop: Arc<AtomicBool>,
}

impl Handler for Scripted {
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, id: ConnId) {
        self.open.push(id);
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        self.log.lock().unwrap().frames.push(frame.to_vec());
        match frame {
            b"pause\n" => {
                ctx.set_active(id, Active::Off);
                self.paused.push(id);
            }
            b"len2\n" => ctx.set_framing(id, Framing::Len2),
            b"shut\n" => {
                ctx.send(id, b"bye\n").unwrap();
                ctx.shutdown_write(id);
            }
            _ if frame.starts_with(b"all ") => {
                let msg: Rc<[u8]> = Rc::from(&frame[4..]);
                for &other in &self.open {
                    ctx.send_shared(other, &msg).unwrap();
                }
            }
            // After `shut` the write side is shut: the echo is refused.
            _ => {
                let sent = ctx.send(id, frame);
                assert!(sent.is_ok() || sent == Err(edgeloop::SendError::Closed));
            }
        }
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) {
        self.open.retain(|&o| o != id);
        self.log.lock().unwrap().closed.push(reason);
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        for id in self.paused.drain(..) {
            ctx.set_active(id, Active::On);
        }
        if self.stop.load(Ordering::Relaxed) {
            ctx.stop();
        }
    }
}

/// A scripted server on its own thread; stopped when dropped.
struct Running {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start() -> Running {
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (log2, stop2) = (Arc::clone(&log), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let config = Config { tick: Duration::from_millis(50), ..Config::default() };
            let handler = Scripted { log: log2, open: Vec::new(), paused: Vec::new(), stop: stop2 };
            let mut reactor = Reactor::new(config).unwrap();
            let handler = reactor.add_handler(handler);
            let options = ListenOptions { framing: Framing::Line, ..ListenOptions::default() };
            tx.send(reactor.listen(&"127.0.0.1:0".parse().unwrap(), handler, options).unwrap()).unwrap();
            reactor.run().unwrap();
        });
        let addr = rx.recv().unwrap();
        Running { addr, log, stop, thread: Some(thread) }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Rule 8: after a framing switch, bytes already buffered are decoded with
/// the new framing at once, not when (if ever) the next edge comes.
#[test]
fn framing_switch_decodes_already_buffered_bytes() {
    let server = Running::start();
    let mut c = server.connect();
    // One write: the switch and two prefixed frames arrive together.
    c.write_all(b"len2\n\x00\x03abc\x00\x00").unwrap();
    assert_eq!(read_exact(&mut c, 7), b"\x00\x03abc\x00\x00");
}

/// Rule 8: a resumed connection is read at once; the bytes that arrived
/// while it was paused raised their edge already.
#[test]
fn resumed_connection_delivers_what_arrived_while_paused() {
    let server = Running::start();
    let mut c = server.connect();
    c.write_all(b"pause\nfirst\n").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    c.write_all(b"second\n").unwrap();
    assert_eq!(read_exact(&mut c, 13), b"first\nsecond\n");
}

/// `shutdown_write`: the peer gets what was queued, then end of stream,
/// and the connection still receives.
#[test]
fn shutdown_write_flushes_then_keeps_reading() {
    let server = Running::start();
    let mut c = server.connect();
    c.write_all(b"shut\n").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye\n");
    c.write_all(b"still here\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    common_wait(|| server.log.lock().unwrap().frames.iter().any(|f| f == b"still here\n"));
    common_wait(|| server.log.lock().unwrap().closed.contains(&CloseReason::PeerClosed));
}

/// `send_shared`: one buffer, every connection receives it.
#[test]
fn shared_message_reaches_every_connection() {
    let server = Running::start();
    let mut clients: Vec<TcpStream> = (0..5).map(|_| server.connect()).collect();
    // Make sure all five are open before broadcasting.
    for c in &mut clients {
        c.write_all(b"ping\n").unwrap();
        assert_eq!(read_exact(c, 5), b"ping\n");
    }
    clients[0].write_all(b"all hello everyone\n").unwrap();
    for c in &mut clients {
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).unwrap();
        assert_eq!(line, "hello everyone\n");
    }
}

/// Client side: a refused connect is reported as `ConnectFailed`; a
/// successful one opens and carries bytes.
#[test]
fn client_connect_reports_success_and_failure() {
    struct Client {
        opened: usize,
        failed: usize,
        got: Vec<u8>,
    }
    impl Handler for Client {
        fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
            self.opened += 1;
            ctx.send(id, b"hi").unwrap();
        }
        fn on_frame(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, frame: &[u8]) {
            self.got.extend_from_slice(frame);
            ctx.stop();
        }
        fn on_close(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, reason: CloseReason) {
            if reason == CloseReason::ConnectFailed(edgeloop::Errno::ECONNREFUSED) {
                self.failed += 1;
            }
            if ctx.connections() == 0 && self.opened == 0 {
                ctx.stop();
            }
        }
    }
    // A port with nothing listening: bind, note the port, close.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        let _ = s.read(&mut buf); // until the client closes
    });
    let mut reactor = Reactor::new(Config::default()).unwrap();
    let handler = reactor.add_handler(Client { opened: 0, failed: 0, got: Vec::new() });
    reactor.ctx().connect(&closed, &ConnectOptions::default()).unwrap();
    reactor.ctx().connect(&open, &ConnectOptions::default()).unwrap();
    reactor.run().unwrap();
    echo.join().unwrap();
    let client = reactor.handler::<Client>(handler).unwrap();
    assert_eq!((client.opened, client.failed), (1, 1));
    assert_eq!(client.got, b"hi");
}

/// `on_turn_end` gathers what one turn produced (Redis's `beforeSleep`):
/// frames handled in a turn are answered there as one piece; and output
/// held back for the end of the turn still reaches a peer that half-closed
/// in the same turn, before the graceful close shuts the write side.
#[test]
fn turn_end_gathers_a_turn_and_is_owed_to_a_half_closed_peer() {
    struct Gather {
        turn: Vec<(ConnId, Vec<u8>)>,
    }
    impl Handler for Gather {
        fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
            if self.turn.is_empty() {
                ctx.flush_at_turn_end();
            }
            self.turn.push((id, frame.to_vec()));
        }
        fn on_turn_end(&mut self, ctx: &mut Ctx<'_>) {
            for (id, frame) in self.turn.drain(..) {
                let _ = ctx.send(id, b"[");
                let _ = ctx.send(id, &frame);
                let _ = ctx.send(id, b"]");
            }
        }
        fn on_close(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, _reason: CloseReason) {
            ctx.stop();
        }
    }
    let mut reactor = Reactor::new(Config::default()).unwrap();
    let gather = reactor.add_handler(Gather { turn: Vec::new() });
    let options = ListenOptions { framing: Framing::Line, ..ListenOptions::default() };
    let addr = reactor.listen(&"127.0.0.1:0".parse().unwrap(), gather, options).unwrap();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Lines and FIN together: usually one read, one turn.
        s.write_all(b"a\nb\nc\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        back
    });
    reactor.run().unwrap();
    let back = client.join().unwrap();
    assert_eq!(back, b"[a\n][b\n][c\n]", "every line answered at the end of its turn, before the close");
}

fn common_wait(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not reached within 10 s");
}
