//! The holes of issue 17 that show through the programs: each test runs
//! the real `edgeloop` binary and talks to it over real sockets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use nix::sys::socket::{send, setsockopt, sockopt, MsgFlags};

// ---------------------------------------------------------------------------
// 4. Urgent data
// ---------------------------------------------------------------------------

fn send_urgent(stream: &TcpStream, bytes: &[u8]) {
    // The last byte of a MSG_OOB send is the urgent one.
    let sent = send(stream.as_raw_fd(), bytes, MsgFlags::MSG_OOB).expect("send MSG_OOB");
    assert_eq!(sent, bytes.len());
}

/// Reads exactly `want.len()` bytes (2 s at most: a stalled connection
/// fails here) and compares.
fn expect_echo(stream: &mut TcpStream, want: &[u8]) {
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = vec![0u8; want.len()];
    let mut n = 0;
    while n < want.len() {
        match stream.read(&mut got[n..]) {
            Ok(0) => panic!("end of stream after {:?}", String::from_utf8_lossy(&got[..n])),
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                panic!("{e} after {:?} of {:?}", String::from_utf8_lossy(&got[..n]), String::from_utf8_lossy(want))
            }
        }
    }
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

/// A lone urgent byte is echoed, in its place in the stream.
#[test]
fn a_lone_urgent_byte_is_echoed() {
    let server = Server::start(&["echo"]);
    let mut client = server.connect();
    common::round_trip(&mut client, b"before ");
    send_urgent(&client, b"!");
    expect_echo(&mut client, b"!");
    common::round_trip(&mut client, b" after");
}

/// Data, then urgent data mid-stream, then more data, in one segment (the
/// client corks its socket so that all of it is queued at the server
/// before the server reads): Linux stops the server's read at the urgent
/// mark. Every byte must still be echoed, in order, without waiting for
/// the client to send anything else.
#[test]
fn urgent_data_mid_stream_does_not_stall_the_connection() {
    let server = Server::start(&["echo"]);
    let mut client = server.connect();
    common::round_trip(&mut client, b"hello ");
    setsockopt(&client, sockopt::TcpCork, &true).unwrap();
    client.write_all(b"abc").unwrap();
    send_urgent(&client, b"d");
    client.write_all(b"efg").unwrap();
    setsockopt(&client, sockopt::TcpCork, &false).unwrap();
    expect_echo(&mut client, b"abcdefg");
    common::round_trip(&mut client, b" and on");
}

// ---------------------------------------------------------------------------
// 5. SIGTERM under a reconnect storm
// ---------------------------------------------------------------------------

/// Clients connect, send a byte and reset, as fast as they can, while the
/// server is told to stop: it exits 0 within its 5 s drain.
#[test]
fn sigterm_under_a_reconnect_storm_exits_zero_within_the_drain() {
    let mut server = Server::start(&["echo"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicUsize::new(0));
    let storm: Vec<_> = (0..4)
        .map(|_| {
            let (stop, connects) = (Arc::clone(&stop), Arc::clone(&connects));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Refused once the server stops listening: try again.
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        connects.fetch_add(1, Ordering::Relaxed);
                        let _ = s.write_all(b"x");
                        common::reset(s);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(6));
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in storm {
        t.join().unwrap();
    }
    eprintln!("{} connects; exit after {took:?}", connects.load(Ordering::Relaxed));
    assert_eq!(status.code(), Some(0), "{}", server.stderr_text());
}

