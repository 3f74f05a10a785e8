//! Chat flood control (`--chat-rate`): one client writing flat out must not
//! get the members who read at a human pace disconnected.
//!
//! The rates measured here are bounded generously and mostly from above
//! (a limiter that works can only make lines slower, whatever the machine).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::Server;

/// Connects and reads lines until this client's own `* NICK joined`.
fn join(server: &Server) -> (BufReader<TcpStream>, TcpStream, String) {
    let stream = server.connect();
    let writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let nick = line.trim_end().strip_prefix("* ").and_then(|l| l.strip_suffix(" joined")).unwrap().to_string();
    (reader, writer, nick)
}

fn read_line(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => None,
        Ok(_) => Some(line.trim_end_matches('\n').to_string()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("read: {e}"),
    }
}

/// The value of `key=` in the last `--stats` line the server printed.
fn last_stat(server: &Server, key: &str) -> Option<u64> {
    let text = server.stderr_text();
    let line = text.lines().rev().find(|l| l.starts_with("stats "))?;
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Writes numbered 100-byte lines as fast as the server takes them (or at
/// most `pace` lines a second) until `stop`, while another thread drains
/// its own socket (the flooder is a member: its lines come back to it).
/// Returns the writer's thread.
fn flood(
    writer: TcpStream,
    mut own: BufReader<TcpStream>,
    stop: Arc<AtomicBool>,
    pace: Option<f64>,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut sink = [0u8; 65536];
        while own.get_mut().read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    thread::spawn(move || {
        let mut writer = writer;
        // A short write timeout lets the flooder notice `stop` while TCP
        // pushes back on it.
        writer.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut batch = Vec::new();
        let mut n = 0u64;
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some(due) = pace.map(|rate| start + Duration::from_secs_f64(n as f64 / rate)) {
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            batch.clear();
            for _ in 0..64 {
                let line = format!("{n:08} {}\n", "f".repeat(90));
                batch.extend_from_slice(line.as_bytes());
                n += 1;
            }
            let mut off = 0;
            while off < batch.len() && !stop.load(Ordering::Relaxed) {
                match writer.write(&batch[off..]) {
                    Ok(k) => off += k,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => panic!("the flooder's write failed: {e}"),
                }
            }
        }
        n
    })
}

/// A reader and a flooder in the lobby, the flood under way.
struct Flood {
    reader: BufReader<TcpStream>,
    _reader_writer: TcpStream,
    flooder: String,
    stop: Arc<AtomicBool>,
    writer: thread::JoinHandle<u64>,
    start: Instant,
}

impl Flood {
    fn start(server: &Server, pace: Option<f64>) -> Flood {
        let (mut reader, reader_writer, _) = join(server);
        let (flooder_reader, flooder_writer, flooder) = join(server);
        assert_eq!(read_line(&mut reader).unwrap(), format!("* {flooder} joined"));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = flood(flooder_writer, flooder_reader, Arc::clone(&stop), pace);
        Flood { reader, _reader_writer: reader_writer, flooder, stop, writer, start: Instant::now() }
    }

    /// The reader's next line, read no faster than 4 000 lines a second
    /// (a fast terminal); `None` once disconnected.
    fn paced_line(&mut self, received: u64) -> Option<String> {
        let due = self.start + Duration::from_secs_f64(received as f64 / 4000.0);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        read_line(&mut self.reader)
    }

    /// Stop flooding; how many lines were written.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.writer.join().unwrap()
    }
}

/// The measurement of the issue as a test: with the default rate, a reader
/// that reads about 4 000 lines a second stays connected through 5 s of
/// flooding and receives the flooder's lines in order, none missing; the
/// flooder stays connected, held to about 1 000 lines a second.
#[test]
fn a_flooder_cannot_get_a_human_paced_reader_disconnected() {
    let server = Server::start(&["chat", "--stats", "1"]);
    let mut flood = Flood::start(&server, None);
    let mut received = 0u64;
    let mut at_one_second = None;
    let prefix = format!("{}: ", flood.flooder);
    while flood.start.elapsed() < Duration::from_secs(5) {
        let line = flood.paced_line(received).expect("the reader was disconnected");
        let number = line.strip_prefix(&prefix).and_then(|l| l.get(..8)).unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(number.parse::<u64>().unwrap(), received, "a line missing or out of order");
        received += 1;
        if at_one_second.is_none() && flood.start.elapsed() >= Duration::from_secs(1) {
            at_one_second = Some(received);
        }
    }
    let sent = flood.stop();
    // After the first second (the burst allowance of 2 000 lines), about
    // 1 000 lines a second.
    let steady = (received - at_one_second.unwrap()) as f64 / 4.0;
    eprintln!("flooder sent {sent} lines; the reader received {received}, {steady:.0}/s after the first second");
    assert!(sent > received, "the flooder was not flooding ({sent} sent)");
    assert!((500.0..=1500.0).contains(&steady), "{steady} lines/s instead of about 1000");
    common::wait_until(Duration::from_secs(5), "a stats line", || last_stat(&server, "throttled").is_some());
    assert_eq!(last_stat(&server, "closed_outbuf_full"), Some(0));
    assert!(last_stat(&server, "throttled").unwrap() > 0);
    assert_eq!(last_stat(&server, "live"), Some(2), "someone was disconnected");
}

/// `--chat-rate 50`: a burst of 100 lines passes at once, then 50 a
/// second, measured at another member.
#[test]
fn chat_rate_holds_a_client_to_its_rate_after_the_burst() {
    const LINES: usize = 250;
    let server = Server::start(&["chat", "--chat-rate", "50"]);
    let (mut observer, _observer_writer, _) = join(&server);
    let (_sender_reader, mut sender, nick) = join(&server);
    assert_eq!(read_line(&mut observer).unwrap(), format!("* {nick} joined"));
    let all: String = (0..LINES).map(|n| format!("line {n}\n")).collect();
    sender.write_all(all.as_bytes()).unwrap();
    let mut arrived = Vec::new();
    for n in 0..LINES {
        assert_eq!(read_line(&mut observer).unwrap(), format!("{nick}: line {n}"));
        arrived.push(Instant::now());
    }
    let burst = arrived[99].duration_since(arrived[0]);
    let rate = 150.0 / arrived[LINES - 1].duration_since(arrived[99]).as_secs_f64();
    eprintln!("burst of 100 in {burst:?}, then {rate:.1} lines/s");
    assert!(burst < Duration::from_millis(1500), "the burst was held back: {burst:?}");
    assert!((25.0..=60.0).contains(&rate), "{rate} lines/s instead of 50");
}

/// `--chat-rate 0`: no flood control, and the slow reader is cut again
/// (the slow-consumer policy alone). The flood is paced at 100 000 lines a
/// second, 25 times what the reader takes: flat out, the flooder's own
/// echo (it is a member) outran its draining thread whenever the machine
/// was busy, and the flooder was cut first, ending the flood.
#[test]
fn without_a_rate_the_slow_reader_is_cut() {
    let server = Server::start(&["chat", "--chat-rate", "0", "--max-outbuf", "65536", "--stats", "1"]);
    let mut flood = Flood::start(&server, Some(100_000.0));
    let mut received = 0u64;
    let cut = loop {
        assert!(flood.start.elapsed() < Duration::from_secs(60), "the slow reader was never cut");
        match flood.paced_line(received) {
            Some(_) => received += 1,
            None => break flood.start.elapsed(),
        }
    };
    flood.stop();
    eprintln!("cut after {cut:?} and {received} lines");
    common::wait_until(Duration::from_secs(5), "the cut counted", || {
        last_stat(&server, "closed_outbuf_full") == Some(1)
    });
}

/// Flood control costs nothing when nobody floods: 1 000 connected, idle
/// clients leave the server asleep.
#[test]
fn an_idle_server_with_a_thousand_clients_stays_asleep() {
    let _ = edgeloop::sys::raise_nofile_limit();
    let server = Server::start(&["chat"]);
    let clients: Vec<TcpStream> = (0..1000).map(|_| server.connect()).collect();
    // Each gets its own joined notice and those of everyone after it;
    // wait for the last one, which every client has received.
    let mut last = BufReader::new(clients.last().unwrap().try_clone().unwrap());
    assert_eq!(read_line(&mut last).unwrap(), "* guest1000 joined");
    common::assert_not_spinning(&server, "with 1 000 idle chat clients");
    let before = common::cpu_ticks(&server);
    thread::sleep(Duration::from_secs(2));
    let used = common::cpu_ticks(&server) - before;
    eprintln!("{used} clock ticks in 2 s with 1 000 idle clients");
    assert!(used <= 2, "{used} clock ticks of CPU in 2 s while idle");
}
