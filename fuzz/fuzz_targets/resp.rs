//! The RESP reader (the chat's Redis replies), fed as the reactor feeds
//! it: each frame cut with the framing the reader asks for (`Line`, or
//! `Exact` for bulk strings, in pieces no longer than `max_frame`).
//!
//! - Arbitrary bytes: never a panic; a protocol error ends the stream (the
//!   chat then treats Redis as lost).
//! - Arrays of bulk strings encoded by the chat's own encoder, under any
//!   frame limit: decoded back exactly.

#![no_main]

use edgeloop::framing::{decode, Decoded};
use edgeloop_cli::servers::chat::resp::{Builder, Encoder, Limits, Reader, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&limit, rest)) = input.split_first() else { return };
    // At least a RESP header line (`*`, 20 digits, CRLF), as any real
    // `--max-frame` is; small enough to cut bulk strings into pieces.
    let limits = Limits { frame: 32 + usize::from(limit), bulk: 1 << 16, array: 1 << 13 };
    // Arbitrary bytes.
    replies(rest, limits);
    // A command of the input's pieces, split at 0xff bytes.
    let args: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
    let mut encoder = Encoder::default();
    encoder.command(&args);
    let (got, error) = replies(&encoder.buf, limits);
    assert!(error.is_none(), "{error:?}");
    let want = Reply::Array(args.iter().map(|a| Reply::Bulk(a.to_vec())).collect());
    assert_eq!(got, [want]);
});

/// Every reply in `wire`, and the protocol error that stopped it, if any.
fn replies(wire: &[u8], limits: Limits) -> (Vec<Reply>, Option<String>) {
    let mut reader = Reader::new(limits);
    let mut builder = Builder::default();
    let mut out = Vec::new();
    let (mut at, mut scanned) = (0, 0);
    loop {
        let frame = match decode(reader.framing(), &wire[at..], &mut scanned, limits.frame) {
            Ok(Decoded::Frame(f)) => &wire[at + f.start..at + f.end],
            Ok(Decoded::Incomplete { .. }) => return (out, None),
            Err(e) => return (out, Some(e.to_string())),
        };
        at += frame.len();
        scanned = 0;
        match reader.feed(frame) {
            Ok(Some(item)) => {
                if let Some(reply) = builder.push(&item) {
                    out.push(reply);
                }
            }
            Ok(None) => {}
            Err(e) => return (out, Some(e.to_string())),
        }
    }
}
