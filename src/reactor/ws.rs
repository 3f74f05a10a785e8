//! WebSocket connections on the reactor: the decoder's events acted on
//! (messages delivered, pings and closes answered, violations refused),
//! the handshake's deadline, and the [`Ctx`] calls a handler uses.
//!
//! What the protocol asks of every endpoint is done here, not by the
//! handler (see "Control frames" in [`crate::ws`]):
//!
//! - **ping**: a pong with the same payload, queued at once;
//! - **close** from the peer: a close with its status (1000 if none),
//!   then the lingering close — our FIN follows the close frame, and the
//!   peer's FIN is awaited (RFC 6455 section 7.1.1: the server closes the
//!   TCP connection first);
//! - **a violation**: its status (an HTTP answer before the upgrade, a
//!   close frame after), flushed, then the same close (reported as
//!   [`CloseReason::FrameTooLarge`] for 431 and 1009, as
//!   [`CloseReason::ProtocolError`] for the others);
//! - **the application closes** ([`Ctx::close`], or a shutdown): a close
//!   frame 1000 (1001 at shutdown) goes out before the FIN;
//! - **the handshake's deadline**: [`ws::HANDSHAKE_TIMEOUT`] from the
//!   accept, kept as the idle deadline, which no activity pushes back
//!   until the upgrade is done.

use log::warn;

use super::ctx::Framed;
use super::{Core, Ctx, Key, Reactor};
use crate::buffer::ReadBuf;
use crate::conn::{flag, Closing, Conn};
use crate::framing::Framing;
use crate::handler::ConnId;
use crate::ws::{self, encode, handshake, Decoder, Event, MessageKind, Mode, Violation};

const PONG: u8 = 0xA;

/// The decoder of a WebSocket connection, if it has one yet.
fn decoder(conn: &Conn) -> Option<&Decoder> {
    conn.extra.as_ref().and_then(|e| e.ws.as_ref())
}

/// A WebSocket connection before its upgrade is done (its idle deadline
/// is the handshake's, not to be pushed back).
pub(super) fn handshaking(conn: &Conn) -> bool {
    conn.framing == Framing::Ws && decoder(conn).is_none_or(Decoder::handshaking)
}

/// How a send on a WebSocket connection goes out: before the upgrade, as
/// it is (an HTTP answer); after, as one unmasked frame of the
/// connection's send kind (a line without its `\n` in [`Mode::Lines`]).
/// `None` for other framings.
pub(super) fn framed(conn: &Conn, payload: &[u8]) -> Option<Framed> {
    if conn.framing != Framing::Ws {
        return None;
    }
    let plain = Framed { header: [0; 10], n: 0, body: payload.len() };
    let Some(d) = decoder(conn).filter(|d| d.is_open()) else { return Some(plain) };
    let body = match d.mode {
        Mode::Lines if payload.ends_with(b"\n") => payload.len() - 1,
        _ => payload.len(),
    };
    let (header, n) = encode::header(encode::opcode(d.send_kind), body);
    Some(Framed { header, n, body })
}

/// Whether `payload` holds several lines for a connection in
/// [`Mode::Lines`]: each goes out as a message of its own (a chat sends a
/// turn's lines as one piece).
pub(super) fn several_lines(conn: &Conn, payload: &[u8]) -> bool {
    conn.framing == Framing::Ws
        && decoder(conn).is_some_and(|d| d.is_open() && matches!(d.mode, Mode::Lines))
        && memchr::memchr(b'\n', payload).is_some_and(|end| end + 1 < payload.len())
}

impl Reactor {
    /// Decode and act on one event of WebSocket connection `key`, whose
    /// buffer is out in `input`: `None` to go on, `Some(need)` to stop
    /// (see `deliver`).
    pub(super) fn deliver_ws(&mut self, key: usize, input: &mut ReadBuf) -> Option<usize> {
        let max_frame = self.core.config.max_frame;
        let conn = &mut self.core.conns[key];
        let d = conn.extra().ws.get_or_insert_with(|| Decoder::new(Mode::Messages));
        match ws::decode(d, input.unread_mut(), max_frame) {
            Ok(Event::Incomplete { need }) => Some(need),
            Ok(Event::Request { end }) => {
                self.deliver_frame(key, &input.unread()[..end]);
                input.consume(end);
                None
            }
            Ok(Event::Message { start, end, consume, .. }) => {
                self.deliver_frame(key, &input.unread()[start..end]);
                input.consume(consume);
                None
            }
            Ok(Event::Ping { start, end, consume }) => {
                let (header, n) = encode::header(PONG, end - start);
                self.core.queue_control(key, &[&header[..n], &input.unread()[start..end]]);
                self.core.touch(key);
                input.consume(consume);
                None
            }
            Ok(Event::Pong { consume }) => {
                self.core.touch(key);
                input.consume(consume);
                None
            }
            Ok(Event::Compact { from, to }) => {
                input.cut(from, to);
                None
            }
            Ok(Event::Close { code }) => {
                self.core.queue_control(key, &[&encode::close(code.unwrap_or(ws::status::NORMAL))]);
                self.core.close_gracefully(key, Closing::PeerClosed);
                Some(0)
            }
            Err(violation) => {
                if self.core.peer_warnings.allow(self.core.clock.now()) {
                    warn!("{}: WebSocket: {violation}; closing", Key(key));
                }
                self.core.refuse(key, violation);
                Some(0)
            }
        }
    }
}

impl Core {
    /// A WebSocket connection was accepted: its decoder, and the
    /// handshake's deadline.
    pub(super) fn ws_opened(&mut self, key: usize) {
        let deadline = self.clock.after(ws::HANDSHAKE_TIMEOUT);
        let conn = &mut self.conns[key];
        if conn.framing != Framing::Ws {
            return;
        }
        conn.extra().ws = Some(Decoder::new(Mode::Messages));
        conn.idle_deadline = crate::timer::earliest(conn.idle_deadline, deadline);
        self.deadlines.schedule(key, conn.next_deadline(), &mut conn.scheduled);
    }

    /// Queue a frame of the library's own (a pong, a close), whatever the
    /// application's send kind.
    fn queue_control(&mut self, key: usize, parts: &[&[u8]]) {
        let conn = &mut self.conns[key];
        if conn.has(flag::DEAD | flag::CLOSING | flag::WRITE_SHUT) {
            return;
        }
        conn.bufs.push_copy(parts, &mut self.pools);
        self.queued(key);
    }

    /// Answer a violation with its status, then close.
    fn refuse(&mut self, key: usize, violation: Violation) {
        if let Some(d) = self.conns[key].extra().ws.as_mut() {
            d.finish();
        }
        let (Violation::Http(status) | Violation::Close(status, _)) = violation;
        match violation {
            Violation::Http(_) => self.queue_control(key, &[handshake::refusal(status).as_bytes()]),
            Violation::Close(..) => self.queue_control(key, &[&encode::close(status)]),
        }
        if self.conns[key].has(flag::DEAD) {
            return;
        }
        let too_large = status == 431 || status == ws::status::TOO_BIG;
        self.close_gracefully(key, if too_large { Closing::TooLarge } else { Closing::Protocol });
    }

    /// The connection is about to close gracefully: an open WebSocket
    /// says goodbye first (1000, or 1001 when the server shuts down).
    pub(super) fn ws_goodbye(&mut self, key: usize, closing: Closing) {
        let conn = &mut self.conns[key];
        let status = match closing {
            Closing::Local => ws::status::NORMAL,
            Closing::Shutdown => ws::status::GOING_AWAY,
            Closing::PeerClosed | Closing::TooLarge | Closing::Protocol => return,
        };
        let Some(d) = conn.extra.as_mut().and_then(|e| e.ws.as_mut()).filter(|d| d.is_open()) else { return };
        d.finish();
        conn.bufs.push_copy(&[&encode::close(status)], &mut self.pools);
        self.push_dirty(key);
    }
}

impl Ctx<'_> {
    /// On a [`Framing::Ws`] connection, what is being delivered (inside
    /// `on_frame`) or was last: `Handshake` from the accept until the
    /// upgrade is answered (so `on_open` can tell a connection that is not
    /// upgraded yet), then `Text` or `Binary`. `None` for other framings,
    /// and between the upgrade and the first message.
    pub fn message_kind(&self, id: ConnId) -> Option<MessageKind> {
        self.core.conns.get(id.key()).and_then(decoder).and_then(|d| d.last)
    }

    /// On a [`Framing::Ws`] connection, the type of message that
    /// [`Ctx::send`], [`Ctx::send_now`] and [`Ctx::send_shared`] produce
    /// from now on (text at first). An echo sets the kind it received.
    pub fn set_send_kind(&mut self, id: ConnId, kind: MessageKind) {
        if let Some(d) = self.ws_decoder(id) {
            d.send_kind = kind;
        }
    }

    /// On a [`Framing::Ws`] connection, messages or lines (see [`Mode`]).
    pub fn set_ws_mode(&mut self, id: ConnId, mode: Mode) {
        if let Some(d) = self.ws_decoder(id) {
            d.mode = mode;
        }
    }

    /// Accept the WebSocket upgrade that `head` (the request head just
    /// delivered) asks for: `101 Switching Protocols` is queued and
    /// messages follow. If `head` is not a valid upgrade, it is answered
    /// with its status (400, or 426 for another version) and the
    /// connection closes; the error says which. Also an error, with
    /// nothing done, when the connection is not waiting for an answer.
    pub fn ws_accept(&mut self, id: ConnId, head: &[u8]) -> Result<(), Violation> {
        if !self.ws_decoder(id).is_some_and(|d| d.awaiting_answer()) {
            return Err(Violation::Http(400));
        }
        let accept = handshake::Request::parse(head).and_then(|r| r.accept());
        let core = &mut *self.core;
        let accept = match accept {
            Ok(accept) => accept,
            Err(violation) => {
                core.refuse(id.key(), violation);
                return Err(violation);
            }
        };
        core.queue_control(id.key(), &[handshake::switching(&accept).as_bytes()]);
        if let Some(d) = core.conns[id.key()].extra().ws.as_mut() {
            d.accepted();
        }
        // The handshake's deadline gives way to the idle timeout.
        core.touch(id.key());
        // Frames sent right behind the head are buffered: decode them.
        if core.delivering != id.key() {
            core.push_ready(id.key());
        }
        Ok(())
    }

    /// Close a WebSocket connection with `status` (a close frame, then
    /// the lingering close); other connections close as with
    /// [`Ctx::close`].
    pub fn ws_close(&mut self, id: ConnId, status: u16) {
        let Some(conn) = self.core.conns.get(id.key()) else { return };
        if decoder(conn).is_some_and(Decoder::is_open) && !conn.has(flag::CLOSING | flag::DEAD) {
            if let Some(d) = self.ws_decoder(id) {
                d.finish();
            }
            self.core.queue_control(id.key(), &[&encode::close(status)]);
        }
        if self.core.conns.get(id.key()).is_some_and(|c| !c.has(flag::DEAD)) {
            self.core.close_gracefully(id.key(), Closing::Local);
        }
    }

    fn ws_decoder(&mut self, id: ConnId) -> Option<&mut Decoder> {
        self.core.conns.get_mut(id.key())?.extra.as_mut()?.ws.as_mut()
    }
}
