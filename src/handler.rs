//! The trait an application implements, and the names of its events.
//!
//! An application never sees a file descriptor. It sees three events —
//! a connection opened, a frame arrived, a connection closed — and acts
//! through [`crate::Ctx`]: `send`, `send_shared`, `set_framing`,
//! `pause_reading`/`resume_reading`, `shutdown_write`, `close`.

use std::fmt;

use crate::reactor::Ctx;

/// Names a connection from its `on_open` (or `connect`) until its
/// `on_close` returns. Ids are slab keys: they are small, dense integers,
/// good for indexing the application's own per-connection table, and they
/// are reused after `on_close` — an application must forget an id there,
/// or it will one day name somebody else. (A generation counter would catch
/// that, at 4 bytes per connection; the servers here do not need it.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) usize);

impl ConnId {
    /// The id as an index, for the application's own tables.
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The peer ended the stream; everything owed was flushed first.
    PeerClosed,
    /// The application called `close`.
    Local,
    /// The connection was reset or failed (`ECONNRESET`, `EPIPE`, ...).
    Error,
    /// A frame over `--max-frame` (a protocol error).
    FrameTooLarge,
    /// Pending output made no progress for `--send-timeout`.
    SendTimeout,
    /// Nothing was sent or received for `--idle-timeout`.
    IdleTimeout,
    /// Pending output passed `--max-outbuf` (the slow-consumer policy).
    OutbufFull,
    /// The server is shutting down (SIGINT/SIGTERM).
    Shutdown,
    /// A connection started with `connect` did not connect.
    ConnectFailed,
}

impl CloseReason {
    /// Every reason, in the order of [`CloseReason::index`].
    pub const ALL: [CloseReason; 9] = [
        CloseReason::PeerClosed,
        CloseReason::Local,
        CloseReason::Error,
        CloseReason::FrameTooLarge,
        CloseReason::SendTimeout,
        CloseReason::IdleTimeout,
        CloseReason::OutbufFull,
        CloseReason::Shutdown,
        CloseReason::ConnectFailed,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// A short name for logs and `--stats`.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Local => "local",
            CloseReason::Error => "error",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::OutbufFull => "outbuf_full",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ConnectFailed => "connect_failed",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An application of the reactor: the echo server, the chat server, the
/// load generator, the examples.
///
/// Every callback may act on any connection through `ctx`, not only the
/// one the event is about (a chat message is sent to a whole room).
pub trait Handler {
    /// The loop is starting: a client starts its connections here.
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) {}

    /// A connection was accepted (or a `connect` completed).
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}

    /// A whole frame arrived. `frame` is a slice of the connection's read
    /// buffer: for `line` it ends with `\n` (except a final unterminated
    /// line at end of stream); for `1|2|4` it is the payload without its
    /// header; for `raw` it is whatever arrived.
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]);

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
}
