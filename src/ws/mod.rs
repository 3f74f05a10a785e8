//! WebSocket (RFC 6455, version 13, no extensions) as a framing: the
//! [`crate::Framing::Ws`] of a listener or a connection.
//!
//! # One connection's life
//!
//! ```text
//!   accept ──▶ the request head is buffered (at most 8 KiB: else 431)
//!              │  parsed with httparse (not HTTP/1.x: 400)
//!              ▼
//!   on_frame(head)          message_kind() == Some(MessageKind::Handshake)
//!              │  the handler looks at the path and either
//!              │    Ctx::ws_accept(id, head): 101 Switching Protocols
//!              │                              (not an upgrade: 400; version ≠ 13: 426)
//!              │    or answers plain HTTP itself (a page, a 404) and closes
//!              ▼
//!   on_frame(message)       message_kind() == Some(Text | Binary): one whole
//!              │            message, unmasked in place, a slice of the read buffer
//!   Ctx::send…(id, bytes)   one unmasked server frame per call
//!              ▼
//!   a close frame either way, then the reactor's lingering close
//! ```
//!
//! No handshake within [`HANDSHAKE_TIMEOUT`]: the connection is closed
//! (as an idle timeout).
//!
//! # A frame on the wire
//!
//! ```text
//!   0               1               2               3
//!   0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//!  +-+-+-+-+-------+-+-------------+-------------------------------+
//!  |F|R|R|R| opcode|M| length (7)  |  length 126: 16 bits          |
//!  |I|S|S|S|  (4)  |A|  0..125, or |  length 127: 64 bits          |
//!  |N|V|V|V|       |S|  126 / 127  |  (big-endian)                 |
//!  | |1|2|3|       |K|             |                               |
//!  +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//!  |  masking key (4 bytes, client to server only)                 |
//!  +---------------------------------------------------------------+
//!  |  payload, XORed with the key byte (i mod 4)                   |
//!  +---------------------------------------------------------------+
//!  opcodes: 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong
//! ```
//!
//! # Zero-copy, and where it stops
//!
//! A message in one frame (the common case) is unmasked in place in the
//! read buffer and handed to `on_frame` as a slice of it, like a line or a
//! prefixed frame. A fragmented message is reassembled in the same buffer:
//! each fragment's payload, once unmasked, is moved down to follow the
//! previous ones (a `memmove` within the buffer), so the whole message is
//! again one slice; control frames between fragments are answered and
//! their bytes later overwritten. Sending writes a 2-to-10-byte header in
//! front of the payload: [`crate::Ctx::send_now`] hands both to one
//! vectored `sendmsg` straight from where they are, [`crate::Ctx::send`]
//! copies them once into the output queue, [`crate::Ctx::send_shared`]
//! copies only the header.
//!
//! # Edge cases, and where they are handled
//!
//! In [`decode`]: a frame split at any byte (the decoder says how many
//! bytes it needs, measured from the start of the unread bytes); many
//! frames in one read; a length over `max_frame` refused as soon as the
//! header is in (1009, nothing reserved), counting what is already
//! reassembled; a 64-bit length with its top bit set (1002); UTF-8
//! validated across fragments as they arrive, so a message that is
//! already invalid closes (1007) before its end arrives, and a code point
//! split between two fragments is fine; control frames between fragments
//! (answered at once); empty continuation frames and pings sent forever
//! between fragments (the reassembly gap is compacted, so the buffer stays
//! bounded by `max_frame` plus a few KiB); a close with a 1-byte payload,
//! a status that may not be sent, or a reason that is not UTF-8. In
//! [`handshake`]: a head split at any byte, a head over 8 KiB (431), a
//! header list that is not a token list, any case. In
//! `crate::reactor::ws`: the answers (pong, close), the close handshake
//! and the handshake timeout.
//!
//! # Memory and timeouts
//!
//! A WebSocket connection keeps its decoder (20 bytes of state) in the
//! connection's boxed extras, allocated at the accept: an idle WebSocket
//! connection costs that small box on top of the 64-byte slab entry, and
//! holds no buffer. Before the upgrade the idle deadline is the
//! handshake's ([`HANDSHAKE_TIMEOUT`], pushed back by nothing); after it,
//! `--idle-timeout` applies, and a ping or pong counts as activity (it is
//! a whole frame), a message cut in pieces does not until it is whole.
//!
//! # Control frames: answered by the library
//!
//! Ping is answered with a pong, a close with a close, by the library;
//! the handler sees messages only. A gen_tcp user does not answer TCP
//! keepalives either: what the protocol requires of every endpoint is not
//! the application's business, and a handler that forgot a pong, or
//! answered a close late, would break the protocol for its peers. What an
//! application does want — to close with a status of its own — is
//! [`crate::Ctx::ws_close`]. Control frames are decoded, like messages,
//! while the connection is delivering: a connection the application has
//! paused (`Active::Off`, flow control) answers its pings when it resumes,
//! and TCP pushes back on the peer meanwhile.

mod decode;
pub mod encode;
pub mod handshake;

pub use decode::{decode, unmask, Decoder, Event, GAP_LIMIT};

use std::time::Duration;

/// The longest request head: a longer one is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// A connection that has not completed its handshake by then is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest payload of a control frame.
pub const MAX_CONTROL: usize = 125;

/// What a [`crate::Framing::Ws`] connection delivers, as
/// [`crate::Ctx::message_kind`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MessageKind {
    /// The HTTP request head (the first frame); see [`crate::Ctx::ws_accept`].
    Handshake,
    /// A text message: valid UTF-8, checked.
    #[default]
    Text,
    /// A binary message.
    Binary,
}

/// How a [`crate::Framing::Ws`] connection maps messages to frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Any message is delivered; a send is one message of the type set
    /// with [`crate::Ctx::set_send_kind`] (text at first).
    #[default]
    Messages,
    /// For a line protocol (the chat): only text messages are accepted (a
    /// binary one closes with 1003); a send of a line loses its final
    /// `\n` and goes out as one text message.
    Lines,
}

/// Why a connection is refused or closed; its status goes to the peer.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Before the upgrade: an HTTP status (400, 426, 431).
    Http(u16),
    /// After it: a close status (1002, 1003, 1007, 1009), and why.
    Close(u16, &'static str),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Http(status) => write!(f, "HTTP {status} ({})", handshake::reason(*status)),
            Violation::Close(status, why) => write!(f, "{why} (close {status})"),
        }
    }
}

/// Close statuses of RFC 6455 section 7.4.1.
pub mod status {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// A type of message the endpoint does not accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// A text message (or a close reason) that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;

    /// Whether a peer may send `code` in a close frame: the codes RFC 6455
    /// and its IANA registry define for the wire (1000–1003, 1007–1014),
    /// and those left to libraries and applications (3000–4999). 1004 is
    /// reserved, 1005, 1006 and 1015 are for reporting only.
    pub fn may_be_sent(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}
