//! The chat across servers under faults (issue 16): a server paused past
//! its lease, pub/sub connections killed, Redis restarted empty, a flood
//! of `/who`, Redis too slow, credentials. Real `edgeloop chat` processes
//! on a real `redis-server` on a free loopback port (see `common::Redis`;
//! without `redis-server` these tests note it and pass, unless `CI` is
//! set). Every read has a timeout, so a missing line fails the test.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::chat::{clients, Client};
use common::{Redis, Server};

const LOST: &str = "* some lines may have been lost";
const UNAVAILABLE: &str = "! chat backend unavailable";

fn chat_at(url: &str, extra: &[&str]) -> Server {
    Server::start(&[&["chat", "--redis", url][..], extra].concat())
}

/// One command to Redis, authenticated first with `auth` if given.
fn redis_cmd(port: u16, auth: Option<&[&str]>, args: &[&str]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Redis");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let encode = |args: &[&str]| {
        let mut wire = format!("*{}\r\n", args.len());
        for arg in args {
            wire.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        wire
    };
    let mut wire = String::new();
    if let Some(auth) = auth {
        wire.push_str(&encode(auth));
    }
    wire.push_str(&encode(args));
    stream.write_all(wire.as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = String::new();
    // The AUTH's +OK, then the reply.
    let want_lines = if auth.is_some() { 2 } else { 1 };
    while got.matches("\r\n").count() < want_lines {
        let n = stream.read(&mut buf).expect("read from Redis");
        assert!(n > 0, "Redis closed: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    if auth.is_some() {
        got.split_once("\r\n").map(|(_, rest)| rest.to_string()).unwrap_or_default()
    } else {
        got
    }
}

/// Everything `c` receives until `last` (included).
fn read_until(c: &mut Client, last: &str) -> Vec<String> {
    let mut lines = c.skip_to(last);
    lines.push(last.to_string());
    lines
}

/// A server paused (SIGSTOP) past the death timeout is reaped by the
/// others; resumed, it treats Redis as lost before acting, its member's
/// line written during the pause is refused (not relayed as a ghost), and
/// the member is announced joined again before any line of its own; it is
/// in /who again and its nickname cannot be taken.
#[test]
fn a_server_paused_past_its_lease_comes_back_announced_and_fenced() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat_at(&redis.url(), &[]), chat_at(&redis.url(), &[]));
    let mut m = clients(&[&a, &b], 2);
    let old = m[0].nick.clone();
    m[0].rename("ada");
    m[1].skip_to(&format!("* {old} is now ada"));
    a.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    m[1].expect("* ada left");
    assert!(stopped.elapsed() < Duration::from_secs(15), "reaped after {:?}", stopped.elapsed());
    // Written while A sleeps: A must not act on it as if still alive.
    m[0].send("a ghost line");
    let other = m[1].nick.clone();
    m[1].send("/who");
    m[1].expect(&format!("* members: {other}"));
    a.signal(libc::SIGCONT);
    let seen = read_until(&mut m[0], "* chat backend restored");
    assert_eq!(seen.first().map(String::as_str), Some("* chat backend unavailable"), "{seen:?}");
    assert!(seen.contains(&UNAVAILABLE.to_string()), "the paused line got no outcome: {seen:?}");
    assert!(seen.contains(&"* ada joined".to_string()), "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("ghost")), "{seen:?}");
    m[0].send("back");
    // B's member: the re-announce, then ada's line; never the ghost.
    m[1].expect("* ada joined");
    m[1].expect("ada: back");
    m[1].send("/who");
    let mut both = ["ada".to_string(), m[1].nick.clone()];
    both.sort();
    m[1].expect(&format!("* members: {}", both.join(" ")));
    m[1].send("/nick ada");
    m[1].expect("! nickname ada is in use");
    m[0].expect("ada: back");
}

/// A member on A streams numbered lines while Redis kills every pub/sub
/// connection (twice): every member ends with exactly the same sequence
/// (the history fills the gaps), and the sender got one outcome per line.
#[test]
fn a_stream_across_pubsub_kills_is_delivered_whole_with_one_outcome_per_line() {
    stream_under_fault(false);
}

/// The same with Redis restarted empty mid-stream: the members are told,
/// once, that lines may have been lost; the sender still gets exactly one
/// outcome per line.
#[test]
fn a_stream_across_a_redis_restarted_empty_gets_the_gap_notice() {
    stream_under_fault(true);
}

fn stream_under_fault(restart: bool) {
    const N: usize = 1500;
    let Some(mut redis) = Redis::start() else { return };
    let metrics: Vec<String> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()).collect();
    let url = redis.url();
    let a = chat_at(&url, &["--chat-rate", "0", "--metrics", &metrics[0]]);
    let b = chat_at(&url, &["--chat-rate", "0", "--metrics", &metrics[1]]);
    let mut m = clients(&[&a, &a, &b], 3);
    let me = m[0].nick.clone();
    let mut writer = m[0].writer.try_clone().unwrap();
    let mut end_writer = m[0].writer.try_clone().unwrap();
    let pump = thread::spawn(move || {
        for n in 0..N {
            writer.write_all(format!("{n}\n").as_bytes()).unwrap();
            if n % 10 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let readers: Vec<_> = m
        .drain(..)
        .map(|mut c| {
            let end = format!("{me}: end");
            thread::spawn(move || read_until(&mut c, &end))
        })
        .collect();
    thread::sleep(Duration::from_millis(150));
    if restart {
        redis.restart();
    } else {
        for _ in 0..2 {
            let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap_or_default();
            assert!(killed.starts_with(':'), "{killed}");
            thread::sleep(Duration::from_millis(400));
        }
    }
    pump.join().unwrap();
    for addr in &metrics {
        common::wait_for_metrics(addr, |body| body.contains("edgeloop_chat_backend_up 1"));
    }
    end_writer.write_all(b"end\n").unwrap();
    let transcripts: Vec<Vec<String>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let prefix = format!("{me}: ");
    let numbers = |t: &Vec<String>| -> Vec<usize> {
        t.iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter(|l| *l != "end")
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{n}")))
            .collect()
    };
    let own = numbers(&transcripts[0]);
    let refused = transcripts[0].iter().filter(|l| *l == UNAVAILABLE).count();
    assert!(own.windows(2).all(|w| w[0] < w[1]), "the sender's lines out of order or twice");
    assert_eq!(own.len() + refused, N, "one outcome per line: {} back, {refused} refused", own.len());
    for (i, t) in transcripts.iter().enumerate() {
        let gaps = t.iter().filter(|l| *l == LOST).count();
        let got = numbers(t);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "member {i}: out of order or twice");
        if restart {
            let notices: Vec<&String> = t.iter().filter(|l| !l.starts_with(&prefix)).collect();
            assert_eq!(gaps, 1, "member {i}: the gap notice, once: {notices:?}\n{}", a.stderr_text());
        } else {
            assert_eq!(gaps, 0, "member {i}: the history fills the gaps");
            assert!(got == own, "member {i} has another sequence ({} lines, the sender {})", got.len(), own.len());
        }
    }
    if !restart {
        assert!(own.len() > N / 2, "only {} of {N} lines went through", own.len());
    }
}

/// `/who` answers stay on the asker's server: 2 000 members, one of them
/// sends 2 000 `/who` in one write; nobody loses the backend.
#[test]
fn two_thousand_who_in_one_write_take_nobody_off_redis() {
    const MEMBERS: usize = 2000;
    let Some(redis) = Redis::start() else { return };
    common::raise_open_file_limit();
    let (a, b) = (chat_at(&redis.url(), &[]), chat_at(&redis.url(), &[]));
    // Joined without reading each other's joins (they wait in the
    // server's queues, far below --max-outbuf).
    let mut members: Vec<Client> = (0..MEMBERS).map(|i| Client::join(if i % 2 == 0 { &a } else { &b })).collect();
    let asker = members[0].nick.clone();
    members[0].send_raw("/who\n".repeat(MEMBERS).as_bytes());
    let mut answers = 0;
    while answers < MEMBERS {
        let line = members[0].line();
        assert_ne!(line, "* chat backend unavailable");
        if line.starts_with("* members: ") {
            assert_eq!(line.matches(' ').count(), MEMBERS + 1, "a /who without every member");
            answers += 1;
        }
    }
    members[0].send("still here");
    let said = format!("{asker}: still here");
    let lines = members[1].skip_to(&said);
    assert!(!lines.iter().any(|l| l.contains("unavailable")), "a member on B was told the backend is unavailable");
    for s in [&a, &b] {
        assert!(!s.stderr_text().contains("lost"), "{}", s.stderr_text());
    }
}

/// Past a bound of commands in flight, a server stops reading its members
/// instead of queueing for Redis without limit: with Redis stopped, a
/// flood from one member leaves little queued; nothing is lost after.
#[test]
fn a_server_stops_reading_its_members_while_redis_is_behind() {
    const LINES: usize = 100_000;
    let Some(redis) = Redis::start() else { return };
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let a = chat_at(&redis.url(), &["--chat-rate", "0", "--metrics", &metrics]);
    let mut c = Client::join(&a);
    redis.signal(libc::SIGSTOP);
    let mut writer = c.writer.try_clone().unwrap();
    let pump = thread::spawn(move || {
        let mut all = String::new();
        for n in 0..LINES {
            all.push_str(&format!("{n}\n"));
        }
        writer.write_all(all.as_bytes()).unwrap();
    });
    thread::sleep(Duration::from_millis(1200));
    let body = common::wait_for_metrics(&metrics, |body| body.contains("edgeloop_output_queued_bytes"));
    let queued: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("edgeloop_output_queued_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    redis.signal(libc::SIGCONT);
    assert!(queued < 2 << 20, "{queued} bytes queued for a stopped Redis");
    for n in 0..LINES {
        c.expect(&format!("{}: {n}", c.nick));
    }
    pump.join().unwrap();
}

/// `redis://:PASSWORD@…` (requirepass): the chat works, and the password
/// appears in no message.
#[test]
fn a_password_is_used_and_never_shown() {
    let Some(redis) = Redis::start() else { return };
    assert_eq!(redis_cmd(redis.port, None, &["CONFIG", "SET", "requirepass", "s3cret-pw"]), "+OK\r\n");
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}", redis.port);
    let (a, b) = (chat_at(&url, &[]), chat_at(&url, &[]));
    let mut m = clients(&[&a, &b], 2);
    let me = m[0].nick.clone();
    m[0].send("with a password");
    for c in &mut m {
        c.expect(&format!("{me}: with a password"));
    }
    // A loss and a reconnection log the URL: masked.
    let killed = redis_cmd(redis.port, Some(&["AUTH", "s3cret-pw"]), &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed.starts_with(':'), "{killed}");
    for c in &mut m {
        c.skip_to("* chat backend restored");
    }
    for s in [&a, &b] {
        let err = s.stderr_text();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains(":***@"), "{err}");
    }
}

/// An ACL user allowed only `~edgeloop:*` keys and `&edgeloop:*` channels
/// is enough: members on two servers talk, rename, list and leave.
#[test]
fn an_acl_user_limited_to_edgeloop_keys_and_channels_is_enough() {
    let Some(redis) = Redis::start() else { return };
    let set = redis.command(&["ACL", "SETUSER", "chat", "on", ">chat-pw", "~edgeloop:*", "&edgeloop:*", "+@all"]);
    assert_eq!(set.as_deref(), Some("+OK\r\n"));
    let url = format!("redis://chat:chat-pw@127.0.0.1:{}", redis.port);
    let (a, b) = (chat_at(&url, &[]), chat_at(&url, &[]));
    let mut m = clients(&[&a, &b], 2);
    let old = m[0].nick.clone();
    m[0].rename("acl");
    m[1].skip_to(&format!("* {old} is now acl"));
    m[1].send("/who");
    let mut names = ["acl".to_string(), m[1].nick.clone()];
    names.sort();
    m[1].expect(&format!("* members: {}", names.join(" ")));
    m[0].send("/join side");
    m[0].expect("* acl joined");
    m[1].expect("* acl left");
    for s in [&a, &b] {
        assert!(!s.stderr_text().contains("NOPERM"), "{}", s.stderr_text());
    }
}

/// Wrong credentials at start: exit 1, naming the address, not the
/// password.
#[test]
fn a_wrong_password_exits_1_without_showing_it() {
    let Some(redis) = Redis::start() else { return };
    let set = redis.command(&["ACL", "SETUSER", "chat", "on", ">right-pw", "~edgeloop:*", "&edgeloop:*", "+@all"]);
    assert_eq!(set.as_deref(), Some("+OK\r\n"));
    let url = format!("redis://chat:hunter2@127.0.0.1:{}", redis.port);
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["chat", "--listen", "127.0.0.1:0", "--redis", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "it must not have listened");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{}", redis.port)), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // A URL refused by the parser does not show it either.
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["chat", "--redis", "redis://chat:hunter2@127.0.0.1:port"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

/// A `/join` whose answer is lost with the connection is either done (the
/// member is in the new room, and is not told "unavailable") or refused
/// (told "unavailable", still in its room): never both, never neither.
/// Killing the subscription first also catches a join that ran and was
/// answered while its `* NICK joined` was lost with the subscription, in a
/// room the server had seen nothing of yet: the replay must bring it.
#[test]
fn a_join_in_flight_at_a_loss_is_done_or_refused_never_both() {
    let Some(redis) = Redis::start() else { return };
    let a = chat_at(&redis.url(), &[]);
    let mut c = Client::join(&a);
    let me = c.nick.clone();
    for round in 0..12 {
        let room = format!("r{round}");
        c.send(&format!("/join {room}"));
        if round % 3 == 0 {
            thread::sleep(Duration::from_micros(100 * round as u64));
        }
        kill_links(&redis, round % 2 == 1);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        // Until the outcome and the end of the outage.
        loop {
            assert!(Instant::now() < deadline, "{seen:?}");
            let line = c.line();
            seen.push(line.clone());
            // The kills always cost an outage: its end is awaited too.
            let restored = seen.iter().any(|l| l == "* chat backend restored");
            let outcome = seen.iter().any(|l| l == UNAVAILABLE || *l == format!("* {me} joined"));
            if outcome && restored {
                break;
            }
        }
        let done = seen.contains(&format!("* {me} joined"));
        let refused = seen.iter().any(|l| l == UNAVAILABLE);
        assert!(done != refused, "round {round}: {seen:?}");
        c.send("/who");
        c.skip_to(&format!("* members: {me}"));
        // Where it is: the next /join says "already in" for that room.
        let here = if done { room.clone() } else { current_room(round) };
        c.send(&format!("/join {here}"));
        c.expect(&format!("! you are already in {here}"));
        if !done {
            c.send(&format!("/join {room}"));
            let line = c.line();
            assert_eq!(line, format!("* {me} joined"), "round {round}: {seen:?}\n{}", a.stderr_text());
        }
    }
}

/// A newcomer whose registration is in flight when the connections are
/// killed learns its name once, at any moment: `* guestN joined` comes,
/// in the outage's bracket or without one. The newcomer is alone, so the
/// server has seen nothing of the lobby when its `Connect` ran and the
/// join line may be lost with the subscription: the replay must bring it.
#[test]
fn a_newcomer_at_a_loss_learns_its_name_once() {
    let Some(redis) = Redis::start() else { return };
    let a = chat_at(&redis.url(), &[]);
    for round in 0..12 {
        let mut c = Client::connect(&a);
        kill_links(&redis, round % 2 == 0);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        // Until its name and, if it was told of the outage, its end.
        loop {
            assert!(Instant::now() < deadline, "round {round}: {seen:?}");
            seen.push(c.line());
            let joined = seen.iter().filter(|l| l.starts_with("* guest") && l.ends_with(" joined")).count();
            let told = seen.iter().any(|l| l == "* chat backend unavailable");
            let restored = seen.iter().any(|l| l == "* chat backend restored");
            assert!(joined <= 1, "round {round}: {seen:?}");
            if joined == 1 && (restored || !told) {
                break;
            }
        }
    }
}

/// Kill every command and every pub/sub connection Redis has, the
/// subscriptions first or second.
fn kill_links(redis: &Redis, pubsub_first: bool) {
    let kinds = if pubsub_first { ["pubsub", "normal"] } else { ["normal", "pubsub"] };
    for kind in kinds {
        let _ = redis.command(&["CLIENT", "KILL", "TYPE", kind]);
    }
}

/// The room a member of the join test is in before round `round`.
fn current_room(round: usize) -> String {
    if round == 0 {
        "lobby".into()
    } else {
        format!("r{}", round - 1)
    }
}

/// A Redis restarted empty does not give out again the `guestN` numbers
/// a server still holds, even while that server is cut off.
#[test]
fn guest_numbers_held_are_not_reissued_by_a_redis_restarted_empty() {
    let Some(mut redis) = Redis::start() else { return };
    let a = chat_at(&redis.url(), &[]);
    let b = chat_at(&redis.url(), &[]);
    let mut m = clients(&[&a, &a, &a, &b], 4);
    let highest = m.iter().map(|c| c.nick.trim_start_matches("guest").parse::<u64>().unwrap()).max().unwrap();
    // A cannot come back before B has registered a newcomer.
    a.signal(libc::SIGSTOP);
    redis.restart();
    m[3].skip_to("* chat backend restored");
    let newcomer = Client::join(&b);
    a.signal(libc::SIGCONT);
    let number: u64 = newcomer.nick.trim_start_matches("guest").parse().unwrap();
    assert!(number > highest, "{} given out again (the highest held was guest{highest})", newcomer.nick);
}

/// An error reply to one command (here OOM) is answered to the member it
/// was for, and does not drop the link: no outage notice, and the next
/// line goes through once Redis has memory again (numbered on from the
/// last call that ran: see lua.rs, "Exactly once").
#[test]
fn an_error_reply_is_answered_to_its_member_and_keeps_the_link() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat_at(&redis.url(), &[]), chat_at(&redis.url(), &[]));
    let mut m = clients(&[&a, &b], 2);
    let me = m[0].nick.clone();
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory", "1"]).as_deref(), Some("+OK\r\n"));
    // Two lines in one write: one call, refused; an outcome for each.
    m[0].send_raw(b"no memory for this\nnor for this\n");
    m[0].expect(UNAVAILABLE);
    m[0].expect(UNAVAILABLE);
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory", "0"]).as_deref(), Some("+OK\r\n"));
    m[0].send("and now");
    // The refused line reached nobody; the next one everybody, and no
    // outage came between.
    for c in &mut m {
        c.expect(&format!("{me}: and now"));
    }
    assert!(!a.stderr_text().contains(" lost:"), "{}", a.stderr_text());
}

/// A process of ours, killed when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `redis-server ARGS` on `port`, answering PING.
fn redis_node(port: u16, args: &[&str]) -> Proc {
    let p = Proc(
        Command::new("redis-server")
            .args(args)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // A replica writes the RDB it receives to its directory: not the repository.
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server"),
    );
    common::wait_until(Duration::from_secs(10), "redis-server answers", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && redis_cmd(port, None, &["PING"]) == "+PONG\r\n"
    });
    p
}

/// With Sentinel (`redis-sentinel://…/MASTER`): a forced failover to the
/// replica costs the members at most the unavailable/restored bracket (and
/// the gap rule); lines cross again within 20 s; nobody is disconnected.
#[test]
fn a_sentinel_failover_is_followed() {
    if !common::installed(common::find_program("redis-server").is_some(), "redis-server") {
        return;
    }
    let (p1, p2, ps) = (free_port(), free_port(), free_port());
    let _master = redis_node(p1, &[]);
    let _replica = redis_node(p2, &["--replicaof", "127.0.0.1", &p1.to_string()]);
    let conf = std::env::temp_dir().join(format!("edgeloop-sentinel-{ps}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {ps}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {p1} 1\n\
             sentinel down-after-milliseconds mymaster 2000\nsentinel failover-timeout mymaster 10000\n"
        ),
    )
    .unwrap();
    let conf_path = conf.to_string_lossy().into_owned();
    let _sentinel = Proc(
        Command::new("redis-server")
            .args([conf_path.as_str(), "--sentinel"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel"),
    );
    common::wait_until(Duration::from_secs(10), "the replica in sync", || {
        redis_cmd(p2, None, &["INFO", "replication"]).contains("master_link_status:up")
    });
    common::wait_until(Duration::from_secs(15), "the Sentinel knows the replica", || {
        TcpStream::connect(("127.0.0.1", ps)).is_ok()
            && redis_cmd(ps, None, &["SENTINEL", "REPLICAS", "mymaster"]).contains(&p2.to_string())
    });
    let url = format!("redis-sentinel://127.0.0.1:{ps}/mymaster");
    let (a, b) = (chat_at(&url, &[]), chat_at(&url, &[]));
    let mut m = clients(&[&a, &b], 2);
    let me = m[0].nick.clone();
    m[0].send("before");
    m[1].expect(&format!("{me}: before"));
    let failover = Instant::now();
    common::wait_until(Duration::from_secs(10), "the failover to start", || {
        redis_cmd(ps, None, &["SENTINEL", "FAILOVER", "mymaster"]) == "+OK\r\n"
    });
    // A line every 300 ms until one crosses.
    let mut writer = m[0].writer.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump = {
        let stop = std::sync::Arc::clone(&stop);
        thread::spawn(move || {
            for k in 0.. {
                if stop.load(std::sync::atomic::Ordering::Acquire)
                    || writer.write_all(format!("ping {k}\n").as_bytes()).is_err()
                {
                    return;
                }
                thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let mut seen = Vec::new();
    let crossed = loop {
        let line = m[1].line();
        let after_failover = seen.iter().any(|l| l == "* chat backend restored");
        if line.starts_with(&format!("{me}: ping")) && after_failover {
            break failover.elapsed();
        }
        assert!(failover.elapsed() < Duration::from_secs(25), "no line crossed: {seen:?}");
        seen.push(line);
    };
    stop.store(true, std::sync::atomic::Ordering::Release);
    pump.join().unwrap();
    assert!(crossed < Duration::from_secs(20), "lines crossed again after {crossed:?}");
    let allowed = |l: &String| l.starts_with(&format!("{me}: ping")) || l.starts_with("* chat backend ") || l == LOST;
    assert!(seen.iter().all(allowed), "{seen:?}");
    // Both still connected, on the new master.
    let mut names = [me.clone(), m[1].nick.clone()];
    names.sort();
    m[1].send("/who");
    m[1].skip_to(&format!("* members: {}", names.join(" ")));
    assert!(redis_cmd(p2, None, &["ROLE"]).contains("master"));
    let _ = std::fs::remove_file(&conf);
}
