//! Shared by the integration tests: run the real `edgeloop` binary on
//! `127.0.0.1:0` and talk to it over real sockets.
#![allow(dead_code)]

pub mod chat;
pub mod metrics;
pub mod ws;

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The `edgeloop` binary. Cargo names it only to the programs' tests
/// (cli/Cargo.toml); the library's tests that share this module never start it.
pub fn edgeloop_bin() -> &'static str {
    match option_env!("CARGO_BIN_EXE_edgeloop") {
        Some(path) => path,
        None => panic!("the edgeloop binary is known to the programs' tests only"),
    }
}

/// A running `edgeloop` process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// What the server has written to stderr so far (read by a thread, so
    /// a chatty server never blocks on a full pipe).
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    /// `edgeloop <args...>` with `--listen 127.0.0.1:0` added unless given;
    /// waits for the `listening on` line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(Command::new(edgeloop_bin()), args)
    }

    /// Like [`Server::start`], from a prepared command (to wrap it in
    /// `sh -c 'ulimit ...'`, say): `args` are appended.
    pub fn start_with(cmd: Command, args: &[&str]) -> Server {
        Server::try_start_with(cmd, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Server::start_with`], but a server that exits without
    /// listening is an error carrying its stderr, not a panic: a caller can
    /// retry when an address it chose was taken meanwhile.
    pub fn try_start_with(mut cmd: Command, args: &[&str]) -> Result<Server, String> {
        cmd.args(args);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn edgeloop");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read listening line");
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let output = child.wait_with_output().expect("wait for edgeloop");
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!("unexpected first line {line:?} ({}); stderr:\n{stderr}", output.status));
        };
        let addr = addr.parse().expect("address in listening line");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Server { child, addr, stderr })
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a signal (libc::SIGTERM, ...).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait for exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < limit, "server did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server has written to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Descriptors the server process has open, from `/proc/PID/fd`.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).expect("/proc/PID/fd").count()
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what its servers logged (the harness prints
        // a test's captured output only when it fails).
        if thread::panicking() {
            let text = self.stderr_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- server {} stderr, last {} lines ---\n{tail}", self.addr, lines.len().min(40));
        }
    }
}

/// Raises this process's open-file soft limit to its hard limit: a test
/// that holds thousands of client ends must not depend on the shell's
/// default soft limit (often 1024). Returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    hard
}

/// Wait until `cond` holds, polling, for at most `limit`; panics otherwise.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- byte streams, sockets and CPU checks shared by the echo tests

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes `offset..offset + len` of the pseudo-random stream `seed`: any
/// slice can be regenerated, so a long transfer is checked without storing
/// it, and a byte lost, duplicated or reordered shows as a mismatch.
pub fn stream_bytes(seed: u64, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| splitmix64(seed ^ (i as u64 >> 3).wrapping_mul(0xA24B_AED4_963E_E407)).to_le_bytes()[i & 7])
        .collect()
}

/// Reads `len` bytes and checks they are bytes `offset..` of stream `seed`.
pub fn expect_stream(stream: &mut TcpStream, seed: u64, offset: usize, len: usize) {
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
            "bytes {}..{} differ from what was sent",
            offset + got,
            offset + got + n
        );
        got += n;
    }
}

/// Writes `msg` and expects exactly `msg` back.
pub fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).expect("read echo");
    assert_eq!(back, msg, "echo differs from what was sent");
}

/// Reads until end of stream; a reset or a timeout fails the test.
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read until end of stream");
    all
}

/// Writes stream `seed` until the server stops reading (two consecutive
/// one-second windows in which the kernel takes no byte) or `limit` bytes
/// are sent; returns the bytes sent.
pub fn send_until_stalled(stream: &TcpStream, seed: u64, limit: usize) -> usize {
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

/// Sets a `SOL_SOCKET` option (`SO_RCVBUF`, `SO_LINGER`, ...) to `value`.
pub fn set_socket_option<T>(stream: &TcpStream, name: libc::c_int, value: T) {
    // SAFETY: `value` is a valid `T` for the duration of the call and the
    // length passed is its size; the descriptor is an open socket we own.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            &value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
}

/// Drops the connection with a reset (SO_LINGER 0) instead of a FIN.
pub fn reset(stream: TcpStream) {
    set_socket_option(&stream, libc::SO_LINGER, libc::linger { l_onoff: 1, l_linger: 0 });
    drop(stream);
}

/// CPU time (user + system) the server has used, in clock ticks.
pub fn cpu_ticks(server: &Server) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as u64 }
}

/// Asserts that the server uses less than half a core over one second of
/// wall time while nothing should happen. A busy loop uses a whole core,
/// whatever the machine's speed, so this checks behaviour, not speed.
pub fn assert_not_spinning(server: &Server, situation: &str) {
    let before = cpu_ticks(server);
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(server) - before;
    assert!(
        used < ticks_per_second() / 2,
        "the server used {used} of {} clock ticks in one second {situation}",
        ticks_per_second()
    );
}

// ---- a real Redis

/// Whether an outside dependency of a test (`what`, with how to install
/// it) is `found`. Without it the test is skipped with a note, unless `CI`
/// is set: CI installs every dependency (`.ci/run`), so there a missing
/// one fails the test instead of passing it unseen.
pub fn installed(found: bool, what: &str) -> bool {
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{what} is not installed; CI must run this test");
        eprintln!("note: {what} is not installed; skipping this test");
    }
    found
}

/// A program on the `PATH`, if installed.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A `redis-server` of our own on a free loopback port, persistence off;
/// killed when dropped (also when the test panics).
pub struct Redis {
    child: Option<Child>,
    binary: std::path::PathBuf,
    pub port: u16,
}

impl Redis {
    /// `None` (after a note) when `redis-server` is not installed, unless
    /// `CI` is set: then the test fails.
    pub fn start() -> Option<Redis> {
        let binary = find_program("redis-server");
        if !installed(binary.is_some(), "redis-server (Debian: apt-get install redis-server)") {
            return None;
        }
        let binary = binary?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Redis { child: None, binary, port };
        redis.spawn();
        Some(redis)
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // A replica writes the RDB it receives to its directory: not the repository.
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let start = Instant::now();
        while self.command(&["PING"]).as_deref() != Some("+PONG\r\n") {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "redis-server exited at start: {exited:?}");
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server does not answer on {}", self.port);
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill it (SIGKILL: no goodbye to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send it a signal (SIGSTOP: it stops answering, connections open).
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Start it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// One command, its whole reply as text (`None` if Redis cannot be
    /// reached). For checks; replies up to 64 KiB.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut wire = format!("*{}\r\n", args.len());
        for arg in args {
            wire.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(wire.as_bytes()).ok()?;
        let mut buf = vec![0u8; 65536];
        let n = stream.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.stop();
    }
}

/// `GET /metrics` from `addr` until `ready(body)` holds (10 s at most);
/// returns that body.
pub fn wait_for_metrics(addr: &str, mut ready: impl FnMut(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let mut stream = TcpStream::connect(addr).expect("connect to the metrics");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        if ready(&response) {
            return response;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "metrics never matched:\n{response}");
        thread::sleep(Duration::from_millis(50));
    }
}
