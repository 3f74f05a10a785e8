//! One connection: its socket, buffers, framing, flags and deadlines.
//!
//! The state machine is a set of flags rather than an enum because the
//! two directions of a TCP connection close independently:
//!
//! ```text
//!            peer sends FIN (read == 0)          app calls shutdown_write
//!   OPEN ──────────────────────────────▶ READ_EOF   OPEN ─────────────────▶ SHUTDOWN_WANTED
//!     │                                     │           (flush, then SHUT_WR ─▶ WRITE_SHUT,
//!     │                                     │            on_shutdown)
//!     │ app calls close                     │ deliver what is buffered, then
//!     │                                     │ CLOSING — or, with exit_on_close
//!     │                                     │ off, on_eof and stay open for writing
//!     ▼                                     ▼
//!   CLOSING: no more frames are delivered; flush what is owed;
//!            then shutdown(SHUT_WR) ─▶ WRITE_SHUT;
//!            then wait (discarding input) for the peer's FIN, bounded by
//!            a linger deadline; then DEAD.
//!
//!   any error (reset, frame too large, send timeout, abort, panic, ...) ─▶ DEAD at once
//!   DEAD: reaped at the end of the loop iteration (see reactor docs).
//! ```
//!
//! Why linger rather than close right after `SHUT_WR`? Closing a socket
//! whose receive queue still holds unread bytes makes the kernel send a
//! reset, and a reset can destroy the reply the peer has not read yet (the
//! `* bye` of a chat `/quit`, say). Waiting for the peer's FIN avoids it.
//!
//! # Memory
//!
//! A connection is 64 bytes (a unit test guards it), and an idle one
//! costs nothing else in user space. What every connection needs is
//! inline; what it needs only while bytes are pending, or what few
//! connections use, is behind a pointer that is null otherwise:
//!
//! | field | bytes | |
//! |---|---:|---|
//! | `fd` | 4 | |
//! | `flags` | 4 | the [`flag`] bits, the closing reason, the handler |
//! | `gen` | 4 | |
//! | `active_left` | 4 | |
//! | `framing` | 8 | a tag and `Exact`'s count |
//! | `bufs` | 8 | read buffer and output queue: one pooled box while either holds bytes, null while idle (see [`crate::buffer`]) |
//! | `idle_deadline`, `write_deadline`, `scheduled` | 3 × 8 | |
//! | `extra` | 8 | [`Extra`]: an application timer, an output policy or frame limit of its own, a WebSocket decoder; allocated the first time one is set |
//! | total | 64 | the slab's entry is 64 too: its vacant variant needs no tag beside the fd |
//!
//! Why these and not others: the buffers were 40 bytes inline (a read
//! buffer's `Vec` and offsets, and the output queue's pointer) and are
//! needed only while bytes are pending, so they moved behind the one
//! pointer, which costs a hot connection no allocation (the boxes are
//! pooled, with their read buffers) and an echo one pool operation per
//! read, as before. The
//! deadlines stay whole microseconds: 32-bit milliseconds would round the
//! timeouts and wrap after 49 days of uptime, for 8 bytes that are no
//! longer needed. `active_left` is read on every frame under
//! `Active::Once`/`N`, and moving its 4 bytes out would leave 60, rounded
//! up to 64 by the 8-byte alignment.

use std::os::fd::OwnedFd;

use crate::buffer::Buffers;
use crate::framing::Framing;
use crate::handler::CloseReason;
use crate::options::OutputPolicy;
use crate::timer::{earliest, Micros};

/// Flag bits of [`Conn::flags`].
pub mod flag {
    /// The application turned delivery off (`Active::Off`), or an
    /// `Active::Once`/`N` count ran out.
    pub const APP_PAUSED: u32 = 1 << 0;
    /// Output passed its limit under `OverLimit::Pause`: reading stops
    /// until it drains to the low watermark.
    pub const FLOW_PAUSED: u32 = 1 << 1;
    /// The peer sent FIN: nothing more will be read.
    pub const READ_EOF: u32 = 1 << 2;
    /// An event carried `EPOLLRDHUP`/`EPOLLHUP`/`EPOLLERR`: read until the
    /// kernel reports the end, never stop at a short read.
    pub const HUP_SEEN: u32 = 1 << 3;
    /// Graceful close in progress (see module docs).
    pub const CLOSING: u32 = 1 << 4;
    /// The application asked for `shutdown_write` once output is flushed.
    pub const SHUTDOWN_WANTED: u32 = 1 << 5;
    /// Our write side is shut down.
    pub const WRITE_SHUT: u32 = 1 << 6;
    /// Closed: to be removed from the slab at the end of the iteration.
    pub const DEAD: u32 = 1 << 7;
    /// On the dirty list: output to flush before the next `epoll_wait`.
    pub const DIRTY: u32 = 1 << 8;
    /// On the ready list: input to handle before the next `epoll_wait`.
    pub const READY: u32 = 1 << 9;
    /// A non-blocking connect is in progress.
    pub const CONNECTING: u32 = 1 << 10;
    /// Delivery counts frames down (`Active::Once` or `Active::N`).
    pub const COUNTED: u32 = 1 << 11;
    /// The count is `Active::Once`'s: running out calls no `on_passive`.
    pub const ONCE: u32 = 1 << 12;
    /// `exit_on_close` is off: the peer's FIN is an `on_eof` event and the
    /// connection stays open for writing.
    pub const KEEP_OPEN: u32 = 1 << 13;
    /// `on_eof` was called.
    pub const EOF_TOLD: u32 = 1 << 14;
    /// The queue is above the high watermark (`on_busy` was called).
    pub const BUSY: u32 = 1 << 15;
    /// Counts towards `max_conns` (accepted on a counted listener).
    pub const COUNTED_CONN: u32 = 1 << 16;
    /// Accepted on an uncounted listener (metrics): left out of the
    /// counters, which describe the service.
    pub const QUIET: u32 = 1 << 17;
    /// Handed to another handler whose `on_open` has not run yet: nothing
    /// is read or delivered until it has (see `Ctx::hand_over`).
    pub const HANDING_OVER: u32 = 1 << 18;
    /// An event carried `EPOLLPRI`: urgent data is pending, and a read
    /// stops at its mark, so a short read does not mean drained; read
    /// until `EAGAIN` (see `reactor::input`).
    pub const URGENT: u32 = 1 << 19;
}

/// How a graceful close will be reported once it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The peer ended the stream.
    PeerClosed,
    /// The application closed.
    Local,
    /// The reactor is shutting down.
    Shutdown,
    /// A WebSocket message or handshake too large (answered 1009 or 431).
    TooLarge,
    /// Another protocol error (a WebSocket violation, answered with its
    /// status).
    Protocol,
}

impl From<Closing> for CloseReason {
    fn from(c: Closing) -> CloseReason {
        match c {
            Closing::PeerClosed => CloseReason::PeerClosed,
            Closing::Local => CloseReason::Local,
            Closing::Shutdown => CloseReason::Shutdown,
            Closing::TooLarge => CloseReason::FrameTooLarge,
            Closing::Protocol => CloseReason::ProtocolError,
        }
    }
}

/// What few connections use, boxed so that the others do not pay for it.
#[derive(Debug, Default)]
pub struct Extra {
    /// The application's timer ([`crate::Ctx::set_timer`]); 0: none.
    pub timer: Micros,
    /// An output policy of its own, instead of the reactor's.
    pub policy: Option<OutputPolicy>,
    /// A frame limit of its own, instead of the reactor's (from
    /// `ListenOptions::max_frame` or `ConnectOptions::max_frame`).
    pub max_frame: Option<usize>,
    /// A WebSocket connection's decoder (see [`crate::ws`]).
    #[cfg(feature = "ws")]
    pub ws: Option<crate::ws::Decoder>,
}

/// Where [`Conn::closing`] is kept in [`Conn::flags`], and its bits.
const CLOSING_SHIFT: u32 = 20;
const CLOSING_MASK: u32 = 0b111;
/// Where [`Conn::handler`] is kept in [`Conn::flags`] (the top byte).
const HANDLER_SHIFT: u32 = 24;

/// A connection's entry in the reactor's slab.
pub struct Conn {
    /// The socket; dropping it closes it (and leaves the epoll set).
    pub fd: OwnedFd,
    /// The [`flag`] bits (bits 0 to 19); in bits 20–21 how a graceful
    /// close will be reported, in the top byte the handler it belongs to:
    /// packed, so that the generation fits without growing the entry.
    pub flags: u32,
    /// Its generation: the reactor's count of connections when it was
    /// created. With the slab key, its [`crate::ConnId`]; an id whose
    /// generation differs names an earlier holder of the slot (stale).
    pub gen: u32,
    /// How the input is cut into frames.
    pub framing: Framing,
    /// Frames left to deliver under `Active::Once`/`N` (with `COUNTED`).
    pub active_left: u32,
    /// Bytes read and not yet delivered, and bytes queued and not yet
    /// written: one pooled box while either is pending, else nothing.
    pub bufs: Buffers,
    /// Idle-timeout deadline, pushed back by every byte in or out.
    pub idle_deadline: Micros,
    /// Send-timeout deadline while output is stuck, the linger deadline
    /// while waiting for the peer's FIN after our `SHUT_WR`, or the
    /// connect timeout while connecting.
    pub write_deadline: Micros,
    /// The earliest deadline this connection is in the heap for.
    pub scheduled: Micros,
    /// Rarely used state, allocated on first use.
    pub extra: Option<Box<Extra>>,
}

impl Conn {
    /// A fresh connection on `fd`, owned by handler `handler`, of
    /// generation `gen`.
    pub fn new(fd: OwnedFd, framing: Framing, handler: u8, gen: u32) -> Conn {
        Conn {
            fd,
            flags: u32::from(handler) << HANDLER_SHIFT,
            gen,
            framing,
            active_left: 0,
            bufs: Buffers::default(),
            idle_deadline: 0,
            write_deadline: 0,
            scheduled: 0,
            extra: None,
        }
    }

    /// Whether any of `bits` is set.
    pub fn has(&self, bits: u32) -> bool {
        self.flags & bits != 0
    }

    /// Set `bits`.
    pub fn set(&mut self, bits: u32) {
        self.flags |= bits;
    }

    /// Clear `bits`.
    pub fn clear(&mut self, bits: u32) {
        self.flags &= !bits;
    }

    /// Index of the handler it belongs to.
    pub fn handler(&self) -> u8 {
        (self.flags >> HANDLER_SHIFT) as u8
    }

    /// Give it to handler `handler`.
    pub fn set_handler(&mut self, handler: u8) {
        self.flags = self.flags & !(0xff << HANDLER_SHIFT) | u32::from(handler) << HANDLER_SHIFT;
    }

    /// How a graceful close in progress will be reported.
    pub fn closing(&self) -> Closing {
        match (self.flags >> CLOSING_SHIFT) & CLOSING_MASK {
            0 => Closing::PeerClosed,
            1 => Closing::Local,
            2 => Closing::Shutdown,
            3 => Closing::TooLarge,
            _ => Closing::Protocol,
        }
    }

    /// Set how a graceful close in progress will be reported.
    pub fn set_closing(&mut self, closing: Closing) {
        let bits = match closing {
            Closing::PeerClosed => 0,
            Closing::Local => 1,
            Closing::Shutdown => 2,
            Closing::TooLarge => 3,
            Closing::Protocol => 4,
        };
        self.flags = self.flags & !(CLOSING_MASK << CLOSING_SHIFT) | bits << CLOSING_SHIFT;
    }

    /// Whether reading from the socket is allowed now. A closing connection
    /// is read (its input discarded) to see the peer's FIN, paused or not.
    pub fn may_read(&self) -> bool {
        if self.has(flag::READ_EOF | flag::DEAD | flag::CONNECTING) {
            return false;
        }
        self.has(flag::CLOSING) || !self.has(flag::APP_PAUSED | flag::FLOW_PAUSED | flag::HANDING_OVER)
    }

    /// Whether buffered frames may be handed to the application now.
    pub fn may_deliver(&self) -> bool {
        !self.has(flag::APP_PAUSED | flag::FLOW_PAUSED | flag::HANDING_OVER | flag::CLOSING | flag::DEAD)
    }

    /// The extra state, allocated on first use.
    pub fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Its frame limit: its own, or `default` (the reactor's).
    pub fn max_frame(&self, default: usize) -> usize {
        self.extra.as_ref().and_then(|e| e.max_frame).unwrap_or(default)
    }

    /// The application timer's deadline (0 if none).
    pub fn timer(&self) -> Micros {
        self.extra.as_ref().map_or(0, |e| e.timer)
    }

    /// The next deadline of any kind (0 if none).
    pub fn next_deadline(&self) -> Micros {
        earliest(earliest(self.idle_deadline, self.write_deadline), self.timer())
    }
}

#[cfg(test)]
mod tests {
    /// A paused connection that is closing is still read: only its FIN
    /// lets the close finish without a reset.
    #[test]
    fn closing_reads_even_when_paused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut conn = super::Conn::new(a.into(), super::Framing::Line, 0, 0);
        conn.set(super::flag::APP_PAUSED | super::flag::FLOW_PAUSED);
        assert!(!conn.may_read());
        conn.set(super::flag::CLOSING);
        assert!(conn.may_read());
        conn.set(super::flag::READ_EOF);
        assert!(!conn.may_read());
    }

    /// The handler and the closing reason share the flags word: neither
    /// disturbs the other, nor the flags.
    #[test]
    fn handler_and_closing_are_packed_apart_from_the_flags() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut conn = super::Conn::new(a.into(), super::Framing::Line, 255, 7);
        conn.set(super::flag::URGENT | super::flag::APP_PAUSED);
        conn.set_closing(super::Closing::Shutdown);
        assert_eq!((conn.handler(), conn.closing()), (255, super::Closing::Shutdown));
        conn.set_handler(3);
        conn.set_closing(super::Closing::Local);
        conn.clear(super::flag::URGENT);
        assert_eq!((conn.handler(), conn.closing(), conn.gen), (3, super::Closing::Local, 7));
        assert!(conn.has(super::flag::APP_PAUSED) && !conn.has(super::flag::URGENT));
    }

    /// The idle-memory budget (64 bytes per connection, the slab's entry
    /// included) rests on this size: a field added carelessly shows up
    /// here first. The entry is checked on an enum of the slab's shape
    /// (`slab::Entry` is private): no tag, thanks to the fd's niche.
    #[test]
    fn a_connection_fits_in_64_bytes() {
        use std::mem::size_of;
        #[allow(dead_code)]
        enum SlabEntry {
            Vacant(usize),
            Occupied(super::Conn),
        }
        assert!(size_of::<super::Conn>() <= 64, "{}", size_of::<super::Conn>());
        assert!(size_of::<SlabEntry>() <= 64, "{}", size_of::<SlabEntry>());
        assert_eq!(size_of::<crate::buffer::Buffers>(), 8);
    }
}
