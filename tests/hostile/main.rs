//! Hostile clients (issue 11) against the real `edgeloop echo` binary on
//! 127.0.0.1: what SPEC.md's "Promises under load and bad input" say a
//! peer cannot do to the server, tried with many real sockets.
//!
//! - **Slowloris**: 1 000 connections, each dribbling one byte of a line
//!   that never ends every 100 ms, from one thread. Without limits they
//!   cost the server their partial lines and nothing more, and a normal
//!   client is served promptly beside them. `--idle-timeout` closes a
//!   connection that "neither sends nor receives" (SPEC.md), and receiving
//!   means a whole frame: dribblers are cut once the timeout has passed,
//!   while a client whose slow lines do end is kept. Without a timeout,
//!   `--max-frame` cuts a dribbler once its line reaches the limit.
//! - **Flood**: one client writing (and reading its echo) as fast as it
//!   can while 100 others ping-pong; their p99 round trip stays under the
//!   issue's generous 50 ms, and the measured figures are printed.
//! - **Connect/close storm**: 100 000 connections opened and closed in
//!   batches (at most 2 000 at once), half of them with a reset, some
//!   after a round trip; afterwards the server holds exactly the
//!   descriptors and connections it had before, and still echoes.
//! - **Malformed frames** on `--workers 2`, for every framing: oversized
//!   headers and lines, zero-length frames, frames split byte by byte,
//!   binary garbage, streams cut inside a frame, resets mid-frame. Each
//!   outcome is checked against a decoder written here, independently of
//!   the crate; bystanders on both workers are served throughout.
//!
//! Descriptor exhaustion, and recovery when clients leave, is
//! `tests/limits.rs::descriptor_exhaustion_neither_spins_nor_stops_service`.
//!
//! The tests run one at a time (each loads the machine on purpose, and the
//! flood's latency figure would otherwise measure its neighbours). No test
//! measures speed except the flood's p99 bound, which the issue sets; the
//! other time limits are generous bounds that only keep a broken server
//! from hanging the suite. `cargo test --release --test hostile --
//! --nocapture` shows the figures.

#[path = "../common/mod.rs"]
mod common;
mod flood;
mod malformed;
mod slowloris;
mod storm;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::metrics::{metric, scrape, start_with_metrics};
use common::*;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use nix::sys::time::{TimeVal, TimeValLike};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: usize = 1 << 20;

/// Serialises the tests of this file: each one loads the machine on
/// purpose. A test that failed (a poisoned lock) does not stop the others.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The server is still running and has logged no panic. A panic inside a
/// callback only closes its connection, which a hostile client would not
/// notice: the log is where it shows.
fn assert_alive_without_panic(server: &mut Server) {
    assert!(server.child.try_wait().unwrap().is_none(), "server exited; stderr:\n{}", server.stderr_text());
    let log = server.stderr_text();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// The server's descriptor count once it stops changing (five equal
/// readings 50 ms apart): closes in flight settle first.
fn settled_fds(server: &Server) -> usize {
    let mut last = server.open_fds();
    let mut same = 0;
    let start = Instant::now();
    while same < 5 {
        assert!(start.elapsed() < Duration::from_secs(20), "the server's descriptor count never settled");
        thread::sleep(Duration::from_millis(50));
        let now = server.open_fds();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Whether the server has closed this non-blocking stream: `Some(true)`
/// on end of stream or reset, `Some(false)` if nothing has arrived, and
/// `None` with the bytes appended to `got` if something has.
fn poll_closed(stream: &mut TcpStream, got: &mut Vec<u8>) -> Option<bool> {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => Some(true),
        Ok(n) => {
            got.extend_from_slice(&buf[..n]);
            None
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => Some(false),
        Err(e) if is_reset(&e) => Some(true),
        Err(e) => panic!("read: {e}"),
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe)
}

/// Reads until the server closes the connection (end of stream or reset)
/// and returns what came first; fails if it is still open after 10 s.
fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_reset(&e) => return got,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: the server did not close the connection ({e}); it sent {got:?}"),
        }
    }
}

/// The value below which `fraction` of `sorted` lies.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
