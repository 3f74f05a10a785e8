//! Every decoder — `line`, `1`, `2`, `4`, `Exact(n)` — fed arbitrary bytes
//! in arbitrary pieces under an arbitrary `max_frame`, as the reactor feeds
//! it, must agree with a simple reference decoder that sees the whole
//! stream at once: the same frames, and an error exactly where the
//! reference finds a frame over the limit. Never a panic, never a slice
//! out of bounds, never a `need` hint over one frame under the limit.

#![no_main]

use edgeloop::framing::{decode, Decoded, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let framing = match input[0] % 5 {
        0 => Framing::Line,
        1 => Framing::Len1,
        2 => Framing::Len2,
        3 => Framing::Len4,
        _ => Framing::Exact(1 + u32::from(input[1]) % 63),
    };
    let max_frame = 1 + usize::from(u16::from_le_bytes([input[2], input[3]])) % 300;
    let (cuts, wire) = input[4..].split_at(input[4..].len().min(8));
    let (got, got_error) = feed(framing, wire, cuts, max_frame);
    let (want, want_error) = reference(framing, wire, max_frame);
    assert_eq!(got, want, "{framing} max {max_frame}");
    assert_eq!(got_error, want_error, "{framing} max {max_frame}");
});

/// Feed `wire` in pieces (cut at `cuts`, taken as positions) as the
/// reactor does, compacting the buffer now and then.
fn feed(framing: Framing, wire: &[u8], cuts: &[u8], max_frame: usize) -> (Vec<Vec<u8>>, bool) {
    let mut positions: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * wire.len() / 256).collect();
    positions.extend([0, wire.len()]);
    positions.sort_unstable();
    positions.dedup();
    let mut buf = Vec::new();
    let (mut start, mut scanned) = (0, 0);
    let mut frames = Vec::new();
    for piece in positions.windows(2).map(|w| &wire[w[0]..w[1]]) {
        if start > 0 && start * 2 >= buf.len() {
            buf.drain(..start);
            start = 0;
        }
        buf.extend_from_slice(piece);
        loop {
            match decode(framing, &buf[start..], &mut scanned, max_frame) {
                Ok(Decoded::Frame(f)) => {
                    frames.push(buf[start + f.start..start + f.end].to_vec());
                    start += f.end;
                    scanned = 0;
                }
                Ok(Decoded::Incomplete { need }) => {
                    if framing != Framing::Line {
                        assert!(need > buf.len() - start && need <= framing.header_len() + max_frame);
                    }
                    break;
                }
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

/// The rules over the whole stream at once.
fn reference(framing: Framing, wire: &[u8], max_frame: usize) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let rest = &wire[at..];
        let (start, end) = match framing {
            Framing::Line => match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i < max_frame => (0, i + 1),
                Some(_) => return (frames, true),
                None => return (frames, rest.len() >= max_frame),
            },
            Framing::Exact(n) => {
                let n = n as usize;
                if n > max_frame {
                    return (frames, true);
                }
                if rest.len() < n {
                    break;
                }
                (0, n)
            }
            _ => {
                let h = framing.header_len();
                if rest.len() < h {
                    break;
                }
                let len = rest[..h].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                if len > max_frame {
                    return (frames, true);
                }
                if rest.len() < h + len {
                    break;
                }
                (h, h + len)
            }
        };
        frames.push(rest[start..end].to_vec());
        at += end;
    }
    (frames, false)
}
