//! The WebSocket decoder (`edgeloop::ws::decode`: the handshake's head,
//! then frames) fed arbitrary bytes in arbitrary pieces under an
//! arbitrary `max_frame`, as the reactor feeds it (consuming, cutting the
//! reassembly gap), must agree with a plain reference written from RFC
//! 6455 that sees the whole stream at once and copies freely: the same
//! head, messages, pings, pongs and close, and the same status where the
//! reference finds a violation. And, whatever the bytes: no panic, a text
//! message is UTF-8, no message over `max_frame`, a `need` hint that is
//! more than what is buffered and bounded by one message plus the gap,
//! so the buffer never grows past that.

#![no_main]

use edgeloop::ws::{decode, handshake, Decoder, Event, MessageKind, Mode, Violation, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

/// What the caller sees, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Head(usize),
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// A status that ends the stream: HTTP before the upgrade, a close status
/// after.
type End = Option<u16>;

/// The most the decoder's buffer may need beyond one message: the gap
/// limit, a control frame and two headers.
const SLACK: usize = edgeloop::ws::GAP_LIMIT + 131 + 2 * 14;

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let max_frame = 1 + usize::from(u16::from_le_bytes([input[0], input[1]])) % 2000;
    let handshake = input[2] & 1 != 0;
    let mode = if input[2] & 2 != 0 { Mode::Lines } else { Mode::Messages };
    let (cuts, wire) = input[3..].split_at(input[3..].len().min(12));
    let wire = if handshake {
        let mut w = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        if input[2] & 4 != 0 {
            w.clear(); // the head is the fuzzer's own
        }
        w.extend_from_slice(wire);
        w
    } else {
        wire.to_vec()
    };
    let (got, got_end) = feed(&wire, cuts, max_frame, handshake, mode);
    let (want, want_end) = reference(&wire, max_frame, handshake, mode);
    assert_eq!(got, want, "max {max_frame}");
    assert_eq!(got_end, want_end, "max {max_frame}");
});

fn status(v: Violation) -> u16 {
    match v {
        Violation::Http(s) | Violation::Close(s, _) => s,
    }
}

/// Feed `wire` in pieces, acting on events as the reactor does.
fn feed(wire: &[u8], cuts: &[u8], max_frame: usize, handshake: bool, mode: Mode) -> (Vec<Seen>, End) {
    let mut positions: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * wire.len() / 256).collect();
    positions.extend([0, wire.len()]);
    positions.sort_unstable();
    positions.dedup();
    let mut d = Decoder::new(mode);
    if !handshake {
        d.accepted();
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = Vec::new();
    for piece in positions.windows(2).map(|w| &wire[w[0]..w[1]]) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut d, &mut buf, max_frame) {
                Err(v) => return (seen, Some(status(v))),
                Ok(Event::Incomplete { need }) => {
                    assert!(need == 0 || need > buf.len(), "need {need} with {} buffered", buf.len());
                    assert!(need <= max_frame + SLACK, "need {need} over max {max_frame}");
                    if d.is_open() {
                        assert!(buf.len() <= max_frame + SLACK + piece.len(), "buffer of {}", buf.len());
                    }
                    break;
                }
                Ok(Event::Request { end }) => {
                    assert!(end <= MAX_HEAD && buf[..end].ends_with(b"\r\n\r\n"));
                    assert!(handshake::Request::parse(&buf[..end]).is_ok());
                    seen.push(Seen::Head(end));
                    buf.drain(..end);
                    d.accepted(); // as an echo does, whatever the request
                }
                Ok(Event::Message { kind, start, end, consume }) => {
                    let msg = buf[start..end].to_vec();
                    assert!(msg.len() <= max_frame);
                    assert!(kind != MessageKind::Text || std::str::from_utf8(&msg).is_ok());
                    assert!(mode != Mode::Lines || kind == MessageKind::Text);
                    seen.push(Seen::Message(kind, msg));
                    buf.drain(..consume);
                }
                Ok(Event::Ping { start, end, consume }) => {
                    assert!(end - start <= 125);
                    seen.push(Seen::Ping(buf[start..end].to_vec()));
                    buf.drain(..consume);
                }
                Ok(Event::Pong { consume }) => {
                    seen.push(Seen::Pong);
                    buf.drain(..consume);
                }
                Ok(Event::Close { code }) => {
                    seen.push(Seen::Close(code));
                    return (seen, None);
                }
                Ok(Event::Compact { from, to }) => {
                    assert!(from < to && to <= buf.len());
                    buf.drain(from..to);
                }
            }
        }
    }
    (seen, None)
}

/// The rules, over the whole stream, the plain way.
fn reference(wire: &[u8], max_frame: usize, handshake: bool, mode: Mode) -> (Vec<Seen>, End) {
    let mut seen = Vec::new();
    let mut at = 0;
    if handshake {
        let window = &wire[..wire.len().min(MAX_HEAD)];
        match window.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => {
                let end = i + 4;
                let mut headers = [httparse::EMPTY_HEADER; 64];
                match httparse::Request::new(&mut headers).parse(&wire[..end]) {
                    Ok(httparse::Status::Complete(_)) => {}
                    Err(httparse::Error::TooManyHeaders) => return (seen, Some(431)),
                    _ => return (seen, Some(400)),
                }
                seen.push(Seen::Head(end));
                at = end;
            }
            None if wire.len() >= MAX_HEAD => return (seen, Some(431)),
            None => return (seen, None),
        }
    }
    let mut message: Option<(MessageKind, Vec<u8>)> = None;
    loop {
        let b = &wire[at..];
        if b.len() < 2 {
            return (seen, None);
        }
        let (fin, opcode) = (b[0] & 0x80 != 0, b[0] & 0x0f);
        if b[0] & 0x70 != 0 || b[1] & 0x80 == 0 {
            return (seen, Some(1002));
        }
        let control = opcode >= 8;
        match opcode {
            0 if message.is_none() => return (seen, Some(1002)),
            1 | 2 if message.is_some() => return (seen, Some(1002)),
            2 if mode == Mode::Lines => return (seen, Some(1003)),
            0 | 1 | 2 | 8 | 9 | 10 => {}
            _ => return (seen, Some(1002)),
        }
        let len7 = usize::from(b[1] & 0x7f);
        if control && (!fin || len7 > 125) {
            return (seen, Some(1002));
        }
        let ext = [0, 2, 8][usize::from(len7 >= 126) + usize::from(len7 == 127)];
        if b.len() < 2 + ext {
            return (seen, None);
        }
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([b[2], b[3]])),
            8 => u64::from_be_bytes(b[2..10].try_into().unwrap()),
            _ => len7 as u64,
        };
        if len >> 63 != 0 {
            return (seen, Some(1002));
        }
        let so_far = message.as_ref().map_or(0, |m| m.1.len()) as u64;
        if !control && so_far + len > max_frame as u64 {
            return (seen, Some(1009));
        }
        let h = 2 + ext + 4;
        if (b.len() as u64) < h as u64 + len {
            return (seen, None);
        }
        let key = &b[h - 4..h];
        let payload: Vec<u8> = b[h..h + len as usize].iter().enumerate().map(|(i, x)| x ^ key[i % 4]).collect();
        at += h + len as usize;
        match opcode {
            9 => seen.push(Seen::Ping(payload)),
            10 => seen.push(Seen::Pong),
            8 => {
                if payload.len() == 1 {
                    return (seen, Some(1002));
                }
                if payload.len() >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                    if !allowed {
                        return (seen, Some(1002));
                    }
                    if std::str::from_utf8(&payload[2..]).is_err() {
                        return (seen, Some(1007));
                    }
                    seen.push(Seen::Close(Some(code)));
                } else {
                    seen.push(Seen::Close(None));
                }
                return (seen, None);
            }
            _ => {
                let kind = match opcode {
                    1 => MessageKind::Text,
                    2 => MessageKind::Binary,
                    _ => message.as_ref().map_or(MessageKind::Binary, |m| m.0),
                };
                let m = message.get_or_insert((kind, Vec::new()));
                m.1.extend_from_slice(&payload);
                if kind == MessageKind::Text {
                    // Fail fast: invalid so far (not merely cut short) is
                    // an error before the end of the message.
                    if let Err(e) = std::str::from_utf8(&m.1) {
                        if e.error_len().is_some() || fin {
                            return (seen, Some(1007));
                        }
                    }
                }
                if fin {
                    let (kind, bytes) = message.take().unwrap();
                    seen.push(Seen::Message(kind, bytes));
                }
            }
        }
    }
}
