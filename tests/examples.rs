//! The examples, run as a user runs them: the built binaries in
//! `target/<profile>/examples/`, on 127.0.0.1 port 0, checked on the wire
//! byte for byte.
//!
//! `cargo test --test examples` does not build examples by itself, so the
//! first test to need one runs `cargo build --examples` with the profile
//! this test was built with (found from where cargo put the `edgeloop`
//! binary), into the same target directory.
//!
//! `memcached_get` is checked against a real memcached, started here on a
//! free loopback port. Without `memcached` on the `PATH` that test notes
//! it and passes, unless `CI` is set: then it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// ---------------------------------------------------------------- helpers

/// The path of the built example `name`, building every example once.
fn example(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // This test runs from TARGET_DIR/PROFILE_DIR/deps/.
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("the profile directory");
        let target_dir = profile_dir.parent().expect("the target directory");
        let profile = match profile_dir.file_name().and_then(|p| p.to_str()) {
            Some("debug") => "dev",
            Some(dir) => dir,
            None => panic!("unexpected binary path {}", profile_dir.display()),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--examples", "--profile", profile, "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("run cargo build --examples");
        assert!(status.success(), "cargo build --examples failed: {status}");
        profile_dir.join("examples")
    });
    let path = dir.join(name);
    assert!(path.exists(), "no example binary at {}", path.display());
    path
}

/// A running example server; killed when dropped.
struct Running {
    child: Child,
    addr: SocketAddr,
    /// Kept open: the server may still write to it.
    _stdout: BufReader<ChildStdout>,
}

impl Running {
    /// Start example `name` with `args` (and `env`) and wait for its
    /// `listening on IP:PORT` line.
    fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(example(name))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the listening line");
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"));
        Running { child, addr, _stdout: stdout }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }

    fn sigterm(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("kill");
    }

    /// Send SIGTERM and wait for the exit (with no connection open: a
    /// graceful shutdown waits for every client to close).
    fn terminate(self) -> ExitStatus {
        self.sigterm();
        self.wait()
    }

    /// Wait (at most 5 s) for the exit.
    fn wait(mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no exit within 5 s");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run example `name` to completion (at most 10 s) and collect its output.
fn run(name: &str, args: &[&str]) -> Output {
    let child = Command::new(example(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let pid = Pid::from_raw(child.id() as i32);
    let (done, output) = mpsc::channel();
    thread::spawn(move || done.send(child.wait_with_output()));
    match output.recv_timeout(Duration::from_secs(10)) {
        Ok(output) => output.expect("wait for the example"),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("{name} {args:?} did not finish within 10 s");
        }
    }
}

fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read until the server closes");
    all
}

/// An address where nothing listens (a port just bound and released).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A one-shot fake server: reads whatever comes for a moment, answers
/// `reply`, closes.
fn fake_server(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let _ = stream.read(&mut [0u8; 1024]);
        let _ = stream.write_all(reply);
    });
    addr
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------- daytime

#[test]
fn daytime_sends_the_utc_time_to_the_microsecond_then_closes() {
    let server = Running::start("daytime", &["127.0.0.1:0"], &[]);
    let line = read_to_end(&mut server.connect());
    let line = text(&line);
    // 2026-11-29T14:05:06.123456Z\r\n, and nothing else before the close.
    let stamp = line.strip_suffix("\r\n").unwrap_or_else(|| panic!("no \\r\\n at the end of {line:?}"));
    let shape = stamp.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b'T',
        13 | 16 => b == b':',
        19 => b == b'.',
        26 => b == b'Z',
        _ => b.is_ascii_digit(),
    });
    assert!(shape && stamp.len() == 27, "not RFC 3339 UTC with microseconds: {line:?}");
    let sent: jiff::Timestamp = stamp.parse().expect("a timestamp");
    let skew = jiff::Timestamp::now().duration_since(sent).unsigned_abs();
    assert!(skew < Duration::from_secs(5), "{stamp} is {skew:?} away from now");
    assert!(server.terminate().success());
}

// ---------------------------------------------------------------- hello

/// Connect, check the greeting, send `input` (then half-close if asked),
/// and return everything the server sent after the greeting until it closed.
fn hello_exchange(server: &Running, input: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = server.connect();
    let mut greeting = [0u8; 6];
    stream.read_exact(&mut greeting).expect("the greeting");
    assert_eq!(&greeting, b"HELLO?");
    stream.write_all(input).unwrap();
    if half_close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    read_to_end(&mut stream)
}

#[test]
fn hello_answers_a_name_ending_in_lf() {
    let server = Running::start("hello", &["127.0.0.1:0"], &[]);
    assert_eq!(text(&hello_exchange(&server, b"Joe\n", false)), "Hello, Joe!\r\n");
    assert!(server.terminate().success());
}

#[test]
fn hello_answers_a_name_ending_in_crlf_and_ignores_what_follows() {
    let server = Running::start("hello", &["127.0.0.1:0"], &[]);
    assert_eq!(text(&hello_exchange(&server, b"Mike\r\nRobert\n", false)), "Hello, Mike!\r\n");
    assert!(server.terminate().success());
}

#[test]
fn hello_answers_a_final_line_without_lf_at_half_close() {
    let server = Running::start("hello", &["127.0.0.1:0"], &[]);
    assert_eq!(text(&hello_exchange(&server, b"Ann", true)), "Hello, Ann!\r\n");
    assert!(server.terminate().success());
}

#[test]
fn hello_closes_without_an_answer_when_no_name_comes_in_time() {
    let server = Running::start("hello", &["127.0.0.1:0"], &[("HELLO_TIMEOUT_MS", "300")]);
    let start = Instant::now();
    // Half a name, never finished: the timer is not reset by traffic.
    let after_greeting = hello_exchange(&server, b"Jo", false);
    let waited = start.elapsed();
    assert_eq!(text(&after_greeting), "", "no answer after a timeout");
    assert!(waited >= Duration::from_millis(300), "closed after {waited:?}, before the timeout");
    assert!(waited < Duration::from_secs(3), "closed only after {waited:?}");
    assert!(server.terminate().success());
}

#[test]
fn hello_client_greets_the_server() {
    let server = Running::start("hello", &["127.0.0.1:0"], &[]);
    let out = run("hello", &["--connect", &server.addr.to_string(), "Joe"]);
    assert!(out.status.success(), "exit {}; stderr {:?}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, Joe!\n");
    assert!(server.terminate().success());
}

#[test]
fn hello_client_reports_a_refused_connection() {
    let out = run("hello", &["--connect", &closed_port().to_string(), "Joe"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("connection refused"), "stderr {:?}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn hello_client_reports_an_unexpected_greeting() {
    let addr = fake_server(b"GOODBYE\r\n");
    let out = run("hello", &["--connect", &addr.to_string(), "Joe"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unexpected greeting \"GOODBY\""), "stderr {:?}", text(&out.stderr));
}

// ---------------------------------------------------------------- worker_pool

#[test]
fn worker_pool_echoes_length_prefixed_frames_from_50_clients() {
    let workers = 3;
    let server = Running::start("worker_pool", &["127.0.0.1:0", &workers.to_string()], &[]);
    let threads = std::fs::read_dir(format!("/proc/{}/task", server.child.id())).unwrap().count();
    assert_eq!(threads, workers + 1, "a main thread and {workers} workers");
    let clients: Vec<_> = (0..50u32)
        .map(|c| {
            let mut stream = server.connect();
            thread::spawn(move || {
                stream.set_nodelay(true).unwrap();
                // Frames of 0..3000 bytes, each a 2-byte length and a payload.
                let mut wire = Vec::new();
                for f in 0..8u32 {
                    let len = (c * 37 + f * 401) as usize % 3000;
                    wire.extend_from_slice(&(len as u16).to_be_bytes());
                    wire.extend((0..len).map(|i| (i as u32 ^ c ^ f) as u8));
                }
                // Written in pieces of 1, 2, 3, ... bytes: headers split
                // between writes, frames spread over several.
                let (mut at, mut piece) = (0, 1 + c as usize % 5);
                while at < wire.len() {
                    let end = (at + piece).min(wire.len());
                    stream.write_all(&wire[at..end]).unwrap();
                    at = end;
                    piece = piece * 3 % 1999 + 1;
                }
                let mut echo = vec![0u8; wire.len()];
                stream.read_exact(&mut echo).expect("the echo");
                assert!(echo == wire, "client {c}: the echo differs from what was sent");
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client failed");
    }
    assert!(server.terminate().success());
}

// ---------------------------------------------------------------- chat_room

#[test]
fn chat_room_sends_every_line_to_everyone_including_the_sender() {
    let server = Running::start("chat_room", &["127.0.0.1:0"], &[]);
    let mut clients: Vec<BufReader<TcpStream>> = Vec::new();
    let read_line = |client: &mut BufReader<TcpStream>| {
        let mut line = String::new();
        client.read_line(&mut line).expect("a line");
        line
    };
    // Join one by one; a client that hears its own line is in the room,
    // and so hears every later line.
    for name in ["a", "b", "c"] {
        let mut client = BufReader::new(server.connect());
        client.get_mut().write_all(format!("{name} is here\n").as_bytes()).unwrap();
        clients.push(client);
        for client in &mut clients {
            assert_eq!(read_line(client), format!("{name} is here\n"));
        }
    }
    // Each speaks in turn, one line split over two writes; all three hear it.
    for speaker in 0..3 {
        let stream = clients[speaker].get_mut();
        stream.write_all(b"hello from ").unwrap();
        thread::sleep(Duration::from_millis(20));
        stream.write_all(format!("{speaker}\r\n").as_bytes()).unwrap();
        for client in &mut clients {
            assert_eq!(read_line(client), format!("hello from {speaker}\r\n"));
        }
    }
    // The shutdown closes every connection gracefully (our end of stream
    // first, then the server waits for ours).
    server.sigterm();
    for mut client in clients {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("a clean close");
        assert_eq!(text(&rest), "");
    }
    assert!(server.wait().success());
}

// ---------------------------------------------------------------- memcached_get

/// A memcached of our own on a free loopback port; killed when dropped
/// (also when the test panics).
struct Memcached {
    child: Child,
    addr: SocketAddr,
}

impl Memcached {
    /// `None` (after a note) when memcached is not installed, unless `CI`
    /// is set: then the test fails.
    fn start() -> Option<Memcached> {
        let Some(binary) = find_program("memcached") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "memcached is not installed (Debian: apt-get install memcached); CI must run this test"
            );
            eprintln!("note: memcached is not installed; skipping the memcached_get test against it");
            return None;
        };
        let addr = closed_port();
        let child = Command::new(binary)
            // No -d: it stays in the foreground, our child. -U 0: no UDP.
            // -u root: memcached refuses to run as root without -u (and
            // ignores it when not root).
            .args(["-l", "127.0.0.1", "-p", &addr.port().to_string(), "-U", "0", "-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn memcached");
        let mut memcached = Memcached { child, addr };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(memcached.child.try_wait().unwrap().is_none(), "memcached exited at start");
            assert!(start.elapsed() < Duration::from_secs(5), "memcached does not listen on {addr}");
            thread::sleep(Duration::from_millis(20));
        }
        Some(memcached)
    }

    fn set(&self, key: &str, value: &[u8]) {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream.write_all(format!("set {key} 0 0 {}\r\n", value.len()).as_bytes()).unwrap();
        stream.write_all(value).unwrap();
        stream.write_all(b"\r\n").unwrap();
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"STORED\r\n", "set {key}");
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

#[test]
fn memcached_get_prints_hits_and_misses_from_a_real_memcached() {
    let Some(memcached) = Memcached::start() else { return };
    let big: String = (0..100_000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    memcached.set("greeting", b"hello");
    memcached.set("big", big.as_bytes());
    memcached.set("tricky", b"one\r\nEND\r\nVALUE x 0 1\r\n");
    memcached.set("quoted", "h\u{e9}llo \"you\"\t\\".as_bytes());
    memcached.set("binary", b"\xff\x00a\"");
    memcached.set("empty", b"");
    let addr = memcached.addr.to_string();
    let keys = ["greeting", "missing", "big", "tricky", "quoted", "binary", "empty", "gone"];
    let out = run("memcached_get", &[&[addr.as_str()][..], &keys].concat());
    assert!(out.status.success(), "exit {}; stderr {:?}", out.status, text(&out.stderr));
    let expected = [
        "greeting = \"hello\"".to_string(),
        "missing: not found".into(),
        format!("big = \"{big}\""),
        r#"tricky = "one\r\nEND\r\nVALUE x 0 1\r\n""#.into(),
        "quoted = \"h\u{e9}llo \\\"you\\\"\\t\\\\\"".into(),
        r#"binary = b"\xff\x00a\"""#.into(),
        "empty = \"\"".into(),
        "gone: not found".into(),
    ];
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, expected);

    // A miss alone is a success too.
    let out = run("memcached_get", &[&addr, "nothing"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "nothing: not found\n");
}

#[test]
fn memcached_get_fails_when_it_cannot_connect() {
    let out = run("memcached_get", &[&closed_port().to_string(), "k"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot connect"), "stderr {:?}", text(&out.stderr));
}

#[test]
fn memcached_get_fails_on_a_malformed_reply() {
    for reply in [
        &b"VALUE k 0 many\r\n"[..],
        b"VALUE k 0 3\r\nabcd\r\nEND\r\n",
        b"VALUE k 0 3\r\nabc\r\nEND",
        b"SERVER_ERROR\r\n",
    ] {
        let addr = fake_server(reply);
        let out = run("memcached_get", &[&addr.to_string(), "k"]);
        assert_eq!(out.status.code(), Some(1), "reply {:?}", text(reply));
        assert!(text(&out.stderr).starts_with("memcached_get: "), "stderr {:?}", text(&out.stderr));
        assert_eq!(text(&out.stdout), if reply.ends_with(b"END") { "k = \"abc\"\n" } else { "" });
    }
}
