//! Property tests of the deframer (`edgeloop::framing`), fed the way the
//! reactor feeds it: bytes arrive in pieces cut anywhere, each piece is
//! appended to a read buffer, every complete frame is taken, and the line
//! cursor (`scanned`) is kept between calls.
//!
//! The expected frames come from an independent, whole-buffer reading of
//! the rules in SPEC.md ("Framing"), written here without the crate.

use edgeloop::framing::{at_eof, decode, AtEof, Decoded, FrameError, Framing};
use proptest::prelude::*;
use proptest::sample::Index;

const PREFIXED: [Framing; 3] = [Framing::Len1, Framing::Len2, Framing::Len4];
const FRAMED: [Framing; 4] = [Framing::Line, Framing::Len1, Framing::Len2, Framing::Len4];
const ALL: [Framing; 5] = [Framing::Raw, Framing::Line, Framing::Len1, Framing::Len2, Framing::Len4];

/// What feeding a stream to the deframer produced.
#[derive(Debug)]
struct Fed {
    frames: Vec<Vec<u8>>,
    /// Unread bytes when the stream ended (or when the error came).
    rest: Vec<u8>,
    error: Option<FrameError>,
}

/// Feeds `wire`, cut at `cuts`, to `decode` piece by piece, as the reactor
/// does. Checks on the way that the `need` hint of an incomplete prefixed
/// frame asks for more than is buffered and no more than one frame under
/// the limit (the reader reserves that much).
fn feed(framing: Framing, wire: &[u8], cuts: &[usize], max_frame: usize) -> Fed {
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0; // unread bytes are buf[start..]
    let mut scanned = 0; // the line cursor, relative to `start`
    let mut frames = Vec::new();
    for piece in pieces(wire, cuts) {
        // Compaction (ReadBuf::prepare): the tail moves to the front; the
        // cursor counts unread bytes, so it stays valid.
        if start > 0 && start * 2 >= buf.len() {
            buf.drain(..start);
            start = 0;
        }
        buf.extend_from_slice(piece);
        loop {
            match decode(framing, &buf[start..], &mut scanned, max_frame) {
                Ok(Decoded::Frame(f)) => {
                    assert!(f.start <= f.end && start + f.end <= buf.len(), "frame {f:?} out of bounds");
                    frames.push(buf[start + f.start..start + f.end].to_vec());
                    start += f.end;
                    scanned = 0;
                }
                Ok(Decoded::Incomplete { need }) => {
                    if framing != Framing::Line && framing != Framing::Raw {
                        let unread = buf.len() - start;
                        assert!(need > unread, "need {need} with {unread} bytes buffered");
                        assert!(need <= framing.header_len() + max_frame, "need {need} over the limit");
                    }
                    break;
                }
                Err(error) => return Fed { frames, rest: buf[start..].to_vec(), error: Some(error) },
            }
        }
    }
    Fed { frames, rest: buf[start..].to_vec(), error: None }
}

/// `wire` cut at the (unsorted, possibly repeated) positions `cuts`.
fn pieces<'a>(wire: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
    cuts.push(0);
    cuts.push(wire.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| &wire[w[0]..w[1]]).collect()
}

fn header_len(framing: Framing) -> usize {
    match framing {
        Framing::Len1 => 1,
        Framing::Len2 => 2,
        Framing::Len4 => 4,
        // Ws is not generated here: tests/websocket.rs and the decoder's own
        // tests cover it (and `Framing` may grow).
        _ => 0,
    }
}

/// The wire form of one frame (a line gets its `\n`, a prefixed payload its
/// big-endian length) and the frame the decoder must return for it.
fn encode(framing: Framing, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match framing {
        Framing::Line => {
            let mut line = payload.to_vec();
            line.push(b'\n');
            (line.clone(), line)
        }
        _ => {
            let n = header_len(framing);
            let mut wire = (payload.len() as u64).to_be_bytes()[8 - n..].to_vec();
            wire.extend_from_slice(payload);
            (wire, payload.to_vec())
        }
    }
}

/// Makes an arbitrary payload valid for `framing`: no `\n` inside a line,
/// no more bytes than a 1-byte header can announce.
fn fit(framing: Framing, mut payload: Vec<u8>) -> Vec<u8> {
    match framing {
        Framing::Line => payload.iter_mut().filter(|b| **b == b'\n').for_each(|b| *b = b'.'),
        Framing::Len1 => payload.truncate(255),
        _ => {}
    }
    payload
}

/// The rules read over the whole stream at once: the frames before the
/// first one over `max_frame`, and whether there is such a frame. For a
/// line, the limit counts the `\n`, and an unterminated tail already
/// `max_frame` long is over it (its `\n` can only make it longer).
fn reference(framing: Framing, wire: &[u8], max_frame: usize) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let rest = &wire[at..];
        match framing {
            Framing::Raw => unreachable!("raw has no frames to check"),
            Framing::Line => match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i < max_frame => {
                    frames.push(rest[..=i].to_vec());
                    at += i + 1;
                }
                Some(_) => return (frames, true),
                None => return (frames, rest.len() >= max_frame),
            },
            _ => {
                let n = header_len(framing);
                if rest.len() < n {
                    break;
                }
                let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
                if len > max_frame {
                    return (frames, true);
                }
                if rest.len() < n + len {
                    break;
                }
                frames.push(rest[n..n + len].to_vec());
                at += n + len;
            }
        }
    }
    (frames, false)
}

fn cut_positions(len: usize, cuts: &[Index]) -> Vec<usize> {
    cuts.iter().map(|c| c.index(len + 1)).collect()
}

fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 0..30)
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..40)
}

proptest! {
    /// Any frames, concatenated and cut anywhere, decode to exactly those frames, with nothing left over.
    #[test]
    fn split_frames_decode_to_the_originals(
        which in 0..FRAMED.len(),
        payloads in payloads(),
        cuts in cuts(),
    ) {
        let framing = FRAMED[which];
        let (wire, expected): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            payloads.into_iter().map(|p| encode(framing, &fit(framing, p))).unzip();
        let wire = wire.concat();
        let fed = feed(framing, &wire, &cut_positions(wire.len(), &cuts), 1 << 20);
        prop_assert_eq!(fed.error, None);
        prop_assert_eq!(fed.frames, expected);
        prop_assert!(fed.rest.is_empty());
        prop_assert_eq!(at_eof(framing, &fed.rest), AtEof::Clean);
    }

    /// Raw: whatever the cuts, the frames are non-empty and together are exactly the bytes sent.
    #[test]
    fn raw_frames_are_the_bytes_in_order(wire in prop::collection::vec(any::<u8>(), 0..3000), cuts in cuts()) {
        let fed = feed(Framing::Raw, &wire, &cut_positions(wire.len(), &cuts), 16);
        prop_assert_eq!(fed.error, None);
        prop_assert!(fed.frames.iter().all(|f| !f.is_empty()));
        prop_assert_eq!(fed.frames.concat(), wire);
    }

    /// Line: a final unterminated line is left over and classified as a final frame at end of stream.
    #[test]
    fn final_unterminated_line_is_left_for_eof(
        payloads in payloads(),
        tail in prop::collection::vec(any::<u8>(), 1..600),
        cuts in cuts(),
    ) {
        let (wire, expected): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            payloads.into_iter().map(|p| encode(Framing::Line, &fit(Framing::Line, p))).unzip();
        let tail = fit(Framing::Line, tail);
        let wire = [wire.concat(), tail.clone()].concat();
        let fed = feed(Framing::Line, &wire, &cut_positions(wire.len(), &cuts), 1 << 20);
        prop_assert_eq!(fed.error, None);
        prop_assert_eq!(fed.frames, expected);
        prop_assert_eq!(&fed.rest, &tail);
        prop_assert_eq!(at_eof(Framing::Line, &fed.rest), AtEof::FinalLine);
    }

    /// Prefixed: a frame cut short (in its header or payload) is left over and classified as truncated.
    #[test]
    fn cut_prefixed_frame_is_truncated_at_eof(
        which in 0..PREFIXED.len(),
        payloads in payloads(),
        last in prop::collection::vec(any::<u8>(), 1..255),
        keep in any::<Index>(),
        cuts in cuts(),
    ) {
        let framing = PREFIXED[which];
        let (wire, expected): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            payloads.into_iter().map(|p| encode(framing, &fit(framing, p))).unzip();
        let (last_wire, _) = encode(framing, &last);
        // Keep 1..len-1 bytes: cut inside the header or inside the payload.
        let partial = &last_wire[..1 + keep.index(last_wire.len() - 1)];
        let wire = [wire.concat(), partial.to_vec()].concat();
        let fed = feed(framing, &wire, &cut_positions(wire.len(), &cuts), 1 << 20);
        prop_assert_eq!(fed.error, None);
        prop_assert_eq!(fed.frames, expected);
        prop_assert_eq!(&fed.rest[..], partial);
        prop_assert_eq!(at_eof(framing, &fed.rest), AtEof::Truncated);
    }

    /// Arbitrary bytes with a small limit: no panic, and an error (TooLarge, naming the limit) exactly when the input holds a frame over it.
    #[test]
    fn arbitrary_bytes_never_panic_and_oversize_is_always_caught(
        which in 0..ALL.len(),
        wire in prop::collection::vec(any::<u8>(), 0..400),
        newlines in prop::collection::vec(any::<Index>(), 0..20),
        max_frame in 1usize..64,
        cuts in cuts(),
    ) {
        let framing = ALL[which];
        // Sprinkle newlines so that line mode sees lines both under and over the limit.
        let mut wire = wire;
        if !wire.is_empty() {
            for i in &newlines {
                let at = i.index(wire.len());
                wire[at] = b'\n';
            }
        }
        let fed = feed(framing, &wire, &cut_positions(wire.len(), &cuts), max_frame);
        if let Some(FrameError::TooLarge { len, max }) = fed.error {
            prop_assert_eq!(max, max_frame);
            prop_assert!(len > max_frame, "TooLarge with len {} under the limit {}", len, max);
        }
        if framing == Framing::Raw {
            prop_assert_eq!(fed.error, None);
            prop_assert_eq!(fed.frames.concat(), wire);
        } else {
            let (frames, too_large) = reference(framing, &wire, max_frame);
            prop_assert_eq!(fed.error.is_some(), too_large, "error {:?}", fed.error);
            prop_assert_eq!(fed.frames, frames);
        }
    }

    /// A prefixed header over the limit is an error as soon as the header is in, before any payload.
    #[test]
    fn oversized_header_is_an_error_without_its_payload(
        which in 0..PREFIXED.len(),
        max_frame in 0usize..250,
        excess in 1usize..5,
    ) {
        let framing = PREFIXED[which];
        let (wire, _) = encode(framing, &vec![0u8; max_frame + excess]);
        let header = &wire[..header_len(framing)];
        let fed = feed(framing, header, &[], max_frame);
        prop_assert_eq!(fed.error, Some(FrameError::TooLarge { len: max_frame + excess, max: max_frame }));
    }
}
