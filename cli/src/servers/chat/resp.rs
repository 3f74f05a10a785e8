//! RESP2, the Redis protocol, on the library's own framing.
//!
//! RESP is lines plus counted bulk strings — the memcached switch again:
//!
//! ```text
//!   +OK\r\n                      a simple string         Line frame
//!   -ERR unknown command\r\n     an error                Line frame
//!   :42\r\n                      an integer              Line frame
//!   $5\r\n hello\r\n             a bulk string: a Line frame, then
//!                                Framing::Exact(5 + 2) for the payload
//!                                and its CRLF
//!   $-1\r\n                      nil                     Line frame
//!   *3\r\n ...                   an array of 3 replies   Line frame, then
//!                                its elements, each of them any of these
//! ```
//!
//! So a Redis connection of the chat is an ordinary connection of the
//! reactor whose framing the [`Reader`] switches between `Line` and
//! `Exact`: the reactor finds the line ends (`memchr`) and the payloads,
//! and hands each to the chat as a slice of its read buffer. The reader
//! adds only a small state machine — a stack of open arrays — and parses
//! nothing by hand beyond a type byte and a decimal length. Why not a
//! RESP crate: `redis-protocol` would decode from the same read buffer,
//! but it would re-scan what the reactor has already framed, and a reply
//! split across reads would be decoded again from its start on every read;
//! the framing is the part of the library that already solves both.
//!
//! Zero-copy: every value is handed out as a slice of the frame it came in
//! ([`Item`]), so a published chat line goes from the read buffer straight
//! into the one shared buffer its members' queues point at. The exception
//! is a bulk string longer than a frame may be (`--max-frame`): it is read
//! in `max_frame`-sized pieces into a buffer the reader keeps.
//!
//! Everything is bounded ([`Limits`]): a line longer than `max_frame` is
//! refused by the reactor, a bulk string or an array announced longer than
//! its limit, or arrays nested too deep, are a protocol [`Error`] as soon
//! as the header is read — no memory is reserved for them. The chat treats
//! a protocol error as Redis lost.
//!
//! [`Builder`] turns items into an owned [`Reply`] tree, for the replies
//! that are small and rare (a `/who`, a nickname); [`Encoder`] writes
//! commands as arrays of bulk strings into a buffer the caller reuses.

use std::fmt;
use std::io::Write;

use edgeloop::Framing;

/// Arrays nested deeper than this are a protocol error (the chat's
/// replies nest at most two deep).
pub const MAX_DEPTH: usize = 8;

/// The largest values a [`Reader`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest frame the connection may carry (`--max-frame`): a bulk
    /// string longer than this is read in pieces of this size.
    pub frame: usize,
    /// The longest bulk string.
    pub bulk: usize,
    /// The most elements of an array.
    pub array: usize,
}

/// A value as it comes off the wire, borrowed from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// `+...`
    Simple(&'a [u8]),
    /// `-...`
    Error(&'a [u8]),
    /// `:n`
    Int(i64),
    /// `$n` and its payload.
    Bulk(&'a [u8]),
    /// `$-1` or `*-1`.
    Nil,
    /// `*n`: the header of an array; its `n` elements follow as items of
    /// their own (`Array(0)` is a complete, empty array).
    Array(usize),
}

/// One value and where it stands in the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item<'a> {
    /// The value.
    pub value: Value<'a>,
    /// 0 for a reply of its own, 1 for an element of a top-level array, ...
    pub depth: usize,
    /// Its position in the enclosing array (0 at the top level).
    pub index: usize,
    /// This item completes the top-level reply.
    pub done: bool,
}

/// A protocol error: the connection cannot be trusted any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RESP protocol error: {}", self.0)
    }
}

impl std::error::Error for Error {}

fn error(what: impl Into<String>) -> Error {
    Error(what.into())
}

/// A bulk string being read: its length, and the bytes (payload and CRLF)
/// still to come.
#[derive(Clone, Copy, Debug)]
struct Bulk {
    len: usize,
    left: usize,
}

/// Turns frames into [`Item`]s; says which framing the next frame needs.
#[derive(Debug)]
pub struct Reader {
    limits: Limits,
    /// Open arrays: (elements, elements seen).
    stack: Vec<(usize, usize)>,
    /// Inside a bulk string.
    bulk: Option<Bulk>,
    /// A bulk string longer than a frame, gathered piece by piece.
    big: Vec<u8>,
}

impl Reader {
    /// A reader expecting a reply's first line.
    pub fn new(limits: Limits) -> Reader {
        Reader { limits, stack: Vec::new(), bulk: None, big: Vec::new() }
    }

    /// The framing the next frame must be cut with.
    pub fn framing(&self) -> Framing {
        match self.bulk {
            Some(b) => Framing::Exact(b.left.min(self.limits.frame).min(u32::MAX as usize) as u32),
            None => Framing::Line,
        }
    }

    /// Whether the reader is between replies.
    pub fn idle(&self) -> bool {
        self.stack.is_empty() && self.bulk.is_none()
    }

    /// Take one frame, cut as [`Reader::framing`] said. `None`: the frame
    /// started a bulk string, or was a piece of a long one.
    pub fn feed<'a>(&'a mut self, frame: &'a [u8]) -> Result<Option<Item<'a>>, Error> {
        if let Some(mut bulk) = self.bulk {
            if frame.len() > bulk.left {
                return Err(error("a frame longer than the bulk string"));
            }
            if self.big.is_empty() && frame.len() == bulk.left {
                // The whole payload in one frame: a slice of the read buffer.
                self.bulk = None;
                let payload = frame.strip_suffix(b"\r\n").ok_or_else(|| error("bulk string without CRLF"))?;
                let (depth, index, done) = self.advance();
                return Ok(Some(Item { value: Value::Bulk(payload), depth, index, done }));
            }
            self.big.extend_from_slice(frame);
            bulk.left -= frame.len();
            if bulk.left > 0 {
                self.bulk = Some(bulk);
                return Ok(None);
            }
            self.bulk = None;
            if !self.big.ends_with(b"\r\n") {
                return Err(error("bulk string without CRLF"));
            }
            self.big.truncate(bulk.len);
            let (depth, index, done) = self.advance();
            return Ok(Some(Item { value: Value::Bulk(&self.big), depth, index, done }));
        }
        let line = frame.strip_suffix(b"\r\n").ok_or_else(|| error("a line without CRLF"))?;
        let (&kind, rest) = line.split_first().ok_or_else(|| error("an empty line"))?;
        let value = match kind {
            b'+' => Value::Simple(rest),
            b'-' => Value::Error(rest),
            b':' => Value::Int(number(rest)?),
            b'$' => match number(rest)? {
                -1 => Value::Nil,
                n if n < 0 || n as u64 > self.limits.bulk as u64 => {
                    return Err(error(format!("a bulk string of {n} bytes (limit {})", self.limits.bulk)))
                }
                n => {
                    self.bulk = Some(Bulk { len: n as usize, left: n as usize + 2 });
                    // The last long string's buffer is not kept for ever.
                    self.big = Vec::new();
                    return Ok(None);
                }
            },
            b'*' => match number(rest)? {
                -1 => Value::Nil,
                0 => Value::Array(0),
                n if n < 0 || n as u64 > self.limits.array as u64 => {
                    return Err(error(format!("an array of {n} elements (limit {})", self.limits.array)))
                }
                _ if self.stack.len() >= MAX_DEPTH => return Err(error("arrays nested too deep")),
                n => {
                    let depth = self.stack.len();
                    let index = self.stack.last().map_or(0, |&(_, seen)| seen);
                    self.stack.push((n as usize, 0));
                    return Ok(Some(Item { value: Value::Array(n as usize), depth, index, done: false }));
                }
            },
            other => return Err(error(format!("unknown type byte {:?}", other as char))),
        };
        let (depth, index, done) = self.advance();
        Ok(Some(Item { value, depth, index, done }))
    }

    /// A complete value was read: where it stood, and whether it completed
    /// the reply (closing every array it completed).
    fn advance(&mut self) -> (usize, usize, bool) {
        let depth = self.stack.len();
        let index = self.stack.last().map_or(0, |&(_, seen)| seen);
        while let Some(top) = self.stack.last_mut() {
            top.1 += 1;
            if top.1 < top.0 {
                return (depth, index, false);
            }
            self.stack.pop();
        }
        (depth, index, true)
    }
}

/// A decimal integer, as RESP writes lengths and integers.
fn number(digits: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| error(format!("not a number: {:?}", String::from_utf8_lossy(digits))))
}

/// A reply, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Simple(Vec<u8>),
    /// `-...`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n`
    Bulk(Vec<u8>),
    /// `$-1`, `*-1`
    Nil,
    /// `*n`
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a simple string or a bulk string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Simple(b) | Reply::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Builds owned [`Reply`] trees from items (nested arrays via a stack).
#[derive(Debug, Default)]
pub struct Builder {
    /// Open arrays: (elements, elements so far).
    stack: Vec<(usize, Vec<Reply>)>,
}

impl Builder {
    /// Add an item; `Some` when it completed a reply.
    pub fn push(&mut self, item: &Item<'_>) -> Option<Reply> {
        let mut reply = match item.value {
            // Reserve little up front: the length is the peer's word.
            Value::Array(n) if n > 0 => {
                self.stack.push((n, Vec::with_capacity(n.min(64))));
                return None;
            }
            Value::Array(_) => Reply::Array(Vec::new()),
            Value::Simple(s) => Reply::Simple(s.to_vec()),
            Value::Error(e) => Reply::Error(String::from_utf8_lossy(e).into_owned()),
            Value::Int(n) => Reply::Int(n),
            Value::Bulk(b) => Reply::Bulk(b.to_vec()),
            Value::Nil => Reply::Nil,
        };
        loop {
            let Some((n, items)) = self.stack.last_mut() else { return Some(reply) };
            items.push(reply);
            if items.len() < *n {
                return None;
            }
            reply = Reply::Array(self.stack.pop()?.1);
        }
    }
}

/// `bytes` as a RESP bulk string, appended to `buf`.
pub fn bulk(buf: &mut Vec<u8>, bytes: &[u8]) {
    let _ = write!(buf, "${}\r\n", bytes.len());
    buf.extend_from_slice(bytes);
    buf.extend_from_slice(b"\r\n");
}

/// Writes commands (arrays of bulk strings) into a reused buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The bytes of the commands written since the last `clear`.
    pub buf: Vec<u8>,
}

impl Encoder {
    /// Forget what was written (the allocation stays).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Start a command of `args` arguments (its name included).
    pub fn begin(&mut self, args: usize) -> &mut Self {
        let _ = write!(self.buf, "*{args}\r\n");
        self
    }

    /// One argument.
    pub fn arg(&mut self, arg: impl AsRef<[u8]>) -> &mut Self {
        bulk(&mut self.buf, arg.as_ref());
        self
    }

    /// One argument made of several pieces (written without joining them
    /// first).
    pub fn arg_parts(&mut self, parts: &[&[u8]]) -> &mut Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let _ = write!(self.buf, "${len}\r\n");
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// A whole command.
    pub fn command(&mut self, args: &[&[u8]]) -> &mut Self {
        self.begin(args.len());
        for arg in args {
            self.arg(arg);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeloop::framing::{decode, Decoded};

    const LIMITS: Limits = Limits { frame: 64, bulk: 200, array: 100 };

    /// Cut `wire` with the framing the reader asks for, as the reactor
    /// does, and build every reply; `Err` on a protocol error.
    fn replies(wire: &[u8], limits: Limits) -> Result<Vec<Reply>, Error> {
        let mut reader = Reader::new(limits);
        let mut builder = Builder::default();
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let mut scanned = 0;
            let frame = match decode(reader.framing(), &wire[at..], &mut scanned, limits.frame) {
                Ok(Decoded::Frame(f)) => f,
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => return Err(Error(e.to_string())),
            };
            let bytes = &wire[at + frame.start..at + frame.end];
            at += frame.end;
            if let Some(item) = reader.feed(bytes)? {
                if let Some(reply) = builder.push(&item) {
                    out.push(reply);
                }
            }
        }
        Ok(out)
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    #[test]
    fn every_kind_of_reply() {
        let wire = b"+OK\r\n-ERR no\r\n:-42\r\n$5\r\nhe\r\nl\r\n$0\r\n\r\n$-1\r\n*0\r\n*-1\r\n";
        let got = replies(wire, LIMITS).unwrap();
        assert_eq!(
            got,
            vec![
                Reply::Simple(b"OK".to_vec()),
                Reply::Error("ERR no".into()),
                Reply::Int(-42),
                bulk("he\r\nl"),
                bulk(""),
                Reply::Nil,
                Reply::Array(vec![]),
                Reply::Nil,
            ]
        );
    }

    #[test]
    fn nested_arrays() {
        let wire = b"*3\r\n$7\r\nmessage\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n$2\r\nhi\r\n:7\r\n";
        let got = replies(wire, LIMITS).unwrap();
        let inner = Reply::Array(vec![Reply::Int(1), Reply::Array(vec![bulk("x")])]);
        assert_eq!(got, vec![Reply::Array(vec![bulk("message"), inner, bulk("hi")]), Reply::Int(7)]);
    }

    #[test]
    fn items_say_where_they_stand() {
        let mut reader = Reader::new(LIMITS);
        let item = reader.feed(b"*2\r\n").unwrap().unwrap();
        assert_eq!(item, Item { value: Value::Array(2), depth: 0, index: 0, done: false });
        assert!(reader.feed(b"$1\r\n").unwrap().is_none());
        assert_eq!(reader.framing(), Framing::Exact(3));
        let item = reader.feed(b"a\r\n").unwrap().unwrap();
        assert_eq!(item, Item { value: Value::Bulk(b"a"), depth: 1, index: 0, done: false });
        assert_eq!(reader.framing(), Framing::Line);
        let item = reader.feed(b":5\r\n").unwrap().unwrap();
        assert_eq!(item, Item { value: Value::Int(5), depth: 1, index: 1, done: true });
        assert!(reader.idle());
    }

    #[test]
    fn a_bulk_string_longer_than_a_frame_comes_in_pieces() {
        let text = "x".repeat(150);
        let wire = format!("${}\r\n{text}\r\n+OK\r\n", text.len());
        let got = replies(wire.as_bytes(), LIMITS).unwrap();
        assert_eq!(got, vec![bulk(&text), Reply::Simple(b"OK".to_vec())]);
        // Split just before the CRLF, and inside it.
        for len in [63, 64, 65, 126, 127, 128] {
            let text = "y".repeat(len);
            let wire = format!("*1\r\n${len}\r\n{text}\r\n");
            assert_eq!(replies(wire.as_bytes(), LIMITS).unwrap(), vec![Reply::Array(vec![bulk(&text)])], "{len}");
        }
    }

    #[test]
    fn limits_are_enforced_at_the_header() {
        assert!(replies(b"$201\r\n", LIMITS).is_err());
        assert!(replies(b"$200\r\n", LIMITS).unwrap().is_empty()); // waiting for the payload
        assert!(replies(b"*101\r\n", LIMITS).is_err());
        assert!(replies(&b"*1\r\n".repeat(MAX_DEPTH + 1), LIMITS).is_err());
        assert!(replies(b"$-2\r\n", LIMITS).is_err());
        assert!(replies(format!("+{}\r\n", "z".repeat(70)).as_bytes(), LIMITS).is_err());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for wire in [&b"?\r\n"[..], b"\r\n", b"+OK\n", b":x\r\n", b"$3\r\nabcd\r\n", b"$1\r\nab", b"*1x\r\n"] {
            let _ = replies(wire, LIMITS);
        }
        assert!(replies(b"$3\r\nabcde", LIMITS).is_err()); // no CRLF after the payload
        assert!(replies(b":x\r\n", LIMITS).is_err());
        assert!(replies(b"+OK\n", LIMITS).is_err());
        assert!(replies(b"!3\r\n", LIMITS).is_err());
    }

    #[test]
    fn encoding() {
        let mut enc = Encoder::default();
        enc.command(&[b"SET", b"k", b""]).begin(2).arg("GET").arg_parts(&[b"a", b"b"]);
        assert_eq!(enc.buf, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*2\r\n$3\r\nGET\r\n$2\r\nab\r\n");
        // What the encoder writes, the reader reads back.
        let got = replies(&enc.buf, Limits { frame: 1024, bulk: 1024, array: 8 }).unwrap();
        assert_eq!(got[1], Reply::Array(vec![bulk("GET"), bulk("ab")]));
    }
}
