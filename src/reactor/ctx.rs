//! [`Ctx`]: the handle through which an application acts on connections.
//!
//! Every method takes the [`ConnId`] it acts on and may act on any
//! connection, not only the one a callback is about. Acting on a
//! connection that is closing is a no-op (sends return
//! [`SendError::Closed`]). After `on_close` the id is **stale**: its slot
//! may hold a new connection by now, but the id's generation is not the
//! newcomer's, so every method here treats a stale id as a closed
//! connection — a send is `SendError::Closed`, an action does nothing, a
//! query is a `NotFound` error — and a job or a table that kept it can
//! never reach the wrong client (the edge case "stale ids").

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::debug;
use slab::Slab;

use super::{errno, Core, Notice, INTEREST};
use crate::conn::{flag, Closing, Conn};
use crate::framing::Framing;
use crate::handler::{CloseReason, ConnId, HandlerId, SendError};
use crate::options::{Active, ConnectOptions, OutputPolicy, SocketOptions};
use crate::stats::Counters;
use crate::sys;

/// The handle through which an application acts: send, deliver, close,
/// time, connect. See the module docs.
pub struct Ctx<'a> {
    pub(super) core: &'a mut Core,
    /// The handler whose callback is running.
    pub(super) current: u8,
}

/// The smallest message [`Ctx::send_shared`] queues by reference rather
/// than by copy. For a 41-byte chat line the copy costs a third of the
/// reference (BENCHMARKS.md, "Chat fan-out"); where the two cross for larger
/// messages is set here, not yet measured.
pub const SHARE_MIN: usize = 2048;

/// The connection, if it can still be sent to (and `id` is not stale).
fn writable(conns: &mut Slab<Conn>, id: ConnId) -> Result<&mut Conn, SendError> {
    conns
        .get_mut(id.key())
        .filter(|c| c.gen == id.gen() && !c.has(flag::DEAD | flag::CLOSING | flag::SHUTDOWN_WANTED | flag::WRITE_SHUT))
        .ok_or(SendError::Closed)
}

/// How a payload goes on the wire: a header of `n` bytes, then the
/// payload's first `body` bytes.
pub(super) struct Framed {
    pub(super) header: [u8; 10],
    pub(super) n: usize,
    pub(super) body: usize,
}

/// Whether `payload` must go out as one message per line (a WebSocket in
/// line mode; see `ws::several_lines`).
#[cfg(feature = "ws")]
fn several_lines(conn: &Conn, payload: &[u8]) -> bool {
    super::ws::several_lines(conn, payload)
}

#[cfg(not(feature = "ws"))]
fn several_lines(_: &Conn, _: &[u8]) -> bool {
    false
}

/// The header the connection's framing puts before `payload`.
fn header(conn: &Conn, payload: &[u8]) -> Result<Framed, SendError> {
    #[cfg(feature = "ws")]
    if let Some(framed) = super::ws::framed(conn, payload) {
        return Ok(framed);
    }
    let (short, n) = conn
        .framing
        .header(payload.len())
        .map_err(|crate::framing::FrameError::TooLarge { len, max }| SendError::TooLarge { len, max })?;
    let mut header = [0; 10];
    header[..4].copy_from_slice(&short);
    Ok(Framed { header, n, body: payload.len() })
}

fn not_found(id: ConnId) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no connection {id}"))
}

impl Ctx<'_> {
    /// Send one frame: `payload` is queued with the connection's framing
    /// (a length header for `1|2|4`; as it is otherwise) and written
    /// before the loop next sleeps (gen_tcp's `send`, never blocking).
    pub fn send(&mut self, id: ConnId, payload: &[u8]) -> Result<(), SendError> {
        let core = &mut *self.core;
        if several_lines(writable(&mut core.conns, id)?, payload) {
            return payload.split_inclusive(|&b| b == b'\n').try_for_each(|line| self.send(id, line));
        }
        let f = header(writable(&mut core.conns, id)?, payload)?;
        core.may_queue(id.key(), f.n + f.body)?;
        core.conns[id.key()].bufs.push_copy(&[&f.header[..f.n], &payload[..f.body]], &mut core.pools);
        core.queued(id.key());
        Ok(())
    }

    /// Send `payload` at once, without copying it, if nothing is queued
    /// ahead of it; only what the kernel refuses is queued. One system call
    /// per call: for one reply per read (echo in `raw` mode) it saves the
    /// copy; for many replies per read, [`Ctx::send`] coalesces them into
    /// one write instead. Framed like [`Ctx::send`]: a header goes out
    /// with the payload in one vectored write, neither copied; several
    /// lines to a WebSocket in line mode are one message each, queued by
    /// `send`.
    pub fn send_now(&mut self, id: ConnId, payload: &[u8]) -> Result<(), SendError> {
        let core = &mut *self.core;
        let conn = writable(&mut core.conns, id)?;
        // Lines for a WebSocket in line mode go out one message each:
        // `send` splits them.
        if !conn.bufs.output_is_empty() || conn.has(flag::CONNECTING) || several_lines(conn, payload) {
            return self.send(id, payload);
        }
        let f = header(conn, payload)?;
        let (head, payload) = (&f.header[..f.n], &payload[..f.body]);
        let result = if head.is_empty() {
            sys::send(conn.fd.as_fd(), payload)
        } else {
            sys::send_vectored(conn.fd.as_fd(), &[io::IoSlice::new(head), io::IoSlice::new(payload)])
        };
        let sent = match result {
            Ok(sent) => sent,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(e) => {
                debug!("{id}: send: {e}");
                core.kill(id.key(), CloseReason::Error(errno(&e)));
                return Err(SendError::Closed);
            }
        };
        core.counters.writes += 1;
        core.counters.bytes_out += sent as u64;
        core.touch(id.key());
        if sent == head.len() + payload.len() {
            return Ok(());
        }
        // What the kernel refused is queued whatever the policy says: the
        // caller was told nothing was refused when the first byte went out.
        let core = &mut *self.core;
        let (head_left, body_left) = (&head[sent.min(head.len())..], &payload[sent.saturating_sub(head.len())..]);
        core.conns[id.key()].bufs.push_copy(&[head_left, body_left], &mut core.pools);
        core.queued(id.key());
        Ok(())
    }

    /// Send a message meant for many recipients (a broadcast). Framed like
    /// [`Ctx::send`]. A message of [`SHARE_MIN`] bytes or more is queued by
    /// reference: one allocation serves every recipient. A smaller one is
    /// copied into the recipient's contiguous output, like [`Ctx::send`]:
    /// copying a chat line costs less than a reference count, a queue
    /// entry and an iovec of its own in every recipient's `sendmsg`.
    pub fn send_shared(&mut self, id: ConnId, msg: &Rc<[u8]>) -> Result<(), SendError> {
        if msg.len() < SHARE_MIN || several_lines(writable(&mut self.core.conns, id)?, msg) {
            return self.send(id, msg);
        }
        let core = &mut *self.core;
        let f = header(writable(&mut core.conns, id)?, msg)?;
        core.may_queue(id.key(), f.n + f.body)?;
        let conn = &mut core.conns[id.key()];
        conn.bufs.push_copy(&[&f.header[..f.n]], &mut core.pools);
        conn.bufs.push_shared_prefix(Rc::clone(msg), f.body, &mut core.pools);
        core.queued(id.key());
        Ok(())
    }

    /// Ask for [`Handler::on_turn_end`](crate::Handler::on_turn_end) of the
    /// running handler before this loop turn's output is written.
    pub fn flush_at_turn_end(&mut self) {
        let handler = self.current;
        if !self.core.turn_end.contains(&handler) {
            self.core.turn_end.push(handler);
        }
    }

    /// Switch framing (`inet:setopts(S, [{packet, P}])`). Bytes already
    /// buffered are decoded with the new framing, at once.
    pub fn set_framing(&mut self, id: ConnId, framing: Framing) {
        if let Some(conn) = self.core.live_mut(id) {
            conn.framing = framing;
            // (If this is the connection being delivered, its buffer is out
            // and its cursor is already 0: a frame was just completed, and
            // the delivery loop goes on with the new framing.)
            conn.bufs.restart_scan();
            if self.core.delivering != id.key() {
                self.core.push_ready(id.key());
            }
        }
    }

    /// Set the delivery mode (`inet:setopts(S, [{active, A}])`). Re-arming
    /// a paused connection delivers what is already buffered and reads the
    /// socket at once: the edge that announced those bytes has passed.
    pub fn set_active(&mut self, id: ConnId, active: Active) {
        let delivering = self.core.delivering == id.key();
        let Some(conn) = self.core.live_mut(id) else { return };
        let was_paused = conn.has(flag::APP_PAUSED);
        let mut passive = false;
        match active {
            Active::On => conn.clear(flag::APP_PAUSED | flag::COUNTED | flag::ONCE),
            Active::Off => conn.set(flag::APP_PAUSED),
            Active::Once => {
                conn.clear(flag::APP_PAUSED);
                conn.set(flag::COUNTED | flag::ONCE);
                conn.active_left = 1;
            }
            Active::N(n) => {
                let left = if conn.has(flag::COUNTED) && !conn.has(flag::ONCE) { conn.active_left } else { 0 };
                if left.saturating_add(n) == 0 {
                    // A count explicitly set to 0 goes passive at once,
                    // with `tcp_passive`, as in gen_tcp.
                    conn.clear(flag::COUNTED | flag::ONCE);
                    conn.set(flag::APP_PAUSED);
                    passive = true;
                } else {
                    conn.clear(flag::APP_PAUSED | flag::ONCE);
                    conn.set(flag::COUNTED);
                    conn.active_left = left.saturating_add(n);
                }
            }
        }
        if was_paused && !conn.has(flag::APP_PAUSED) && !delivering {
            self.core.push_ready(id.key());
        }
        if passive {
            self.core.notice(id.key(), Notice::Passive);
        }
    }

    /// gen_tcp's `exit_on_close`. On (the default), the peer's end of
    /// stream closes the connection once everything owed was sent. Off, it
    /// is an [`crate::Handler::on_eof`] event and the connection stays
    /// open for writing until the application closes it.
    pub fn set_exit_on_close(&mut self, id: ConnId, on: bool) {
        if let Some(conn) = self.core.live_mut(id) {
            if on {
                conn.clear(flag::KEEP_OPEN);
            } else {
                conn.set(flag::KEEP_OPEN);
            }
        }
    }

    /// Give this connection an output policy of its own (limit,
    /// watermarks, what happens past the limit).
    pub fn set_output_policy(&mut self, id: ConnId, policy: OutputPolicy) {
        if let Some(conn) = self.core.live_mut(id) {
            conn.extra().policy = Some(policy);
        }
    }

    /// Shut down the write side once everything queued is written
    /// (gen_tcp's `shutdown(S, write)`); [`crate::Handler::on_shutdown`]
    /// says when it is done. The connection keeps receiving until the
    /// peer closes.
    pub fn shutdown_write(&mut self, id: ConnId) {
        if let Ok(conn) = writable(&mut self.core.conns, id) {
            conn.set(flag::SHUTDOWN_WANTED);
            if conn.bufs.output_is_empty() {
                self.core.output_drained(id.key());
            }
        }
    }

    /// Close gracefully: flush what is queued, shut down the write side,
    /// wait briefly for the peer's FIN, close. No more frames are
    /// delivered. A connect still in progress is abandoned at once.
    pub fn close(&mut self, id: ConnId) {
        if self.core.live(id).is_some() {
            self.core.close_gracefully(id.key(), Closing::Local);
        }
    }

    /// Close now with a reset (`{linger, {true, 0}}` then `close`): what
    /// is queued is dropped, the peer sees `ECONNRESET`.
    pub fn abort(&mut self, id: ConnId) {
        if self.core.live(id).is_some() {
            self.core.abort(id.key(), CloseReason::Aborted);
        }
    }

    /// Call [`crate::Handler::on_timer`] for `id` after `after`, replacing
    /// the connection's pending timer if any. Precise to the microsecond
    /// (the loop's wait takes a nanosecond timeout).
    pub fn set_timer(&mut self, id: ConnId, after: Duration) {
        let core = &mut *self.core;
        let live = core.conns.get_mut(id.key()).filter(|c| c.gen == id.gen() && !c.has(flag::DEAD));
        if let Some(conn) = live {
            // Zero means "as soon as possible", not "never".
            let due = core.clock.after(after.max(Duration::from_micros(1)));
            conn.extra().timer = due;
            core.deadlines.schedule(id.key(), conn.next_deadline(), &mut conn.scheduled);
        }
    }

    /// Cancel the connection's timer, if set. (Its heap entry goes stale
    /// and is skipped: see [`crate::timer`].)
    pub fn cancel_timer(&mut self, id: ConnId) {
        if let Some(extra) = self.core.live_mut(id).and_then(|c| c.extra.as_mut()) {
            extra.timer = 0;
        }
    }

    /// Hand the connection to another handler (gen_tcp's
    /// `controlling_process`, without its race): from this call on, no
    /// frame goes to the old handler; the new one gets `on_open` once the
    /// current callback has returned, then every frame still buffered, in
    /// order.
    pub fn hand_over(&mut self, id: ConnId, to: HandlerId) {
        if (to.0 as usize) < self.core.handlers {
            if let Some(conn) = self.core.live_mut(id).filter(|c| !c.has(flag::DEAD)) {
                conn.set_handler(to.0);
                conn.set(flag::HANDING_OVER);
                self.core.notice(id.key(), Notice::Open);
            }
        }
    }

    /// Set socket options on a connection (`inet:setopts` for `nodelay`,
    /// `keepalive`, `sndbuf`, `recbuf`).
    pub fn set_socket_options(&mut self, id: ConnId, options: &SocketOptions) -> io::Result<()> {
        let conn = self.core.live(id).ok_or_else(|| not_found(id))?;
        if !options.nodelay {
            sys::set_nodelay(conn.fd.as_fd(), false)?;
        }
        options.apply(conn.fd.as_fd())
    }

    /// The socket options a connection has now (`inet:getopts`).
    pub fn socket_options(&self, id: ConnId) -> io::Result<SocketOptions> {
        let conn = self.core.live(id).ok_or_else(|| not_found(id))?;
        SocketOptions::read(conn.fd.as_fd())
    }

    /// The peer's address (`inet:peername`).
    pub fn peer_addr(&self, id: ConnId) -> io::Result<SocketAddr> {
        let conn = self.core.live(id).ok_or_else(|| not_found(id))?;
        sys::peer_addr(conn.fd.as_fd())
    }

    /// The local address (`inet:sockname`).
    pub fn local_addr(&self, id: ConnId) -> io::Result<SocketAddr> {
        let conn = self.core.live(id).ok_or_else(|| not_found(id))?;
        sys::local_addr(conn.fd.as_fd())
    }

    /// Start a client connection (a non-blocking `connect`). `on_open`
    /// follows when it is established; `on_close` with
    /// [`CloseReason::ConnectFailed`] and the reason (refused, timed out,
    /// unreachable) if it fails. An error here is immediate (no
    /// descriptor, a bad local address).
    pub fn connect(&mut self, addr: &SocketAddr, options: &ConnectOptions) -> io::Result<ConnId> {
        let handler = options.handler.map_or(self.current, |h| h.0);
        if handler as usize >= self.core.handlers {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such handler"));
        }
        let fd = sys::connect(addr, options.local.as_ref())?;
        options.socket.apply(fd.as_fd())?;
        let mut conn = Conn::new(fd, options.framing, handler, self.core.next_generation());
        conn.set(flag::CONNECTING);
        if let Some(max) = options.max_frame {
            conn.extra().max_frame = Some(max.min(super::MAX_FRAME_LIMIT));
        }
        let key = self.core.conns.insert(conn);
        if let Err(e) = self.core.epoll.add(self.core.conns[key].fd.as_fd(), key as u64, INTEREST) {
            self.core.conns.remove(key);
            return Err(e);
        }
        if let Some(timeout) = options.timeout {
            let deadline = self.core.clock.after(timeout.max(Duration::from_micros(1)));
            self.core.set_write_deadline(key, deadline);
        }
        Ok(self.core.id(key))
    }

    /// Begin the shutdown a SIGTERM begins, once this callback returns:
    /// every handler's `on_stop`, then stop accepting and close every
    /// connection gracefully; `run` returns when all are closed.
    pub fn stop(&mut self) {
        self.core.stop_requested = true;
    }

    /// Bytes queued for `id` and not yet written (0 for a closed id).
    pub fn pending_output(&self, id: ConnId) -> usize {
        self.core.live(id).map_or(0, |c| c.bufs.output_len())
    }

    /// Open connections (including those closing).
    pub fn connections(&self) -> usize {
        self.core.conns.len()
    }

    /// The reactor's counters.
    pub fn counters(&self) -> &Counters {
        &self.core.counters
    }

    /// The reactor's counters, for an application's own figures
    /// ([`Counters::app_mut`]: the chat's rooms, members, `throttled`).
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.core.counters
    }

    /// The loop's clock: read once per iteration, so cheap to ask.
    pub fn now(&self) -> Instant {
        self.core.clock.instant()
    }

    /// The handler whose callback is running.
    pub fn handler(&self) -> HandlerId {
        HandlerId(self.current)
    }
}
