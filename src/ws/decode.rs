//! The decoder: the handshake's head, then frames, over a connection's
//! read buffer, unmasked and reassembled in place.
//!
//! ```text
//!   unread bytes while a fragmented message is being reassembled:
//!
//!   [ payload so far (unmasked) | gap: headers, control frames | next frame ... ]
//!   0                     assembled                           raw
//! ```
//!
//! A fragment's payload is unmasked where it lies, then moved down to
//! `assembled`; the gap it leaves behind (its header, and any control
//! frame answered meanwhile) is overwritten by the next fragment. Empty
//! fragments or pings sent forever would widen the gap without bound, so
//! past [`GAP_LIMIT`] the decoder asks the caller to cut it out
//! ([`Event::Compact`]). Nothing is consumed from the buffer until the
//! message is complete: a message is then `buf[0..assembled]`, one slice.
//!
//! The decoder is a plain state machine over `&mut [u8]` (no socket, no
//! reactor) so that it can be tested and fuzzed on its own
//! (`fuzz/fuzz_targets/ws.rs`).

use super::handshake;
use super::status::{self, may_be_sent};
use super::{MessageKind, Mode, Violation, MAX_CONTROL, MAX_HEAD};

/// The reassembly gap the decoder lets grow before asking for a compaction.
pub const GAP_LIMIT: usize = 4096;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Waiting for the request head.
    #[default]
    Request,
    /// The head was delivered; the application has not answered yet.
    Accepting,
    /// Upgraded: frames.
    Open,
    /// A close was received or sent, or the application answered plain
    /// HTTP: nothing more is decoded.
    Closed,
}

/// What [`decode`] found. Positions are offsets in the buffer it was given
/// (the unread bytes); after handling an event, the caller consumes
/// `consume` bytes from the front.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// More bytes are needed: `need` in all, counted from the front (0:
    /// unknown, or nothing is decoded now).
    Incomplete {
        /// Bytes the buffer must hold for the next step.
        need: usize,
    },
    /// The request head is `buf[..end]`; `consume` it after delivery.
    Request {
        /// The head's length.
        end: usize,
    },
    /// A whole message, unmasked: `buf[start..end]`.
    Message {
        /// Text or binary.
        kind: MessageKind,
        /// Where the payload starts.
        start: usize,
        /// Where it ends.
        end: usize,
        /// Bytes to consume after delivery.
        consume: usize,
    },
    /// A ping: answer `buf[start..end]` in a pong.
    Ping {
        /// Where the payload starts.
        start: usize,
        /// Where it ends.
        end: usize,
        /// Bytes to consume (0 inside a fragmented message).
        consume: usize,
    },
    /// A pong: nothing to do.
    Pong {
        /// Bytes to consume (0 inside a fragmented message).
        consume: usize,
    },
    /// A valid close: answer with the same status (1000 if none), then
    /// close. Nothing more will be decoded.
    Close {
        /// The status sent, if any.
        code: Option<u16>,
    },
    /// Remove `buf[from..to]` (the reassembly gap) and call again.
    Compact {
        /// First byte to remove.
        from: usize,
        /// One past the last.
        to: usize,
    },
}

/// One connection's decoding state: 20 bytes, in the connection's boxed
/// extras.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    phase: Phase,
    /// Before the head: bytes searched. After: where the next undecoded
    /// frame starts.
    raw: u32,
    /// Payload bytes of the message in progress, at the front.
    assembled: u32,
    /// Of those, the bytes known to be valid UTF-8 up to a code point
    /// boundary (text only).
    validated: u32,
    /// The opcode of the fragmented message in progress (0: none).
    partial: u8,
    /// Lines or messages.
    pub mode: Mode,
    /// The message being (or last) delivered: `Handshake` from the start
    /// until the upgrade is answered, then `None` until the first message.
    pub last: Option<MessageKind>,
    /// What a send produces: text or binary.
    pub send_kind: MessageKind,
}

impl Decoder {
    /// A connection that has not sent its request head yet.
    pub fn new(mode: Mode) -> Decoder {
        // Until the upgrade is answered, what arrives is the handshake.
        Decoder { mode, send_kind: MessageKind::Text, last: Some(MessageKind::Handshake), ..Decoder::default() }
    }

    /// Before the upgrade (waiting for the head, or for the application's
    /// answer to it).
    pub fn handshaking(&self) -> bool {
        matches!(self.phase, Phase::Request | Phase::Accepting)
    }

    /// Upgraded, and no close sent or received.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The application accepted the upgrade: frames from now on. Whether
    /// it may (the head was delivered and not answered) is the caller's
    /// check, [`Decoder::awaiting_answer`].
    pub fn accepted(&mut self) {
        self.phase = Phase::Open;
        self.raw = 0;
        self.last = None;
    }

    /// The head was delivered and the application has not answered it.
    pub fn awaiting_answer(&self) -> bool {
        self.phase == Phase::Accepting
    }

    /// Nothing more is decoded (a close was sent, or plain HTTP answered).
    pub fn finish(&mut self) {
        self.phase = Phase::Closed;
    }
}

/// Decode the next event from `buf`, the connection's unread bytes
/// (unmasking and reassembling in place), under `max_frame` for a whole
/// message. An error is the status to refuse or close with.
pub fn decode(d: &mut Decoder, buf: &mut [u8], max_frame: usize) -> Result<Event, Violation> {
    match d.phase {
        Phase::Request => {
            let mut scanned = d.raw as usize;
            let found = handshake::find_head(buf, &mut scanned)?;
            d.raw = scanned as u32;
            let Some(end) = found else { return Ok(Event::Incomplete { need: 0 }) };
            handshake::Request::parse(&buf[..end])?;
            d.phase = Phase::Accepting;
            d.last = Some(MessageKind::Handshake);
            Ok(Event::Request { end })
        }
        // A client must wait for the answer before it sends a frame; one
        // that does not may not fill the buffer meanwhile.
        Phase::Accepting if buf.len() > MAX_HEAD => Err(Violation::Http(400)),
        Phase::Accepting | Phase::Closed => Ok(Event::Incomplete { need: 0 }),
        Phase::Open => frames(d, buf, max_frame),
    }
}

fn protocol(why: &'static str) -> Violation {
    Violation::Close(status::PROTOCOL, why)
}

/// Frames until an event for the caller (non-final fragments are taken in
/// the loop).
fn frames(d: &mut Decoder, buf: &mut [u8], max_frame: usize) -> Result<Event, Violation> {
    loop {
        let raw = d.raw as usize;
        let assembled = d.assembled as usize;
        if raw - assembled > GAP_LIMIT {
            d.raw = d.assembled;
            return Ok(Event::Compact { from: assembled, to: raw });
        }
        let b = &buf[raw..];
        if b.len() < 2 {
            return Ok(Event::Incomplete { need: raw + 2 });
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
        let (masked, len7) = (b[1] & 0x80 != 0, b[1] & 0x7f);
        if rsv != 0 {
            return Err(protocol("reserved bits set (no extension was negotiated)"));
        }
        if !masked {
            return Err(protocol("unmasked frame from a client"));
        }
        let control = opcode & 0x8 != 0;
        match opcode {
            CONTINUATION if d.partial == 0 => return Err(protocol("continuation frame with no message to continue")),
            TEXT | BINARY if d.partial != 0 => return Err(protocol("new message inside a fragmented one")),
            BINARY if d.mode == Mode::Lines => {
                return Err(Violation::Close(status::UNSUPPORTED, "binary message where text lines are expected"))
            }
            CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG => {}
            _ => return Err(protocol("unknown opcode")),
        }
        if control && !fin {
            return Err(protocol("fragmented control frame"));
        }
        if control && usize::from(len7) > MAX_CONTROL {
            return Err(protocol("control frame over 125 bytes"));
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header = 2 + ext + 4;
        if b.len() < 2 + ext {
            return Ok(Event::Incomplete { need: raw + header });
        }
        let len = match len7 {
            126 => u64::from(u16::from_be_bytes([b[2], b[3]])),
            127 => u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
            n => u64::from(n),
        };
        if len >> 63 != 0 {
            return Err(protocol("64-bit length with its top bit set"));
        }
        // Checked before anything is reserved for it: the whole message,
        // what is already reassembled included.
        if !control && assembled as u64 + len > max_frame as u64 {
            return Err(Violation::Close(status::TOO_BIG, "message over the size limit"));
        }
        let len = len as usize; // at most max_frame (data) or 125 (control)
        let total = header + len;
        if b.len() < total {
            return Ok(Event::Incomplete { need: raw + total });
        }
        let key = [b[header - 4], b[header - 3], b[header - 2], b[header - 1]];
        let (start, end) = (raw + header, raw + total);
        unmask(&mut buf[start..end], key);
        if control {
            // Inside a fragmented message the frame stays in the gap;
            // otherwise it is consumed at once.
            let consume = if d.partial == 0 { total } else { 0 };
            if d.partial != 0 {
                d.raw = end as u32;
            }
            return match opcode {
                PING => Ok(Event::Ping { start, end, consume }),
                PONG => Ok(Event::Pong { consume }),
                _ => close_frame(d, &buf[start..end]),
            };
        }
        let kind = if opcode == CONTINUATION { d.partial } else { opcode };
        let kind = if kind == TEXT { MessageKind::Text } else { MessageKind::Binary };
        if fin && d.partial == 0 {
            // The common case: one frame, one message, no copy.
            if kind == MessageKind::Text && std::str::from_utf8(&buf[start..end]).is_err() {
                return Err(Violation::Close(status::INVALID_DATA, "text message that is not UTF-8"));
            }
            d.last = Some(kind);
            return Ok(Event::Message { kind, start, end, consume: total });
        }
        // A fragment: its payload joins the others at the front.
        buf.copy_within(start..end, assembled);
        let assembled = assembled + len;
        d.assembled = assembled as u32;
        d.raw = end as u32;
        d.partial = if kind == MessageKind::Text { TEXT } else { BINARY };
        if kind == MessageKind::Text {
            // Validate what is new, resuming at the last boundary: a code
            // point cut between fragments is completed by the next one.
            let from = d.validated as usize;
            match std::str::from_utf8(&buf[from..assembled]) {
                Ok(_) => d.validated = assembled as u32,
                Err(e) if e.error_len().is_none() && !fin => d.validated = (from + e.valid_up_to()) as u32,
                Err(_) => return Err(Violation::Close(status::INVALID_DATA, "text message that is not UTF-8")),
            }
        }
        if fin {
            let consume = d.raw as usize;
            d.raw = 0;
            d.assembled = 0;
            d.validated = 0;
            d.partial = 0;
            d.last = Some(kind);
            return Ok(Event::Message { kind, start: 0, end: assembled, consume });
        }
    }
}

/// A close frame's payload: nothing, or a status that may be sent and a
/// UTF-8 reason.
fn close_frame(d: &mut Decoder, payload: &[u8]) -> Result<Event, Violation> {
    let code = match payload {
        [] => None,
        [_] => return Err(protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !may_be_sent(code) {
                return Err(protocol("close status that may not be sent"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation::Close(status::INVALID_DATA, "close reason that is not UTF-8"));
            }
            Some(code)
        }
    };
    d.phase = Phase::Closed;
    Ok(Event::Close { code })
}

/// XOR `payload` with the masking key, in place, 8 bytes at a time (the
/// key repeats every 4 bytes, so twice over in one word).
pub fn unmask(payload: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so at key byte 0.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::super::encode;
    use super::*;

    /// A client frame: masked with a fixed key.
    pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        encode::client_frame(fin, opcode, payload, [0x37, 0xfa, 0x21, 0x3d])
    }

    fn open() -> Decoder {
        let mut d = Decoder::new(Mode::Messages);
        d.accepted();
        d
    }

    type Outcome = (Vec<(MessageKind, Vec<u8>)>, Vec<Event>, Option<Violation>);

    /// Every event until the buffer is exhausted, consuming as the reactor does.
    fn run(d: &mut Decoder, wire: &[u8], max: usize) -> Outcome {
        let mut buf = wire.to_vec();
        let (mut msgs, mut controls) = (Vec::new(), Vec::new());
        loop {
            match decode(d, &mut buf, max) {
                Ok(Event::Incomplete { .. }) => return (msgs, controls, None),
                Ok(Event::Message { kind, start, end, consume }) => {
                    msgs.push((kind, buf[start..end].to_vec()));
                    buf.drain(..consume);
                }
                Ok(Event::Compact { from, to }) => {
                    buf.drain(from..to);
                }
                Ok(e @ (Event::Ping { consume, .. } | Event::Pong { consume })) => {
                    controls.push(e);
                    buf.drain(..consume);
                }
                Ok(e) => {
                    controls.push(e);
                    if matches!(e, Event::Close { .. }) {
                        return (msgs, controls, None);
                    }
                }
                Err(v) => return (msgs, controls, Some(v)),
            }
        }
    }

    #[test]
    fn the_rfc_examples() {
        // RFC 6455 section 5.7: a masked "Hello", and one in two fragments.
        let masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (msgs, _, err) = run(&mut open(), &masked, 100);
        assert_eq!((msgs, err), (vec![(MessageKind::Text, b"Hello".to_vec())], None));
        let mut wire = client_frame(false, TEXT, b"Hel");
        wire.extend(client_frame(true, PING, b"?"));
        wire.extend(client_frame(true, CONTINUATION, b"lo"));
        let (msgs, controls, err) = run(&mut open(), &wire, 100);
        assert_eq!((msgs, err), (vec![(MessageKind::Text, b"Hello".to_vec())], None));
        assert!(matches!(controls[..], [Event::Ping { consume: 0, .. }]));
    }

    #[test]
    fn violations_and_their_statuses() {
        let status = |wire: &[u8], max| run(&mut open(), wire, max).2;
        let close = |code| Some(Violation::Close(code, ""));
        let same = |got: Option<Violation>, want: Option<Violation>| match (got, want) {
            (Some(Violation::Close(a, _)), Some(Violation::Close(b, _))) => assert_eq!(a, b),
            (got, want) => assert_eq!(got, want),
        };
        same(status(&[0x81, 0x01, b'a'], 100), close(1002)); // unmasked
        let mut rsv = client_frame(true, TEXT, b"a");
        rsv[0] |= 0x40;
        same(status(&rsv, 100), close(1002));
        same(status(&client_frame(true, 0x3, b""), 100), close(1002));
        same(status(&client_frame(true, PING, &[0; 126]), 1000), close(1002));
        same(status(&client_frame(false, PING, b""), 100), close(1002));
        same(status(&client_frame(true, CONTINUATION, b"a"), 100), close(1002));
        same(status(&client_frame(true, TEXT, b"\xff"), 100), close(1007));
        same(status(&client_frame(true, CLOSE, b"\x03"), 100), close(1002));
        same(status(&client_frame(true, CLOSE, &1005u16.to_be_bytes()), 100), close(1002));
        same(status(&client_frame(true, CLOSE, b"\x03\xe8\xff"), 100), close(1007));
        same(status(&client_frame(true, BINARY, &[0; 101]), 100), close(1009));
        let mut two = client_frame(false, BINARY, &[0; 60]);
        two.extend(client_frame(true, CONTINUATION, &[0; 41]));
        same(status(&two, 100), close(1009));
        let mut lines = Decoder::new(Mode::Lines);
        lines.accepted();
        same(run(&mut lines, &client_frame(true, BINARY, b"x"), 100).2, close(1003));
    }

    #[test]
    fn utf8_across_fragments() {
        // "é" is C3 A9: cut between two fragments, valid.
        let mut wire = client_frame(false, TEXT, b"caf\xc3");
        wire.extend(client_frame(true, CONTINUATION, b"\xa9"));
        assert_eq!(run(&mut open(), &wire, 100).0, vec![(MessageKind::Text, "café".as_bytes().to_vec())]);
        // Invalid in the first fragment: closed before the message ends.
        let wire = client_frame(false, TEXT, b"\xc3\x28");
        assert!(matches!(run(&mut open(), &wire, 100).2, Some(Violation::Close(1007, _))));
        // Incomplete at the end of the message.
        let mut wire = client_frame(false, TEXT, b"a");
        wire.extend(client_frame(true, CONTINUATION, b"\xc3"));
        assert!(matches!(run(&mut open(), &wire, 100).2, Some(Violation::Close(1007, _))));
    }

    #[test]
    fn endless_empty_fragments_keep_the_buffer_bounded() {
        let mut d = open();
        let mut buf = client_frame(false, BINARY, b"x");
        let mut longest = 0;
        for _ in 0..10_000 {
            buf.extend(client_frame(false, CONTINUATION, b""));
            loop {
                match decode(&mut d, &mut buf, 100).unwrap() {
                    Event::Compact { from, to } => drop(buf.drain(from..to)),
                    Event::Incomplete { .. } => break,
                    e => panic!("{e:?}"),
                }
            }
            longest = longest.max(buf.len());
        }
        assert!(longest <= GAP_LIMIT + 32, "{longest}");
    }

    #[test]
    fn a_close_is_decoded_once() {
        let mut d = open();
        let (_, controls, _) = run(&mut d, &client_frame(true, CLOSE, &1000u16.to_be_bytes()), 100);
        assert_eq!(controls, vec![Event::Close { code: Some(1000) }]);
        assert!(!d.is_open());
        assert_eq!(decode(&mut d, &mut client_frame(true, TEXT, b"late"), 100), Ok(Event::Incomplete { need: 0 }));
    }

    /// Its docs, and the memory of an idle WebSocket connection, count
    /// on this.
    #[test]
    fn a_decoder_is_20_bytes() {
        assert_eq!(std::mem::size_of::<Decoder>(), 20);
    }

    #[test]
    fn unmask_matches_the_definition() {
        let key = [1, 2, 3, 4];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, key);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            assert_eq!(fast, slow);
        }
    }
}
