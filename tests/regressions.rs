//! One test per known failure mode of other event loops (DESIGN-NOTES.md,
//! "Known bugs of those projects"), each against the real echo server.
//!
//! No test measures speed; the CPU checks compare the server's CPU time
//! with wall time, which separates "blocked in epoll_wait" from "busy
//! loop" on any machine.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_edgeloop");
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

// ---------------------------------------------------------------------------
// Regressions
// ---------------------------------------------------------------------------

/// An event carrying both IN and OUT must do both: a client pipelining while its echo is blocked is still read after draining.
#[test]
fn event_with_in_and_out_handles_both() {
    // A small output limit makes the server pause and resume many times.
    let server = Server::start(&["echo", "--max-outbuf", "262144"]);
    let mut client = server.connect();
    let seed = 11;
    let total = 48 * MIB;
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let mut out = client.try_clone().unwrap();
        out.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let sent = Arc::clone(&sent);
        thread::spawn(move || {
            let mut at = 0;
            while at < total {
                let chunk = stream_bytes(seed, at, (total - at).min(64 * 1024));
                out.write_all(&chunk).expect("write");
                at += chunk.len();
                sent.store(at, Ordering::Relaxed);
            }
        })
    };
    // Let the server's output block first: the writer stops making progress.
    let mut last = (0, Instant::now());
    wait_until(Duration::from_secs(20), "the writer to block", || {
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        now == total || last.1.elapsed() > Duration::from_millis(500)
    });
    // From here on, input and output readiness arrive together.
    expect_stream(&mut client, seed, 0, total);
    writer.join().expect("writer");
    client.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut client).is_empty());
}

/// RDHUP is not HUP: a half-closed client still gets its whole echo, and the server does not spin meanwhile.
#[test]
fn rdhup_is_not_hup() {
    // A raised output limit lets the server read all 8 MiB unread by the
    // client, so when the FIN arrives MiBs of echo are still queued in the
    // server, beyond what the kernel's socket buffers hold.
    let server = Server::start(&["echo", "--max-outbuf", "16777216"]);
    let mut client = server.connect();
    let seed = 12;
    let total = 8 * MIB;
    client.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    client.write_all(&stream_bytes(seed, 0, total)).expect("write");
    client.shutdown(Shutdown::Write).unwrap();
    // The FIN is in and the echo is blocked on our unread receive buffer: a
    // loop that takes RDHUP for a finished connection closes it now (and
    // the echo is lost); one that keeps reporting it spins here.
    assert_not_spinning(&server, "with a half-closed client not reading");
    expect_stream(&mut client, seed, 0, total);
    assert!(read_to_eof(&mut client).is_empty(), "bytes after the echo");
}

/// Stale events after slot reuse: clients resetting and reconnecting in a tight loop never disturb others' echoes.
#[test]
fn stale_events_after_slot_reuse_are_ignored() {
    let mut server = Server::start(&["echo"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..3u64)
        .map(|t| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut c = connect(addr);
                    c.write_all(&stream_bytes(t * 1_000_000 + i, 0, 20_000)).expect("write");
                    if i % 2 == 0 {
                        reset(c); // reset with the echo in flight
                    } else {
                        drop(c);
                    }
                    i += 1;
                }
                i
            })
        })
        .collect();
    let echoers: Vec<_> = (0..2u64)
        .map(|t| {
            thread::spawn(move || {
                for round in 0..300 {
                    // A fresh connection each time, so it takes a freed slot.
                    let mut c = connect(addr);
                    let msg = stream_bytes(100 + t, round * 5000, 5000);
                    round_trip(&mut c, &msg);
                    round_trip(&mut c, &msg[..100]);
                }
            })
        })
        .collect();
    for e in echoers {
        e.join().expect("an echo came back wrong or not at all");
    }
    stop.store(true, Ordering::Relaxed);
    let churned: u64 = churners.into_iter().map(|c| c.join().expect("churner")).sum();
    assert!(churned > 0);
    assert!(server.child.try_wait().unwrap().is_none(), "the server died");
    round_trip(&mut server.connect(), b"after the churn");
}

/// EMFILE: with descriptors exhausted and clients in the backlog the server does not busy-loop, and accepts again later.
#[test]
fn emfile_does_not_busy_loop() {
    // The full version (which clients are served when) is in tests/limits.rs.
    const LIMIT: usize = 32;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("ulimit -n {LIMIT}; exec \"$0\" \"$@\""), BIN, "echo"]);
    let server = Server::start_with(cmd, &[]);
    let clients: Vec<TcpStream> = (0..LIMIT + 10).map(|_| server.connect()).collect();
    wait_until(Duration::from_secs(10), "the server to run out of descriptors", || {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap();
        fds.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok()).filter(|&fd| fd < LIMIT).count()
            == LIMIT
    });
    assert_not_spinning(&server, "with no descriptor free and clients in the backlog");
    drop(clients);
    wait_until(Duration::from_secs(15), "a new client to be served", || {
        let mut c = server.connect();
        let _ = c.write_all(b"ping");
        let mut back = [0u8; 4];
        c.read_exact(&mut back).is_ok() && &back == b"ping"
    });
}

/// A long line arriving in small pieces is delivered whole (correctness only; the cursor keeps it linear).
#[test]
fn long_line_in_small_pieces_is_delivered_whole() {
    let server = Server::start(&["echo", "--framing", "line", "--max-frame", "1048576"]);
    let mut client = server.connect();
    client.set_nodelay(true).unwrap();
    let mut line = stream_bytes(13, 0, 200_000);
    line.iter_mut().filter(|b| **b == b'\n').for_each(|b| *b = b' ');
    line.push(b'\n');
    let mut out = client.try_clone().unwrap();
    let pieces: Vec<Vec<u8>> = line.chunks(1000).map(<[u8]>::to_vec).collect();
    let writer = thread::spawn(move || {
        for piece in pieces {
            out.write_all(&piece).expect("write piece");
        }
    });
    let mut back = vec![0u8; line.len()];
    client.read_exact(&mut back).expect("read the line");
    writer.join().unwrap();
    assert!(back == line, "the long line came back different");
}

/// A connection resumed after flow control reads what is already buffered without waiting for a new edge.
#[test]
fn paused_connection_resumes_without_a_new_edge() {
    let server = Server::start(&["echo", "--max-outbuf", "65536"]);
    let mut client = server.connect();
    let seed = 14;
    // Fill everything, then stop sending for good: whatever the server has
    // not read yet sits in its receive queue, and no new data will raise
    // another edge for it.
    let sent = send_until_stalled(&client, seed, 64 * MIB);
    expect_stream(&mut client, seed, 0, sent);
    client.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut client).is_empty());
}
