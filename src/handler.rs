//! The trait an application implements, and the names of its events.
//!
//! An application never sees a file descriptor. It sees events — a
//! connection opened, a frame arrived, the peer ended its stream, a timer
//! fired, the connection closed — and acts through [`crate::Ctx`].
//!
//! A reactor runs several handlers side by side (an echo service and its
//! metrics page, say): each listener names the handler its connections
//! belong to, and [`crate::Ctx::hand_over`] moves a connection from one
//! handler to another (gen_tcp's `controlling_process`).

use std::any::Any;
use std::fmt;

use nix::errno::Errno;

use crate::reactor::Ctx;

/// Names a connection from its `on_open` (or `connect`) until its
/// `on_close` returns, and never another one.
///
/// An id is a slab key and a generation. The key, [`ConnId::index`], is a
/// small, dense integer, good for indexing the application's own
/// per-connection table; it is reused after `on_close` (most recently
/// freed first). The generation tells the connections that held one key
/// apart: an id kept past `on_close` — in a [`crate::Handle::submit`] job,
/// in the application's state — is *stale*, and every [`crate::Ctx`]
/// method treats it as a closed connection (a send is
/// [`SendError::Closed`], an action does nothing, a query is an error),
/// whoever holds its key now. Two ids are equal only if they name the
/// same connection; a table indexed by `index()` must still be cleared in
/// `on_close`, as the next connection will take the slot.
///
/// The generation is a 32-bit count of the reactor's connections: an id
/// could be mistaken only after 2^32 more connections, if the last of
/// them took the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    key: u32,
    gen: u32,
}

impl ConnId {
    pub(crate) fn new(key: usize, gen: u32) -> ConnId {
        ConnId { key: key as u32, gen }
    }

    /// The slab key (whether it is still this connection's: see `gen`).
    pub(crate) fn key(self) -> usize {
        self.key as usize
    }

    /// The generation the connection was given when it was created.
    pub(crate) fn gen(self) -> u32 {
        self.gen
    }

    /// The id as an index, for the application's own tables (shared, in
    /// turn, by the connections that reuse the slot).
    pub fn index(self) -> usize {
        self.key as usize
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.key)
    }
}

/// Names a handler registered with [`crate::Reactor::add_handler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandlerId(pub(crate) u8);

/// Why a connection was closed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer ended the stream; everything owed was flushed first.
    PeerClosed,
    /// The application called `close`.
    Local,
    /// The application called `abort`: reset, queued output dropped.
    Aborted,
    /// The connection was reset or failed: the error (`ECONNRESET`,
    /// `EPIPE`, `ETIMEDOUT` from keepalive, ...). gen_tcp's
    /// `show_econnreset`, always on.
    Error(Errno),
    /// A frame over `max_frame` (a WebSocket message too, closed 1009; or
    /// a handshake head over 8 KiB, answered 431).
    FrameTooLarge,
    /// Pending output made no progress for `send_timeout`; `unsent` bytes
    /// were still queued.
    SendTimeout {
        /// Bytes queued and never written.
        unsent: usize,
    },
    /// Nothing was sent or received for `idle_timeout`.
    IdleTimeout,
    /// Pending output passed the limit under [`crate::OverLimit::Disconnect`]
    /// (the slow-consumer policy).
    OutbufFull,
    /// The reactor is shutting down (a signal, or [`crate::Ctx::stop`]).
    Shutdown,
    /// A connection started with `connect` did not connect: `ECONNREFUSED`,
    /// `ETIMEDOUT` (including the connect timeout), `ENETUNREACH`, ...
    ConnectFailed(Errno),
    /// A callback about this connection panicked; the connection was
    /// aborted (see [`Handler`] on crash isolation).
    Panic,
    /// The peer broke the protocol in another way than size (a WebSocket
    /// violation: a refused handshake, an unmasked frame, invalid UTF-8,
    /// ...), answered with its status (see the `ws` module).
    ProtocolError,
}

impl CloseReason {
    /// The names of the kinds of reason, in the order of
    /// [`CloseReason::index`]: labels for counters and metrics.
    pub const NAMES: [&'static str; 12] = [
        "peer_closed",
        "local",
        "aborted",
        "error",
        "frame_too_large",
        "send_timeout",
        "idle_timeout",
        "outbuf_full",
        "shutdown",
        "connect_failed",
        "panic",
        "protocol_error",
    ];

    /// The kind of reason as a small index (data aside), for counters.
    pub fn index(self) -> usize {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::Local => 1,
            CloseReason::Aborted => 2,
            CloseReason::Error(_) => 3,
            CloseReason::FrameTooLarge => 4,
            CloseReason::SendTimeout { .. } => 5,
            CloseReason::IdleTimeout => 6,
            CloseReason::OutbufFull => 7,
            CloseReason::Shutdown => 8,
            CloseReason::ConnectFailed(_) => 9,
            CloseReason::Panic => 10,
            CloseReason::ProtocolError => 11,
        }
    }

    /// A short name for logs and `--stats`.
    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Error(e) | CloseReason::ConnectFailed(e) => write!(f, "{}: {}", self.name(), e.desc()),
            CloseReason::SendTimeout { unsent } => write!(f, "send_timeout: {unsent} bytes unsent"),
            _ => f.write_str(self.name()),
        }
    }
}

/// Why a send was refused. The connection stays as it was.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closing or closed, or its write side is shut.
    Closed,
    /// The payload is longer than the framing's header can describe.
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest the header allows.
        max: usize,
    },
    /// The output queue is over its limit and the connection's policy is
    /// [`crate::OverLimit::Refuse`]: nothing was queued; try again after
    /// [`Handler::on_ready`].
    OverLimit {
        /// What the queue holds now, as judged against the limit.
        queued: usize,
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("connection closed"),
            SendError::TooLarge { len, max } => write!(f, "payload of {len} bytes exceeds the header's {max}"),
            SendError::OverLimit { queued, limit } => write!(f, "{queued} bytes queued, over the limit of {limit}"),
        }
    }
}

impl std::error::Error for SendError {}

/// An application of the reactor: the echo server, the chat server, the
/// load generator, the examples.
///
/// Every callback may act on any connection through `ctx`, not only the
/// one the event is about (a chat message is sent to a whole room).
///
/// # Crash isolation
///
/// A panic inside a callback is caught at the reactor's boundary
/// (`catch_unwind`): the connection the callback was about is aborted with
/// [`CloseReason::Panic`] (its `on_close` follows), the panic is logged
/// and counted, and the loop goes on serving everyone else. A panic in a
/// callback about no connection (`on_start`, `on_tick`, a job from a
/// [`crate::Handle`]) is logged and counted only.
///
/// What the reactor cannot do is repair the handler's own state: a panic
/// halfway through an update leaves it halfway. Keep each callback's
/// changes to shared state (a chat's rooms, say) in an order where every
/// prefix is consistent — check and compute first, then mutate — and let
/// `on_close` clean up per-connection state whatever state it finds.
pub trait Handler: Any {
    /// The loop is starting: a client starts its connections here.
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) {}

    /// A connection became this handler's: it was accepted on one of its
    /// listeners, a `connect` completed, or it was handed over.
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}

    /// A whole frame arrived. `frame` is a slice of the connection's read
    /// buffer: for `line` it ends with `\n` (except a final unterminated
    /// line at end of stream); for `1|2|4` it is the payload without its
    /// header; for `raw` it is whatever arrived; for `Exact(n)`, n bytes.
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]);

    /// The connection's `Active::N` count ran out: it is paused until the
    /// application re-arms it (gen_tcp's `{tcp_passive, Socket}`).
    fn on_passive(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}

    /// The peer ended its stream and every frame was delivered. Only for
    /// connections with `set_exit_on_close(id, false)`: the connection
    /// stays open for writing until the application closes it.
    fn on_eof(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}

    /// A `shutdown_write` is done: every queued byte was handed to the
    /// kernel, then `shutdown(SHUT_WR)`, so the FIN follows the data.
    fn on_shutdown(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}

    /// The output queue passed the high watermark (gen_tcp's "busy").
    fn on_busy(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}

    /// The output queue fell back to the low watermark (gen_tcp's "ready").
    fn on_ready(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}

    /// The connection's timer ([`crate::Ctx::set_timer`]) fired.
    fn on_timer(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}

    /// The connection is closed; `id` may be reused after this returns.
    /// Called once for every id that was opened or returned by `connect`.
    /// At the end of a stream, every complete frame the peer sent (and a
    /// final unterminated line) was delivered first; a connection closed
    /// for an error, a timeout or by the application drops what is still
    /// buffered.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, _reason: CloseReason) {}

    /// Called every [`crate::Config::tick`], if set (progress lines, the
    /// end of a timed run).
    fn on_tick(&mut self, _ctx: &mut Ctx<'_>) {}

    /// The loop turn is ending: the output queued in it is about to be
    /// written. Called once per turn after [`Ctx::flush_at_turn_end`] was
    /// called in it (Redis's `beforeSleep`, libuv's prepare handles). A
    /// handler that sends the same bytes to many connections can gather
    /// what one turn produced and send it here as one piece per
    /// recipient: a chat room's lines of one turn cost each member one
    /// copy instead of one per line.
    fn on_turn_end(&mut self, _ctx: &mut Ctx<'_>) {}

    /// The reactor is shutting down: its listeners are closed, and every
    /// connection is about to close gracefully, so what is sent now is
    /// still flushed (a goodbye, a last message to a backend).
    fn on_stop(&mut self, _ctx: &mut Ctx<'_>) {}
}
