//! Malformed frames of every framing on `--workers 2`.

use super::*;

/// `--max-frame` for the malformed-frame tests: small enough that a
/// `{packet, 1}` header can announce more.
const MAX_FRAME: usize = 100;
/// Each scenario runs on this many fresh connections, so that both
/// workers see each one (the kernel spreads connections at random).
const CONNS_PER_SCENARIO: usize = 4;
const BYSTANDERS: usize = 20;

/// A framing as the wire sees it; `header` 0 is `line`.
#[derive(Clone, Copy, Debug)]
struct Wire {
    name: &'static str,
    header: usize,
}

const FRAMINGS: [Wire; 4] = [
    Wire { name: "line", header: 0 },
    Wire { name: "1", header: 1 },
    Wire { name: "2", header: 2 },
    Wire { name: "4", header: 4 },
];

/// What a correct server does with bytes sent on one connection.
#[derive(Debug)]
struct Expected {
    /// The frames it echoes, on the wire (with header or `\n`).
    echo: Vec<u8>,
    /// A frame over `MAX_FRAME` comes first: the server closes the
    /// connection, sending at most a prefix of `echo`, and must do so
    /// without waiting for more bytes or the end of the stream.
    too_large: bool,
}

impl Wire {
    fn is_line(self) -> bool {
        self.header == 0
    }

    /// One frame on the wire: a line with its `\n`, or a length header and
    /// the payload.
    fn frame(self, payload: &[u8]) -> Vec<u8> {
        if self.is_line() {
            assert!(!payload.contains(&b'\n'), "a line payload holds no newline");
            [payload, b"\n"].concat()
        } else {
            [self.length_header(payload.len() as u64), payload.to_vec()].concat()
        }
    }

    /// A length header announcing `len` (truncated to the header's width).
    fn length_header(self, len: u64) -> Vec<u8> {
        len.to_be_bytes()[8 - self.header..].to_vec()
    }

    /// The largest payload within `MAX_FRAME` (a line's `\n` counts).
    fn largest_payload(self) -> usize {
        if self.is_line() {
            MAX_FRAME - 1
        } else {
            MAX_FRAME
        }
    }

    /// Random bytes; for a line payload, without `\n` (every other value,
    /// `\r` and NUL included).
    fn payload(self, rng: &mut StdRng, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| loop {
                let b: u8 = rng.gen();
                if !(self.is_line() && b == b'\n') {
                    break b;
                }
            })
            .collect()
    }

    /// SPEC.md's framing rules, written here from the spec and not from the
    /// crate: what a server with `--max-frame MAX_FRAME` does with `wire`,
    /// if the client then shuts down its write side (unless `too_large`).
    fn expected(self, wire: &[u8]) -> Expected {
        let mut echo = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let rest = &wire[at..];
            if self.is_line() {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) if i < MAX_FRAME => {
                        echo.extend_from_slice(&rest[..=i]);
                        at += i + 1;
                    }
                    // A line whose first MAX_FRAME bytes hold no `\n` can
                    // only be over the limit: refused once they are in.
                    _ if rest.len() >= MAX_FRAME => return Expected { echo, too_large: true },
                    Some(_) => unreachable!(),
                    None => {
                        // The final, unterminated line, at end of stream.
                        echo.extend_from_slice(rest);
                        break;
                    }
                }
            } else {
                if rest.len() < self.header {
                    break; // cut in the header: discarded at end of stream
                }
                let len = rest[..self.header].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
                if len > MAX_FRAME {
                    return Expected { echo, too_large: true };
                }
                if rest.len() < self.header + len {
                    break; // cut in the payload: discarded at end of stream
                }
                echo.extend_from_slice(&rest[..self.header + len]);
                at += self.header + len;
            }
        }
        Expected { echo, too_large: false }
    }
}

/// How a scenario's bytes are sent, and how the connection ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Delivery {
    /// One write; then half-close (or wait for the server's close).
    Whole,
    /// One write per byte, each its own segment, a pause between them.
    ByteByByte,
    /// One write, then a reset: the server must just drop it.
    ThenReset,
}

struct Scenario {
    name: &'static str,
    wire: Vec<u8>,
    send: Delivery,
}

/// Every kind of malformed and awkward input for `f`; `seed` varies the
/// random parts from one connection to the next.
fn scenarios(f: Wire, seed: u64) -> Vec<Scenario> {
    let mut rng = StdRng::seed_from_u64(seed);
    let largest = f.largest_payload();
    let mut zero_length: Vec<u8> = (0..20).flat_map(|_| f.frame(b"")).collect();
    zero_length.extend(f.frame(b"between"));
    zero_length.extend((0..5).flat_map(|_| f.frame(b"")));
    let at_limit = [f.frame(&f.payload(&mut rng, largest)), f.frame(b""), f.frame(&f.payload(&mut rng, largest))];
    let one_over = [f.frame(b"ok"), f.frame(b""), f.frame(&f.payload(&mut rng, largest + 1))];
    // The largest header the width allows; for line, a 10 000-byte line.
    let huge = if f.is_line() { f.payload(&mut rng, 10_000) } else { vec![0xff; f.header] };
    // Only a header (or only MAX_FRAME bytes of a line): the server must
    // decide from these alone, with nothing more coming.
    let over_alone = if f.is_line() { f.payload(&mut rng, MAX_FRAME) } else { f.length_header(MAX_FRAME as u64 + 1) };
    let split =
        [f.frame(b""), f.frame(b"x"), f.frame(&f.payload(&mut rng, 50)), f.frame(&f.payload(&mut rng, largest))]
            .concat();
    let binary: Vec<u8> = (0..50)
        .flat_map(|_| {
            let len = rng.gen_range(0..=largest);
            f.frame(&f.payload(&mut rng, len))
        })
        .collect();
    let garbage: Vec<u8> = (0..2000).map(|_| rng.gen()).collect();
    let cut_payload = [f.frame(b"complete"), f.frame(b"cut short")[..7].to_vec()].concat();
    let cut_header = [f.frame(b"complete"), f.length_header(5)[..f.header.saturating_sub(1)].to_vec()].concat();
    let reset_mid_frame = [f.frame(b"fine"), f.frame(&f.payload(&mut rng, 50))[..20].to_vec()].concat();

    let mut all = vec![
        Scenario { name: "zero-length frames", wire: zero_length, send: Delivery::Whole },
        Scenario { name: "frames at the limit", wire: at_limit.concat(), send: Delivery::Whole },
        Scenario { name: "one byte over the limit after good frames", wire: one_over.concat(), send: Delivery::Whole },
        Scenario { name: "the largest header", wire: huge, send: Delivery::Whole },
        Scenario { name: "an over-limit header alone", wire: over_alone.clone(), send: Delivery::Whole },
        Scenario { name: "frames split byte by byte", wire: split, send: Delivery::ByteByByte },
        Scenario { name: "an over-limit header byte by byte", wire: over_alone, send: Delivery::ByteByByte },
        Scenario { name: "binary payloads", wire: binary, send: Delivery::Whole },
        Scenario { name: "random garbage", wire: garbage, send: Delivery::Whole },
        Scenario { name: "stream cut inside a payload", wire: cut_payload, send: Delivery::Whole },
        Scenario { name: "reset in the middle of a frame", wire: reset_mid_frame, send: Delivery::ThenReset },
    ];
    if f.header > 1 {
        all.push(Scenario { name: "stream cut inside a header", wire: cut_header, send: Delivery::Whole });
    }
    all
}

/// Runs one scenario on a fresh connection and checks the outcome against
/// [`Wire::expected`]; returns whether the server had to close it for a
/// frame over the limit.
fn run_scenario(server: &Server, f: Wire, sc: &Scenario) -> bool {
    let what = format!("--framing {}: {}", f.name, sc.name);
    let expected = f.expected(&sc.wire);
    let mut stream = server.connect();
    stream.set_nodelay(true).unwrap();
    let pieces: Vec<&[u8]> = match sc.send {
        Delivery::ByteByByte => sc.wire.chunks(1).collect(),
        Delivery::Whole | Delivery::ThenReset => vec![&sc.wire],
    };
    for piece in pieces {
        match stream.write_all(piece) {
            Ok(()) => {}
            // The server may close before the last byte is in, when it
            // need not read further.
            Err(e) if expected.too_large && is_reset(&e) => break,
            Err(e) => panic!("{what}: write: {e}"),
        }
        if sc.send == Delivery::ByteByByte {
            thread::sleep(Duration::from_micros(300));
        }
    }
    if sc.send == Delivery::ThenReset {
        reset(stream);
        return false;
    }
    if expected.too_large {
        // No half-close: the frame must be refused on what was sent.
        let got = read_until_closed(&mut stream, &what);
        assert!(expected.echo.starts_with(&got), "{what}: echoed {got:?}, not a prefix of {:?}", expected.echo);
    } else {
        stream.shutdown(Shutdown::Write).unwrap();
        let got = read_to_eof(&mut stream);
        assert!(got == expected.echo, "{what}: echoed {got:?}, expected {:?}", expected.echo);
    }
    expected.too_large
}

/// `--workers 2`, every framing: oversized headers and lines close only
/// their connection (without waiting for more), zero-length, split,
/// binary and cut frames come back as SPEC.md says, garbage is judged as
/// a decoder written from the spec judges it; bystanders on both workers
/// are served throughout, nothing panics, nothing leaks, and a new client
/// is served at the end.
#[test]
fn malformed_frames_on_two_workers_cost_only_their_connection() {
    let _serial = one_at_a_time();
    for f in FRAMINGS {
        let max_frame = MAX_FRAME.to_string();
        let (mut server, metrics) =
            start_with_metrics(&["echo", "--workers", "2", "--framing", f.name, "--max-frame", &max_frame]);
        let mut bystanders: Vec<TcpStream> = (0..BYSTANDERS).map(|_| server.connect()).collect();
        wait_until(Duration::from_secs(5), "bystanders on both workers", || {
            let s = scrape(metrics);
            let w0 = metric(&s, "edgeloop_worker_connections", Some(("worker", "0")));
            let w1 = metric(&s, "edgeloop_worker_connections", Some(("worker", "1")));
            w0 > 0.0 && w1 > 0.0 && w0 + w1 == BYSTANDERS as f64
        });

        let mut too_large = 0;
        let mut runs = 0;
        for conn in 0..CONNS_PER_SCENARIO {
            for sc in scenarios(f, 1000 * f.header as u64 + conn as u64) {
                too_large += usize::from(run_scenario(&server, f, &sc));
                runs += 1;
                for (i, b) in bystanders.iter_mut().enumerate() {
                    round_trip(b, &f.frame(format!("bystander {i} after {}", sc.name).as_bytes()));
                }
            }
        }

        // Every refusal was for the frame, and nothing else stayed open.
        wait_until(Duration::from_secs(10), "the refusals counted and the others closed", || {
            let s = scrape(metrics);
            metric(&s, "edgeloop_connections_closed_total", Some(("reason", "frame_too_large"))) == too_large as f64
                && metric(&s, "edgeloop_connections", None) == BYSTANDERS as f64
        });
        assert_eq!(metric(&scrape(metrics), "edgeloop_panics_total", None), 0.0, "--framing {}", f.name);
        let mut newcomer = server.connect();
        for payload in [&b""[..], b"a well-behaved client", &[0u8, 13, 255]] {
            round_trip(&mut newcomer, &f.frame(payload));
        }
        assert_alive_without_panic(&mut server);
        eprintln!(
            "malformed --framing {} --workers 2: {runs} hostile connections, {too_large} refused for a frame over \
             {MAX_FRAME} bytes; {BYSTANDERS} bystanders and a newcomer served",
            f.name
        );
    }
}
