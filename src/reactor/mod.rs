//! The reactor: one thread, one epoll instance, edge-triggered.
//!
//! # One iteration of the loop
//!
//! ```text
//!   epoll_pwait2(timeout = 0 if work is queued, else the nearest deadline)
//!   read the clock once ("now" for the whole iteration)
//!   for each event:        IN/RDHUP/HUP/ERR → read & deliver;  OUT → flush
//!   listeners ready:       accept until EAGAIN or the accept budget
//!   ready list:            connections with input left over from last time
//!   gather:                if a handler waits for on_turn_end: take ready
//!                          events again without waiting (at most 8 rounds)
//!   deadlines:             idle, send timeout, connect timeout, linger,
//!                          application timers, stats, tick, drain
//!   until nothing changes: on_turn_end where asked, deferred events (busy,
//!                          ready, shutdown, handed over), reap the dead
//!                          (on_close), flush the dirty list
//! ```
//!
//! The files of this module follow that loop: [`input`] (reading,
//! delivery, end of stream), [`output`] (flushing, output policy, the
//! close path), [`accept`] (listeners, accept filters, `EMFILE`,
//! completing connects), [`ctx`] (the API an application holds), and
//! [`waker`] (the cross-thread handle).
//!
//! # Edge-triggered, and what it costs
//!
//! Every socket is registered once with `EPOLLIN | EPOLLOUT | EPOLLRDHUP |
//! EPOLLPRI | EPOLLET` and never modified: no `EPOLL_CTL_MOD` system call toggles
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
//!   others. See [`input`].
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
//! - **Paused connections.** A connection paused by flow control or by its
//!   delivery mode (`Active::Off`, a spent `Once`/`N`) keeps its
//!   registration but is not read. Its edges are lost while paused, so
//!   re-arming puts it on the ready list: what is buffered is delivered
//!   and the socket read at once. Likewise after a framing switch with
//!   bytes still buffered, and after a connection is handed over.
//! - **Input before output.** An event may carry both `EPOLLIN` and
//!   `EPOLLOUT`, and both are handled, input first. The order matters when
//!   the peer's last bytes arrive with its reset (`EPOLLIN | EPOLLERR |
//!   EPOLLHUP` in one event: a client that closes with unread data, or
//!   with `SO_LINGER` 0): a flush of queued output would fail with
//!   `ECONNRESET` and close the connection before those bytes were read,
//!   so whether a peer's last frame reached the application would depend
//!   on the server's own backlog. Read first, the frame is delivered and
//!   the reset is then met by the read (or the flush) that follows it.
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
//! An application's ids outlive their connections in the same way (a
//! [`Handle::submit`] job, a table not yet cleared, a `connect` made in
//! `on_close` that takes the slot just freed): every [`crate::ConnId`]
//! carries the generation of its connection, and [`Ctx`] checks it on
//! every call, so a **stale id** acts on nothing instead of on whoever
//! holds the slot now (see [`ctx`]).
//!
//! # Callbacks, deferred events and panics
//!
//! A handler runs with a [`Ctx`] that can reach every connection, but not
//! the other handlers (they are borrowed apart). So what must call a
//! handler from inside another callback — a send passing the high
//! watermark (`on_busy`), a flush inside that send falling back
//! (`on_ready`), a `shutdown_write` completing at once (`on_shutdown`), a
//! connection handed to another handler (`on_open`) — is queued as a
//! *notice* and delivered when the callback has returned, before the dead
//! are reaped. Every callback runs inside `catch_unwind`: a panic aborts
//! the connection it was about and nothing else (see [`Handler`]).
//!
//! # Timers
//!
//! Time is microseconds read once per iteration; the wait is
//! `epoll_pwait2`, whose timeout has nanosecond precision, so application
//! timers ([`Ctx::set_timer`]) can pace work below a millisecond. All
//! deadlines share one lazy min-heap (see [`crate::timer`]).

pub mod accept;
pub mod ctx;
pub mod input;
pub mod output;
mod peer_warnings;
pub mod waker;
#[cfg(feature = "ws")]
mod ws;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};
use slab::Slab;

pub use ctx::Ctx;
pub use waker::{Handle, Job};

use crate::buffer::Pools;
use crate::conn::{flag, Conn};
use crate::handler::{CloseReason, ConnId, Handler, HandlerId};
use crate::options::{Config, ListenOptions};
use crate::stats::Counters;
use nix::sys::signal::Signal;

use crate::sys::{self, Epoll};
use crate::timer::{earliest, wait_timeout, Clock, Deadlines, Micros};

/// The largest `max_frame` a reactor accepts: 2 GiB.
pub const MAX_FRAME_LIMIT: usize = 1 << 31;
/// How long accepting pauses after `EMFILE`/`ENFILE`, unless a connection
/// closes first.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a gracefully closed connection waits for the peer's FIN after
/// our `SHUT_WR` before the socket is closed anyway.
pub const LINGER: Duration = Duration::from_secs(5);
/// The longest shutdown spends accepting the connections its listeners
/// still hold (see `Reactor::shut_down`).
pub const FINAL_ACCEPT_TIME: Duration = Duration::from_millis(100);
/// The most handlers one reactor holds (a connection names its handler in
/// one byte).
pub const MAX_HANDLERS: usize = 256;

const SIGNAL_TOKEN: u64 = u64::MAX;
const WAKER_TOKEN: u64 = u64::MAX - 1;
/// Listener `i` has token `LISTENER_TOKEN - i`; connections have their
/// slab keys, which never come near.
const LISTENER_TOKEN: u64 = u64::MAX - 2;
/// At most this many listeners on one reactor (tokens below the listeners'
/// are connections').
const MAX_LISTENERS: u64 = 1 << 16;
const EVENTS_PER_WAIT: usize = 1024;
/// At most this many extra rounds of ready events in a turn whose end a
/// handler waits for (see `Reactor::gather`).
const GATHER_ROUNDS: usize = 8;
const INTEREST: u32 = sys::EPOLLIN | sys::EPOLLOUT | sys::EPOLLRDHUP | sys::EPOLLPRI | sys::EPOLLET;

/// A handler event that must wait until no callback is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notice {
    Busy,
    Ready,
    Shutdown,
    /// The connection was handed over: its new handler's `on_open`.
    Open,
    /// `Active::N` brought the count to 0 at once: `on_passive`.
    Passive,
}

struct Listener {
    fd: OwnedFd,
    handler: u8,
    options: ListenOptions,
    /// Connections may be waiting (budget spent, or accepting paused).
    pending: bool,
}

/// Everything the reactor owns except the handlers: what [`Ctx`] acts on.
struct Core {
    config: Config,
    epoll: Epoll,
    conns: Slab<Conn>,
    listeners: Vec<Listener>,
    signals: Option<OwnedFd>,
    waker: Arc<waker::Shared>,
    handlers: usize,
    clock: Clock,
    deadlines: Deadlines,
    pools: Pools,
    /// Connections with input to handle before the next `epoll_wait`.
    ready: Vec<usize>,
    /// Connections with output to flush before the next `epoll_wait`.
    dirty: Vec<usize>,
    /// Connections closed during this iteration, to be reaped at its end.
    dead: Vec<(usize, CloseReason)>,
    /// Handler events deferred until no callback runs.
    notices: Vec<(usize, Notice)>,
    /// Handlers that asked for `on_turn_end` in this turn.
    turn_end: Vec<u8>,
    /// The connection whose frames are being delivered (`usize::MAX`:
    /// none): re-arming it needs no trip through the ready list.
    delivering: usize,
    accept_paused_until: Micros,
    /// A shutdown was asked for (signal, `Ctx::stop`, `Handle::stop`); the
    /// loop carries it out when no callback is running.
    stop_requested: bool,
    /// Shutdown in progress: no accepting, connections closing gracefully.
    draining: bool,
    drain_deadline: Micros,
    /// Counted connections open (see `ListenOptions::counted`).
    counted: usize,
    /// Connections created so far: the next one's generation (see
    /// [`ConnId`]).
    generation: u32,
    next_publish: Micros,
    next_tick: Micros,
    counters: Counters,
    peer_warnings: peer_warnings::PeerWarnings,
}

/// An edge-triggered epoll reactor running one or more [`Handler`]s.
pub struct Reactor {
    core: Core,
    handlers: Vec<Box<dyn Handler>>,
}

impl Reactor {
    /// A reactor with no handler and no listener yet.
    pub fn new(mut config: Config) -> io::Result<Reactor> {
        config.max_frame = config.max_frame.min(MAX_FRAME_LIMIT);
        let epoll = Epoll::new()?;
        let signals = if config.handle_signals {
            sys::ignore_sigpipe()?;
            let fd = sys::signalfd(&[Signal::SIGINT, Signal::SIGTERM])?;
            epoll.add(fd.as_fd(), SIGNAL_TOKEN, sys::EPOLLIN)?;
            Some(fd)
        } else {
            None
        };
        let waker = Arc::new(waker::Shared::new()?);
        epoll.add(waker.fd(), WAKER_TOKEN, sys::EPOLLIN | sys::EPOLLET)?;
        let clock = Clock::new();
        let next_publish = clock.after(config.publish.as_ref().map_or(Duration::ZERO, |p| p.every));
        let next_tick = clock.after(config.tick);
        Ok(Reactor {
            core: Core {
                epoll,
                conns: Slab::with_capacity(config.max_conns.min(1 << 16)),
                listeners: Vec::new(),
                signals,
                waker,
                handlers: 0,
                clock,
                deadlines: Deadlines::default(),
                // 64 free read buffers; enough free chunks for thousands of
                // replies per iteration without returning memory to malloc
                // each time (at most 16 MiB kept).
                pools: Pools::new(64, 4096),
                ready: Vec::new(),
                dirty: Vec::new(),
                dead: Vec::new(),
                notices: Vec::new(),
                turn_end: Vec::new(),
                delivering: usize::MAX,
                accept_paused_until: 0,
                stop_requested: false,
                draining: false,
                drain_deadline: 0,
                counted: 0,
                generation: 0,
                next_publish,
                next_tick,
                counters: Counters::default(),
                peer_warnings: Default::default(),
                config,
            },
            handlers: Vec::new(),
        })
    }

    /// Register a handler; listeners and connections name it by the id.
    ///
    /// # Panics
    ///
    /// Past [`MAX_HANDLERS`] handlers (a programming error).
    pub fn add_handler<H: Handler>(&mut self, handler: H) -> HandlerId {
        assert!(self.handlers.len() < MAX_HANDLERS, "a reactor holds at most {MAX_HANDLERS} handlers");
        self.handlers.push(Box::new(handler));
        self.core.handlers = self.handlers.len();
        HandlerId((self.handlers.len() - 1) as u8)
    }

    /// The handler `id`, if it is an `H`: how a program reads its results
    /// after [`Reactor::run`].
    pub fn handler<H: Handler>(&self, id: HandlerId) -> Option<&H> {
        let handler: &dyn std::any::Any = self.handlers.get(id.0 as usize)?.as_ref();
        handler.downcast_ref()
    }

    /// The handler `id`, if it is an `H`, mutably.
    pub fn handler_mut<H: Handler>(&mut self, id: HandlerId) -> Option<&mut H> {
        let handler: &mut dyn std::any::Any = self.handlers.get_mut(id.0 as usize)?.as_mut();
        handler.downcast_mut()
    }

    /// Listen on `addr` (port 0 picks one) for `handler`; returns the
    /// address bound. A reactor may listen on several addresses, each with
    /// its own handler and options.
    pub fn listen(&mut self, addr: &SocketAddr, handler: HandlerId, options: ListenOptions) -> io::Result<SocketAddr> {
        let fd = sys::listen(addr, options.backlog, options.reuse_port, options.v6_only)?;
        self.add_listener(fd, handler, options)
    }

    /// Serve a socket that is already listening (bound before the threads
    /// started, say), for `handler`; returns its address. It is made
    /// non-blocking (a `std::net::TcpListener` is blocking); a socket that
    /// is not listening is refused with `InvalidInput`.
    pub fn add_listener(&mut self, fd: OwnedFd, handler: HandlerId, options: ListenOptions) -> io::Result<SocketAddr> {
        if handler.0 as usize >= self.handlers.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such handler"));
        }
        if self.core.listeners.len() as u64 >= MAX_LISTENERS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many listeners on one reactor"));
        }
        sys::adopt_listener(fd.as_fd())?;
        let local = sys::local_addr(fd.as_fd())?;
        let token = LISTENER_TOKEN - self.core.listeners.len() as u64;
        self.core.epoll.add(fd.as_fd(), token, sys::EPOLLIN | sys::EPOLLET)?;
        self.core.listeners.push(Listener { fd, handler: handler.0, options, pending: false });
        Ok(local)
    }

    /// Act on the reactor from outside the loop (before `run`, to start
    /// client connections). Connections it starts belong to the first
    /// handler unless their options name another.
    pub fn ctx(&mut self) -> Ctx<'_> {
        Ctx { core: &mut self.core, current: 0 }
    }

    /// A handle another thread can use to wake this reactor, hand it work,
    /// or stop it.
    pub fn handle(&self) -> Handle {
        Handle::new(Arc::clone(&self.core.waker))
    }

    /// The counters of this reactor.
    pub fn counters(&self) -> &Counters {
        &self.core.counters
    }

    /// Run until a shutdown (a signal, [`Ctx::stop`] or [`Handle::stop`])
    /// has closed every connection.
    pub fn run(&mut self) -> io::Result<()> {
        let result = self.run_loop();
        if result.is_err() {
            self.core.waker.close();
        }
        result
    }

    fn run_loop(&mut self) -> io::Result<()> {
        let mut events = vec![sys::empty_event(); EVENTS_PER_WAIT];
        self.core.clock.tick();
        for h in 0..self.handlers.len() {
            self.call(h as u8, None, "on_start", |h, ctx| h.on_start(ctx));
        }
        self.settle();
        self.core.publish();
        loop {
            // Jobs submitted meanwhile were accepted: they run first (see
            // `waker` on "After `run` has returned").
            if self.core.draining && self.core.conns.is_empty() && self.core.waker.close_if_idle() {
                self.core.publish();
                return Ok(());
            }
            let accept_due = self.core.listeners.iter().any(|l| l.pending) && self.core.accept_paused_until == 0;
            let busy = !self.core.ready.is_empty() || accept_due;
            // A fresh "now" for the timeout, or every deadline would fire late
            // by the time the last iteration took.
            let timeout =
                if busy { Some(Duration::ZERO) } else { wait_timeout(self.core.clock.tick(), self.core.next_wakeup()) };
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
            if self.core.accept_paused_until <= self.core.clock.now() {
                self.accept_pending();
            }
            self.serve_ready_list();
            self.gather(&mut events);
            self.run_deadlines();
            self.settle();
        }
    }

    /// A handler that holds a turn's output back for `on_turn_end` (the
    /// chat's per-room batches) gains from a longer turn: what arrived
    /// while this turn's input was handled joins it before the output goes,
    /// so one write per recipient carries more. Go's chat readers drain
    /// every ready socket before its writers run, to the same effect. So
    /// while such a handler waits, ready events are taken again without
    /// waiting, up to [`GATHER_ROUNDS`] times (which bounds what this adds
    /// to latency); a turn with nobody waiting for its end is not lengthened.
    fn gather(&mut self, events: &mut [sys::Event]) {
        for _ in 0..GATHER_ROUNDS {
            if self.core.turn_end.is_empty() {
                return;
            }
            let n = self.core.epoll.wait(events, Some(Duration::ZERO)).unwrap_or(0);
            if n == 0 {
                return;
            }
            self.core.counters.waits += 1;
            for ev in &events[..n] {
                self.dispatch(sys::event_token(ev), sys::event_bits(ev));
            }
            self.serve_ready_list();
        }
    }

    /// Run a callback of handler `handler` inside `catch_unwind`. `about`
    /// is the connection the callback concerns: a panic aborts it.
    fn call(
        &mut self,
        handler: u8,
        about: Option<usize>,
        what: &'static str,
        f: impl FnOnce(&mut dyn Handler, &mut Ctx<'_>),
    ) {
        let Reactor { core, handlers } = self;
        let Some(h) = handlers.get_mut(handler as usize) else { return };
        let mut ctx = Ctx { core, current: handler };
        if panic::catch_unwind(AssertUnwindSafe(|| f(h.as_mut(), &mut ctx))).is_err() {
            self.core.counters.panics += 1;
            match about {
                Some(key) if self.core.conns.contains(key) => {
                    error!("{}: handler panicked in {what}; aborting the connection", Key(key));
                    self.core.abort(key, CloseReason::Panic);
                }
                _ => error!("handler panicked in {what}; the reactor goes on"),
            }
        }
    }

    /// Run a callback of the handler that owns connection `key`.
    fn call_conn(&mut self, key: usize, what: &'static str, f: impl FnOnce(&mut dyn Handler, &mut Ctx<'_>)) {
        if let Some(handler) = self.core.conns.get(key).map(|c| c.handler()) {
            self.call(handler, Some(key), what, f);
        }
    }

    fn dispatch(&mut self, token: u64, bits: u32) {
        match token {
            SIGNAL_TOKEN => return self.read_signals(),
            WAKER_TOKEN => return self.run_jobs(),
            t if t > LISTENER_TOKEN - MAX_LISTENERS => {
                if let Some(l) = self.core.listeners.get_mut((LISTENER_TOKEN - t) as usize) {
                    l.pending = true;
                }
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
        if bits & (sys::EPOLLRDHUP | sys::EPOLLHUP | sys::EPOLLERR) != 0 {
            conn.set(flag::HUP_SEEN);
        }
        // Urgent data: a read stops at its mark (see `input`).
        if bits & sys::EPOLLPRI != 0 {
            conn.set(flag::URGENT);
        }
        if conn.has(flag::CONNECTING) {
            if bits & (sys::EPOLLOUT | sys::EPOLLERR | sys::EPOLLHUP) == 0 {
                return;
            }
            self.finish_connect(key);
        }
        // An event may carry both IN and OUT: handle both (handling only one
        // is a classic bug). Input goes first ("Input before output"): with
        // a reset pending, a flush would fail and kill the connection before
        // the bytes that came in with the reset were read. A flush that
        // lifts flow control puts the connection on the ready list, so
        // nothing waits for reading second.
        if bits & (sys::EPOLLIN | sys::EPOLLPRI | sys::EPOLLRDHUP | sys::EPOLLHUP | sys::EPOLLERR) != 0 {
            self.handle_input(key);
        }
        if bits & (sys::EPOLLOUT | sys::EPOLLERR | sys::EPOLLHUP) != 0 {
            self.core.flush(key);
        }
        // EPOLLERR with nothing to read (an error on the write side): fetch
        // the error so the connection does not linger half-dead.
        if bits & sys::EPOLLERR != 0 {
            if let Some(conn) = self.core.conns.get(key).filter(|c| !c.has(flag::DEAD)) {
                if let Ok(Some(err)) = sys::take_socket_error(conn.fd.as_fd()) {
                    log::debug!("{}: socket error: {err}", Key(key));
                    self.core.kill(key, CloseReason::Error(errno(&err)));
                }
            }
        }
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
            if conn.write_deadline != 0 && conn.write_deadline <= now {
                let reason = if conn.has(flag::CONNECTING) {
                    CloseReason::ConnectFailed(nix::errno::Errno::ETIMEDOUT)
                } else if conn.has(flag::WRITE_SHUT) {
                    conn.closing().into() // linger over: close as planned
                } else {
                    let unsent = conn.bufs.output_len();
                    if core.peer_warnings.allow(now) {
                        warn!("{}: send timeout ({unsent} bytes pending); closing", Key(key));
                    }
                    CloseReason::SendTimeout { unsent }
                };
                core.kill(key, reason);
                continue;
            }
            if conn.idle_deadline != 0 && conn.idle_deadline <= now {
                log::debug!("{}: idle timeout", Key(key));
                core.kill(key, CloseReason::IdleTimeout);
                continue;
            }
            let timer = conn.timer();
            let fired = timer != 0 && timer <= now && !conn.has(flag::HANDING_OVER);
            if fired {
                conn.extra().timer = 0;
            } else if timer != 0 && timer <= now {
                // Handed over in this turn: fire once the new owner's
                // on_open has run (next iteration).
                conn.extra().timer = now + 1;
            }
            core.deadlines.schedule(key, conn.next_deadline(), &mut conn.scheduled);
            if fired {
                let id = ConnId::new(key, conn.gen);
                self.call_conn(key, "on_timer", |h, ctx| h.on_timer(ctx, id));
            }
        }
        let core = &mut self.core;
        // Entries of reaped connections wait in the heap until their time;
        // with long timeouts and much churn, sweep them out (amortised O(1)).
        if core.deadlines.entries() > 2 * core.conns.len() + 1024 {
            let conns = &core.conns;
            core.deadlines.retain(|key, due| conns.get(key).is_some_and(|c| c.scheduled == due));
        }
        if core.next_publish != 0 && core.next_publish <= now {
            core.publish();
        }
        if core.draining && core.drain_deadline <= now {
            core.drain_expired();
        }
        if core.next_tick != 0 && core.next_tick <= now {
            core.next_tick = core.clock.after(core.config.tick);
            for h in 0..self.handlers.len() {
                self.call(h as u8, None, "on_tick", |h, ctx| h.on_tick(ctx));
            }
        }
    }

    /// End the turn: call `on_turn_end` where asked, deliver deferred
    /// notices, reap the dead and flush the dirty until none has work:
    /// `on_close` may send (a chat "left" notice), and a flush may fail and
    /// kill.
    fn settle(&mut self) {
        loop {
            // A stop asked for by any callback, `on_close` included, is
            // carried out in this turn: the loop may have nothing else to
            // wake it.
            if self.core.stop_requested && !self.core.draining {
                self.shut_down();
            }
            if self.core.turn_end.is_empty()
                && self.core.notices.is_empty()
                && self.core.dead.is_empty()
                && self.core.dirty.is_empty()
            {
                return;
            }
            // What they send is queued ahead of the flush below.
            self.run_turn_end();
            // Callbacks may queue more notices: the list grows while walked.
            let mut i = 0;
            while let Some(&(key, notice)) = self.core.notices.get(i) {
                i += 1;
                self.notify(key, notice);
            }
            self.core.notices.clear();
            // `on_close` may kill others: the list grows while it is walked.
            let mut i = 0;
            while let Some(&(key, reason)) = self.core.dead.get(i) {
                i += 1;
                self.reap(key, reason);
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

    /// Call `on_turn_end` of the handlers that asked for it. Also before a
    /// connection starts closing on its own (end of stream, shutdown):
    /// what a handler holds back for the end of the turn (a chat's lines,
    /// the peer's own among them) is still owed to it and must be queued
    /// before the close flushes and shuts the write side.
    fn run_turn_end(&mut self) {
        // One asking again from its own `on_turn_end` is called in the next
        // round of `settle`.
        let mut asked = std::mem::take(&mut self.core.turn_end);
        for &handler in &asked {
            self.call(handler, None, "on_turn_end", |h, ctx| h.on_turn_end(ctx));
        }
        if self.core.turn_end.is_empty() {
            asked.clear();
            self.core.turn_end = asked; // keeps its capacity
        }
    }

    fn notify(&mut self, key: usize, notice: Notice) {
        // A connection closed during this iteration is reaped only after the
        // notices: a new owner still hears `on_open` before its `on_close`,
        // and a completed `shutdown_write` is still told (the close may be
        // its consequence); busy and ready no longer matter.
        let Some(conn) = self.core.conns.get(key) else { return };
        let dead = conn.has(flag::DEAD);
        if dead && matches!(notice, Notice::Busy | Notice::Ready | Notice::Passive) {
            return;
        }
        // Handed over in this turn: the new owner hears `on_open` first (its
        // notice is further down this list), then this.
        if conn.has(flag::HANDING_OVER) && notice != Notice::Open {
            return self.core.notice(key, notice);
        }
        let id = self.core.id(key);
        match notice {
            Notice::Busy => self.call_conn(key, "on_busy", |h, ctx| h.on_busy(ctx, id)),
            Notice::Ready => self.call_conn(key, "on_ready", |h, ctx| h.on_ready(ctx, id)),
            Notice::Shutdown => self.call_conn(key, "on_shutdown", |h, ctx| h.on_shutdown(ctx, id)),
            // Unless re-armed meanwhile, as after a frame (see `deliver_frame`).
            Notice::Passive if conn_paused(&self.core, key) => {
                self.call_conn(key, "on_passive", |h, ctx| h.on_passive(ctx, id));
            }
            Notice::Passive => {}
            Notice::Open => {
                self.core.conns[key].clear(flag::HANDING_OVER);
                self.call_conn(key, "on_open", |h, ctx| h.on_open(ctx, id));
                // Frames held back while the connection changed hands.
                if !dead {
                    self.core.push_ready(key);
                }
            }
        }
    }

    /// Remove a dead connection: its socket closes (leaving the epoll set),
    /// its buffers go back to the pools, its handler hears of it.
    fn reap(&mut self, key: usize, reason: CloseReason) {
        let mut conn = self.core.conns.remove(key);
        let core = &mut self.core;
        conn.bufs.clear_output(&mut core.pools);
        conn.bufs.discard_input(&mut core.pools);
        if !conn.has(flag::QUIET) {
            core.counters.closed[reason.index()] += 1;
        }
        if conn.has(flag::COUNTED_CONN) {
            core.release_place();
        }
        // A descriptor was just freed: accepting may resume.
        core.accept_paused_until = 0;
        // Notices for this key must not reach a connection that reuses it.
        core.notices.retain(|&(k, _)| k != key);
        let (handler, id) = (conn.handler(), ConnId::new(key, conn.gen));
        drop(conn);
        self.call(handler, None, "on_close", |h, ctx| h.on_close(ctx, id, reason));
    }

    /// Stop accepting and close every connection gracefully.
    ///
    /// Each listener is accepted from until `EAGAIN` before it is closed:
    /// when a listening socket closes, the kernel resets the connections
    /// still in its accept queue (with `SO_REUSEPORT` they are not moved to
    /// a sibling unless `net.ipv4.tcp_migrate_req` is 1), so taking them
    /// first lets them be served their graceful close like everyone else.
    /// The window that remains is the microseconds between that last
    /// `accept4` and the `close`: a handshake completing then is reset.
    /// Handlers hear `on_stop` before their connections start closing, so
    /// that what they queue then (a chat's "left" notices to Redis) is
    /// flushed by the graceful close.
    ///
    /// That last accepting is bounded (the edge case "a reconnect storm at
    /// shutdown"): clients that reconnect as fast as they are accepted
    /// would keep the queue from ever reaching `EAGAIN`, and the shutdown
    /// would never begin. What was queued when the shutdown began is at
    /// most the listener's backlog, so each listener gives at most that
    /// many, and all of them together at most [`FINAL_ACCEPT_TIME`];
    /// whoever arrives after that is reset with the queue, as if a moment
    /// late.
    fn shut_down(&mut self) {
        let until = std::time::Instant::now() + FINAL_ACCEPT_TIME;
        for i in 0..self.core.listeners.len() {
            let mut left = self.core.listeners[i].options.backlog.max(1) as usize;
            self.core.listeners[i].pending = true;
            while self.core.listeners[i].pending && left > 0 && std::time::Instant::now() < until {
                let taken = self.accept_at_most(i, left.min(self.core.config.accept_budget));
                if taken == 0 {
                    break; // out of descriptors
                }
                left -= taken;
            }
        }
        for h in 0..self.handlers.len() {
            self.call(h as u8, None, "on_stop", |h, ctx| h.on_stop(ctx));
        }
        self.run_turn_end();
        self.core.begin_shutdown();
    }

    fn read_signals(&mut self) {
        let Some(fd) = self.core.signals.as_ref() else { return };
        let mut stop = false;
        while let Ok(Some(sig)) = sys::read_signal(fd.as_fd()) {
            info!("signal {sig}: shutting down");
            stop = true;
        }
        if stop {
            self.core.stop_requested = true;
        }
    }

    /// The waker fired: a stop request, jobs, or both.
    fn run_jobs(&mut self) {
        let (stop, jobs) = self.core.waker.take();
        for job in jobs {
            self.call(0, None, "a job", |_, ctx| job(ctx));
        }
        if stop {
            self.core.stop_requested = true;
        }
    }
}

impl Drop for Reactor {
    /// A reactor that is gone runs no more jobs: its handles say so.
    fn drop(&mut self) {
        self.core.waker.close();
    }
}

impl Core {
    /// The id of the connection at `key`, which must exist.
    fn id(&self, key: usize) -> ConnId {
        ConnId::new(key, self.conns[key].gen)
    }

    /// The connection `id` names, if it is still there: `None` for a stale
    /// id, whose slot another connection may hold now (see [`ConnId`]).
    fn live(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.key()).filter(|c| c.gen == id.gen())
    }

    fn live_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.key()).filter(|c| c.gen == id.gen())
    }

    /// The generation of a connection being created.
    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.generation
    }

    /// The earliest moment the loop must wake for, if any.
    fn next_wakeup(&self) -> Option<Micros> {
        let mut due = earliest(self.next_publish, self.next_tick);
        if self.draining {
            due = earliest(due, self.drain_deadline);
        }
        if self.listeners.iter().any(|l| l.pending) {
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

    fn notice(&mut self, key: usize, notice: Notice) {
        self.notices.push((key, notice));
    }

    /// Activity: push the idle deadline back.
    fn touch(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        // No idle timeout and no deadline of the handshake's to lift: the
        // common case of every frame, spared the clock and the heap.
        if self.config.idle_timeout.is_zero() && conn.idle_deadline == 0 {
            return;
        }
        #[cfg(feature = "ws")]
        if ws::handshaking(conn) {
            return; // the handshake's deadline stands
        }
        conn.idle_deadline = self.clock.after(self.config.idle_timeout);
        self.deadlines.schedule(key, conn.next_deadline(), &mut conn.scheduled);
    }

    fn set_write_deadline(&mut self, key: usize, deadline: Micros) {
        let conn = &mut self.conns[key];
        conn.write_deadline = deadline;
        self.deadlines.schedule(key, conn.next_deadline(), &mut conn.scheduled);
    }

    fn begin_shutdown(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.listeners.clear(); // stop accepting: closes the listening sockets
        self.drain_deadline = self.clock.after(self.config.drain_timeout);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_gracefully(key, crate::conn::Closing::Shutdown);
        }
    }

    /// Copy the counters, with the gauges brought up to date, to the slot
    /// other threads read (`--stats`, `/metrics`).
    fn publish(&mut self) {
        let Some(publish) = &self.config.publish else { return };
        self.counters.connections = self.counted;
        self.counters.output_queued = self.conns.iter().map(|(_, c)| c.bufs.output_len()).sum();
        publish.to.lock().unwrap_or_else(|e| e.into_inner()).clone_from(&self.counters);
        self.next_publish = self.clock.after(publish.every);
    }

    /// Take a place for a counted connection, if `max_conns` allows.
    fn take_place(&mut self) -> bool {
        let max = self.config.max_conns;
        let taken = match &self.config.conn_count {
            Some(shared) => shared.take(max),
            None => self.counted < max,
        };
        self.counted += taken as usize;
        taken
    }

    fn release_place(&mut self) {
        self.counted -= 1;
        if let Some(shared) = &self.config.conn_count {
            shared.release();
        }
    }

    fn drain_expired(&mut self) {
        let left: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        if !left.is_empty() {
            let flushing = self.conns.iter().filter(|(_, c)| !c.bufs.output_is_empty()).count();
            warn!(
                "shutdown: closing {} connections after the drain timeout ({flushing} with output still \
                 pending, the others waiting for the peer's FIN)",
                left.len()
            );
        }
        for key in left {
            self.kill(key, CloseReason::Shutdown);
        }
    }
}

/// A slab key in logs, written as a [`ConnId`] is.
struct Key(usize);

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Whether the application has paused connection `key` (`Active::Off`, or
/// a count run out).
fn conn_paused(core: &Core, key: usize) -> bool {
    core.conns.get(key).is_some_and(|c| c.has(flag::APP_PAUSED))
}

/// The errno of an OS error (EIO if it carries none).
fn errno(e: &io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
}
