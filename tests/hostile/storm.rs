//! A storm of 100 000 connects and closes, half with a reset.

use super::*;

const STORM_CONNS: usize = 100_000;
const STORM_THREADS: usize = 4;
/// Each thread opens this many, then serves and closes them: at most
/// STORM_THREADS × STORM_BATCH connections are open at once.
const STORM_BATCH: usize = 500;
/// Source addresses 127.0.0.2..=127.0.0.(N + 1). A client that closes
/// first keeps its port in TIME_WAIT for a minute; 50 000 of them would
/// nearly exhaust the ~28 000 ephemeral ports of one source address. And
/// 127.0.0.1 is left alone: its free ports are what other tests pick to
/// listen on.
const STORM_SOURCES: usize = 8;

/// How a storm connection ends; half of the kinds reset.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Reset at once, perhaps before the server has even accepted it.
    ResetAtOnce,
    /// Close at once (a FIN), perhaps before the server has accepted it.
    CloseAtOnce,
    /// A round trip, then a reset.
    ResetAfterEcho,
    /// A round trip, then a close.
    CloseAfterEcho,
    /// 4 KiB sent and a reset without reading: the server is writing.
    ResetMidWrite,
    /// A message, half-close, the echo then end of stream, then close.
    HalfClose,
}

const ENDINGS: [Ending; 6] = [
    Ending::ResetAtOnce,
    Ending::CloseAtOnce,
    Ending::ResetAfterEcho,
    Ending::CloseAfterEcho,
    Ending::ResetMidWrite,
    Ending::HalfClose,
];

/// A connection from `source` (bound before connecting; the port is chosen
/// by connect, so it may be shared by distinct 4-tuples). Connecting gives
/// up after 10 s (`SO_SNDTIMEO` bounds a blocking connect on Linux), so a
/// server that stops accepting fails the test instead of hanging it.
fn connect_from(source: Ipv4Addr, server: SocketAddrV4) -> TcpStream {
    let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    socket::setsockopt(&fd, sockopt::IpBindAddressNoPort, &true).expect("IP_BIND_ADDRESS_NO_PORT");
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::seconds(10)).expect("SO_SNDTIMEO");
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(source, 0))).expect("bind");
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(server))
        .unwrap_or_else(|e| panic!("connect from {source} to {server}: {e}"));
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

/// One storm connection's life after connect.
fn end_storm_connection(mut stream: TcpStream, i: usize, ending: Ending) {
    let msg = format!("storm connection {i}\n").into_bytes();
    match ending {
        Ending::ResetAtOnce => reset(stream),
        Ending::CloseAtOnce => drop(stream),
        Ending::ResetAfterEcho => {
            round_trip(&mut stream, &msg);
            reset(stream);
        }
        Ending::CloseAfterEcho => {
            round_trip(&mut stream, &msg);
            drop(stream);
        }
        Ending::ResetMidWrite => {
            stream.write_all(&stream_bytes(i as u64, 0, 4096)).expect("write");
            reset(stream);
        }
        Ending::HalfClose => {
            stream.write_all(&msg).expect("write");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            assert_eq!(read_to_eof(&mut stream), msg, "connection {i}: echo before end of stream");
        }
    }
}

/// 100 000 connections opened and closed in batches (≤ 2 000 at once),
/// half reset, some after a round trip or mid-write: afterwards the server
/// holds exactly its baseline descriptors and no connection, and echoes.
#[test]
fn connect_close_storm_leaks_no_descriptor() {
    let _serial = one_at_a_time();
    raise_open_file_limit();
    let (mut server, metrics) = start_with_metrics(&["echo"]);
    let SocketAddr::V4(addr) = server.addr else { panic!("not IPv4: {}", server.addr) };
    round_trip(&mut server.connect(), b"warm up");
    let baseline = settled_fds(&server);

    let start = Instant::now();
    let served = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..STORM_THREADS)
        .map(|t| {
            let served = Arc::clone(&served);
            thread::spawn(move || {
                let mine: Vec<usize> = (t..STORM_CONNS).step_by(STORM_THREADS).collect();
                for batch in mine.chunks(STORM_BATCH) {
                    let open: Vec<(usize, TcpStream)> = batch
                        .iter()
                        .map(|&i| (i, connect_from(Ipv4Addr::new(127, 0, 0, 2 + (i % STORM_SOURCES) as u8), addr)))
                        .collect();
                    for (i, stream) in open {
                        end_storm_connection(stream, i, ENDINGS[i % ENDINGS.len()]);
                    }
                    served.fetch_add(batch.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a storm thread failed");
    }
    let storm_time = start.elapsed();
    assert_eq!(served.load(Ordering::Relaxed), STORM_CONNS);

    let settle = Instant::now();
    let mut fds = server.open_fds();
    let limit = Duration::from_secs(30);
    while fds != baseline {
        assert!(
            settle.elapsed() < limit,
            "the server holds {fds} descriptors {limit:?} after the storm, {baseline} before it"
        );
        thread::sleep(Duration::from_millis(50));
        fds = server.open_fds();
    }
    let settle_time = settle.elapsed();
    // The metrics are snapshots the workers publish now and then: wait for
    // one taken after the last close. A slot leaked without its descriptor
    // shows here.
    wait_until(Duration::from_secs(10), "no connection left in the metrics", || {
        metric(&scrape(metrics), "edgeloop_connections", None) == 0.0
    });
    let s = scrape(metrics);
    let closed = |reason| metric(&s, "edgeloop_connections_closed_total", Some(("reason", reason)));
    eprintln!(
        "storm: {STORM_CONNS} connections ({} reset) in {:.1} s from {STORM_THREADS} threads, at most {} open at \
         once; server: {} accepted, closed peer_closed={} error={} local={}; descriptors back to {baseline} {:.2} s \
         after the last close",
        STORM_CONNS / 2,
        storm_time.as_secs_f64(),
        STORM_THREADS * STORM_BATCH,
        metric(&s, "edgeloop_connections_accepted_total", None),
        closed("peer_closed"),
        closed("error"),
        closed("local"),
        settle_time.as_secs_f64()
    );
    round_trip(&mut server.connect(), b"still serving after the storm");
    assert_alive_without_panic(&mut server);
}
