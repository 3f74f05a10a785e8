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

// ---------------------------------------------------------------------------
// 3. The /metrics listener's bounds
// ---------------------------------------------------------------------------

/// Many clients each send most of a megabyte of a request line that never
/// ends (`--max-frame` is a megabyte): the server must not hold it. At
/// most 64 are admitted, each answered 431 at 8 KiB; the others are refused.
#[test]
fn unfinished_metrics_requests_do_not_take_the_memory() {
    const CLIENTS: usize = 100;
    const EACH: usize = 1000 * 1024;
    let (server, metrics) = common::metrics::start_with_metrics(&["echo"]);
    let before = server.rss_kib();
    let line = vec![b'a'; EACH];
    let writers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let line = line.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(metrics) else { return None };
                s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                // Cut or refused: the write fails, as it should.
                let _ = s.write_all(b"GET /");
                let _ = s.write_all(&line);
                Some(s)
            })
        })
        .collect();
    let held: Vec<TcpStream> = writers.into_iter().filter_map(|w| w.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let grown = server.rss_kib().saturating_sub(before);
    eprintln!("{} clients, the server grew by {grown} KiB", held.len());
    assert!(grown < 32 * 1024, "the server grew by {grown} KiB for unfinished metrics requests");
    drop(held);
    // Each admitted client was answered 431 and is lingered on until its
    // FIN: until the server has read the 64 just sent, a scrape may be
    // refused as the 65th.
    let mut head = String::new();
    common::wait_until(Duration::from_secs(10), "a scrape served once the held connections closed", || {
        let Ok(mut s) = TcpStream::connect(metrics) else { return false };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        head = response.lines().next().unwrap_or_default().to_string();
        !head.is_empty()
    });
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
}

/// 64 metrics connections may be open; the 65th is refused at once, and
/// counted; once one closes, a scrape is served again.
#[test]
fn the_65th_metrics_connection_is_refused_and_counted() {
    let (server, metrics) = common::metrics::start_with_metrics(&["echo", "--stats", "1"]);
    let mut idle: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(metrics).unwrap()).collect();
    // The 64 are in once each has been served its accept: a byte of a
    // request line each, which the server reads.
    for s in &mut idle {
        s.write_all(b"G").unwrap();
    }
    let mut extra = TcpStream::connect(metrics).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    let mut got = Vec::new();
    let refused = match extra.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    };
    assert!(refused, "the 65th connection was served: {:?}", String::from_utf8_lossy(&got));
    // The first 64 are still there.
    idle[0].set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(
        matches!(idle[0].read(&mut [0u8; 1]), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "an admitted connection was closed"
    );
    drop(idle.pop());
    common::wait_until(Duration::from_secs(5), "a scrape served again, with the refusal counted", || {
        let Ok(mut s) = TcpStream::connect(metrics) else { return false };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        // (A scrape racing the close just made may be refused too.)
        let value = |name: &str| {
            body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(-1.0)
        };
        // The 63 left: a scrape is published after it is rendered.
        value("edgeloop_metrics_refused_total") >= 1.0 && value("edgeloop_metrics_connections") == 63.0
    });
    drop(idle);
    common::wait_until(Duration::from_secs(5), "the --stats line", || {
        let err = server.stderr_text();
        err.lines().any(|l| l.contains(" metrics_live=") && !l.contains(" metrics_refused=0 "))
    });
}

/// A metrics client that never finishes its request — silent, or a
/// slowloris trickling a byte a second, which would hold a slot forever
/// if activity pushed the deadline back — is cut 10 s after it connected.
#[test]
fn an_unfinished_metrics_request_is_cut_after_10_s() {
    let (_server, metrics) = common::metrics::start_with_metrics(&["echo"]);
    let start = Instant::now();
    let silent = TcpStream::connect(metrics).unwrap();
    let mut trickle = TcpStream::connect(metrics).unwrap();
    let cut = |mut s: &TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        match s.read(&mut [0u8; 64]) {
            Ok(0) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
            Ok(_) => panic!("an answer to an unfinished request"),
        }
    };
    let (mut silent_cut, mut trickle_cut) = (None, None);
    for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle() {
        assert!(start.elapsed() < Duration::from_secs(20), "not cut within 20 s");
        if trickle_cut.is_none() {
            let _ = trickle.write_all(&[*byte]);
        }
        silent_cut = silent_cut.or_else(|| cut(&silent).then(|| start.elapsed()));
        trickle_cut = trickle_cut.or_else(|| cut(&trickle).then(|| start.elapsed()));
        if let (Some(a), Some(b)) = (silent_cut, trickle_cut) {
            assert!(a >= Duration::from_secs(9) && b >= Duration::from_secs(9), "cut early: {a:?} {b:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(900));
    }
}

/// One request line over 8 KiB is answered 431 too (it used to be cut
/// without an answer: the line framing's limit closed the connection
/// before the handler saw it).
#[test]
fn a_metrics_request_line_over_8_kib_gets_431() {
    let (_server, metrics) = common::metrics::start_with_metrics(&["echo"]);
    let request = format!("GET /metrics?{} HTTP/1.1\r\n\r\n", "a".repeat(9 * 1024));
    let (status, _) = common::metrics::http(metrics, request.as_bytes());
    assert!(status.starts_with("HTTP/1.1 431 Request Header Fields Too Large"), "{status}");
    // A request and its body in one write: the head alone is judged.
    let with_body = format!("GET /metrics HTTP/1.1\r\nContent-Length: 9000\r\n\r\n{}", "b".repeat(9000));
    let (status, _) = common::metrics::http(metrics, with_body.as_bytes());
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
}

/// A head over 8 KiB, in lines each under it, is answered 431.
#[test]
fn a_metrics_head_over_8_kib_gets_431() {
    let (_server, metrics) = common::metrics::start_with_metrics(&["echo"]);
    // Ten lines of a kilobyte: each well under the limit, and few enough
    // for the parser's header slots.
    let head = format!("GET /metrics HTTP/1.1\r\n{}\r\n", format!("X-Filler: {}\r\n", "a".repeat(1000)).repeat(10));
    assert!(head.len() > 8 * 1024);
    let (status, _) = common::metrics::http(metrics, head.as_bytes());
    assert!(status.starts_with("HTTP/1.1 431 Request Header Fields Too Large"), "{status}");
}

// ---------------------------------------------------------------------------
// 8. The chat on Redis: its links' frame limit, and rooms across workers
// ---------------------------------------------------------------------------

/// `--max-frame 16` is for clients' lines; Redis's lines must still get
/// through — among them its longer error lines: after a `SCRIPT FLUSH`
/// the next script call is answered `-NOSCRIPT No matching script...`
/// (48 bytes), which the chat must read to send the script again.
#[test]
fn chat_on_redis_works_with_a_tiny_max_frame() {
    let Some(redis) = common::Redis::start() else { return };
    let url = redis.url();
    let server = Server::start(&["chat", "--redis", url.as_str(), "--max-frame", "16"]);
    let mut a = common::chat::Client::join(&server);
    let mut b = common::chat::Client::join(&server);
    a.expect(&format!("* {} joined", b.nick));
    a.send("hi there");
    b.expect(&format!("{}: hi there", a.nick));
    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]).as_deref(), Some("+OK\r\n"));
    a.send("and again");
    b.expect(&format!("{}: and again", a.nick));
    assert!(!server.stderr_text().contains("Redis"), "{}", server.stderr_text());
}

/// With two workers, members of one room on both workers make one room of
/// the server, not two.
#[test]
fn a_room_on_two_workers_is_counted_once() {
    let Some(redis) = common::Redis::start() else { return };
    let url = redis.url();
    let (server, metrics) = common::metrics::start_with_metrics(&["chat", "--workers", "2", "--redis", url.as_str()]);
    let value = |name: &str, worker: Option<&str>| {
        let s = common::metrics::scrape(metrics);
        common::metrics::metric(&s, name, worker.map(|w| ("worker", w)))
    };
    let mut members = Vec::new();
    loop {
        members.push(common::chat::Client::join(&server));
        let n = members.len() as f64;
        common::wait_until(Duration::from_secs(5), "every member counted", || value("edgeloop_connections", None) == n);
        if value("edgeloop_worker_connections", Some("0")) > 0.0
            && value("edgeloop_worker_connections", Some("1")) > 0.0
        {
            break;
        }
        assert!(members.len() < 64, "64 members, all on one worker");
    }
    // Everyone is in the lobby: one room. (The overlap is published once a
    // tick: waited for.)
    common::wait_until(Duration::from_secs(5), "one room", || value("edgeloop_chat_rooms", None) == 1.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(value("edgeloop_chat_rooms", None), 1.0);
    let last = members.len() - 1;
    members[last].send("/join elsewhere");
    common::wait_until(Duration::from_secs(5), "two rooms", || value("edgeloop_chat_rooms", None) == 2.0);
}
