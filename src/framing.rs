//! Framing: how a byte stream is cut into messages, as Erlang's
//! `{packet, N}` socket option does it.
//!
//! ```text
//! raw    | whatever bytes have arrived, no boundaries                |
//!
//! line   | h e l l o \n | w o r l d \n |      a frame ends at and includes '\n'
//!
//! 1      | 05 | h e l l o |                   1-byte length, then payload
//! 2      | 00 05 | h e l l o |                2-byte big-endian length
//! 4      | 00 00 00 05 | h e l l o |          4-byte big-endian length
//!        +- header ---+- payload -+
//!
//! Exact(5) | h e l l o | w o r l d |          the next 5 bytes, each time
//!
//! ws     | GET / HTTP/1.1 ... \r\n\r\n |        the upgrade request: the first frame
//!        | 81 85 | 37 fa 21 3d | 7f 9f 4d 51 58 |   then a message: FIN+text, MASK+5,
//!        +- hdr -+- mask key --+- masked "Hello" -+   key, payload (unmasked in place)
//! ```
//!
//! `ws` is RFC 6455 (the `ws` cargo feature): the frame a handler gets is
//! a whole message's payload, however many fragments it came in; its
//! header, masking and control frames are the library's. The bit-level
//! diagram of a frame, and the rules, are in the `ws` module (feature `ws`).
//!
//! `Exact(n)` is gen_tcp's `recv(Socket, N)` on a `{packet, raw}` socket:
//! "the next n bytes as one frame", for a protocol that announces a length
//! in its own way (memcached's `VALUE key flags BYTES` line) — switch to
//! `Exact(BYTES + 2)` for the data block, then back to `Line`.
//!
//! Decoding is zero-copy: [`decode`] never copies or allocates; it returns
//! the position of the next complete frame inside the caller's buffer, so a
//! frame handed to the application is a slice of the connection's read
//! buffer.
//!
//! Two details keep the decoder cheap and safe against hostile input:
//!
//! - **A line is scanned once.** When no `\n` is found, the caller keeps a
//!   cursor (`scanned`) so that the next call resumes `memchr` where this
//!   one stopped: a 1 MiB line arriving in 1 KiB pieces costs 1 MiB of
//!   scanning, not 512 MiB (the quadratic rescan is a known bug of naive
//!   line codecs).
//! - **A length is checked before anything is reserved.** A header that
//!   announces more than `max_frame` is an error as soon as the header's
//!   bytes are in; the reader never grows its buffer for it. Likewise a
//!   line that has reached `max_frame` bytes with no `\n` is an error at
//!   once, not when (if ever) its end arrives.

use std::fmt;
use std::str::FromStr;

/// How the byte stream of a connection is cut into frames.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Framing {
    /// `{packet, raw}`: every read is delivered as it is.
    #[default]
    Raw,
    /// `{packet, line}`: bytes up to and including `\n`.
    Line,
    /// `{packet, 1}`: a 1-byte length, then that many bytes.
    Len1,
    /// `{packet, 2}`: a 2-byte big-endian length, then that many bytes.
    Len2,
    /// `{packet, 4}`: a 4-byte big-endian length, then that many bytes.
    Len4,
    /// `recv(Socket, N)`: every frame is exactly this many bytes, with no
    /// header on the wire. `Exact(0)` delivers whatever arrived, like
    /// `Raw` (as `recv(Socket, 0)` does).
    Exact(u32),
    /// WebSocket (RFC 6455): an HTTP/1.1 upgrade, whose request head is
    /// the first frame, then one frame per whole message, unmasked in
    /// place (see [`crate::ws`]). Decoded by [`crate::ws::decode`], which
    /// keeps the connection's state; [`decode`] never sees it.
    #[cfg(feature = "ws")]
    Ws,
}

impl Framing {
    /// The size of the length header (0 for `raw` and `line`).
    pub fn header_len(self) -> usize {
        match self {
            Framing::Raw | Framing::Line | Framing::Exact(_) => 0,
            // A WebSocket header depends on more than the length: see
            // `crate::ws::encode`.
            #[cfg(feature = "ws")]
            Framing::Ws => 0,
            Framing::Len1 => 1,
            Framing::Len2 => 2,
            Framing::Len4 => 4,
        }
    }

    /// The largest payload the header can describe.
    fn max_payload(self) -> usize {
        match self {
            Framing::Raw | Framing::Line | Framing::Exact(_) => usize::MAX,
            #[cfg(feature = "ws")]
            Framing::Ws => usize::MAX,
            Framing::Len1 => u8::MAX as usize,
            Framing::Len2 => u16::MAX as usize,
            Framing::Len4 => u32::MAX as usize,
        }
    }

    /// The header to put before a payload of `len` bytes when sending:
    /// `gen_tcp:send/2` on a `{packet, N}` socket adds it, and so does
    /// [`crate::Ctx::send`]. Returns the header buffer and its length.
    pub fn header(self, len: usize) -> Result<([u8; 4], usize), FrameError> {
        if len > self.max_payload() {
            return Err(FrameError::TooLarge { len, max: self.max_payload() });
        }
        let n = self.header_len();
        let be = (len as u32).to_be_bytes();
        let mut header = [0u8; 4];
        header[..n].copy_from_slice(&be[4 - n..]);
        Ok((header, n))
    }
}

impl FromStr for Framing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Framing::Raw),
            "line" => Ok(Framing::Line),
            "1" => Ok(Framing::Len1),
            "2" => Ok(Framing::Len2),
            "4" => Ok(Framing::Len4),
            #[cfg(feature = "ws")]
            "ws" => Ok(Framing::Ws),
            _ => match s.strip_prefix("exact:").and_then(|n| n.parse().ok()) {
                Some(n) => Ok(Framing::Exact(n)),
                None => Err(format!("unknown framing '{s}' (expected raw, line, 1, 2, 4, exact:N or ws)")),
            },
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Framing::Raw => f.write_str("raw"),
            Framing::Line => f.write_str("line"),
            Framing::Len1 => f.write_str("1"),
            Framing::Len2 => f.write_str("2"),
            Framing::Len4 => f.write_str("4"),
            Framing::Exact(n) => write!(f, "exact:{n}"),
            #[cfg(feature = "ws")]
            Framing::Ws => f.write_str("ws"),
        }
    }
}

/// A protocol error: the connection that sent it is closed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A frame (for `line`, the line with its `\n`) longer than allowed.
    TooLarge {
        /// The frame's length (at least; a line may be longer).
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => write!(f, "frame of {len}+ bytes exceeds the limit of {max}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Where a complete frame lies in the buffer given to [`decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Start of the payload (after the header, if any).
    pub start: usize,
    /// End of the payload (exclusive); for `line` just after the `\n`.
    pub end: usize,
}

/// What [`decode`] found at the start of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame; the caller consumes `frame.end` bytes.
    Frame(Frame),
    /// Not enough bytes yet. `need` is the total buffer length that the
    /// next frame is known to require (0 when unknown, as for a line).
    Incomplete {
        /// See above.
        need: usize,
    },
}

/// Find the first frame in `buf`.
///
/// `scanned` is the line cursor: how many bytes of `buf` are already known
/// to hold no `\n`. It is updated on `Incomplete` and reset on `Frame`; the
/// caller must reset it too when it changes the framing or discards bytes.
/// `max_frame` bounds a payload (for `line`, the line including `\n`).
pub fn decode(framing: Framing, buf: &[u8], scanned: &mut usize, max_frame: usize) -> Result<Decoded, FrameError> {
    match framing {
        // Decoded with its connection's state by `crate::ws::decode`.
        #[cfg(feature = "ws")]
        Framing::Ws => Ok(Decoded::Incomplete { need: 0 }),
        Framing::Raw | Framing::Exact(0) if buf.is_empty() => Ok(Decoded::Incomplete { need: 0 }),
        Framing::Raw | Framing::Exact(0) => Ok(Decoded::Frame(Frame { start: 0, end: buf.len() })),
        Framing::Exact(n) => {
            let n = n as usize;
            if n > max_frame {
                return Err(FrameError::TooLarge { len: n, max: max_frame });
            }
            if buf.len() < n {
                return Ok(Decoded::Incomplete { need: n });
            }
            Ok(Decoded::Frame(Frame { start: 0, end: n }))
        }
        Framing::Line => {
            let from = (*scanned).min(buf.len());
            match memchr::memchr(b'\n', &buf[from..]) {
                Some(i) => {
                    let end = from + i + 1;
                    *scanned = 0;
                    if end > max_frame {
                        return Err(FrameError::TooLarge { len: end, max: max_frame });
                    }
                    Ok(Decoded::Frame(Frame { start: 0, end }))
                }
                None => {
                    *scanned = buf.len();
                    // The line will be at least one byte longer (its '\n'):
                    // reject it now rather than buffer up to the end.
                    if buf.len() >= max_frame {
                        return Err(FrameError::TooLarge { len: buf.len() + 1, max: max_frame });
                    }
                    Ok(Decoded::Incomplete { need: 0 })
                }
            }
        }
        Framing::Len1 | Framing::Len2 | Framing::Len4 => {
            let header = framing.header_len();
            if buf.len() < header {
                return Ok(Decoded::Incomplete { need: header });
            }
            let len = buf[..header].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
            if len > max_frame {
                return Err(FrameError::TooLarge { len, max: max_frame });
            }
            let end = header + len;
            if buf.len() < end {
                return Ok(Decoded::Incomplete { need: end });
            }
            Ok(Decoded::Frame(Frame { start: header, end }))
        }
    }
}

/// What is left in the buffer when the peer has closed its write side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtEof {
    /// Nothing was left over.
    Clean,
    /// `line` mode: the final, unterminated line is a frame of its own.
    FinalLine,
    /// A prefixed frame was cut short: it is discarded.
    Truncated,
}

/// Classify the bytes that remain (after every complete frame was taken)
/// when the stream ends.
pub fn at_eof(framing: Framing, rest: &[u8]) -> AtEof {
    match framing {
        _ if rest.is_empty() => AtEof::Clean,
        Framing::Line => AtEof::FinalLine,
        // `decode` delivers any non-empty raw buffer, so this is unreachable
        // in practice; treat it like a final line for completeness.
        Framing::Raw => AtEof::FinalLine,
        Framing::Len1 | Framing::Len2 | Framing::Len4 | Framing::Exact(_) => AtEof::Truncated,
        #[cfg(feature = "ws")]
        Framing::Ws => AtEof::Truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framing: Framing, buf: &[u8], max: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut scanned = 0;
        while let Decoded::Frame(f) = decode(framing, &buf[at..], &mut scanned, max)? {
            out.push(buf[at + f.start..at + f.end].to_vec());
            at += f.end;
        }
        Ok(out)
    }

    #[test]
    fn line_keeps_newline_and_crlf() {
        let got = frames(Framing::Line, b"a\r\nbc\npartial", 100).unwrap();
        assert_eq!(got, vec![b"a\r\n".to_vec(), b"bc\n".to_vec()]);
    }

    #[test]
    fn line_limit_counts_the_newline() {
        assert!(frames(Framing::Line, b"abc\n", 4).is_ok());
        assert_eq!(frames(Framing::Line, b"abcd\n", 4), Err(FrameError::TooLarge { len: 5, max: 4 }));
        // No newline yet, but already as long as the limit: rejected early.
        assert!(frames(Framing::Line, b"abcd", 4).is_err());
        assert!(frames(Framing::Line, b"abc", 4).unwrap().is_empty());
    }

    #[test]
    fn line_cursor_resumes_where_it_stopped() {
        let mut scanned = 0;
        assert_eq!(decode(Framing::Line, b"abc", &mut scanned, 100), Ok(Decoded::Incomplete { need: 0 }));
        assert_eq!(scanned, 3);
        let r = decode(Framing::Line, b"abcd\n", &mut scanned, 100).unwrap();
        assert_eq!(r, Decoded::Frame(Frame { start: 0, end: 5 }));
        assert_eq!(scanned, 0);
    }

    #[test]
    fn prefixed_headers_are_big_endian() {
        assert_eq!(frames(Framing::Len1, b"\x02hi\x00", 10).unwrap(), vec![b"hi".to_vec(), b"".to_vec()]);
        assert_eq!(frames(Framing::Len2, b"\x00\x02hi", 10).unwrap(), vec![b"hi".to_vec()]);
        assert_eq!(frames(Framing::Len4, b"\x00\x00\x00\x02hi\x00\x00", 10).unwrap(), vec![b"hi".to_vec()]);
    }

    #[test]
    fn oversized_header_is_rejected_before_the_payload() {
        let mut scanned = 0;
        let r = decode(Framing::Len4, &[0x7f, 0xff, 0xff, 0xff], &mut scanned, 1 << 20);
        assert_eq!(r, Err(FrameError::TooLarge { len: 0x7fff_ffff, max: 1 << 20 }));
    }

    #[test]
    fn incomplete_prefixed_frame_says_what_it_needs() {
        let mut scanned = 0;
        assert_eq!(decode(Framing::Len2, b"\x00", &mut scanned, 100), Ok(Decoded::Incomplete { need: 2 }));
        assert_eq!(decode(Framing::Len2, b"\x00\x05ab", &mut scanned, 100), Ok(Decoded::Incomplete { need: 7 }));
    }

    #[test]
    fn header_encoding_round_trips_and_checks_capacity() {
        assert_eq!(Framing::Len2.header(258).unwrap(), ([1, 2, 0, 0], 2));
        assert_eq!(Framing::Len4.header(1).unwrap(), ([0, 0, 0, 1], 4));
        assert!(Framing::Len1.header(256).is_err());
        assert_eq!(Framing::Line.header(5).unwrap().1, 0);
    }

    #[test]
    fn eof_rules() {
        assert_eq!(at_eof(Framing::Line, b"tail"), AtEof::FinalLine);
        assert_eq!(at_eof(Framing::Len2, b"\x00"), AtEof::Truncated);
        assert_eq!(at_eof(Framing::Len4, b""), AtEof::Clean);
    }

    #[test]
    fn exact_takes_n_bytes_each_time_within_the_limit() {
        assert_eq!(frames(Framing::Exact(3), b"abcdefgh", 10).unwrap(), vec![b"abc".to_vec(), b"def".to_vec()]);
        let mut scanned = 0;
        assert_eq!(decode(Framing::Exact(5), b"ab", &mut scanned, 10), Ok(Decoded::Incomplete { need: 5 }));
        assert_eq!(decode(Framing::Exact(11), b"ab", &mut scanned, 10), Err(FrameError::TooLarge { len: 11, max: 10 }));
        assert_eq!(frames(Framing::Exact(0), b"xyz", 10).unwrap(), vec![b"xyz".to_vec()]);
        assert_eq!(at_eof(Framing::Exact(4), b"ab"), AtEof::Truncated);
        assert_eq!("exact:7".parse::<Framing>().unwrap(), Framing::Exact(7));
    }

    #[test]
    fn names_parse() {
        for name in ["raw", "line", "1", "2", "4"] {
            assert_eq!(name.parse::<Framing>().unwrap().to_string(), name);
        }
        assert!("3".parse::<Framing>().is_err());
    }
}
