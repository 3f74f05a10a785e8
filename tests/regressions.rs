//! One test per known failure mode of other event loops (DESIGN-NOTES.md,
//! "Known bugs of those projects"), each against the real echo server.
//!
//! No test measures speed; the CPU checks compare the server's CPU time
//! with wall time, which separates "blocked in epoll_wait" from "busy
//! loop" on any machine.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, Server};

const BIN: &str = env!("CARGO_BIN_EXE_edgeloop");
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes `offset..offset + len` of the reproducible pseudo-random stream
/// `seed` (a lost, duplicated or reordered byte shows as a mismatch).
fn stream_bytes(seed: u64, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| splitmix64(seed ^ (i as u64 >> 3).wrapping_mul(0xA24B_AED4_963E_E407)).to_le_bytes()[i & 7])
        .collect()
}

/// Reads `len` bytes and checks they are bytes `offset..` of stream `seed`.
fn expect_stream(stream: &mut TcpStream, seed: u64, offset: usize, len: usize) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < len {
        let want = buf.len().min(len - got);
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => panic!("end of stream after {got} of {len} bytes"),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("read after {got} of {len} bytes: {e}"),
        };
        assert!(
            buf[..n] == stream_bytes(seed, offset + got, n)[..],
            "bytes {}.. differ from what was sent",
            offset + got
        );
        got += n;
    }
}

fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).expect("read echo");
    assert_eq!(back, msg, "echo differs from what was sent");
}

fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read until end of stream");
    all
}

/// Writes stream `seed` until the server stops reading (two consecutive
/// one-second windows in which the kernel takes no byte) or `limit` bytes
/// are sent; returns the bytes sent.
fn send_until_stalled(stream: &TcpStream, seed: u64, limit: usize) -> usize {
    let mut out = stream.try_clone().expect("clone");
    out.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let (mut sent, mut idle_windows) = (0, 0);
    while sent < limit && idle_windows < 2 {
        let chunk = stream_bytes(seed, sent, (limit - sent).min(256 * 1024));
        match out.write(&chunk) {
            Ok(n) => {
                sent += n;
                idle_windows = 0;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => idle_windows += 1,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("write after {sent} bytes: {e}"),
        }
    }
    out.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    sent
}

/// Drops the connection with a reset (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid `linger` and its size, on an open socket we own.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(stream);
}

/// CPU time (user + system) the server has used, in clock ticks.
fn cpu_ticks(server: &Server) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
    // After the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Asserts the server uses under half a core during one second in which
/// it has nothing it can do: a busy loop takes a whole core on any machine.
fn assert_not_spinning(server: &Server, situation: &str) {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let before = cpu_ticks(server);
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(server) - before;
    assert!(
        used < per_second / 2,
        "the server used {used} of {per_second} clock ticks in one second {situation}"
    );
}

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
        fds.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|&fd| fd < LIMIT)
            .count()
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
