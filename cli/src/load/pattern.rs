//! What the generator sends, and how an echo is checked against it.
//!
//! Every message of a run has the same length on the wire, [`Pattern::wire_len`]:
//!
//! ```text
//! raw    |          body (size bytes)          |
//! line   |        body (size - 1 bytes)        | \n |
//! 1|2|4  | header |       body (size bytes)        |
//! ```
//!
//! The body is a window of a fixed pseudo-random *template* of
//! [`PERIOD`] + body bytes (none of them `\n`, so a line body never ends
//! early). Message `k` of connection `c` starts at rotation
//! `(c * 131 + k) mod PERIOD`: consecutive messages differ, connections
//! differ, and yet producing or checking a message costs one `memcpy` or
//! `memcmp` of a slice of the template — no per-message arithmetic over the
//! bytes, no allocation. A server that flips, drops, duplicates or
//! reorders bytes, or mixes up two connections' streams, is caught.

use std::rc::Rc;

use edgeloop::Framing;

/// Messages up to this long on the wire are also built once, all
/// [`PERIOD`] of them, to be sent by reference (see [`Pattern::prebuilt`]).
pub const PREBUILT_MAX: usize = 2048;

/// The number of distinct rotations of the template (a prime, so that no
/// message length lines up with it).
pub const PERIOD: usize = 251;

/// The bytes of every message of one run.
#[derive(Debug)]
pub struct Pattern {
    header: [u8; 4],
    header_len: usize,
    /// Bytes of the template in each message.
    body_len: usize,
    trailer: &'static [u8],
    template: Vec<u8>,
    wire_len: usize,
    /// Every message, whole, by rotation (short messages only).
    prebuilt: Vec<Rc<[u8]>>,
}

impl Pattern {
    /// The messages of `size` bytes with `framing` (see the module docs
    /// for what `size` counts). Fails if the size does not fit the framing.
    pub fn new(framing: Framing, size: usize) -> Result<Pattern, String> {
        let (body_len, trailer): (usize, &'static [u8]) = match framing {
            Framing::Raw if size == 0 => return Err("--size must be at least 1 with raw framing".into()),
            Framing::Line if size == 0 => {
                return Err("--size must be at least 1 with line framing (the line's \\n counts)".into())
            }
            Framing::Raw => (size, b""),
            Framing::Line => (size - 1, b"\n"),
            Framing::Len1 | Framing::Len2 | Framing::Len4 => (size, b""),
            _ => return Err("the load generator speaks raw, line, 1, 2 or 4".into()),
        };
        let (header, header_len) = framing
            .header(body_len)
            .map_err(|_| format!("--size {size} does not fit a {framing}-byte length header"))?;
        let mut template = Vec::with_capacity(PERIOD + body_len);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..PERIOD + body_len {
            // xorshift64: cheap, and every byte value turns up.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = (x >> 32) as u8;
            template.push(if b == b'\n' { b'\n' | 0x80 } else { b });
        }
        let mut pattern = Pattern {
            header,
            header_len,
            body_len,
            trailer,
            template,
            wire_len: header_len + body_len + trailer.len(),
            prebuilt: Vec::new(),
        };
        if pattern.wire_len <= PREBUILT_MAX {
            let mut msg = Vec::with_capacity(pattern.wire_len);
            for rot in 0..PERIOD as u16 {
                msg.clear();
                pattern.write(rot, &mut msg);
                pattern.prebuilt.push(Rc::from(&msg[..]));
            }
        }
        Ok(pattern)
    }

    /// The message at rotation `rot`, built once, when messages are short
    /// enough to keep them all: sending one is a reference count increment
    /// ([`edgeloop::Ctx::send_shared`]), no copy and no buffer.
    #[inline]
    pub fn prebuilt(&self, rot: u16) -> Option<&Rc<[u8]>> {
        self.prebuilt.get(rot as usize)
    }

    /// Bytes of one message on the wire (header and `\n` included).
    pub fn wire_len(&self) -> usize {
        self.wire_len
    }

    /// The rotation of a connection's first message.
    pub fn first_rotation(ordinal: u64) -> u16 {
        (ordinal.wrapping_mul(131) % PERIOD as u64) as u16
    }

    /// The rotation after `rot`.
    #[inline]
    pub fn next_rotation(rot: u16) -> u16 {
        if rot as usize + 1 == PERIOD {
            0
        } else {
            rot + 1
        }
    }

    /// The message as three pieces: header, body, trailer.
    #[inline]
    fn parts(&self, rot: u16) -> [&[u8]; 3] {
        let r = rot as usize;
        [&self.header[..self.header_len], &self.template[r..r + self.body_len], self.trailer]
    }

    /// Append the message at rotation `rot` to `out`.
    #[inline]
    pub fn write(&self, rot: u16, out: &mut Vec<u8>) {
        for part in self.parts(rot) {
            out.extend_from_slice(part);
        }
    }

    /// Whether `seg` equals bytes `off..off + seg.len()` of the message at
    /// rotation `rot` (`off + seg.len()` must not pass the message's end).
    #[inline]
    pub fn matches(&self, rot: u16, off: usize, seg: &[u8]) -> bool {
        if self.header_len == 0 && self.trailer.is_empty() {
            // raw: the message is a slice of the template.
            let start = rot as usize + off;
            return self.template[start..start + seg.len()] == *seg;
        }
        self.first_difference(rot, off, seg).is_none()
    }

    /// Where `seg` first differs from the message at rotation `rot` seen
    /// from `off`: the index in `seg` and the byte expected there.
    pub fn first_difference(&self, rot: u16, off: usize, mut seg: &[u8]) -> Option<(usize, u8)> {
        let mut skip = off;
        let mut done = 0;
        for part in self.parts(rot) {
            if seg.is_empty() {
                break;
            }
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let want = &part[skip..];
            let n = want.len().min(seg.len());
            if want[..n] != seg[..n] {
                let i = (0..n).find(|&i| want[i] != seg[i]).unwrap_or(0);
                return Some((done + i, want[i]));
            }
            seg = &seg[n..];
            done += n;
            skip = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(p: &Pattern, rot: u16) -> Vec<u8> {
        let mut v = Vec::new();
        p.write(rot, &mut v);
        v
    }

    #[test]
    fn shapes() {
        let p = Pattern::new(Framing::Raw, 64).unwrap();
        assert_eq!(message(&p, 0).len(), 64);
        let p = Pattern::new(Framing::Line, 64).unwrap();
        let m = message(&p, 3);
        assert_eq!(m.len(), 64);
        assert_eq!(m.iter().position(|&b| b == b'\n'), Some(63));
        let p = Pattern::new(Framing::Len2, 300).unwrap();
        let m = message(&p, 250);
        assert_eq!(&m[..2], &[1, 44]);
        assert_eq!(m.len(), 302);
        assert!(Pattern::new(Framing::Len1, 256).is_err());
        assert!(Pattern::new(Framing::Raw, 0).is_err());
        assert_eq!(Pattern::new(Framing::Len4, 0).unwrap().wire_len(), 4);
    }

    #[test]
    fn rotations_differ_and_pieces_match() {
        for framing in [Framing::Raw, Framing::Line, Framing::Len1, Framing::Len4] {
            let p = Pattern::new(framing, 40).unwrap();
            assert_ne!(message(&p, 0), message(&p, 1));
            let m = message(&p, 7);
            for off in 0..m.len() {
                for end in off..=m.len() {
                    assert!(p.matches(7, off, &m[off..end]));
                    assert!(p.first_difference(7, off, &m[off..end]).is_none());
                }
            }
            assert_eq!(**p.prebuilt(7).unwrap(), m[..]);
            let mut bad = m.clone();
            bad[20] ^= 1;
            assert!(!p.matches(7, 0, &bad));
            assert_eq!(p.first_difference(7, 10, &bad[10..]), Some((10, m[20])));
        }
    }
}
