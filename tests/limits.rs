//! Resource limits of the echo server: running out of file descriptors,
//! and the memory an idle connection costs.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_edgeloop");

/// Starts `edgeloop echo` with an open-file limit of `limit` (soft and
/// hard, so the server cannot raise it).
fn start_with_fd_limit(limit: usize) -> Server {
    let mut cmd = Command::new("sh");
    let script = format!("ulimit -n {limit}; exec \"$0\" \"$@\"");
    cmd.args(["-c", &script, BIN, "echo"]);
    let server = Server::start_with(cmd, &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert!(line.split_whitespace().nth(3) == Some(&limit.to_string()), "the limit did not hold: {line}");
    server
}

/// Descriptors the server has open with a number below `below`. The
/// open-file limit bounds descriptor numbers, not their count, and the
/// server may have inherited descriptors numbered above it.
fn open_fds_below(server: &Server, below: usize) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
        .filter(|&fd| fd < below)
        .count()
}

/// Descriptors the server has open.
fn open_fds(server: &Server) -> usize {
    open_fds_below(server, usize::MAX)
}

/// A client that sent `msg` and collects its echo without blocking.
struct Waiting {
    stream: TcpStream,
    msg: Vec<u8>,
    got: Vec<u8>,
}

impl Waiting {
    fn connect(server: &Server, i: usize) -> Waiting {
        let mut stream = server.connect();
        let msg = format!("client {i}\n").into_bytes();
        stream.write_all(&msg).unwrap();
        stream.set_nonblocking(true).unwrap();
        Waiting { stream, msg, got: Vec::new() }
    }

    /// Reads what has arrived; true once the whole echo is in.
    fn poll(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("{:?}: connection closed", String::from_utf8_lossy(&self.msg)),
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        assert!(self.msg.starts_with(&self.got), "wrong echo {:?}", self.got);
        self.got.len() == self.msg.len()
    }

    fn served(&mut self) -> bool {
        self.got.len() == self.msg.len() || self.poll()
    }
}

/// EMFILE: with descriptors exhausted the server does not spin, keeps serving, and accepts again once some are free.
#[test]
fn descriptor_exhaustion_neither_spins_nor_stops_service() {
    const LIMIT: usize = 64;
    const CLIENTS: usize = 100;
    let server = start_with_fd_limit(LIMIT);
    let capacity = LIMIT - open_fds_below(&server, LIMIT);
    assert!(capacity < CLIENTS, "the test needs more clients than the server can hold");

    let mut clients: Vec<Waiting> = (0..CLIENTS).map(|i| Waiting::connect(&server, i)).collect();
    wait_until(Duration::from_secs(10), "the server to run out of descriptors", || {
        open_fds_below(&server, LIMIT) == LIMIT
    });
    wait_until(Duration::from_secs(10), "every accepted client to be served", || {
        clients.iter_mut().map(Waiting::served).filter(|&s| s).count() >= capacity
    });

    // The clients left in the backlog are what a busy loop would retry on.
    assert_not_spinning(&server, "with clients waiting in the backlog and no descriptor free");
    let (mut served, mut waiting): (Vec<Waiting>, Vec<Waiting>) = clients.into_iter().partition(|c| c.got == c.msg);
    assert_eq!(served.len(), capacity, "more clients served than descriptors allow");
    for (i, c) in served.iter_mut().enumerate() {
        c.stream.set_nonblocking(false).unwrap();
        round_trip(&mut c.stream, format!("still served {i}").as_bytes());
    }

    // Free the descriptors: every waiting client must now be served.
    drop(served);
    wait_until(Duration::from_secs(15), "the waiting clients to be served", || waiting.iter_mut().all(|c| c.served()));
    for c in &mut waiting {
        c.stream.set_nonblocking(false).unwrap();
        round_trip(&mut c.stream, b"served at last");
    }
}

/// Idle memory: 5 000 idle connections cost the server under 1 KiB each (the number is printed).
#[test]
fn idle_connections_cost_little_memory() {
    const IDLE: usize = 5000;
    let server = Server::start(&["echo"]);
    // One round trip first, so that buffer pools and the like are in the
    // baseline rather than charged to the idle connections.
    let mut warm_up = server.connect();
    round_trip(&mut warm_up, b"warm up");
    let fds_before = open_fds(&server);
    let rss_before = server.rss_kib();

    let idle: Vec<TcpStream> = (0..IDLE).map(|_| server.connect()).collect();
    wait_until(Duration::from_secs(20), "every idle connection to be accepted", || {
        open_fds(&server) >= fds_before + IDLE
    });
    let rss_after = server.rss_kib();
    let per_conn = (rss_after.saturating_sub(rss_before) * 1024) as f64 / IDLE as f64;
    eprintln!(
        "idle memory: server RSS {rss_before} KiB -> {rss_after} KiB with {IDLE} idle connections: \
         {per_conn:.0} bytes per idle connection"
    );
    assert!(per_conn < 1024.0, "{per_conn:.0} bytes per idle connection");
    drop((idle, warm_up));
}
