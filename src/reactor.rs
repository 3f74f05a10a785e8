//! The reactor: one thread, one epoll instance, edge-triggered.
//!
//! # One iteration of the loop
//!
//! ```text
//!   epoll_wait(timeout = 0 if work is queued, else the nearest deadline)
//!   read the clock once ("now" for the whole iteration)
//!   for each event:        OUT → flush;  IN/RDHUP/HUP/ERR → read & deliver
//!   listener ready:        accept until EAGAIN or the accept budget
//!   ready list:            connections with input left over from last time
//!   deadlines:             idle, send timeout, linger, stats, tick, drain
//!   until nothing changes: reap the dead (on_close), flush the dirty list
//! ```
//!
//! # Edge-triggered, and what it costs
//!
//! Every socket is registered once with `EPOLLIN | EPOLLOUT | EPOLLRDHUP |
//! EPOLLET` and never modified: no `EPOLL_CTL_MOD` system call toggles
//! interest in writability, as a level-triggered loop must do. The price is
//! that an edge is reported once, so the loop must remember what it has
//! not finished:
//!
//! - **Draining.** An edge says "something new arrived", not "there is
//!   data". Input is read until `read` says there is no more, or until a
//!   per-wakeup byte budget is spent; in that case the connection goes on
//!   the *ready list*, served before the next `epoll_wait` (which then does
//!   not sleep), because no new edge will announce the bytes already
//!   waiting. The budget is what stops one flooding peer from starving the
//!   others.
//! - **Short reads.** A `read` that returns less than the room it was given
//!   means the socket's receive queue was empty at that moment. Bytes that
//!   arrive later — including segments the kernel parked on the socket's
//!   backlog while our `read` held the socket lock, processed when it
//!   releases it — go through `sk_data_ready`, which raises a new edge.
//!   So the extra `read` that would only return `EAGAIN` is
//!   skipped — one system call per message saved in ping-pong (nginx does
//!   the same when `EPOLLRDHUP` is available). The exception: once an
//!   event has carried `EPOLLRDHUP`/`EPOLLHUP`/`EPOLLERR`, the end of the
//!   stream is pending and will not be announced again, so such a
//!   connection is read until `read` returns 0 or an error. The same holds
//!   for writes: a short `sendmsg` means the send buffer is full, and the
//!   next `EPOLLOUT` edge resumes the queue.
//! - **Paused connections.** A connection paused by flow control or by the
//!   application keeps its registration but is not read. Its edges are
//!   lost while paused, so resuming puts it on the ready list: it is read
//!   at once. Likewise after a framing switch with bytes still buffered.
//! - **Spurious events.** An event may find nothing to do (the bytes were
//!   already read during the previous event's drain); every path handles
//!   `EAGAIN` as "nothing now".
//!
//! # Closing safely
//!
//! A connection closed while handling one event of a batch may have
//! another event later in the same batch, and if its slab slot were freed
//! at once, a connection accepted in the same batch could take the slot
//! and receive the stale event. So closing only marks the connection
//! `DEAD`; events for dead connections are skipped, and the dead are
//! removed from the slab (their sockets closed, `on_close` called) at the
//! end of the iteration, after every event of the batch. Closing a socket
//! removes it from the epoll set (no descriptor is ever duplicated), so no
//! event for it can appear in a later batch.
//!
//! # Writes
//!
//! Output is queued by `send` and the connection marked dirty. A
//! connection's own replies are written right after the frames of each
//! read were handled — all of them in one vectored `sendmsg`, while they
//! are still in cache, and with one output chunk in use at a time. Output
//! queued for *other* connections (a chat broadcast) is flushed once per
//! iteration, just before `epoll_wait`, from the dirty list (Redis's
//! `handleClientsWithPendingWrites`), so many sends in one turn become one
//! write per recipient. Only what the kernel refuses stays queued; the
//! `EPOLLOUT` edge that comes when the send buffer drains resumes it.
//! [`Ctx::send_now`] skips the queue (and the copy into it) when nothing is
//! queued: the echo server's `raw` mode writes straight from the read
//! buffer.
//!
//! # Running out of descriptors
//!
//! When `accept4` fails with `EMFILE`/`ENFILE` (or `ENOBUFS`/`ENOMEM`) the
//! pending connection stays in the kernel's backlog, and with an
//! edge-triggered listener no new edge may come for it. Retrying at once
//! would spin. The reactor instead pauses accepting (nginx does the same)
//! and retries when a connection of its own closes (a descriptor is free)
//! or after [`ACCEPT_RETRY`], whichever is first. Connections already open
//! keep being served meanwhile. (The alternative, a spare descriptor closed
//! to accept-and-close the pending peer, turns clients away; pausing keeps
//! them waiting in the backlog until there is room.)

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use log::{debug, info, warn};
use slab::Slab;

use crate::access::AccessList;
use crate::buffer::{BufPool, MAX_IOVECS, OUT_CHUNK_SIZE, READ_BUF_SIZE};
use crate::conn::{flag, Conn};
use crate::framing::{self, AtEof, Decoded, Framing};
use crate::handler::{CloseReason, ConnId, Handler};
use crate::stats::Counters;
use crate::sys::{self, Epoll, EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP};
use crate::timer::{earliest, wait_timeout, Clock, Deadlines, Millis};

/// The largest `max_frame` a reactor accepts: 2 GiB.
pub const MAX_FRAME_LIMIT: usize = 1 << 31;
/// How long accepting pauses after `EMFILE`/`ENFILE`, unless a connection
/// closes first.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a gracefully closed connection waits for the peer's FIN after
/// our `SHUT_WR` before the socket is closed anyway.
pub const LINGER: Duration = Duration::from_secs(5);

const SIGNAL_TOKEN: u64 = u64::MAX;
const LISTENER_TOKEN: u64 = u64::MAX - 1;
const EVENTS_PER_WAIT: usize = 1024;
const INTEREST: u32 = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

/// What to do with a connection whose pending output passes `max_outbuf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutbufPolicy {
    /// Stop reading it until its output drains below half (echo).
    Pause,
    /// Disconnect it: a slow consumer must not hold memory (chat).
    Disconnect,
}

/// Settings of a reactor; the command line maps onto these one to one.
#[derive(Clone, Debug)]
pub struct Config {
    /// Framing of new connections.
    pub framing: Framing,
    /// Largest frame payload; at most [`MAX_FRAME_LIMIT`] (larger values
    /// are clamped: read-buffer offsets are 32-bit).
    pub max_frame: usize,
    pub max_conns: usize,
    pub max_outbuf: usize,
    pub outbuf_policy: OutbufPolicy,
    /// Zero disables.
    pub send_timeout: Duration,
    /// Zero disables.
    pub idle_timeout: Duration,
    pub access: AccessList,
    /// Print a `--stats` line this often; zero disables.
    pub stats_interval: Duration,
    /// Call [`Handler::on_tick`] this often; zero disables.
    pub tick: Duration,
    /// Handle SIGINT/SIGTERM with a `signalfd` (the program, not tests).
    pub handle_signals: bool,
    /// How long shutdown may spend flushing before closing everything.
    pub drain_timeout: Duration,
    /// Bytes read from one connection per wake-up before others get a turn.
    pub read_budget: usize,
    /// Connections accepted per wake-up before others get a turn.
    pub accept_budget: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            framing: Framing::Raw,
            max_frame: 1 << 20,
            max_conns: 10_000,
            max_outbuf: 4 << 20,
            outbuf_policy: OutbufPolicy::Pause,
            send_timeout: Duration::from_secs(30),
            idle_timeout: Duration::ZERO,
            access: AccessList::default(),
            stats_interval: Duration::ZERO,
            tick: Duration::ZERO,
            handle_signals: false,
            drain_timeout: Duration::from_secs(5),
            read_budget: 4 * READ_BUF_SIZE,
            accept_budget: 256,
        }
    }
}

/// Everything the reactor owns except the application: what [`Ctx`] acts
/// on.
struct Core {
    config: Config,
    epoll: Epoll,
    conns: Slab<Conn>,
    listener: Option<OwnedFd>,
    signals: Option<OwnedFd>,
    clock: Clock,
    deadlines: Deadlines,
    read_pool: BufPool,
    out_pool: BufPool,
    /// Connections with input to handle before the next `epoll_wait`.
    ready: Vec<usize>,
    /// Connections with output to flush before the next `epoll_wait`.
    dirty: Vec<usize>,
    /// Connections closed during this iteration, to be reaped at its end.
    dead: Vec<usize>,
    /// The listener may have connections waiting (budget spent, or
    /// accepting was paused).
    accept_pending: bool,
    accept_paused_until: Millis,
    /// Shutdown in progress: no accepting, connections closing gracefully.
    draining: bool,
    drain_deadline: Millis,
    next_stats: Millis,
    next_tick: Millis,
    counters: Counters,
}

/// The handle through which an application acts: send, pause, close, ...
///
/// Every method takes the [`ConnId`] it acts on; acting on a connection
/// that is closing is a no-op (sends return `false`). After `on_close` the
/// id belongs to nobody — or, once reused, to a new connection: forget it.
pub struct Ctx<'a> {
    core: &'a mut Core,
}

/// An edge-triggered epoll reactor running one [`Handler`].
pub struct Reactor<H: Handler> {
    core: Core,
    handler: H,
}

impl<H: Handler> Reactor<H> {
    pub fn new(mut config: Config, handler: H) -> io::Result<Reactor<H>> {
        config.max_frame = config.max_frame.min(MAX_FRAME_LIMIT);
        let epoll = Epoll::new()?;
        let signals = if config.handle_signals {
            sys::ignore_sigpipe()?;
            let fd = sys::signalfd(&[libc::SIGINT, libc::SIGTERM])?;
            epoll.add(fd.as_raw_fd(), SIGNAL_TOKEN, EPOLLIN)?;
            Some(fd)
        } else {
            None
        };
        let clock = Clock::new();
        let next_stats = clock.after(config.stats_interval);
        let next_tick = clock.after(config.tick);
        Ok(Reactor {
            core: Core {
                epoll,
                conns: Slab::with_capacity(config.max_conns.min(1 << 16)),
                listener: None,
                signals,
                clock,
                deadlines: Deadlines::default(),
                read_pool: BufPool::new(READ_BUF_SIZE, 64),
                // Enough free chunks for thousands of replies per iteration without
                // returning memory to malloc each time (at most 16 MiB kept).
                out_pool: BufPool::new(OUT_CHUNK_SIZE, 4096),
                ready: Vec::new(),
                dirty: Vec::new(),
                dead: Vec::new(),
                accept_pending: false,
                accept_paused_until: 0,
                draining: false,
                drain_deadline: 0,
                next_stats,
                next_tick,
                counters: Counters::default(),
                config,
            },
            handler,
        })
    }

    /// Listen on `addr` (port 0 picks one); returns the address bound.
    /// `SO_REUSEADDR`, and a backlog of 1024 (the kernel clamps it to
    /// `net.core.somaxconn`).
    pub fn listen(&mut self, addr: &SocketAddr) -> io::Result<SocketAddr> {
        let fd = sys::listen(addr, 1024)?;
        let local = sys::local_addr(fd.as_raw_fd())?;
        self.core.epoll.add(fd.as_raw_fd(), LISTENER_TOKEN, EPOLLIN | EPOLLET)?;
        self.core.listener = Some(fd);
        Ok(local)
    }

    /// Act on the reactor from outside the loop (before `run`, to start
    /// client connections).
    pub fn ctx(&mut self) -> Ctx<'_> {
        Ctx { core: &mut self.core }
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    pub fn counters(&self) -> &Counters {
        &self.core.counters
    }

    /// Run until a shutdown (signal or [`Ctx::stop`]) has closed every
    /// connection.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = vec![sys::empty_event(); EVENTS_PER_WAIT];
        self.core.clock.tick();
        let (mut ctx, handler) = self.ctx_and_handler();
        handler.on_start(&mut ctx);
        self.settle();
        loop {
            if self.core.draining && self.core.conns.is_empty() {
                return Ok(());
            }
            let busy = !self.core.ready.is_empty() || (self.core.accept_pending && self.core.accept_paused_until == 0);
            // A fresh "now" for the timeout, or every deadline would fire late
            // by the time the last iteration took.
            let timeout = if busy { 0 } else { wait_timeout(self.core.clock.tick(), self.core.next_wakeup()) };
            let n = match self.core.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            self.core.counters.waits += 1;
            self.core.clock.tick();
            for ev in &events[..n] {
                self.dispatch(sys::event_token(ev), sys::event_bits(ev));
            }
            if self.core.accept_pending && self.core.accept_paused_until <= self.core.clock.now() {
                self.accept();
            }
            self.serve_ready_list();
            self.run_deadlines();
            self.settle();
        }
    }

    fn ctx_and_handler(&mut self) -> (Ctx<'_>, &mut H) {
        (Ctx { core: &mut self.core }, &mut self.handler)
    }

    fn dispatch(&mut self, token: u64, bits: u32) {
        match token {
            SIGNAL_TOKEN => return self.read_signals(),
            LISTENER_TOKEN => {
                self.core.accept_pending = true;
                return;
            }
            _ => {}
        }
        let key = token as usize;
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        // Closed earlier in this batch: its event is stale (see "Closing
        // safely").
        if conn.has(flag::DEAD) {
            return;
        }
        // RDHUP means the peer's FIN is queued behind any data; HUP/ERR mean
        // the connection is finished. None of these edges repeats, so the
        // reader must not stop at a short read from now on.
        if bits & (EPOLLRDHUP | EPOLLHUP | EPOLLERR) != 0 {
            conn.set(flag::HUP_SEEN);
        }
        if conn.has(flag::CONNECTING) {
            if bits & (EPOLLOUT | EPOLLERR | EPOLLHUP) == 0 {
                return;
            }
            self.finish_connect(key);
        }
        // An event may carry both IN and OUT: handle both (handling only one
        // is a classic bug). Flushing first frees room, which may lift flow
        // control before the read.
        if bits & (EPOLLOUT | EPOLLERR | EPOLLHUP) != 0 {
            self.core.flush(key);
        }
        if bits & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR) != 0 {
            self.handle_input(key);
        }
        // EPOLLERR with nothing to read (an error on the write side): fetch
        // the error so the connection does not linger half-dead.
        if bits & EPOLLERR != 0 {
            if let Some(conn) = self.core.conns.get(key).filter(|c| !c.has(flag::DEAD)) {
                if let Ok(Some(err)) = sys::take_socket_error(conn.fd.as_raw_fd()) {
                    debug!("{}: socket error: {err}", ConnId(key));
                    self.core.kill(key, CloseReason::Error);
                }
            }
        }
    }

    fn finish_connect(&mut self, key: usize) {
        let conn = &mut self.core.conns[key];
        match sys::take_socket_error(conn.fd.as_raw_fd()) {
            Ok(None) => {
                conn.clear(flag::CONNECTING);
                let _ = sys::set_nodelay(conn.fd.as_raw_fd());
                self.core.touch(key);
                let (mut ctx, handler) = self.ctx_and_handler();
                handler.on_open(&mut ctx, ConnId(key));
            }
            Ok(Some(err)) | Err(err) => {
                debug!("{}: connect failed: {err}", ConnId(key));
                self.core.kill(key, CloseReason::ConnectFailed);
            }
        }
    }

    /// Accept until `EAGAIN`, the budget, or descriptor exhaustion.
    fn accept(&mut self) {
        let Some(listener) = self.core.listener.as_ref().map(|l| l.as_raw_fd()) else {
            self.core.accept_pending = false;
            return;
        };
        self.core.accept_paused_until = 0;
        for _ in 0..self.core.config.accept_budget {
            match sys::accept(listener) {
                Ok((fd, peer)) => {
                    self.core.counters.accepted += 1;
                    self.admit(fd, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.core.accept_pending = false;
                    return;
                }
                // The peer gave up before we got to it, or a signal: next.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO)) => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM (or anything unexpected):
                    // do not spin on the backlog; retry after a pause or
                    // when one of our connections closes.
                    if self.core.counters.accept_exhausted == 0 || log::log_enabled!(log::Level::Debug) {
                        warn!("accept: {e}; pausing accepts for {} ms", ACCEPT_RETRY.as_millis());
                    }
                    self.core.counters.accept_exhausted += 1;
                    self.core.accept_paused_until = self.core.clock.after(ACCEPT_RETRY);
                    return;
                }
            }
        }
        // Budget spent: more may wait, and no new edge will say so.
        self.core.accept_pending = true;
    }

    fn admit(&mut self, fd: OwnedFd, peer: SocketAddr) {
        let core = &mut self.core;
        if !core.config.access.permits(peer.ip()) {
            core.counters.refused_denied += 1;
            debug!("refused {peer}: not allowed");
            return;
        }
        if core.conns.len() >= core.config.max_conns {
            core.counters.refused_full += 1;
            debug!("refused {peer}: {} connections open", core.conns.len());
            return;
        }
        let _ = sys::set_nodelay(fd.as_raw_fd());
        let raw = fd.as_raw_fd();
        let key = core.conns.insert(Conn::new(fd, core.config.framing));
        // Registering a socket that already has data reports it at once:
        // epoll checks readiness on EPOLL_CTL_ADD, so no edge is lost.
        if let Err(e) = core.epoll.add(raw, key as u64, INTEREST) {
            warn!("epoll_ctl: {e}");
            core.conns.remove(key);
            return;
        }
        core.touch(key);
        let (mut ctx, handler) = self.ctx_and_handler();
        handler.on_open(&mut ctx, ConnId(key));
    }

    /// Read until drained (or budget), delivering frames as they complete.
    fn handle_input(&mut self, key: usize) {
        // Frames left buffered by a pause or a framing switch go first.
        let mut need = self.deliver(key);
        let mut budget = self.core.config.read_budget;
        loop {
            let core = &mut self.core;
            let Some(conn) = core.conns.get_mut(key) else { return };
            if !conn.may_read() {
                break;
            }
            if budget == 0 {
                core.push_ready(key);
                break;
            }
            let fd = conn.fd.as_raw_fd();
            let buf = conn.input.prepare(&mut core.read_pool, need);
            let room = buf.capacity() - buf.len();
            match sys::read_into_spare(fd, buf) {
                Ok(0) => {
                    conn.set(flag::READ_EOF);
                    core.counters.reads += 1;
                    break;
                }
                Ok(n) => {
                    core.counters.reads += 1;
                    core.counters.bytes_in += n as u64;
                    core.touch(key);
                    need = self.deliver(key);
                    // Write the replies to this read now, while they are in
                    // cache, rather than at the end of the iteration: one
                    // output chunk is in use at a time, not one per ready
                    // connection.
                    self.core.flush_if_dirty(key);
                    budget = budget.saturating_sub(n);
                    let hup = self.core.conns.get(key).is_some_and(|c| c.has(flag::HUP_SEEN));
                    if n < room && !hup {
                        break; // drained: see "Short reads"
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ECONNRESET and friends. Everything read before the
                    // error was delivered above.
                    debug!("{}: read: {e}", ConnId(key));
                    core.kill(key, CloseReason::Error);
                    break;
                }
            }
        }
        // End of stream: the remaining frames, then the EOF rules.
        if self.core.conns.get(key).is_some_and(|c| c.has(flag::READ_EOF)) {
            self.deliver(key);
        }
        if let Some(conn) = self.core.conns.get_mut(key) {
            conn.input.settle(&mut self.core.read_pool);
        }
    }

    /// Hand every complete buffered frame to the application, while the
    /// connection may receive; apply the end-of-stream rules once the
    /// peer's FIN has been read. Returns the buffer size the next frame is
    /// known to need.
    fn deliver(&mut self, key: usize) -> usize {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(key) else { return 0 };
        if conn.has(flag::CLOSING) {
            // Lingering after a graceful close: input is read only to see
            // the FIN, and discarded.
            conn.input.discard(&mut core.read_pool);
            core.close_if_finished(key);
            return 0;
        }
        // The buffer is moved out while the application runs, so that the
        // frame (a slice of it) and `ctx` (which can reach every connection)
        // are not borrowed from the same place.
        let mut input = conn.input.take();
        let max_frame = core.config.max_frame;
        let mut need = 0;
        loop {
            let conn = &mut self.core.conns[key];
            if !conn.may_deliver() {
                break;
            }
            let mut scanned = input.scanned as usize;
            match framing::decode(conn.framing, input.unread(), &mut scanned, max_frame) {
                Ok(Decoded::Frame(frame)) => {
                    self.core.counters.frames_in += 1;
                    let (mut ctx, handler) = self.ctx_and_handler();
                    handler.on_frame(&mut ctx, ConnId(key), &input.unread()[frame.start..frame.end]);
                    input.consume(frame.end);
                }
                Ok(Decoded::Incomplete { need: n }) => {
                    input.scanned = scanned as u32;
                    need = n;
                    break;
                }
                Err(e) => {
                    warn!("{}: protocol error: {e}; closing", ConnId(key));
                    self.core.kill(key, CloseReason::FrameTooLarge);
                    break;
                }
            }
        }
        let conn = &mut self.core.conns[key];
        if conn.has(flag::READ_EOF) && conn.may_deliver() {
            match framing::at_eof(conn.framing, input.unread()) {
                AtEof::Clean => {}
                AtEof::FinalLine => {
                    self.core.counters.frames_in += 1;
                    let (mut ctx, handler) = self.ctx_and_handler();
                    handler.on_frame(&mut ctx, ConnId(key), input.unread());
                }
                AtEof::Truncated => {
                    warn!("{}: stream ended inside a frame; {} bytes discarded", ConnId(key), input.unread().len());
                }
            }
            input.consume(input.unread().len());
            self.core.close_gracefully(key, CloseReason::PeerClosed);
        }
        self.core.conns[key].input.put_back(input);
        need
    }

    /// Serve the connections queued on the ready list before this
    /// iteration; those that re-queue themselves wait for the next one.
    fn serve_ready_list(&mut self) {
        let queued = self.core.ready.len();
        for i in 0..queued {
            let key = self.core.ready[i];
            if let Some(conn) = self.core.conns.get_mut(key) {
                conn.clear(flag::READY);
                if !conn.has(flag::DEAD) {
                    self.handle_input(key);
                }
            }
        }
        // The lists keep their allocation from one iteration to the next.
        self.core.ready.drain(..queued);
    }

    fn run_deadlines(&mut self) {
        let now = self.core.clock.now();
        while let Some((key, due)) = self.core.deadlines.pop_due(now) {
            let core = &mut self.core;
            let Some(conn) = core.conns.get_mut(key) else { continue };
            if conn.scheduled != due || conn.has(flag::DEAD) {
                continue; // stale entry (see timer docs)
            }
            conn.scheduled = 0;
            let next = conn.next_deadline();
            if next > now {
                core.deadlines.schedule(key, next, &mut conn.scheduled);
            } else if next != 0 {
                if conn.write_deadline != 0 && conn.write_deadline <= now {
                    if conn.has(flag::WRITE_SHUT) {
                        let reason = conn.reason; // linger over: close as planned
                        core.kill(key, reason);
                    } else {
                        warn!("{}: send timeout ({} bytes pending); closing", ConnId(key), conn.output.len());
                        core.kill(key, CloseReason::SendTimeout);
                    }
                } else {
                    debug!("{}: idle timeout", ConnId(key));
                    core.kill(key, CloseReason::IdleTimeout);
                }
            }
        }
        let core = &mut self.core;
        // Entries of reaped connections wait in the heap until their time;
        // with long timeouts and much churn, sweep them out (amortised O(1)).
        if core.deadlines.entries() > 2 * core.conns.len() + 1024 {
            let conns = &core.conns;
            core.deadlines.retain(|key, due| conns.get(key).is_some_and(|c| c.scheduled == due));
        }
        if core.next_stats != 0 && core.next_stats <= now {
            eprintln!("{}", core.counters.line(core.conns.len()));
            core.next_stats = core.clock.after(core.config.stats_interval);
        }
        if core.draining && core.drain_deadline <= now {
            let left: Vec<usize> = core.conns.iter().map(|(k, _)| k).collect();
            if !left.is_empty() {
                let flushing = core.conns.iter().filter(|(_, c)| !c.output.is_empty()).count();
                warn!(
                    "shutdown: closing {} connections after the drain timeout ({flushing} with output still \
                     pending, the others waiting for the peer's FIN)",
                    left.len()
                );
            }
            for key in left {
                core.kill(key, CloseReason::Shutdown);
            }
        }
        if core.next_tick != 0 && core.next_tick <= now {
            core.next_tick = core.clock.after(core.config.tick);
            let (mut ctx, handler) = self.ctx_and_handler();
            handler.on_tick(&mut ctx);
        }
    }

    /// Reap the dead and flush the dirty until neither has work: `on_close`
    /// may send (a chat "left" notice), and a flush may fail and kill.
    fn settle(&mut self) {
        while !(self.core.dead.is_empty() && self.core.dirty.is_empty()) {
            // `on_close` may kill others: the list grows while it is walked.
            let mut i = 0;
            while let Some(&key) = self.core.dead.get(i) {
                i += 1;
                self.reap(key);
            }
            self.core.dead.clear();
            // A flush never dirties another connection; it may kill one.
            for i in 0..self.core.dirty.len() {
                let key = self.core.dirty[i];
                if let Some(conn) = self.core.conns.get_mut(key) {
                    conn.clear(flag::DIRTY);
                    self.core.flush(key);
                }
            }
            self.core.dirty.clear();
        }
    }

    /// Remove a dead connection: its socket closes (leaving the epoll set),
    /// its buffers go back to the pools, the application hears of it.
    fn reap(&mut self, key: usize) {
        let mut conn = self.core.conns.remove(key);
        let core = &mut self.core;
        conn.output.clear(&mut core.out_pool);
        conn.input.discard(&mut core.read_pool);
        core.counters.closed[conn.reason.index()] += 1;
        // A descriptor was just freed: accepting may resume.
        core.accept_paused_until = 0;
        let reason = conn.reason;
        drop(conn);
        let (mut ctx, handler) = self.ctx_and_handler();
        handler.on_close(&mut ctx, ConnId(key), reason);
    }

    fn read_signals(&mut self) {
        let Some(fd) = self.core.signals.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        while let Ok(Some(sig)) = sys::read_signal(fd) {
            info!("signal {sig}: shutting down");
            self.core.begin_shutdown();
        }
    }
}

impl Core {
    /// The earliest moment the loop must wake for, if any.
    fn next_wakeup(&self) -> Option<Millis> {
        let mut due = earliest(self.next_stats, self.next_tick);
        if self.draining {
            due = earliest(due, self.drain_deadline);
        }
        if self.accept_pending {
            due = earliest(due, self.accept_paused_until);
        }
        due = earliest(due, self.deadlines.next().unwrap_or(0));
        (due != 0).then_some(due)
    }

    fn push_ready(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::READY) {
            conn.set(flag::READY);
            self.ready.push(key);
        }
    }

    fn push_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::DIRTY) {
            conn.set(flag::DIRTY);
            self.dirty.push(key);
        }
    }

    /// Activity: push the idle deadline back.
    fn touch(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.idle_deadline = self.clock.after(self.config.idle_timeout);
        self.deadlines.schedule(key, conn.next_deadline(), &mut conn.scheduled);
    }

    fn set_write_deadline(&mut self, key: usize, deadline: Millis) {
        let conn = &mut self.conns[key];
        conn.write_deadline = deadline;
        self.deadlines.schedule(key, conn.next_deadline(), &mut conn.scheduled);
    }

    /// Close at once (errors, timeouts, refusals of policy). The slot is
    /// freed at the end of the iteration.
    fn kill(&mut self, key: usize, reason: CloseReason) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::DEAD) {
            conn.set(flag::DEAD);
            conn.reason = reason;
            self.dead.push(key);
        }
    }

    /// Close after flushing what is owed: see the state diagram in `conn`.
    fn close_gracefully(&mut self, key: usize, reason: CloseReason) {
        let conn = &mut self.conns[key];
        if conn.has(flag::DEAD | flag::CLOSING) {
            return;
        }
        if conn.has(flag::CONNECTING) {
            // Nothing was exchanged yet: there is nothing to flush or linger for.
            return self.kill(key, reason);
        }
        conn.set(flag::CLOSING);
        conn.reason = reason;
        if conn.output.is_empty() {
            self.output_drained(key);
        }
    }

    fn flush_if_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key).filter(|c| c.has(flag::DIRTY)) {
            // Its entry on the dirty list stays; flushing an empty queue
            // there costs nothing.
            conn.clear(flag::DIRTY);
            self.flush(key);
        }
    }

    /// Write as much of the output queue as the kernel takes.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.has(flag::DEAD | flag::CONNECTING) || conn.output.is_empty() {
            return;
        }
        let fd = conn.fd.as_raw_fd();
        let mut progress = false;
        let mut stuck = false;
        while !conn.output.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let (count, wanted) = conn.output.io_slices(&mut slices);
            // One chunk (the common ping-pong reply) needs no msghdr.
            let sent = if count == 1 { sys::send(fd, &slices[0]) } else { sys::send_vectored(fd, &slices[..count]) };
            self.counters.writes += 1;
            match sent {
                Ok(n) => {
                    self.counters.bytes_out += n as u64;
                    conn.output.advance(n, &mut self.out_pool);
                    progress = true;
                    // Short write: the send buffer is full; the next EPOLLOUT
                    // edge resumes (no call that would return EAGAIN).
                    if n < wanted {
                        stuck = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    stuck = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EPIPE/ECONNRESET: the peer is gone.
                    debug!("{}: send: {e}", ConnId(key));
                    return self.kill(key, CloseReason::Error);
                }
            }
        }
        if progress {
            self.touch(key);
        }
        // The send timeout measures time without progress.
        if !stuck {
            self.set_write_deadline(key, 0);
        } else if progress || self.conns[key].write_deadline == 0 {
            let deadline = self.clock.after(self.config.send_timeout);
            self.set_write_deadline(key, deadline);
        }
        let conn = &mut self.conns[key];
        if conn.has(flag::FLOW_PAUSED) && conn.output.footprint() <= self.config.max_outbuf / 2 {
            // Reading resumes; the edges missed while paused will not come
            // again, so read now.
            conn.clear(flag::FLOW_PAUSED);
            self.push_ready(key);
        }
        if !stuck {
            self.output_drained(key);
        }
    }

    /// The output queue is empty: carry out a pending shutdown or close.
    fn output_drained(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::CLOSING | flag::SHUTDOWN_WANTED) {
            return;
        }
        if !conn.has(flag::WRITE_SHUT) {
            if let Err(e) = sys::shutdown_write(conn.fd.as_raw_fd()) {
                debug!("{}: shutdown: {e}", ConnId(key));
                return self.kill(key, CloseReason::Error);
            }
            conn.set(flag::WRITE_SHUT);
        }
        if conn.has(flag::READ_EOF) {
            self.close_if_finished(key);
        } else if conn.has(flag::CLOSING) {
            // Wait for the peer's FIN (see `conn` on why), but not forever.
            let deadline = self.clock.after(LINGER);
            self.set_write_deadline(key, deadline);
            // The FIN may already be waiting behind discarded input.
            self.push_ready(key);
        }
    }

    /// Both directions are finished (our `SHUT_WR` done, the peer's FIN
    /// read): the connection is closed, for the reason it was closing.
    fn close_if_finished(&mut self, key: usize) {
        let conn = &self.conns[key];
        if conn.has(flag::READ_EOF) && conn.has(flag::WRITE_SHUT) {
            let reason = if conn.has(flag::CLOSING) { conn.reason } else { CloseReason::PeerClosed };
            self.kill(key, reason);
        }
    }

    /// Queue output and apply the `max_outbuf` policy.
    fn queued(&mut self, key: usize) {
        let len = self.conns[key].output.footprint();
        self.counters.outq_high_water = self.counters.outq_high_water.max(len);
        if len > self.config.max_outbuf {
            // "Pending" means what the kernel will not take yet. A burst
            // queued in one iteration may pass the limit while the peer
            // reads promptly, so offer it to the kernel before judging.
            self.flush(key);
            let conn = &mut self.conns[key];
            let len = conn.output.footprint();
            if conn.has(flag::DEAD) || len <= self.config.max_outbuf {
                return;
            }
            match self.config.outbuf_policy {
                OutbufPolicy::Pause => {
                    if !conn.has(flag::FLOW_PAUSED) {
                        conn.set(flag::FLOW_PAUSED);
                        self.counters.flow_pauses += 1;
                    }
                }
                OutbufPolicy::Disconnect => {
                    warn!("{}: {len} bytes of output pending, over the limit; disconnecting", ConnId(key));
                    conn.output.clear(&mut self.out_pool);
                    return self.kill(key, CloseReason::OutbufFull);
                }
            }
        }
        self.push_dirty(key);
    }

    fn begin_shutdown(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.listener = None; // stop accepting: closes the listening socket
        self.accept_pending = false;
        self.drain_deadline = self.clock.after(self.config.drain_timeout);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_gracefully(key, CloseReason::Shutdown);
        }
    }
}

/// The connection, if it can still be sent to.
fn writable(conns: &mut Slab<Conn>, id: ConnId) -> Option<&mut Conn> {
    conns.get_mut(id.0).filter(|c| !c.has(flag::DEAD | flag::CLOSING | flag::SHUTDOWN_WANTED | flag::WRITE_SHUT))
}

/// The connection and the header its framing puts before `len` bytes, if
/// it can be sent to and the length fits the header.
fn framed(conns: &mut Slab<Conn>, id: ConnId, len: usize) -> Option<(&mut Conn, [u8; 4], usize)> {
    let conn = writable(conns, id)?;
    match conn.framing.header(len) {
        Ok((header, n)) => Some((conn, header, n)),
        Err(e) => {
            warn!("{id}: cannot send: {e} for a {} framing header", conn.framing);
            None
        }
    }
}

impl Ctx<'_> {
    /// Send one frame: `payload` is queued with the connection's framing
    /// (a length header for `1|2|4`; as it is for `raw` and `line`) and
    /// written before the loop next sleeps. Returns `false` if the
    /// connection cannot be sent to (closing, closed) or the payload is too
    /// long for its header.
    pub fn send(&mut self, id: ConnId, payload: &[u8]) -> bool {
        let core = &mut *self.core;
        let Some((conn, header, n)) = framed(&mut core.conns, id, payload.len()) else { return false };
        conn.output.push_copy(&[&header[..n], payload], &mut core.out_pool);
        core.queued(id.0);
        true
    }

    /// Send `payload` at once, without copying it, if nothing is queued
    /// ahead of it; only what the kernel refuses is queued. One system call
    /// per call: for one reply per read (echo in `raw` mode) it saves the
    /// copy; for many replies per read, [`Ctx::send`] coalesces them into
    /// one write instead. Framed like [`Ctx::send`].
    pub fn send_now(&mut self, id: ConnId, payload: &[u8]) -> bool {
        let core = &mut *self.core;
        let Some((conn, _, n)) = framed(&mut core.conns, id, payload.len()) else { return false };
        if n > 0 || !conn.output.is_empty() || conn.has(flag::CONNECTING) {
            return self.send(id, payload);
        }
        let sent = match sys::send(conn.fd.as_raw_fd(), payload) {
            Ok(sent) => sent,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(e) => {
                debug!("{id}: send: {e}");
                core.kill(id.0, CloseReason::Error);
                return false;
            }
        };
        core.counters.writes += 1;
        core.counters.bytes_out += sent as u64;
        core.touch(id.0);
        sent == payload.len() || self.send(id, &payload[sent..])
    }

    /// Send a shared message by reference: one allocation serves every
    /// recipient of a broadcast. Framed like [`Ctx::send`].
    pub fn send_shared(&mut self, id: ConnId, msg: &Rc<[u8]>) -> bool {
        let core = &mut *self.core;
        let Some((conn, header, n)) = framed(&mut core.conns, id, msg.len()) else { return false };
        conn.output.push_copy(&[&header[..n]], &mut core.out_pool);
        conn.output.push_shared(Rc::clone(msg));
        core.queued(id.0);
        true
    }

    /// Switch framing (like `inet:setopts(S, [{packet, P}])`). Bytes
    /// already buffered are decoded with the new framing, at once.
    pub fn set_framing(&mut self, id: ConnId, framing: Framing) {
        if let Some(conn) = self.core.conns.get_mut(id.0) {
            conn.framing = framing;
            // (If this is the connection being delivered, its buffer is out
            // and its cursor is already 0: a frame was just completed.)
            conn.input.scanned = 0;
            self.core.push_ready(id.0);
        }
    }

    /// Stop delivering frames and reading (gen_tcp's `{active, false}`).
    pub fn pause_reading(&mut self, id: ConnId) {
        if let Some(conn) = self.core.conns.get_mut(id.0) {
            conn.set(flag::APP_PAUSED);
        }
    }

    /// Resume after [`Ctx::pause_reading`]: buffered frames are delivered
    /// and the socket read at once (its edges were missed while paused).
    pub fn resume_reading(&mut self, id: ConnId) {
        if let Some(conn) = self.core.conns.get_mut(id.0) {
            if conn.has(flag::APP_PAUSED) {
                conn.clear(flag::APP_PAUSED);
                self.core.push_ready(id.0);
            }
        }
    }

    /// Shut down the write side once everything queued is written; the
    /// connection keeps receiving until the peer closes.
    pub fn shutdown_write(&mut self, id: ConnId) {
        if let Some(conn) = writable(&mut self.core.conns, id) {
            conn.set(flag::SHUTDOWN_WANTED);
            if conn.output.is_empty() {
                self.core.output_drained(id.0);
            }
        }
    }

    /// Close gracefully: flush what is queued, shut down the write side,
    /// wait briefly for the peer's FIN, close. No more frames are
    /// delivered. A connect still in progress is abandoned at once.
    pub fn close(&mut self, id: ConnId) {
        if self.core.conns.contains(id.0) {
            self.core.close_gracefully(id.0, CloseReason::Local);
        }
    }

    /// Start a client connection (non-blocking connect). `on_open` follows
    /// when it is established; `on_close` with
    /// [`CloseReason::ConnectFailed`] if it fails.
    pub fn connect(&mut self, addr: &SocketAddr, local: Option<&SocketAddr>) -> io::Result<ConnId> {
        let fd = sys::connect(addr, local)?;
        let raw = fd.as_raw_fd();
        let mut conn = Conn::new(fd, self.core.config.framing);
        conn.set(flag::CONNECTING);
        let key = self.core.conns.insert(conn);
        if let Err(e) = self.core.epoll.add(raw, key as u64, INTEREST) {
            self.core.conns.remove(key);
            return Err(e);
        }
        Ok(ConnId(key))
    }

    /// Begin the shutdown a SIGTERM begins: stop accepting, close every
    /// connection gracefully; `run` returns when all are closed.
    pub fn stop(&mut self) {
        self.core.begin_shutdown();
    }

    /// Bytes queued for `id` and not yet written.
    pub fn pending_output(&self, id: ConnId) -> usize {
        self.core.conns.get(id.0).map_or(0, |c| c.output.len())
    }

    /// Open connections (including those closing).
    pub fn connections(&self) -> usize {
        self.core.conns.len()
    }

    pub fn counters(&self) -> &Counters {
        &self.core.counters
    }
}
