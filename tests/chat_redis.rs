//! The chat across servers (`--redis`): real `edgeloop chat` processes on
//! one real `redis-server`, started here on a free loopback port with
//! persistence off (see `common::Redis`; without `redis-server` these
//! tests note it and pass, unless `CI` is set: then they fail).
//!
//! Every read has a timeout (20 s), so a missing line fails the test
//! instead of hanging it.

mod common;

use std::collections::HashSet;
use std::io::{BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::chat::{clients, Client};
use common::{Redis, Server};
use edgeloop_cli::servers::chat::lua::Script;

/// A chat server on `redis`, with `extra` options.
fn chat(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    Server::start(&[&["chat", "--redis", url.as_str()][..], extra].concat())
}

#[test]
fn four_members_on_two_servers_see_one_order() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    const N: usize = 200;
    let members = clients(&[&a, &b], 4);
    let senders: Vec<(String, TcpStream)> =
        members.iter().take(3).map(|c| (c.nick.clone(), c.writer.try_clone().unwrap())).collect();
    let start = Arc::new(Barrier::new(senders.len()));
    let pumps: Vec<_> = senders
        .into_iter()
        .map(|(nick, mut writer)| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                for k in 0..N {
                    writer.write_all(format!("{nick} says {k}\n").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut c| thread::spawn(move || (0..3 * N).map(|_| c.line()).collect::<Vec<String>>()))
        .collect();
    pumps.into_iter().for_each(|p| p.join().unwrap());
    let transcripts: Vec<Vec<String>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    for t in &transcripts[1..] {
        assert!(t == &transcripts[0], "transcripts differ");
    }
    // Each sender's lines, whole and in its order, among the others'.
    let mut next = std::collections::HashMap::new();
    for line in &transcripts[0] {
        let (nick, rest) = line.split_once(": ").unwrap_or_else(|| panic!("not a message: {line}"));
        let k: usize = rest.rsplit(' ').next().unwrap().parse().unwrap();
        let expected = next.entry(nick.to_string()).or_insert(0);
        assert_eq!(k, *expected, "{line}");
        *expected += 1;
    }
    assert_eq!(next.len(), 3);
}

#[test]
fn a_join_while_another_streams_is_cut_in_the_same_place_everywhere() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut members = clients(&[&a, &b], 2).into_iter();
    let (streamer, watcher) = (members.next().unwrap(), members.next().unwrap());
    let done = format!("{}: done", streamer.nick);
    let mut writer = streamer.writer.try_clone().unwrap();
    // Lines flow until both newcomers are in, and a while after.
    let joined = Arc::new(AtomicUsize::new(0));
    let pump = {
        let joined = Arc::clone(&joined);
        thread::spawn(move || {
            let mut after = 0;
            for k in 0..100_000 {
                writer.write_all(format!("line {k}\n").as_bytes()).unwrap();
                if k % 10 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
                if joined.load(Ordering::Acquire) == 2 {
                    after += 1;
                    if after == 100 {
                        break;
                    }
                }
            }
            writer.write_all(b"done\n").unwrap();
        })
    };
    // Everything a member receives until the streamer's last line, from
    // its own joined notice on.
    let transcript = |mut c: Client, done: String, first: Option<String>| {
        thread::spawn(move || {
            let mut lines: Vec<String> = first.into_iter().collect();
            loop {
                let line = c.line();
                let end = line == done;
                lines.push(line);
                if end {
                    return lines;
                }
            }
        })
    };
    let ts = transcript(streamer, done.clone(), None);
    let tw = transcript(watcher, done.clone(), None);
    // Two newcomers while the lines flow, one on each server.
    thread::sleep(Duration::from_millis(30));
    let c = Client::join(&b);
    let c_nick = c.nick.clone();
    let tc = transcript(c, done.clone(), Some(format!("* {c_nick} joined")));
    thread::sleep(Duration::from_millis(30));
    let d = Client::join(&a);
    let d_nick = d.nick.clone();
    let td = transcript(d, done, Some(format!("* {d_nick} joined")));
    joined.store(2, Ordering::Release);
    pump.join().unwrap();
    let (ts, tw, tc, td) = (ts.join().unwrap(), tw.join().unwrap(), tc.join().unwrap(), td.join().unwrap());
    assert!(ts == tw, "the first two members' transcripts differ");
    for (joiner, transcript) in [(&c_nick, &tc), (&d_nick, &td)] {
        let at = ts.iter().position(|l| *l == format!("* {joiner} joined")).expect("the join is in the transcript");
        assert!(ts[at..] == transcript[..], "{joiner} is not cut where the others see it join");
        assert!(at > 0 && at + 1 < ts.len(), "{joiner} joined outside the stream");
    }
}

#[test]
fn answers_come_in_order_with_the_senders_own_lines() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut m = clients(&[&a, &b], 2);
    let (me, other) = (m[0].nick.clone(), m[1].nick.clone());
    // All at once: each answer must come after the echo of the lines
    // before it, as on one server.
    m[0].writer.write_all(b"one\n/who\n/bogus\ntwo\n/nick\n/nick taken.\nthree\n").unwrap();
    m[0].expect(&format!("{me}: one"));
    m[0].expect(&format!("* members: {}", sorted(&[&me, &other])));
    m[0].expect("! unknown command: /bogus (commands: /nick /join /who /quit)");
    m[0].expect(&format!("{me}: two"));
    m[0].expect("! usage: /nick NAME");
    m[0].expect("! invalid name: use only A-Z a-z 0-9 _ -");
    m[0].expect(&format!("{me}: three"));
    m[0].send("four");
    m[0].send("/quit");
    m[0].expect(&format!("{me}: four"));
    m[0].expect("* bye");
    m[0].drain_to_eof();
    for line in ["one", "two", "three", "four"] {
        m[1].expect(&format!("{me}: {line}"));
    }
    m[1].expect(&format!("* {me} left"));
}

#[test]
fn flushed_scripts_are_sent_again_and_nothing_is_lost() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut m = clients(&[&a, &b], 2);
    // As after a failover to a replica that never loaded them: every
    // EVALSHA now answers NOSCRIPT, and is sent again with EVAL.
    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]).as_deref(), Some("+OK\r\n"));
    let me = m[0].nick.clone();
    for k in 0..5 {
        m[0].send(&format!("after the flush {k}"));
    }
    m[0].send("/nick flushed");
    for c in &mut m {
        for k in 0..5 {
            c.expect(&format!("{me}: after the flush {k}"));
        }
        c.expect(&format!("* {me} is now flushed"));
    }
    assert!(!a.stderr_text().contains("lost"), "{}", a.stderr_text());
    // The fallback did run.
    let stats = redis.command(&["INFO", "commandstats"]).unwrap_or_default();
    assert!(stats.contains("cmdstat_eval:calls="), "{stats}");
}

#[test]
fn guest_numbers_are_unique_across_servers() {
    let Some(redis) = Redis::start() else { return };
    let servers = Arc::new([chat(&redis, &[]), chat(&redis, &[])]);
    let joins: Vec<_> = (0..20)
        .map(|i| {
            let servers = Arc::clone(&servers);
            thread::spawn(move || Client::join(&servers[i % 2]).nick)
        })
        .collect();
    let nicks: HashSet<String> = joins.into_iter().map(|j| j.join().unwrap()).collect();
    assert_eq!(nicks.len(), 20, "{nicks:?}");
}

#[test]
fn a_nickname_race_across_servers_has_one_winner() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut pair = clients(&[&a, &b], 2);
    for round in 0..5 {
        let name = format!("racer{round}");
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = pair
            .drain(..)
            .map(|mut c| {
                let (name, barrier) = (name.clone(), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    c.send(&format!("/nick {name}"));
                    let (won, lost) = (format!("* {} is now {name}", c.nick), format!("! nickname {name} is in use"));
                    loop {
                        let line = c.line();
                        if line == won {
                            c.nick = name;
                            return (c, true);
                        }
                        if line == lost {
                            return (c, false);
                        }
                    }
                })
            })
            .collect();
        let results: Vec<(Client, bool)> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|(_, won)| *won).count(), 1, "round {round}: not one winner");
        pair = results.into_iter().map(|(c, _)| c).collect();
        // Both see the same room afterwards (the loser got the winner's
        // rename as well as its refusal).
        let who = format!("* members: {}", sorted(&[&pair[0].nick, &pair[1].nick]));
        for c in &mut pair {
            c.send("/who");
            c.skip_to(&who);
        }
    }
}

fn sorted(nicks: &[&str]) -> String {
    let mut v = nicks.to_vec();
    v.sort_unstable();
    v.join(" ")
}

#[test]
fn who_lists_the_members_on_every_server() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut m = clients(&[&a, &b, &a], 3);
    let guest = m[2].nick.clone();
    m[0].rename("zoe");
    m[1].rename("bob");
    let everyone = format!("* members: {}", sorted(&["bob", "zoe", &guest]));
    for c in &mut m {
        c.send("/who");
        c.skip_to(&everyone);
    }
    m[1].send("/join side");
    m[1].expect("* bob joined");
    m[1].send("/who");
    m[1].expect("* members: bob");
    m[0].skip_to("* bob left");
    m[0].send("/who");
    m[0].expect(&format!("* members: {}", sorted(&["zoe", &guest])));
    m[2].skip_to("* bob left");
    m[2].send("/join side");
    m[2].expect(&format!("* {guest} joined"));
    m[1].expect(&format!("* {guest} joined"));
    m[1].send("/who");
    m[1].expect(&format!("* members: {}", sorted(&["bob", &guest])));
}

#[test]
fn a_server_stopped_by_sigterm_announces_its_members_left_elsewhere() {
    let Some(redis) = Redis::start() else { return };
    let (mut a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut m = clients(&[&a, &a, &b], 3);
    let old = m[1].nick.clone();
    m[0].rename("ann");
    m[1].rename("art");
    m[2].skip_to(&format!("* {old} is now art"));
    a.signal(libc::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(10)).success());
    let mut left = [m[2].line(), m[2].line()];
    left.sort();
    assert_eq!(left, ["* ann left", "* art left"]);
    m[0].drain_to_eof();
    // Gone from /who too.
    let own = m[2].nick.clone();
    m[2].send("/who");
    m[2].expect(&format!("* members: {own}"));
}

#[test]
fn a_server_killed_is_announced_left_once_by_the_survivors_and_its_names_freed() {
    let Some(redis) = Redis::start() else { return };
    let (a, b, c) = (chat(&redis, &[]), chat(&redis, &[]), chat(&redis, &[]));
    let mut m = clients(&[&a, &a, &b, &c], 4);
    let old = m[1].nick.clone();
    m[0].rename("kim");
    m[1].rename("kai");
    for survivor in &mut m[2..] {
        survivor.skip_to(&format!("* {old} is now kai"));
    }
    let killed = Instant::now();
    a.signal(libc::SIGKILL);
    for survivor in &mut m[2..] {
        let mut left = [survivor.line(), survivor.line()];
        left.sort();
        assert_eq!(left, ["* kai left", "* kim left"]);
    }
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(30), "announced after {took:?}");
    // Once: nothing more about them, after a whole reaping period more.
    thread::sleep(Duration::from_secs(3));
    let speaker = m[2].nick.clone();
    m[2].send("after");
    for survivor in &mut m[2..] {
        survivor.expect(&format!("{speaker}: after"));
    }
    // Their names are free again.
    let before = m[3].nick.clone();
    m[3].rename("kim");
    m[2].expect(&format!("* {before} is now kim"));
}

#[test]
fn redis_stopped_members_are_told_and_refused_and_stay_connected() {
    let Some(mut redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut m = clients(&[&a, &b], 2);
    redis.stop();
    for c in &mut m {
        c.expect("* chat backend unavailable");
    }
    let nick = m[0].nick.clone();
    for refused in ["hello", "/nick newname", "/join elsewhere"] {
        m[0].send(refused);
        m[0].expect("! chat backend unavailable");
    }
    // What this server knows.
    m[0].send("/who");
    m[0].expect(&format!("* members: {nick}"));
    m[0].send("/nick bad.name");
    m[0].expect("! invalid name: use only A-Z a-z 0-9 _ -");
    // Nothing reached the other server; both are still connected.
    let other = m[1].nick.clone();
    m[1].send("/who");
    m[1].expect(&format!("* members: {other}"));
    // Told once: a second outage notice would come before this.
    m[1].send("/frob");
    m[1].expect("! unknown command: /frob (commands: /nick /join /who /quit)");
    m[0].send("/quit");
    m[0].expect("* bye");
    m[0].drain_to_eof();
}

#[test]
fn redis_restarted_on_the_same_port_delivery_resumes_without_reconnecting() {
    let Some(mut redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut m = clients(&[&a, &b], 2);
    let old = m[0].nick.clone();
    m[0].rename("ada");
    m[1].skip_to(&format!("* {old} is now ada"));
    redis.stop();
    for c in &mut m {
        c.expect("* chat backend unavailable");
    }
    let late_stream = a.connect();
    let mut late =
        Client { writer: late_stream.try_clone().unwrap(), reader: BufReader::new(late_stream), nick: String::new() };
    assert_eq!(late.line(), "* chat backend unavailable");
    thread::sleep(Duration::from_millis(500));
    redis.restart();
    // A newcomer during the outage is told, and registered when it ends.
    assert_eq!(late.line(), "* chat backend restored");
    let joined = late.line();
    assert!(joined.starts_with("* guest") && joined.ends_with(" joined"), "{joined}");
    // Redis forgot the room: each member is told lines may have been lost,
    // once, then everyone is announced again; the newcomer joins after.
    let other = m[1].nick.clone();
    for c in &mut m {
        let before = c.skip_to("* chat backend restored");
        assert_eq!(before.first().map(String::as_str), Some("* some lines may have been lost"), "{before:?}");
        assert_eq!(before.iter().filter(|l| l.contains("may have been lost")).count(), 1, "{before:?}");
        let rejoined = format!("* {} joined", c.nick);
        assert!(before.contains(&rejoined), "{before:?}");
    }
    // (The other server's member may be announced again after this one's
    // "restored": its server restores on its own clock.)
    m[0].send("back again");
    let between = m[0].skip_to("ada: back again");
    assert!(between.contains(&joined), "{between:?}");
    assert!(between.iter().all(|l| *l == format!("* {other} joined") || *l == joined), "{between:?}");
    let after = m[1].skip_to("ada: back again");
    assert!(
        after.iter().all(|l| l == &joined || l == "* ada joined" || l == &format!("* {other} joined")),
        "{after:?}"
    );
    // Registered again: names and membership.
    m[1].send("/nick ada");
    m[1].expect("! nickname ada is in use");
    // (Once: the next line is the answer to the next command.)
    let newcomer = joined.trim_start_matches("* ").trim_end_matches(" joined").to_string();
    assert!(newcomer != other, "{newcomer}: not a number of theirs");
    m[1].send("/who");
    m[1].expect(&format!("* members: {}", sorted(&["ada", &other, &newcomer])));
}

#[test]
fn a_redis_that_stops_answering_is_lost_and_found_again() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut m = clients(&[&a, &b], 2);
    // Stopped, not gone: the connections stay open and silent. The
    // heartbeat's probe (or a reply) does not come back in time.
    redis.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    for c in &mut m {
        c.expect("* chat backend unavailable");
    }
    assert!(stopped.elapsed() < Duration::from_secs(15), "noticed after {:?}", stopped.elapsed());
    m[0].send("anyone?");
    m[0].expect("! chat backend unavailable");
    redis.signal(libc::SIGCONT);
    for c in &mut m {
        c.expect("* chat backend restored");
    }
    m[1].send("yes");
    let nick = m[1].nick.clone();
    for c in &mut m {
        c.expect(&format!("{nick}: yes"));
    }
}

/// A TCP relay to Redis that can cut one server off (its connections
/// dropped, new ones closed at once) while others reach Redis directly.
struct Relay {
    port: u16,
    blocked: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn to(target: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&blocked);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if flag.load(Ordering::Acquire) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    let flag = Arc::clone(&flag);
                    thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        loop {
                            if flag.load(Ordering::Acquire) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Relay { port, blocked }
    }

    fn block(&self, on: bool) {
        self.blocked.store(on, Ordering::Release);
    }
}

#[test]
fn a_server_cut_off_is_reaped_and_comes_back_under_a_fresh_name_if_its_was_taken() {
    let Some(redis) = Redis::start() else { return };
    let relay = Relay::to(redis.port);
    let url = format!("redis://127.0.0.1:{}", relay.port);
    let (a, b) = (Server::start(&["chat", "--redis", &url]), chat(&redis, &[]));
    let mut m = clients(&[&a, &b, &a], 3);
    let other = m[1].nick.clone();
    let old = m[0].nick.clone();
    m[0].rename("ada");
    m[1].skip_to(&format!("* {old} is now ada"));
    m[2].skip_to(&format!("* {old} is now ada"));
    // A alone loses Redis; B stays connected and, once A's liveness key
    // has expired, announces A's members gone and frees their names.
    relay.block(true);
    m[0].expect("* chat backend unavailable");
    m[1].skip_to("* ada left");
    m[1].rename("ada");
    // A comes back: the room was told its members left, so they are
    // announced joined again — ada under a fresh name, as hers was taken.
    // She herself was never told she left: she is told her new name, as on
    // any return. Both are told the lines in between were not theirs.
    relay.block(false);
    let seen = m[0].skip_to("* chat backend restored");
    assert_eq!(seen.first().map(String::as_str), Some("* some lines may have been lost"), "{seen:?}");
    let fresh = seen.iter().find_map(|l| l.strip_prefix("* ada is now ")).unwrap_or_else(|| panic!("{seen:?}"));
    let fresh = fresh.to_string();
    assert!(fresh.starts_with("guest") && fresh != other, "{fresh}");
    let joined = format!("* {fresh} joined");
    assert!(!seen.contains(&joined), "ada was announced to herself: {seen:?}");
    // A's other member was cut off with her: it hears what the room hears.
    let on_a = m[2].skip_to("* chat backend restored");
    assert!(on_a.contains(&joined) && !on_a.iter().any(|l| l.contains(" is now ")), "{on_a:?}");
    m[1].skip_to(&joined);
    m[0].send("still here");
    for c in &mut m {
        c.skip_to(&format!("{fresh}: still here"));
    }
}

#[test]
fn a_slow_consumer_is_cut_while_members_on_both_servers_get_every_line_in_order() {
    const LINES: usize = 20_000;
    let Some(redis) = Redis::start() else { return };
    let options = ["--max-outbuf", "65536", "--chat-rate", "0"];
    let (a, b) = (chat(&redis, &options), chat(&redis, &options));
    let mut m = clients(&[&a, &b, &a], 3);
    let slow = Client::join(&b);
    for c in &mut m {
        c.expect(&format!("* {} joined", slow.nick));
    }
    common::set_socket_option(&slow.writer, libc::SO_RCVBUF, 4096 as libc::c_int);
    let padding = "p".repeat(400);
    let sender = m[0].nick.clone();
    // The sender keeps at most 64 of its lines unreturned, as an
    // interactive client does.
    let returned = Arc::new(AtomicUsize::new(0));
    let pump = {
        let mut writer = m[0].writer.try_clone().unwrap();
        let (padding, returned) = (padding.clone(), Arc::clone(&returned));
        thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(60);
            for n in 0..LINES {
                while n >= returned.load(Ordering::Acquire) + 64 {
                    assert!(Instant::now() < give_up, "the sender's lines stopped coming back");
                    thread::sleep(Duration::from_micros(100));
                }
                writer.write_all(format!("{n} {padding}\n").as_bytes()).unwrap();
            }
        })
    };
    let slow_left = format!("* {} left", slow.nick);
    let check = move |mut c: Client, returned: Arc<AtomicUsize>| {
        let (sender, padding, slow_left) = (sender.clone(), padding.clone(), slow_left.clone());
        thread::spawn(move || {
            let (mut left, mut next) = (0, 0);
            while next < LINES {
                let line = c.line();
                if line == slow_left {
                    left += 1;
                    continue;
                }
                assert_eq!(line, format!("{sender}: {next} {padding}"));
                next += 1;
                returned.store(next, Ordering::Release);
            }
            left
        })
    };
    let mut m = m.into_iter();
    let checks: Vec<_> = [Arc::clone(&returned), Arc::default(), Arc::default()]
        .into_iter()
        .map(|r| check(m.next().unwrap(), r))
        .collect();
    for c in checks {
        assert_eq!(c.join().unwrap(), 1, "the slow member's departure, once");
    }
    pump.join().unwrap();
    assert!(b.stderr_text().contains("over the limit; disconnecting"));
    drop(slow);
}

#[test]
fn redis_unreachable_at_start_exits_1_naming_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["chat", "--listen", "127.0.0.1:0", "--redis", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "it must not have listened");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url) && err.contains("connection refused"), "{err}");
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn echo_rejects_redis() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["echo", "--redis", "redis://127.0.0.1:6379"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["chat", "--redis", "http://x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn two_databases_are_two_chats() {
    let Some(redis) = Redis::start() else { return };
    let (one, two) = (format!("{}/1", redis.url()), format!("{}/2", redis.url()));
    let (a, b) = (Server::start(&["chat", "--redis", &one]), Server::start(&["chat", "--redis", &two]));
    let (mut x, mut y) = (Client::join(&a), Client::join(&b));
    // Each counts its own guests: both are guest1.
    assert_eq!((x.nick.as_str(), y.nick.as_str()), ("guest1", "guest1"));
    x.send("only here");
    x.expect("guest1: only here");
    y.send("/who");
    y.expect("* members: guest1");
}

/// `--workers 2 --redis` is two chat servers in one process: members on
/// both workers (20 connections: all on one would take a 1-in-500 000
/// hash) share one room, one order, unique names and `/who`; and the
/// metrics see both workers' members.
#[test]
fn two_workers_on_redis_behave_as_two_servers() {
    let Some(redis) = Redis::start() else { return };
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let server = chat(&redis, &["--workers", "2", "--metrics", metrics.as_str()]);
    let mut members = clients(&[&server], 20);
    let nicks: std::collections::HashSet<&String> = members.iter().map(|c| &c.nick).collect();
    assert_eq!(nicks.len(), 20, "guest numbers repeat");
    let first = format!("{}: hello from the first", members[0].nick);
    let last = format!("{}: and from the last", members[19].nick);
    // Two senders on two workers publish on two Redis connections: their
    // order is Redis's, not the test's. The second speaks once the first
    // line is back (Redis has ordered it); every member then sees one order.
    members[0].send("hello from the first");
    members[0].expect(&first);
    members[19].send("and from the last");
    for (i, c) in members.iter_mut().enumerate() {
        let got = if i == 0 { vec![c.line()] } else { vec![c.line(), c.line()] };
        let want = if i == 0 { vec![last.clone()] } else { vec![first.clone(), last.clone()] };
        assert_eq!(got, want, "{}", c.nick);
    }
    let mut names: Vec<String> = members.iter().map(|c| c.nick.clone()).collect();
    names.sort_unstable();
    members[7].send("/who");
    members[7].expect(&format!("* members: {}", names.join(" ")));
    // Both workers have members (the per-worker connection gauges).
    let body = common::wait_for_metrics(&metrics, |body| {
        body.contains("edgeloop_chat_members 20")
            && !body.contains("edgeloop_worker_connections{worker=\"0\"} 0")
            && !body.contains("edgeloop_worker_connections{worker=\"1\"} 0")
    });
    assert!(body.contains("edgeloop_chat_backend_up 1"), "{body}");
}

/// Redis holds only what is live: a room nobody is in keeps no key
/// (members, sequence and history go with its last member).
#[test]
fn rooms_visited_and_left_leave_no_keys() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (chat(&redis, &[]), chat(&redis, &[]));
    let mut members = clients(&[&a, &b], 2);
    const ROOMS: usize = 3000;
    let mut all = String::new();
    for i in 0..ROOMS {
        all.push_str(&format!("/join r{i}\n"));
        if i % 100 == 0 {
            all.push_str("said something\n");
        }
    }
    all.push_str("/join lobby\n/who\n");
    members[0].send_raw(all.as_bytes());
    let me = members[0].nick.clone();
    let back = members[1].skip_to(&format!("* {me} joined"));
    assert_eq!(back, [format!("* {me} left")]);
    let watcher = members[1].nick.clone();
    // The last of the 3000 joins back: everything before it is done.
    loop {
        let line = members[0].line();
        if line.starts_with("* members: ") {
            assert_eq!(line, format!("* members: {}", sorted(&[&me, &watcher])));
            break;
        }
    }
    let size = redis.command(&["DBSIZE"]).expect("DBSIZE");
    let size: usize = size.trim().trim_start_matches(':').parse().unwrap_or_else(|_| panic!("{size}"));
    // guests, servers, 2 x (alive, calls, members), 2 x nick, lobby's
    // room, seq and hist: 13.
    assert!(size <= 14, "{size} keys after {ROOMS} rooms visited and left");
    let seqs = redis.command(&["KEYS", "edgeloop:seq:r*"]).expect("KEYS");
    assert_eq!(seqs.trim(), "*0", "{seqs}");
}

/// The bulk strings of a RESP reply given as text (events end with `\n`,
/// never `\r\n`, so lines split cleanly).
fn bulk_strings(reply: &str) -> Vec<String> {
    let mut lines = reply.split("\r\n");
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with('$') && line != "$-1" {
            out.push(lines.next().unwrap_or_default().to_string());
        }
    }
    out
}

/// A `Message` call's lines are one history entry (one `XADD` per call
/// and room, not per line: most of what batching saves Redis), and a
/// replay from any number, even one inside an entry, gives exactly the
/// events from there on, oldest first; `max` keeps the newest.
#[test]
fn a_turns_lines_are_one_history_entry_and_replay_from_inside_it() {
    let Some(redis) = Redis::start() else { return };
    let eval = |script: Script, args: &[&str]| {
        let body = script.body_for(0);
        redis.command(&[&["EVAL", body.as_str(), "0"][..], args].concat()).expect("EVAL")
    };
    eval(Script::Register, &["t", "1", "60000", "0"]);
    let calls: [&[&str]; 3] = [&["a\n", "b\n", "c\n"], &["d\n"], &["e\n", "f\n", "g\n"]];
    for (number, lines) in (1..).zip(calls) {
        let number = number.to_string();
        let mut args = vec!["t", "1", number.as_str(), "r"];
        for line in lines {
            args.extend(["-", line]);
        }
        assert_eq!(eval(Script::Message, &args), format!(":{}\r\n", lines.len()));
    }
    assert_eq!(redis.command(&["XLEN", "edgeloop:hist:r"]).unwrap(), ":3\r\n");
    let top: u64 = bulk_strings(&redis.command(&["GET", "edgeloop:seq:r"]).unwrap())[0].parse().unwrap();
    let event = |seq: u64| format!("{seq} - {}\n", (b'a' + (seq + 6 - top) as u8) as char);
    let replay =
        |from: u64, max: usize| bulk_strings(&eval(Script::Replay, &["r", &from.to_string(), &max.to_string()]));
    let everything: Vec<String> = (top - 6..=top).map(event).collect();
    assert_eq!(replay(top - 6, 100)[1..], everything[..]);
    // From inside the first entry, and inside the last.
    assert_eq!(replay(top - 5, 100), [&[top.to_string()][..], &everything[1..]].concat());
    assert_eq!(replay(top - 1, 100)[1..], everything[5..]);
    // At most `max`, the newest: the last entry cut.
    assert_eq!(replay(top - 6, 2)[1..], everything[5..]);
    // Nothing new: the top alone.
    assert_eq!(replay(top + 1, 100), [top.to_string()]);
}

/// SPEC: a room's history is bounded, keeping at least the last 10 000
/// events (or 5 minutes, whichever is more). With 10 300 entries older
/// than 5 minutes (put there by hand, with ids from 1970), the next call
/// that crosses a multiple of 128 events trims the old ones down towards
/// 10 000 and keeps its own.
#[test]
fn a_rooms_history_is_trimmed_to_its_bound() {
    let Some(redis) = Redis::start() else { return };
    let eval = |body: &str, args: &[&str]| redis.command(&[&["EVAL", body, "0"][..], args].concat()).expect("EVAL");
    let old = "for i = 1, 10300 do redis.call('XADD', 'edgeloop:hist:r', '1-' .. i, 'e', 'old') end";
    eval(old, &[]);
    eval(&Script::Register.body_for(0), &["t", "1", "60000", "0"]);
    // 128 lines in one call: its numbers cross a multiple of 128.
    let mut args = vec!["t", "1", "1", "r"];
    for _ in 0..128 {
        args.extend(["-", "x\n"]);
    }
    assert_eq!(eval(&Script::Message.body_for(0), &args), ":128\r\n");
    let len: usize =
        redis.command(&["XLEN", "edgeloop:hist:r"]).unwrap().trim().trim_start_matches(':').parse().unwrap();
    assert!((10_000..10_301).contains(&len), "{len} entries after trimming 10 301");
    // The newest entry is the call's own, whole.
    let newest = redis.command(&["XREVRANGE", "edgeloop:hist:r", "+", "-", "COUNT", "1"]).unwrap();
    assert_eq!(newest.matches(" - x\n").count(), 128, "{newest}");
}
