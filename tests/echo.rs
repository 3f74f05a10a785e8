//! The `edgeloop echo` server over real sockets: the promises of SPEC.md's
//! "Echo server", "Framing", "Command line" and "Promises" sections, checked
//! against the real binary on 127.0.0.1.
//!
//! No test measures speed. Timeouts are generous upper bounds that only keep
//! a broken server from hanging the suite.

mod common;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_edgeloop");
const MIB: usize = 1 << 20;
/// The server's default `--max-outbuf`.
const DEFAULT_MAX_OUTBUF: usize = 4 * MIB;

// ---------------------------------------------------------------------------
// Helpers: reproducible data
// ---------------------------------------------------------------------------

/// Cuts `data` into pieces of random lengths in `1..=max_piece`.
fn random_pieces<'a>(rng: &mut StdRng, data: &'a [u8], max_piece: usize) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let n = rng.gen_range(1..=max_piece).min(data.len() - at);
        pieces.push(&data[at..at + n]);
        at += n;
    }
    pieces
}

// ---------------------------------------------------------------------------
// Helpers: sockets
// ---------------------------------------------------------------------------

/// Whether the server has closed this connection: reads (discarding any
/// echo still owed) until end of stream or a reset. `false` if 10 s pass
/// first.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn is_would_block(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Waits until the server's stderr mentions one of `words` (any case).
fn wait_for_log(server: &Server, what: &str, words: &[&str]) {
    wait_until(Duration::from_secs(10), what, || {
        let text = server.stderr_text().to_lowercase();
        words.iter().any(|w| text.contains(w))
    });
}

/// Gives the server 200 ms to answer and checks that it has not: a
/// correct server never answers, so this cannot fail spuriously (a slow
/// one may let a wrong answer go unnoticed, never the reverse).
fn assert_nothing_echoed(stream: &mut TcpStream, what: &str) {
    thread::sleep(Duration::from_millis(200));
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{what} was answered: {other:?}"),
    }
    stream.set_nonblocking(false).unwrap();
}

/// Checks the server process is still running.
fn assert_alive(server: &mut Server) {
    assert!(server.child.try_wait().unwrap().is_none(), "server exited; stderr:\n{}", server.stderr_text());
}

// ---------------------------------------------------------------------------
// Helpers: `{packet, N}` frames, written independently of the crate
// ---------------------------------------------------------------------------

/// A `{packet, N}` frame: an N-byte big-endian length, then the payload.
fn encode_frame(header: usize, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u64).to_be_bytes()[8 - header..].to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Reads one `{packet, N}` frame, as `gen_tcp:recv` would, and returns its
/// payload.
fn read_frame(stream: &mut TcpStream, header: usize) -> Vec<u8> {
    let mut head = vec![0u8; header];
    stream.read_exact(&mut head).expect("read frame header");
    let len = head.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).expect("read frame payload");
    payload
}

/// Random payloads for `{packet, N}`: lengths up to what the header holds,
/// every tenth one empty, and the largest length the header allows.
fn random_payloads(rng: &mut StdRng, header: usize, count: usize) -> Vec<Vec<u8>> {
    let (typical, largest) = match header {
        1 => (255, 255),
        2 => (3000, 65535),
        _ => (5000, 200_000),
    };
    let mut payloads: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let len = if i % 10 == 0 { 0 } else { rng.gen_range(0..=typical) };
            (0..len).map(|_| rng.gen()).collect()
        })
        .collect();
    payloads.push((0..largest).map(|_| rng.gen()).collect());
    payloads
}

/// Random lines (no `\n` inside), some ending in `\r\n`, some empty.
fn random_lines(rng: &mut StdRng, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| {
            let len = rng.gen_range(0..200);
            let mut line: Vec<u8> = (0..len).map(|_| rng.gen_range(0u8..=255)).filter(|&b| b != b'\n').collect();
            if rng.gen_bool(0.3) {
                line.push(b'\r');
            }
            line.push(b'\n');
            line
        })
        .collect()
}

/// Sends `pieces` from a thread, one write each (TCP_NODELAY, so they leave
/// as separate segments as far as the kernel allows).
fn send_pieces_in_background(stream: &TcpStream, pieces: Vec<Vec<u8>>) -> thread::JoinHandle<()> {
    let mut out = stream.try_clone().expect("clone");
    out.set_nodelay(true).unwrap();
    out.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    thread::spawn(move || {
        for piece in pieces {
            out.write_all(&piece).expect("write piece");
        }
    })
}

// ---------------------------------------------------------------------------
// Integrity
// ---------------------------------------------------------------------------

/// Raw mode: 8 MiB of random bytes, written and read concurrently, come back exactly.
#[test]
fn raw_echo_returns_every_byte_exactly() {
    let server = Server::start(&["echo"]);
    let mut client = server.connect();
    let total = 8 * MIB;
    let seed = 1;
    let mut rng = StdRng::seed_from_u64(seed);
    let data = stream_bytes(seed, 0, total);
    let pieces = random_pieces(&mut rng, &data, 100_000).into_iter().map(<[u8]>::to_vec).collect();
    let writer = send_pieces_in_background(&client, pieces);
    expect_stream(&mut client, seed, 0, total);
    writer.join().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut client).is_empty(), "bytes after the echo");
}

// ---------------------------------------------------------------------------
// Line framing
// ---------------------------------------------------------------------------

/// Line mode: lines split at random points, or packed many per write, come back unchanged (`\r\n` kept).
#[test]
fn line_echo_survives_any_split_and_packing() {
    let server = Server::start(&["echo", "--framing", "line"]);
    let mut rng = StdRng::seed_from_u64(2);
    let wire: Vec<u8> = random_lines(&mut rng, 2000).concat();
    assert!(wire.windows(2).any(|w| w == b"\r\n"), "the sample must hold \\r\\n lines");

    let mut split = server.connect();
    let pieces = random_pieces(&mut rng, &wire, 300).into_iter().map(<[u8]>::to_vec).collect();
    let writer = send_pieces_in_background(&split, pieces);
    let mut back = vec![0u8; wire.len()];
    split.read_exact(&mut back).expect("read lines");
    writer.join().unwrap();
    assert!(back == wire, "lines sent in random pieces came back different");

    let mut packed = server.connect();
    let writer = send_pieces_in_background(&packed, vec![wire.clone()]);
    packed.read_exact(&mut back).expect("read lines");
    writer.join().unwrap();
    assert!(back == wire, "lines packed in one write came back different");
}

/// Line mode: nothing is echoed before the `\n` arrives; then the whole line is.
#[test]
fn line_echo_waits_for_the_newline() {
    let server = Server::start(&["echo", "--framing", "line"]);
    let mut client = server.connect();
    client.write_all(b"hel").unwrap();
    assert_nothing_echoed(&mut client, "a partial line");
    client.write_all(b"lo\n").unwrap();
    let mut back = [0u8; 6];
    client.read_exact(&mut back).expect("read the line");
    assert_eq!(&back, b"hello\n");
}

/// `exact:N`: frames of exactly N bytes; a partial one waits for the rest.
#[test]
fn exact_framing_echoes_whole_blocks_only() {
    let server = Server::start(&["echo", "--framing", "exact:4"]);
    let mut client = server.connect();
    client.write_all(b"abcdef").unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).expect("read the first block");
    assert_eq!(&back, b"abcd");
    assert_nothing_echoed(&mut client, "half a block");
    client.write_all(b"gh").unwrap();
    client.read_exact(&mut back).expect("read the second block");
    assert_eq!(&back, b"efgh");
}

/// Line mode: at half-close the final unterminated line is echoed without `\n`, then end of stream.
#[test]
fn line_final_unterminated_line_is_echoed_at_half_close() {
    let server = Server::start(&["echo", "--framing", "line"]);
    let mut client = server.connect();
    client.write_all(b"one\r\ntwo\nthree").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut client), b"one\r\ntwo\nthree");
}

/// `--max-frame`: a line at the limit is echoed; one over it closes only that connection, with a warning.
#[test]
fn oversized_line_closes_only_that_connection() {
    let server = Server::start(&["echo", "--framing", "line", "--max-frame", "1000"]);
    let mut good = server.connect();
    let mut at_limit = vec![b'a'; 999];
    at_limit.push(b'\n');
    round_trip(&mut good, &at_limit);

    let mut bad = server.connect();
    bad.write_all(&[b'x'; 5000]).unwrap();
    assert!(closed_by_server(&mut bad), "a 5000-byte line under --max-frame 1000 was not refused");

    round_trip(&mut good, b"still here\n");
    wait_for_log(&server, "a warning about the long line", &["exceeds", "too large", "limit"]);
}

// ---------------------------------------------------------------------------
// Length-prefixed framing
// ---------------------------------------------------------------------------

/// `{packet, 1|2|4}`: frames (empty ones too) split at random bytes or packed come back, each with its header.
#[test]
fn prefixed_echo_keeps_headers_across_splits_and_packing() {
    for header in [1usize, 2, 4] {
        let server = Server::start(&["echo", "--framing", &header.to_string()]);
        let mut rng = StdRng::seed_from_u64(header as u64);
        let payloads = random_payloads(&mut rng, header, 300);
        let wire: Vec<u8> = payloads.iter().flat_map(|p| encode_frame(header, p)).collect();

        let split_pieces = random_pieces(&mut rng, &wire, 700).into_iter().map(<[u8]>::to_vec).collect();
        for pieces in [split_pieces, vec![wire.clone()]] {
            let mut client = server.connect();
            let writer = send_pieces_in_background(&client, pieces);
            for (i, payload) in payloads.iter().enumerate() {
                let back = read_frame(&mut client, header);
                assert!(
                    back == *payload,
                    "{{packet, {header}}}: frame {i} ({} bytes) came back as {} bytes",
                    payload.len(),
                    back.len()
                );
            }
            writer.join().unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            assert!(read_to_eof(&mut client).is_empty(), "bytes after the last frame");
        }
    }
}

/// `{packet, N}`: nothing is echoed until the whole frame is in.
#[test]
fn prefixed_echo_waits_for_the_whole_frame() {
    let server = Server::start(&["echo", "--framing", "2"]);
    let mut client = server.connect();
    let frame = encode_frame(2, b"hello");
    client.write_all(&frame[..4]).unwrap();
    assert_nothing_echoed(&mut client, "a partial frame");
    client.write_all(&frame[4..]).unwrap();
    assert_eq!(read_frame(&mut client, 2), b"hello");
}

/// `{packet, N}` at half-close: complete frames come back, a cut-off frame is dropped, then EOF; the server stays up.
#[test]
fn prefixed_incomplete_frame_at_half_close_is_discarded() {
    for header in [1usize, 2, 4] {
        let mut server = Server::start(&["echo", "--framing", &header.to_string()]);
        let complete: Vec<u8> = [&b"first"[..], b"", b"third"].iter().flat_map(|p| encode_frame(header, p)).collect();
        let cut_payload = encode_frame(header, b"0123456789")[..header + 3].to_vec();
        let cut_header = encode_frame(header, b"xyz")[..header - 1].to_vec();
        for cut in [cut_payload, cut_header] {
            let mut client = server.connect();
            client.write_all(&complete).unwrap();
            client.write_all(&cut).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            assert!(
                read_to_eof(&mut client) == complete,
                "{{packet, {header}}}: expected exactly the complete frames, then EOF"
            );
        }
        assert_alive(&mut server);
        let mut next = server.connect();
        next.write_all(&encode_frame(header, b"again")).unwrap();
        assert_eq!(read_frame(&mut next, header), b"again");
        wait_for_log(&server, "a warning about the cut-off frame", &["discard", "truncat", "incomplete"]);
    }
}

/// A `{packet, 4}` header announcing 2^31 bytes closes the connection at once, reserving nothing, with a warning.
#[test]
fn oversized_length_header_is_rejected_at_once() {
    let mut server = Server::start(&["echo", "--framing", "4", "--max-frame", "1000"]);
    let mut good = server.connect();
    round_trip(&mut good, &encode_frame(4, b"before"));
    let before = memory_kib(&server);

    let mut bad = server.connect();
    bad.write_all(&(1u32 << 31).to_be_bytes()).unwrap();
    // Nothing more is sent: the close must come from the header alone.
    assert!(closed_by_server(&mut bad), "the server waited for the payload of a 2 GiB frame");

    let after = memory_kib(&server);
    let announced_kib = (1u64 << 31) / 1024;
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        assert!(a.saturating_sub(*b) < announced_kib / 8, "{name} grew from {b} KiB to {a} KiB after a 2 GiB header");
    }
    round_trip(&mut good, &encode_frame(4, b"after"));
    assert_alive(&mut server);
    wait_for_log(&server, "a warning about the long frame", &["exceeds", "too large", "limit"]);
}

/// 100 connections that each send one oversized header cost 100 closes,
/// all counted, but at most ten warning lines a second: a client looping
/// on bad headers cannot fill the log. The next line after a quiet second
/// says how many were left out.
#[test]
fn warnings_caused_by_peers_are_rate_limited() {
    let mut server = Server::start(&["echo", "--framing", "4", "--max-frame", "1000", "--stats", "1"]);
    let header = 5000u32.to_be_bytes();
    let bad: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(&header).unwrap();
            s
        })
        .collect();
    for mut s in bad {
        assert!(closed_by_server(&mut s), "an oversized header was not refused");
    }
    let protocol_errors = |text: &str| text.lines().filter(|l| l.contains("protocol error")).count();
    // The closes can be seen before the reader thread has copied the
    // server's stderr: wait for the first warning, then count.
    wait_until(Duration::from_secs(10), "a warning about an oversized header", || {
        protocol_errors(&server.stderr_text()) > 0
    });
    let logged = protocol_errors(&server.stderr_text());
    // Ten a second; the hundred closes may straddle a second boundary.
    assert!((1..=20).contains(&logged), "{logged} warning lines for 100 bad headers");
    thread::sleep(Duration::from_millis(1100));
    let mut one_more = server.connect();
    one_more.write_all(&header).unwrap();
    assert!(closed_by_server(&mut one_more));
    wait_until(Duration::from_secs(10), "the count of warnings not logged", || {
        server.stderr_text().contains("more warnings caused by peers were not logged")
    });
    wait_until(Duration::from_secs(10), "every close counted", || {
        server
            .stderr_text()
            .lines()
            .rev()
            .find(|l| l.starts_with("stats "))
            .is_some_and(|l| l.contains("closed_frame_too_large=101"))
    });
    assert_alive(&mut server);
}

/// Resident and virtual size of the server, in KiB: a reservation shows in
/// the second even if its pages are never touched.
fn memory_kib(server: &Server) -> [(&'static str, u64); 2] {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/PID/status"))
    };
    [("VmRSS", field("VmRSS:")), ("VmSize", field("VmSize:"))]
}

// ---------------------------------------------------------------------------
// Flow control and half-close
// ---------------------------------------------------------------------------

/// Flow control: a client sending up to 64 MiB without reading is paused (RSS bounded), others still served, nothing lost.
#[test]
fn flow_control_bounds_memory_and_loses_nothing() {
    let server = Server::start(&["echo"]);
    let rss_before = server.rss_kib();
    let mut flooder = server.connect();
    let seed = 3;
    let sent = send_until_stalled(&flooder, seed, 64 * MIB);
    assert!(sent > DEFAULT_MAX_OUTBUF, "only {sent} bytes were taken before the server stopped reading");

    // Without flow control the server would hold nearly all of `sent`.
    let growth_kib = server.rss_kib().saturating_sub(rss_before);
    eprintln!("flow control: {sent} bytes sent unread; server RSS grew by {growth_kib} KiB");
    assert!(
        growth_kib < 24 * 1024,
        "server RSS grew by {growth_kib} KiB while a client sent {sent} bytes without reading"
    );

    let mut other = server.connect();
    round_trip(&mut other, b"not starved by the flooder");

    expect_stream(&mut flooder, seed, 0, sent);
    flooder.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut flooder).is_empty(), "bytes after the echo");
    round_trip(&mut other, b"still served");
}

/// Half-close: MiBs still queued in the server when the client shuts down its write side all come back, then EOF.
#[test]
fn half_close_returns_everything_pending_then_eof() {
    // The output limit is raised so that the server reads all 12 MiB while
    // the client reads nothing: when the FIN arrives, the kernel's socket
    // buffers (a few MiB) hold part of the echo and the rest, at least
    // 4 MiB, is still queued in the server.
    let server = Server::start(&["echo", "--max-outbuf", "16777216"]);
    let mut client = server.connect();
    let seed = 4;
    let total = 12 * MIB;
    let mut out = client.try_clone().unwrap();
    out.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let writer = thread::spawn(move || {
        out.write_all(&stream_bytes(seed, 0, total)).expect("write");
        out.shutdown(Shutdown::Write).expect("shutdown");
    });
    // Let the echo pile up unread (a bounded wait: should the server stop
    // reading, the writer blocks, and reading below unblocks it).
    let start = Instant::now();
    while !writer.is_finished() && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(20));
    }
    let back = read_to_eof(&mut client);
    writer.join().unwrap();
    assert_eq!(back.len(), total, "length of the echo");
    assert!(back == stream_bytes(seed, 0, total), "echo differs from what was sent");
}

// ---------------------------------------------------------------------------
// Many connections, resets
// ---------------------------------------------------------------------------

/// 2 000 connections open at once, each doing a few round trips, all get exact echoes.
#[test]
fn two_thousand_concurrent_connections_are_served() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 500;
    const ROUNDS: usize = 3;
    let server = Server::start(&["echo"]);
    let addr = server.addr;
    let all_open = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let all_open = Arc::clone(&all_open);
            thread::spawn(move || {
                let mut conns: Vec<TcpStream> = (0..PER_THREAD)
                    .map(|_| {
                        let s = TcpStream::connect(addr).expect("connect");
                        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                        s
                    })
                    .collect();
                all_open.wait();
                for round in 0..ROUNDS {
                    let msg = |i: usize| format!("thread {t} conn {i} round {round}").into_bytes();
                    for (i, c) in conns.iter_mut().enumerate() {
                        c.write_all(&msg(i)).expect("write");
                    }
                    for (i, c) in conns.iter_mut().enumerate() {
                        let mut back = vec![0u8; msg(i).len()];
                        c.read_exact(&mut back).expect("read echo");
                        assert_eq!(back, msg(i));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
}

/// Resets: clients that send and then reset while the server writes to them cost only themselves.
#[test]
fn resets_mid_write_cost_only_that_connection() {
    let mut server = Server::start(&["echo"]);
    let stop = Arc::new(AtomicBool::new(false));
    let round_trips = Arc::new(AtomicUsize::new(0));
    let mut steady = server.connect();
    let watcher = {
        let (stop, round_trips) = (Arc::clone(&stop), Arc::clone(&round_trips));
        thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                round_trip(&mut steady, format!("steady {i}").as_bytes());
                round_trips.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for i in 0..40 {
        let mut client = server.connect();
        client.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        client.write_all(&stream_bytes(i, 0, 2 * MIB)).expect("write");
        reset(client);
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("the steady client lost its echo");
    assert!(round_trips.load(Ordering::Relaxed) > 0);
    assert_alive(&mut server);
    round_trip(&mut server.connect(), b"a new client after the resets");
}

// ---------------------------------------------------------------------------
// Admission: --max-conns, --allow, --deny
// ---------------------------------------------------------------------------

/// `--max-conns 5`: the 6th connection is closed at once, the 5 work, and a slot freed is usable again.
#[test]
fn max_conns_refuses_the_sixth() {
    let server = Server::start(&["echo", "--max-conns", "5"]);
    let mut five: Vec<TcpStream> = (0..5).map(|_| server.connect()).collect();
    for (i, c) in five.iter_mut().enumerate() {
        round_trip(c, format!("conn {i}").as_bytes());
    }
    let mut sixth = server.connect();
    assert!(closed_by_server(&mut sixth), "the 6th connection was not closed");
    for (i, c) in five.iter_mut().enumerate() {
        round_trip(c, format!("conn {i} again").as_bytes());
    }

    drop(five.pop());
    // The server notices the close asynchronously: a connection that races
    // ahead of it is refused, so retry until one is served.
    wait_until(Duration::from_secs(10), "a connection in the freed slot", || {
        let mut c = server.connect();
        c.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).is_ok() && &back == b"ping"
    });
}

/// Connects and reports whether the server serves the connection (an echo)
/// or refuses it (end of stream or reset).
fn is_served(server: &Server) -> bool {
    let mut c = server.connect();
    let _ = c.write_all(b"ping");
    let mut back = [0u8; 4];
    match c.read_exact(&mut back) {
        Ok(()) => {
            assert_eq!(&back, b"ping");
            true
        }
        Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => false,
        Err(e) => panic!("neither served nor refused: {e}"),
    }
}

/// `--deny 127.0.0.1/32` refuses the local client.
#[test]
fn deny_refuses_a_matching_peer() {
    assert!(!is_served(&Server::start(&["echo", "--deny", "127.0.0.1/32"])));
}

/// `--allow 10.0.0.0/8` refuses 127.0.0.1, which is outside it.
#[test]
fn allow_refuses_peers_outside_it() {
    assert!(!is_served(&Server::start(&["echo", "--allow", "10.0.0.0/8"])));
}

/// `--allow 127.0.0.0/8` serves 127.0.0.1.
#[test]
fn allow_serves_peers_inside_it() {
    assert!(is_served(&Server::start(&["echo", "--allow", "127.0.0.0/8"])));
}

/// `--deny` wins over `--allow` for a peer inside both.
#[test]
fn deny_wins_over_allow() {
    let server = Server::start(&["echo", "--allow", "127.0.0.0/8", "--deny", "127.0.0.1/32"]);
    assert!(!is_served(&server));
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

/// `--idle-timeout 1`: an idle client is closed; one talking every 200 ms for 2.5 s is still served.
#[test]
fn idle_timeout_closes_only_idle_connections() {
    let server = Server::start(&["echo", "--idle-timeout", "1"]);
    let mut idle = server.connect();
    let mut talker = server.connect();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        round_trip(&mut talker, format!("tick {i}").as_bytes());
        i += 1;
        thread::sleep(Duration::from_millis(200));
    }
    assert!(closed_by_server(&mut idle), "the idle connection was not closed");
    round_trip(&mut talker, b"still served");
}

/// `--send-timeout 300`: a client that never reads is disconnected; another is unaffected.
#[test]
fn send_timeout_disconnects_a_client_that_never_reads() {
    let server = Server::start(&["echo", "--send-timeout", "300"]);
    let mut other = server.connect();
    let stuck = server.connect();
    set_socket_option(&stuck, libc::SO_RCVBUF, 4096 as libc::c_int);
    let mut out = stuck.try_clone().unwrap();
    out.set_write_timeout(Some(Duration::from_millis(200))).unwrap();

    let start = Instant::now();
    let chunk = vec![b's'; 64 * 1024];
    let error = loop {
        assert!(start.elapsed() < Duration::from_secs(15), "a client that never reads was not disconnected");
        match out.write(&chunk) {
            Ok(_) => {}
            Err(e) if is_would_block(&e) || e.kind() == ErrorKind::Interrupted => {
                round_trip(&mut other, b"unaffected");
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "unexpected write error {error}"
    );
    round_trip(&mut other, b"still served");
}

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

/// SIGTERM: pending output is flushed (an exact prefix, at least what passed --max-outbuf), then EOF; exit 0.
#[test]
fn sigterm_flushes_pending_output_and_exits_zero() {
    let mut server = Server::start(&["echo"]);
    let mut client = server.connect();
    let seed = 5;
    let sent = send_until_stalled(&client, seed, 64 * MIB);
    // The server stopped reading, so its pending output had passed
    // --max-outbuf: at least that much is owed to the client.
    server.signal(libc::SIGTERM);
    let back = read_to_eof(&mut client);
    drop(client);
    assert!(back.len() <= sent);
    assert!(back.len() > DEFAULT_MAX_OUTBUF, "only {} bytes were flushed on shutdown", back.len());
    assert!(back == stream_bytes(seed, 0, back.len()), "the flushed bytes are not a prefix of those sent");
    let status = server.wait_exit(Duration::from_secs(7));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}

/// SIGINT: connections are closed (the client sees EOF) and the server exits with status 0.
#[test]
fn sigint_exits_zero() {
    let mut server = Server::start(&["echo"]);
    let mut client = server.connect();
    round_trip(&mut client, b"hello");
    server.signal(libc::SIGINT);
    assert!(read_to_eof(&mut client).is_empty());
    drop(client);
    let status = server.wait_exit(Duration::from_secs(7));
    assert_eq!(status.code(), Some(0), "exit status after SIGINT");
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// `--listen [::1]:0` serves over IPv6 (skipped when ::1 is unavailable).
#[test]
fn ipv6_listen_works() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("note: ::1 is unavailable here; IPv6 test skipped");
        return;
    }
    let server = Server::start(&["echo", "--listen", "[::1]:0"]);
    assert!(server.addr.is_ipv6(), "listening on {}", server.addr);
    round_trip(&mut server.connect(), b"over IPv6");
}

/// Runs the binary to completion (killing it after 10 s) and returns its
/// exit code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edgeloop");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("edgeloop {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Asserts that `edgeloop args...` exits with status 2 and prints a usage
/// message (`Usage: ...`) on stderr.
fn assert_usage_error(args: &[&str]) {
    let (code, stderr) = run_to_exit(args);
    assert_eq!(code, Some(2), "exit status for {args:?}; stderr:\n{stderr}");
    assert!(stderr.to_lowercase().contains("usage"), "no usage message for {args:?}:\n{stderr}");
}

/// Chat-only options are refused by echo, with a usage message.
#[test]
fn echo_rejects_chat_options() {
    assert_usage_error(&["echo", "--chat-rate", "10"]);
}

/// An unknown option or subcommand exits with status 2 and a usage message on stderr.
#[test]
fn unknown_option_exits_2_with_usage() {
    assert_usage_error(&["echo", "--no-such-option"]);
    assert_usage_error(&["no-such-command"]);
}

/// An option with a bad value exits with status 2 and a usage message on stderr.
#[test]
fn bad_option_value_exits_2_with_usage() {
    assert_usage_error(&["echo", "--framing", "3"]);
    assert_usage_error(&["echo", "--max-conns", "many"]);
    assert_usage_error(&["echo", "--allow", "not-a-network"]);
}

/// An address in use exits with status 1 and an error naming the address and "address already in use".
#[test]
fn address_in_use_exits_1_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_to_exit(&["echo", "--listen", &addr]);
    assert_eq!(code, Some(1), "exit status; stderr:\n{stderr}");
    assert!(stderr.contains(&addr), "stderr does not name {addr}:\n{stderr}");
    assert!(stderr.contains("address already in use"), "stderr does not say why:\n{stderr}");
}

/// `--stats 1` prints `stats ...` lines with counters (accepted=1 after one connection) to stderr.
#[test]
fn stats_lines_go_to_stderr() {
    let server = Server::start(&["echo", "--stats", "1"]);
    round_trip(&mut server.connect(), b"count me");
    wait_until(Duration::from_secs(10), "a stats line with accepted=1", || {
        server
            .stderr_text()
            .lines()
            .any(|l| l.starts_with("stats ") && l.split_whitespace().any(|kv| kv == "accepted=1"))
    });
}
