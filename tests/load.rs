//! `edgeloop load` against real servers: the echo server in every framing,
//! nothing listening, a server that corrupts a byte, one that hangs up.
//! No timing assertions: only that runs end, and what they count.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

/// How long any one run of the generator may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {:?}", self.stdout))
    }
}

/// `edgeloop load --connect ADDR ARGS...`, bounded by [`RUN_LIMIT`].
fn load(addr: SocketAddr, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .arg("load")
        .arg("--connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn edgeloop load");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("edgeloop load did not end within {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Run { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

const SHORT: [&str; 4] = ["--duration", "1", "--warmup", "0"];

/// A clean run against the echo server: exit 0, messages, no errors.
fn clean_run(framing: &str, size: &str, extra: &[&str]) -> Value {
    let server = Server::start(&["echo", "--framing", framing]);
    let mut args = vec!["--framing", framing, "--size", size, "--conns", "4", "--json"];
    args.extend_from_slice(&SHORT);
    args.extend_from_slice(extra);
    let run = load(server.addr, &args);
    assert!(run.status.success(), "exit {:?}; stderr:\n{}", run.status, run.stderr);
    let v = run.json();
    assert!(v["messages"].as_u64().unwrap() > 0, "{v}");
    assert!(v["msgs_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    for kind in ["connect_failed", "reset", "closed", "mismatch"] {
        assert_eq!(v["errors"][kind].as_u64(), Some(0), "{kind} in {v}");
    }
    assert_eq!(v["conns"], 4);
    assert_eq!(v["connected"], 4);
    assert_eq!(v["framing"], framing);
    assert_eq!(v["size"].as_u64().unwrap().to_string(), size);
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_us"][p].as_f64().unwrap() > 0.0, "{p} in {v}");
    }
    assert_eq!(v["latency_us"]["samples"], v["messages"]);
    v
}

#[test]
fn raw_echo() {
    let v = clean_run("raw", "64", &[]);
    assert_eq!(v["wire_bytes"], 64);
    assert_eq!(v["depth"], 1);
}

#[test]
fn line_echo() {
    let v = clean_run("line", "100", &[]);
    assert_eq!(v["wire_bytes"], 100);
}

#[test]
fn prefixed_echo() {
    assert_eq!(clean_run("1", "255", &[])["wire_bytes"], 256);
    assert_eq!(clean_run("2", "1000", &[])["wire_bytes"], 1002);
    assert_eq!(clean_run("4", "20000", &[])["wire_bytes"], 20004);
}

#[test]
fn large_raw_messages_span_many_reads() {
    clean_run("raw", "300000", &["--depth", "2"]);
}

#[test]
fn pipelined_depth_8() {
    let v = clean_run("raw", "64", &["--depth", "8"]);
    assert_eq!(v["depth"], 8);
    let v = clean_run("line", "32", &["--depth", "8"]);
    assert_eq!(v["depth"], 8);
}

#[test]
fn human_summary_and_progress() {
    let server = Server::start(&["echo"]);
    let run = load(server.addr, &["--conns", "2", "--duration", "1.2", "--warmup", "0"]);
    assert!(run.status.success(), "stderr:\n{}", run.stderr);
    for word in ["msg/s", "MB/s", "p50", "p99.9", "mismatch 0"] {
        assert!(run.stdout.contains(word), "{word} missing from:\n{}", run.stdout);
    }
    assert!(run.stderr.contains(" msg/s ") && run.stderr.contains(" conns"), "{}", run.stderr);
}

#[test]
fn nothing_listening_exits_1_with_the_reason() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut args = vec!["--conns", "3", "--json"];
    args.extend_from_slice(&SHORT);
    let run = load(port, &args);
    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("refused"), "{}", run.stderr);
    let v = run.json();
    assert_eq!(v["errors"]["connect_failed"], 3);
    assert_eq!(v["messages"], 0);
}

#[test]
fn size_must_fit_the_header() {
    let run = load("127.0.0.1:9".parse().unwrap(), &["--framing", "1", "--size", "256"]);
    assert_eq!(run.status.code(), Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("--size"), "{}", run.stderr);
}

/// A raw echo server on threads that flips one byte of every connection's
/// stream (the 100th).
fn corrupting_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = 0usize;
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if (seen..seen + n).contains(&100) {
                        buf[100 - seen] ^= 0x20;
                    }
                    seen += n;
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn corrupted_echo_is_a_mismatch() {
    let addr = corrupting_server();
    for framing in ["raw", "2"] {
        let mut args = vec!["--conns", "3", "--framing", framing, "--json"];
        args.extend_from_slice(&SHORT);
        let run = load(addr, &args);
        assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
        let v = run.json();
        assert_eq!(v["errors"]["mismatch"], 3, "{v}");
        assert!(run.stderr.contains("expected 0x"), "{}", run.stderr);
        assert!(run.stderr.contains("differed"), "{}", run.stderr);
    }
}

/// A server that accepts, echoes one read, and hangs up: counted, the run
/// ends at once rather than waiting out its duration, and since every
/// connection failed, with status 1.
#[test]
fn server_hanging_up_is_counted_and_ends_the_run() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 64];
            if let Ok(n) = stream.read(&mut buf) {
                let _ = stream.write_all(&buf[..n]);
            }
        }
    });
    let run = load(addr, &["--conns", "2", "--duration", "30", "--warmup", "0", "--json"]);
    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("all 2 connections failed"), "{}", run.stderr);
    let v = run.json();
    let e = &v["errors"];
    assert_eq!(e["closed"].as_u64().unwrap() + e["reset"].as_u64().unwrap(), 2, "{v}");
    assert_eq!(e["mismatch"], 0);
    assert!(v["elapsed_s"].as_f64().unwrap() < 30.0, "{v}");
}
