//! One connection: its socket, buffers, framing, flags and deadlines.
//!
//! The state machine is a set of flags rather than an enum because the
//! two directions of a TCP connection close independently:
//!
//! ```text
//!            peer sends FIN (read == 0)          app calls shutdown_write
//!   OPEN ──────────────────────────────▶ READ_EOF   OPEN ─────────────────▶ SHUTDOWN_WANTED
//!     │                                     │           (flush, then SHUT_WR ─▶ WRITE_SHUT)
//!     │ app calls close / error-free end    │ deliver what is buffered, then CLOSING
//!     ▼                                     ▼
//!   CLOSING: no more frames are delivered; flush what is owed;
//!            then shutdown(SHUT_WR) ─▶ WRITE_SHUT;
//!            then wait (discarding input) for the peer's FIN, bounded by
//!            a linger deadline; then DEAD.
//!
//!   any error (reset, frame too large, send timeout, ...) ─▶ DEAD at once
//!   DEAD: reaped at the end of the loop iteration (see reactor docs).
//! ```
//!
//! Why linger rather than close right after `SHUT_WR`? Closing a socket
//! whose receive queue still holds unread bytes makes the kernel send a
//! reset, and a reset can destroy the reply the peer has not read yet (the
//! `* bye` of a chat `/quit`, say). Waiting for the peer's FIN avoids it.

use std::os::fd::OwnedFd;

use crate::buffer::{OutQueue, ReadBuf};
use crate::framing::Framing;
use crate::handler::CloseReason;
use crate::timer::{earliest, Millis};

/// Flag bits of [`Conn::flags`].
pub mod flag {
    /// The application paused reading (`pause_reading`).
    pub const APP_PAUSED: u16 = 1 << 0;
    /// Output passed `max_outbuf`: reading stops until it drains to half.
    pub const FLOW_PAUSED: u16 = 1 << 1;
    /// The peer sent FIN: nothing more will be read.
    pub const READ_EOF: u16 = 1 << 2;
    /// An event carried `EPOLLRDHUP`/`EPOLLHUP`/`EPOLLERR`: read until the
    /// kernel reports the end, never stop at a short read.
    pub const HUP_SEEN: u16 = 1 << 3;
    /// Graceful close in progress (see module docs).
    pub const CLOSING: u16 = 1 << 4;
    /// The application asked for `shutdown_write` once output is flushed.
    pub const SHUTDOWN_WANTED: u16 = 1 << 5;
    /// Our write side is shut down.
    pub const WRITE_SHUT: u16 = 1 << 6;
    /// Closed: to be removed from the slab at the end of the iteration.
    pub const DEAD: u16 = 1 << 7;
    /// On the dirty list: output to flush before the next `epoll_wait`.
    pub const DIRTY: u16 = 1 << 8;
    /// On the ready list: input to handle before the next `epoll_wait`.
    pub const READY: u16 = 1 << 9;
    /// A non-blocking connect is in progress.
    pub const CONNECTING: u16 = 1 << 10;
}

/// A connection's entry in the reactor's slab.
pub struct Conn {
    pub fd: OwnedFd,
    pub flags: u16,
    pub framing: Framing,
    /// Why it is closing or closed (meaningful once CLOSING or DEAD).
    pub reason: CloseReason,
    pub input: ReadBuf,
    pub output: OutQueue,
    /// Idle-timeout deadline, pushed back by every byte in or out.
    pub idle_deadline: Millis,
    /// Send-timeout deadline while output is stuck, or the linger deadline
    /// while waiting for the peer's FIN after our `SHUT_WR`.
    pub write_deadline: Millis,
    /// The earliest deadline this connection is in the heap for.
    pub scheduled: Millis,
}

impl Conn {
    pub fn new(fd: OwnedFd, framing: Framing) -> Conn {
        Conn {
            fd,
            flags: 0,
            framing,
            reason: CloseReason::PeerClosed,
            input: ReadBuf::default(),
            output: OutQueue::default(),
            idle_deadline: 0,
            write_deadline: 0,
            scheduled: 0,
        }
    }

    pub fn has(&self, bits: u16) -> bool {
        self.flags & bits != 0
    }

    pub fn set(&mut self, bits: u16) {
        self.flags |= bits;
    }

    pub fn clear(&mut self, bits: u16) {
        self.flags &= !bits;
    }

    /// Whether reading from the socket is allowed now. A closing connection
    /// is read (its input discarded) to see the peer's FIN, paused or not.
    pub fn may_read(&self) -> bool {
        if self.has(flag::READ_EOF | flag::DEAD | flag::CONNECTING) {
            return false;
        }
        self.has(flag::CLOSING) || !self.has(flag::APP_PAUSED | flag::FLOW_PAUSED)
    }

    /// Whether buffered frames may be handed to the application now.
    pub fn may_deliver(&self) -> bool {
        !self.has(flag::APP_PAUSED | flag::FLOW_PAUSED | flag::CLOSING | flag::DEAD)
    }

    /// The next deadline of any kind (0 if none).
    pub fn next_deadline(&self) -> Millis {
        earliest(self.idle_deadline, self.write_deadline)
    }
}

#[cfg(test)]
mod tests {
    /// A paused connection that is closing is still read: only its FIN
    /// lets the close finish without a reset.
    #[test]
    fn closing_reads_even_when_paused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut conn = super::Conn::new(a.into(), super::Framing::Line);
        conn.set(super::flag::APP_PAUSED | super::flag::FLOW_PAUSED);
        assert!(!conn.may_read());
        conn.set(super::flag::CLOSING);
        assert!(conn.may_read());
        conn.set(super::flag::READ_EOF);
        assert!(!conn.may_read());
    }

    /// The idle-memory budget (128 bytes per connection, slab tag included)
    /// rests on this size: a field added carelessly shows up here first.
    #[test]
    fn a_connection_fits_in_112_bytes() {
        assert!(std::mem::size_of::<super::Conn>() <= 112, "{}", std::mem::size_of::<super::Conn>());
    }
}
