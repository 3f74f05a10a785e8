//! `edgeloop load` against real servers: the echo server in every framing,
//! nothing listening, a server that corrupts a byte, one that hangs up;
//! and the open loop against test servers on threads that stall, that are
//! slow, or that time the arrivals. The only timing assertions are the
//! issue's own (a rate met within 1 %, a half-second stall that shows),
//! with wide margins everywhere else.

mod common;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
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

/// Every run holds this: shared by most, exclusive for the tests whose
/// assertions are about time (the rate met, the send lag), so that another
/// test's saturating closed loop does not take their cores.
static RUNS: RwLock<()> = RwLock::new(());

thread_local! {
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// While this lives, this test's runs are the only ones.
struct Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

fn alone() -> Alone {
    let guard = RUNS.write().unwrap_or_else(|e| e.into_inner());
    ALONE.with(|a| a.set(true));
    Alone(guard)
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|a| a.set(false));
    }
}

/// `edgeloop load --connect ADDR ARGS...`, bounded by [`RUN_LIMIT`].
fn load(addr: SocketAddr, args: &[&str]) -> Run {
    let _shared = if ALONE.with(Cell::get) { None } else { Some(RUNS.read().unwrap_or_else(|e| e.into_inner())) };
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
    // The closed loop says what its latency hides.
    assert!(run.stdout.contains("hides stalls") && run.stdout.contains("coordinated omission"), "{}", run.stdout);
    // The open loop's progress line: target, p99 of the second, in flight.
    let run = load(server.addr, &["--conns", "2", "--duration", "1.2", "--warmup", "0", "--rate", "500"]);
    // (Whether the verdict is ok is another test's business: a busy
    // machine makes it server_behind, exit 3, with the same lines.)
    assert!(matches!(run.status.code(), Some(0 | 3)), "stderr:\n{}", run.stderr);
    for word in ["(target 500)", " p99 ", " conns", " in flight"] {
        assert!(run.stderr.contains(word), "{word} missing from:\n{}", run.stderr);
    }
    for word in ["open loop", "response us", "service us", "send lag us", "verdict     "] {
        assert!(run.stdout.contains(word), "{word} missing from:\n{}", run.stdout);
    }
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
    for (framing, open) in [("raw", false), ("2", false), ("raw", true), ("2", true)] {
        let mut args = vec!["--conns", "3", "--framing", framing, "--json"];
        args.extend_from_slice(&SHORT);
        if open {
            args.extend_from_slice(&["--rate", "600"]);
        }
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

// ---- the open loop

/// A raw echo server on threads; `reply` gets each connection's reads
/// (with their arrival time) and writes the echo when it likes.
fn threaded_server<S, F>(state: Arc<S>, reply: F) -> SocketAddr
where
    S: Send + Sync + 'static,
    F: Fn(&S, &mut TcpStream, &[u8], Instant) -> std::io::Result<()> + Send + Sync + Copy + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let state = Arc::clone(&state);
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = [0u8; 65536];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if reply(&state, &mut stream, &buf[..n], Instant::now()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Attempts for the two tests whose subject is timing on a machine that
/// other programs share: a run that the generator itself flags as starved
/// (late sends from idle threads) is tried again, at most this often, and
/// every attempt is logged.
const TIMING_ATTEMPTS: usize = 3;

#[test]
fn open_loop_meets_its_rate_and_says_ok() {
    let _alone = alone();
    let server = Server::start(&["echo"]);
    let mut attempt = 0;
    let (run, v) = loop {
        attempt += 1;
        let run =
            load(server.addr, &["--rate", "2000", "--conns", "10", "--duration", "3", "--warmup", "0.5", "--json"]);
        let v = run.json();
        eprintln!("attempt {attempt}: {v}");
        let starved = v["verdict_reasons"].to_string().contains("competing for the cores");
        if v["verdict"] == "ok" || !starved || attempt == TIMING_ATTEMPTS {
            break (run, v);
        }
    };
    assert_eq!(run.status.code(), Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(v["mode"], "open");
    assert_eq!(v["verdict"], "ok", "{v}");
    assert_eq!(v["rate"], 2000.0);
    assert_eq!(v["arrival"], "fixed");
    let achieved = f(&v["achieved_rate"]);
    assert!((achieved - 2000.0).abs() <= 20.0, "achieved {achieved} msg/s");
    for key in ["latency_us", "service_us", "send_lag_us"] {
        for p in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(v[key][p].is_number(), "{key}.{p} in {v}");
        }
    }
    // Timed from the due time, the response is never shorter than the service.
    assert!(f(&v["latency_us"]["max"]) >= f(&v["service_us"]["max"]), "{v}");
    assert!(f(&v["send_lag_us"]["p99"]) <= 1000.0, "{v}");
}

/// Echoes, except that every reply due in `[t0 + 1 s, t0 + 1.5 s)`, where
/// `t0` is the first connection, is held until the end of that half second.
fn stalling_server() -> SocketAddr {
    let t0: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    threaded_server(t0, |t0, stream, data, now| {
        let start = *t0.lock().unwrap().get_or_insert(now);
        let (from, to) = (start + Duration::from_millis(1000), start + Duration::from_millis(1500));
        if now >= from && now < to {
            thread::sleep(to - now);
        }
        stream.write_all(data)
    })
}

#[test]
fn a_stall_shows_in_the_open_loop_and_hides_in_the_closed_one() {
    let _alone = alone();
    let common = ["--conns", "10", "--duration", "3", "--warmup", "0", "--json"];
    let open = load(stalling_server(), &[&common[..], &["--rate", "1000"]].concat());
    let closed = load(stalling_server(), &common);
    let (o, c) = (open.json(), closed.json());
    eprintln!("open loop:   latency {}\nclosed loop: latency {}", o["latency_us"], c["latency_us"]);
    assert_eq!(closed.status.code(), Some(0), "stderr:\n{}", closed.stderr);
    assert_ne!(open.status.code(), Some(1), "stderr:\n{}", open.stderr);
    // About 500 of 3000 messages waited up to half a second.
    assert!(f(&o["latency_us"]["p99"]) >= 200_000.0, "open-loop p99 {}", o["latency_us"]);
    // The closed loop saw the stall (its max), but its p99 does not show it.
    assert!(f(&c["latency_us"]["max"]) >= 400_000.0, "closed-loop max {}", c["latency_us"]);
    assert!(f(&c["latency_us"]["p99"]) < f(&o["latency_us"]["p99"]) / 2.0, "closed {} open {}", c, o);
    // The open loop's service time (from the actual send) shows the stall too:
    // the sends kept to the schedule.
    assert!(f(&o["send_lag_us"]["p99"]) < 100_000.0, "{o}");
}

/// A real server paused (SIGSTOP) for one second in the middle of an
/// open-loop run, then resumed: the generator keeps its schedule, so the
/// messages due during the pause are timed from when they were due — the
/// pause is in the percentiles, not hidden as one slow sample — and
/// nothing is lost: every message is answered, byte for byte, after the
/// resume (except those still on their way when the window closes). The
/// rate was still met, so the verdict is `ok` (the load was what was
/// asked), or `server_behind` when the burst of answers at the resume held
/// sends back past the 1 ms the verdict allows.
#[test]
fn a_paused_server_shows_in_the_percentiles_and_loses_nothing() {
    let _alone = alone();
    let server = Server::start(&["echo"]);
    let run = thread::scope(|scope| {
        scope.spawn(|| {
            thread::sleep(Duration::from_millis(1500));
            server.signal(libc::SIGSTOP);
            thread::sleep(Duration::from_secs(1));
            server.signal(libc::SIGCONT);
        });
        load(server.addr, &["--rate", "1000", "--conns", "10", "--duration", "4", "--warmup", "0", "--json"])
    });
    let v = run.json();
    eprintln!("{v}");
    let verdict = (run.status.code(), v["verdict"].as_str());
    assert!(matches!(verdict, (Some(0), Some("ok")) | (Some(3), Some("server_behind"))), "{verdict:?}: {v}");
    // The window closes on time, not when the last echo is in: a message
    // sent in its last ~100 µs is still on its way then (CI caught one),
    // one per connection at most with the server long resumed. A message
    // the server lost would instead shift every later echo of its
    // connection (a mismatch).
    assert!(v["unanswered"].as_u64().is_some_and(|n| n <= 10), "{v}");
    for error in ["connect_failed", "reset", "closed", "mismatch"] {
        assert_eq!(v["errors"][error], 0, "{error}: {v}");
    }
    assert!(f(&v["messages"]) >= 3990.0, "{v}");
    // A quarter of the messages were due during the pause, waiting up to
    // a second each.
    let latency = &v["latency_us"];
    assert!(f(&latency["max"]) >= 900_000.0, "{latency}");
    assert!(f(&latency["p90"]) >= 300_000.0, "{latency}");
    assert!(f(&latency["p50"]) < 100_000.0, "{latency}");
}

/// Echoes at most `rate` 64-byte messages per second over all connections.
fn slow_server(rate: u32) -> SocketAddr {
    let gap = Duration::from_secs(1) / rate;
    let next: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    threaded_server(next, move |next, stream, data, _| {
        for msg in data.chunks(64) {
            let slot = {
                let mut next = next.lock().unwrap();
                let now = Instant::now();
                let slot = next.map_or(now, |t: Instant| t.max(now));
                *next = Some(slot + gap);
                slot
            };
            thread::sleep(slot.saturating_duration_since(Instant::now()));
            stream.write_all(msg)?;
        }
        Ok(())
    })
}

#[test]
fn a_server_at_half_the_rate_is_server_behind() {
    let run = load(slow_server(500), &["--rate", "1000", "--conns", "4", "--duration", "3", "--warmup", "0", "--json"]);
    assert_eq!(run.status.code(), Some(3), "stderr:\n{}", run.stderr);
    let v = run.json();
    assert_eq!(v["verdict"], "server_behind", "{v}");
    let achieved = f(&v["achieved_rate"]);
    assert!((achieved - 500.0).abs() <= 50.0, "achieved {achieved} msg/s");
    assert!(f(&v["sent_rate"]) >= 950.0, "{v}");
    assert!(run.stderr.contains("verdict server_behind") && run.stderr.contains("did not keep up"), "{}", run.stderr);
}

#[test]
fn hgrm_file_parses_back() {
    let server = Server::start(&["echo"]);
    let file = std::env::temp_dir().join(format!("edgeloop-test-{}.hgrm", std::process::id()));
    let path = file.to_str().unwrap();
    let run = load(
        server.addr,
        &["--rate", "3000", "--conns", "4", "--duration", "1", "--warmup", "0", "--json", "--hgrm", path],
    );
    assert!(run.status.code() == Some(0) || run.status.code() == Some(3), "stderr:\n{}", run.stderr);
    let v = run.json();
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]);
    assert_eq!(lines.next(), Some(""));
    let (mut rows, mut footer) = (Vec::<Vec<f64>>::new(), Vec::new());
    for line in lines {
        if line.starts_with("#[") {
            footer.push(line);
        } else {
            let cols: Vec<f64> = line.split_whitespace().map(|c| c.parse().unwrap()).collect();
            assert_eq!(cols.len(), 4, "{line}");
            rows.push(cols);
        }
    }
    assert!(rows.len() > 20, "{text}");
    for w in rows.windows(2) {
        for c in 0..4 {
            assert!(w[1][c] >= w[0][c], "column {c} goes down: {w:?}");
        }
    }
    assert_eq!(rows.last().unwrap()[1], 1.0);
    assert_eq!(rows.last().unwrap()[2], f(&v["latency_us"]["samples"]));
    assert_eq!(footer.len(), 3, "{text}");
    assert!(footer[0].starts_with("#[Mean    = "), "{text}");
    let max: f64 = footer[1].strip_prefix("#[Max     = ").unwrap().split(',').next().unwrap().trim().parse().unwrap();
    assert_eq!(max, f(&v["latency_us"]["max"]), "{text}\n{v}");
}

#[test]
fn plot_is_well_formed_svg() {
    let server = Server::start(&["echo"]);
    let file = std::env::temp_dir().join(format!("edgeloop-test-{}.svg", std::process::id()));
    let path = file.to_str().unwrap();
    for extra in [&["--rate", "2000"][..], &[]] {
        let args = [&["--conns", "4", "--duration", "2", "--warmup", "0", "--plot", path][..], extra].concat();
        let run = load(server.addr, &args);
        assert!(run.status.code() == Some(0) || run.status.code() == Some(3), "stderr:\n{}", run.stderr);
        let text = std::fs::read_to_string(&file).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("not XML: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: String = doc.descendants().filter_map(|n| n.text()).collect();
        for title in ["Latency by percentile", "Messages per second", "p99 of each second", "99.999%"] {
            assert!(texts.contains(title), "{title} missing from the plot");
        }
        let lines = doc.descendants().filter(|n| n.has_tag_name("polyline") || n.has_tag_name("path")).count();
        assert!(lines >= 3, "{lines} lines drawn");
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn two_threads_share_the_work() {
    let _alone = alone();
    let server = Server::start(&["echo"]);
    for extra in [&[][..], &["--rate", "2000"]] {
        let args =
            [&["--threads", "2", "--conns", "6", "--duration", "2", "--warmup", "0.2", "--json"][..], extra].concat();
        let run = load(server.addr, &args);
        // (The verdict is the single-thread test's business: here, the split.)
        assert!(matches!(run.status.code(), Some(0 | 3)), "stderr:\n{}", run.stderr);
        let v = run.json();
        assert_eq!(v["threads"], 2);
        assert_eq!(v["connected"], 6);
        let util = v["client"]["thread_cpu_util"].as_array().unwrap();
        assert_eq!(util.len(), 2, "{v}");
        assert!(util.iter().all(|u| f(u) > 0.0), "a thread did nothing: {v}");
        assert_eq!(
            v["latency_us"]["samples"].as_u64().unwrap() - v["unanswered"].as_u64().unwrap_or(0),
            v["messages"].as_u64().unwrap()
        );
        if extra.is_empty() {
            assert_eq!(v["mode"], "closed");
        } else {
            assert!((f(&v["achieved_rate"]) - 2000.0).abs() <= 20.0, "{v}");
        }
        // One progress line per second, not one per thread.
        let firsts = run.stderr.lines().filter(|l| l.starts_with("[  1s]")).count();
        assert_eq!(firsts, 1, "{}", run.stderr);
    }
}

#[test]
fn poisson_arrivals_at_the_server() {
    let _alone = alone();
    let rate = 500.0;
    for attempt in 1..=TIMING_ATTEMPTS {
        let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
        let addr = threaded_server(Arc::clone(&arrivals), |arrivals, stream, data, now| {
            // 64-byte messages: one arrival per message (a read that holds
            // two saw them arrive together).
            arrivals.lock().unwrap().extend(std::iter::repeat_n(now, data.len() / 64));
            stream.write_all(data)
        });
        let args =
            ["--rate", "500", "--arrival", "poisson", "--conns", "8", "--duration", "7", "--warmup", "0", "--json"];
        let run = load(addr, &args);
        assert!(matches!(run.status.code(), Some(0 | 3)), "stderr:\n{}", run.stderr);
        let v = run.json();
        assert_eq!(v["arrival"], "poisson");
        let mut t = arrivals.lock().unwrap().clone();
        t.sort_unstable();
        let gaps: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let n = gaps.len() as f64;
        assert!(n > 3000.0, "{n} gaps");
        let mean = gaps.iter().sum::<f64>() / n;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let cv = sd / mean;
        eprintln!(
            "attempt {attempt}: {n} gaps: mean {:.1} us (1/R = {:.1} us), coefficient of variation {cv:.3}; verdict {}",
            mean * 1e6,
            1e6 / rate,
            v["verdict"]
        );
        // A fixed schedule has a coefficient of variation near 0, a Poisson
        // process 1. A starved generator bunches its sends (catching up),
        // which shows as a larger one: then try again.
        let on_mean = (mean * rate - 1.0).abs() < 0.05;
        let poisson = (cv - 1.0).abs() < 0.2;
        let starved = v["verdict_reasons"].to_string().contains("competing for the cores");
        if (on_mean && poisson) || !starved || attempt == TIMING_ATTEMPTS {
            assert!(on_mean, "mean gap {mean} s");
            assert!(poisson, "coefficient of variation {cv}");
            return;
        }
    }
}

#[test]
fn a_send_window_batches_the_sends_and_the_lag_shows_it() {
    let _alone = alone();
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let addr = threaded_server(Arc::clone(&arrivals), |arrivals, stream, data, now| {
        arrivals.lock().unwrap().extend(std::iter::repeat_n(now, data.len() / 64));
        stream.write_all(data)
    });
    // 8 000 msg/s over 8 staggered connections: one message every 125 us.
    // In 500 us windows they leave four at a time, back to back.
    let args = ["--rate", "8000", "--conns", "8", "--send-window", "500", "--duration", "2", "--warmup", "0", "--json"];
    let run = load(addr, &args);
    assert!(matches!(run.status.code(), Some(0 | 3)), "stderr:\n{}", run.stderr);
    let v = run.json();
    assert_eq!(v["send_window_us"], 500);
    let lag_p50 = f(&v["send_lag_us"]["p50"]);
    let mut t = arrivals.lock().unwrap().clone();
    t.sort_unstable();
    let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
    let together = gaps.iter().filter(|g| **g < Duration::from_micros(60)).count() as f64 / gaps.len() as f64;
    eprintln!("send lag p50 {lag_p50} us; {:.0}% of {} arrival gaps under 60 us", together * 100.0, gaps.len());
    // Unbatched, the lag would be a few microseconds and the gaps 125 us;
    // batched, the lag is spread over the window (median ~250 us) and
    // three gaps in four are between messages of one batch.
    assert!(lag_p50 >= 100.0, "send lag p50 {lag_p50} us");
    assert!(gaps.len() > 10_000, "{} gaps", gaps.len());
    assert!(together >= 0.4, "only {:.0}% of arrivals came together", together * 100.0);
}

#[test]
fn the_send_window_is_bounded_and_needs_a_rate() {
    for args in [
        &["--rate", "1000", "--send-window", "501"][..],
        &["--send-window", "100"],
        &["--rate", "1000", "--send-window", "0"],
    ] {
        let run = load("127.0.0.1:9".parse().unwrap(), args);
        assert_eq!(run.status.code(), Some(2), "{args:?}: stderr:\n{}", run.stderr);
        assert!(run.stderr.contains("--send-window"), "{args:?}: {}", run.stderr);
    }
}
