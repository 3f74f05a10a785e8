//! Deframing throughput for every framing, small and large frames:
//! `cargo bench --bench framing`. Criterion reports bytes/s (GB/s); the
//! frame rate is that divided by the frame size shown in the name.
//!
//! The loop is the reactor's: decode from the front of a buffer holding many
//! frames, consume, repeat — so this measures `framing::decode` itself (a
//! `memchr` or a header read per frame), not memory copies.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgeloop::framing::{decode, Decoded, Framing};
use std::hint::black_box;

const BUFFER: usize = 1 << 20;

/// A buffer of back-to-back frames of `payload` bytes each.
fn frames(framing: Framing, payload: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(BUFFER + payload + 4);
    while buf.len() < BUFFER {
        match framing {
            Framing::Line => {
                buf.extend((0..payload - 1).map(|i| b'a' + (i % 26) as u8));
                buf.push(b'\n');
            }
            _ => {
                let (header, n) = framing.header(payload).unwrap();
                buf.extend_from_slice(&header[..n]);
                buf.extend((0..payload).map(|i| i as u8));
            }
        }
    }
    buf
}

/// Decode every frame in `buf`; returns the number of frames.
fn decode_all(framing: Framing, buf: &[u8]) -> usize {
    let (mut at, mut count, mut scanned) = (0, 0, 0);
    while let Ok(Decoded::Frame(f)) = decode(framing, &buf[at..], &mut scanned, 1 << 20) {
        black_box(&buf[at + f.start..at + f.end]);
        at += f.end;
        count += 1;
    }
    count
}

fn deframing(c: &mut Criterion) {
    let mut group = c.benchmark_group("deframe");
    for framing in [Framing::Line, Framing::Len1, Framing::Len2, Framing::Len4] {
        for payload in [64usize, 200, 4096, 65_000] {
            if framing == Framing::Len1 && payload > 255 {
                continue;
            }
            let buf = frames(framing, payload);
            group.throughput(Throughput::Bytes(buf.len() as u64));
            group.bench_with_input(BenchmarkId::new(framing.to_string(), payload), &buf, |b, buf| {
                b.iter(|| decode_all(framing, buf))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, deframing);
criterion_main!(benches);
