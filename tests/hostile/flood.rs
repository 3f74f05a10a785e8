//! One client flooding while 100 others ping-pong.

use super::*;

/// Ping-pong clients of the flood test, and how long they measure.
const PING_PONG_CLIENTS: usize = 100;
const FLOOD_FOR: Duration = Duration::from_secs(5);
/// The bound on the ping-pong clients' p99 round trip.
const FLOOD_P99_BOUND: Duration = Duration::from_millis(50);

/// The flooder's bytes repeat with this period: a 1 MiB pseudo-random
/// pattern, so that its echo is checked with a comparison, not a
/// computation per byte (the checker must not steal the server's CPU).
const PATTERN: usize = MIB;

/// One client writes as fast as it can (and reads its echo, or flow
/// control would simply stop reading it) while 100 others ping-pong: their
/// p99 stays within the 50 ms; figures printed.
#[test]
fn flood_from_one_client_leaves_ping_pong_clients_a_low_p99() {
    let _serial = one_at_a_time();
    let mut server = Server::start(&["echo"]);
    let pattern: Arc<Vec<u8>> = Arc::new(stream_bytes(11, 0, PATTERN).repeat(2));
    let stop = Arc::new(AtomicBool::new(false));
    let flood_echoed = Arc::new(AtomicU64::new(0));

    let flooder = server.connect();
    let writer = {
        let (mut out, pattern, stop) = (flooder.try_clone().unwrap(), Arc::clone(&pattern), Arc::clone(&stop));
        out.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        thread::spawn(move || {
            const CHUNK: usize = 256 * 1024;
            let mut written = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let at = written % PATTERN;
                out.write_all(&pattern[at..at + CHUNK]).expect("flooder: write");
                written += CHUNK;
            }
            out.shutdown(Shutdown::Write).unwrap();
            written
        })
    };
    let reader = {
        let (mut inp, pattern, echoed) =
            (flooder.try_clone().unwrap(), Arc::clone(&pattern), Arc::clone(&flood_echoed));
        thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0usize;
            loop {
                let n = match inp.read(&mut buf) {
                    Ok(0) => return got,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => panic!("flooder: read after {got} bytes: {e}"),
                };
                let at = got % PATTERN;
                assert!(buf[..n] == pattern[at..at + n], "flooder: echo bytes {got}..{} differ", got + n);
                got += n;
                echoed.store(got as u64, Ordering::Relaxed);
            }
        })
    };
    wait_until(Duration::from_secs(10), "the flood to be under way", || {
        flood_echoed.load(Ordering::Relaxed) > 8 * MIB as u64
    });

    let go = Arc::new(Barrier::new(PING_PONG_CLIENTS + 1));
    let clients: Vec<_> = (0..PING_PONG_CLIENTS)
        .map(|c| {
            let mut stream = server.connect();
            stream.set_nodelay(true).unwrap();
            let go = Arc::clone(&go);
            thread::spawn(move || {
                go.wait();
                let end = Instant::now() + FLOOD_FOR;
                let mut times = Vec::new();
                for round in 0.. {
                    if Instant::now() >= end {
                        break;
                    }
                    let mut msg = format!("client {c} round {round} ").into_bytes();
                    msg.resize(64, b'.');
                    let start = Instant::now();
                    round_trip(&mut stream, &msg);
                    times.push(start.elapsed());
                    // A steady ping-pong, not a second flood.
                    thread::sleep(Duration::from_millis(5));
                }
                times
            })
        })
        .collect();
    go.wait();
    let echoed_before = flood_echoed.load(Ordering::Relaxed);
    let window = Instant::now();
    let mut times: Vec<Duration> =
        clients.into_iter().flat_map(|c| c.join().expect("a ping-pong client lost its echo")).collect();
    let window = window.elapsed();
    let echoed_during = flood_echoed.load(Ordering::Relaxed) - echoed_before;

    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("flooder writer");
    let echoed = reader.join().expect("flooder reader");
    assert_eq!(echoed, written, "the flooder's echo is not every byte it wrote");

    times.sort();
    let p99 = percentile(&times, 0.99);
    eprintln!(
        "flood: {PING_PONG_CLIENTS} ping-pong clients p50 = {:.2} ms, p99 = {:.2} ms, max = {:.2} ms over {} round \
         trips; the flooder wrote {} MB ({:.0} MB/s echoed while they ran), every byte echoed exactly",
        ms(percentile(&times, 0.5)),
        ms(p99),
        ms(*times.last().unwrap()),
        times.len(),
        written / 1_000_000,
        echoed_during as f64 / 1e6 / window.as_secs_f64()
    );
    // The flood must have gone on while they ran (not paused by flow
    // control), or the figure says nothing.
    assert!(echoed_during > 4 * MIB as u64, "the flooder was served only {echoed_during} bytes meanwhile");
    assert!(p99 <= FLOOD_P99_BOUND, "ping-pong p99 {:.2} ms beside a flood (bound {FLOOD_P99_BOUND:?})", ms(p99));
    assert_alive_without_panic(&mut server);
}
