//! One outcome, exactly once (issue 16), where only a precise
//! interleaving shows it: a proxy between server A and Redis holds A's
//! commands or Redis's replies to A on demand.
//!
//! First, a chat server's script calls sent again after `NOSCRIPT` must not
//! run twice, even when another server reloads the script while they are
//! on their way.
//!
//! The race needs a precise interleaving, so server A reaches Redis
//! through a proxy that can hold its commands: A's member writes three
//! lines, one at a time (three calls held), the script cache is flushed, only the first
//! call is let through (`NOSCRIPT`: A sends it again, behind the other
//! two), server B reloads the script by relaying a line of its own, and
//! then everything held goes on. The two calls that were held behind the
//! refused one now find the script loaded. Before the calls were chained
//! they ran, and then ran again as A's copies: every member got `two` and
//! `three` twice, and `one` after them.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::chat::{clients, Client};
use common::{wait_until, Redis, Server};

/// One connection through the proxy: where its commands go, and those
/// held back; whether Redis's replies on it are held back (never
/// forwarded).
struct Route {
    upstream: TcpStream,
    held: VecDeque<Vec<u8>>,
    replies_held: bool,
}

#[derive(Default)]
struct Gate {
    holding: bool,
    routes: Vec<Route>,
}

/// A TCP proxy to Redis that forwards replies freely and commands one by
/// one, each as a whole, unless told to hold them.
struct Proxy {
    port: u16,
    gate: Arc<Mutex<Gate>>,
}

impl Proxy {
    fn start(redis_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gate = Arc::new(Mutex::new(Gate::default()));
        let shared = gate.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", redis_port)) else { return };
                let (from_redis, to_client) = (upstream.try_clone().unwrap(), client.try_clone().unwrap());
                let index = {
                    let mut gate = shared.lock().unwrap();
                    gate.routes.push(Route { upstream, held: VecDeque::new(), replies_held: false });
                    gate.routes.len() - 1
                };
                let gate = shared.clone();
                thread::spawn(move || forward_replies(from_redis, to_client, index, &gate));
                let gate = shared.clone();
                thread::spawn(move || forward_commands(client, index, &gate));
            }
        });
        Proxy { port, gate }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn hold(&self) {
        self.gate.lock().unwrap().holding = true;
    }

    /// From now on, no reply on the connections open now reaches the
    /// server (connections made later are not held).
    fn hold_replies(&self) {
        for route in &mut self.gate.lock().unwrap().routes {
            route.replies_held = true;
        }
    }

    /// The held commands of every connection, as text.
    fn held(&self) -> Vec<String> {
        let gate = self.gate.lock().unwrap();
        gate.routes.iter().flat_map(|r| r.held.iter().map(|c| String::from_utf8_lossy(c).into_owned())).collect()
    }

    /// Let the first held command of the connection holding a command
    /// that contains `marker` through, alone.
    fn release_first_of(&self, marker: &str) {
        let mut gate = self.gate.lock().unwrap();
        let route = gate
            .routes
            .iter_mut()
            .find(|r| r.held.iter().any(|c| String::from_utf8_lossy(c).contains(marker)))
            .expect("a connection holding the marker");
        let first = route.held.pop_front().unwrap();
        route.upstream.write_all(&first).unwrap();
    }

    /// Let everything held through, in order, and stop holding.
    fn open(&self) {
        let mut gate = self.gate.lock().unwrap();
        gate.holding = false;
        for route in &mut gate.routes {
            while let Some(command) = route.held.pop_front() {
                route.upstream.write_all(&command).unwrap();
            }
        }
    }
}

/// Forward what Redis sends to the client, unless held back.
fn forward_replies(mut from_redis: TcpStream, mut to_client: TcpStream, index: usize, gate: &Mutex<Gate>) {
    let mut chunk = [0u8; 65536];
    loop {
        let n = match from_redis.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !gate.lock().unwrap().routes[index].replies_held && to_client.write_all(&chunk[..n]).is_err() {
            return;
        }
    }
}

/// Read `client`'s RESP commands and forward (or hold) each whole.
fn forward_commands(mut client: TcpStream, index: usize, gate: &Mutex<Gate>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = command_len(&buf) {
            let command: Vec<u8> = buf.drain(..len).collect();
            let mut gate = gate.lock().unwrap();
            let holding = gate.holding;
            let route = &mut gate.routes[index];
            if holding || !route.held.is_empty() {
                route.held.push_back(command);
            } else if route.upstream.write_all(&command).is_err() {
                return;
            }
        }
    }
}

/// The length of the first whole command (`*N` of `$LEN` bulks, or an
/// inline one) in `buf`, if it is all there.
fn command_len(buf: &[u8]) -> Option<usize> {
    let line = |at: usize| -> Option<(usize, usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(&buf[at + 1..end]).ok()?.parse().ok()?;
        Some((n, end + 2))
    };
    if buf.first() != Some(&b'*') {
        // An inline command: one line.
        return buf.windows(2).position(|w| w == b"\r\n").map(|end| end + 2);
    }
    let (count, mut at) = line(0)?;
    for _ in 0..count {
        let (len, start) = line(at)?;
        at = start + len + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some(at)
}

/// Server A on Redis through the proxy, server B on Redis directly, and a
/// member on each (`None` without redis-server, outside CI).
fn a_through_the_proxy() -> Option<(Redis, Proxy, Server, Server, Vec<Client>)> {
    let redis = Redis::start()?;
    let proxy = Proxy::start(redis.port);
    let a = Server::start(&["chat", "--redis", &proxy.url()]);
    let b = Server::start(&["chat", "--redis", &redis.url()]);
    let m = clients(&[&a, &b], 2);
    Some((redis, proxy, a, b, m))
}

#[test]
fn calls_sent_again_after_a_script_flush_run_once_and_in_order() {
    let Some((redis, proxy, a, _b, mut m)) = a_through_the_proxy() else { return };
    let (ours, theirs) = (m[0].nick.clone(), m[1].nick.clone());

    proxy.hold();
    // One line at a time, each a call of its own (the lines of one loop
    // turn would be one call).
    for (i, line) in ["one", "two", "three"].iter().enumerate() {
        m[0].send(line);
        wait_until(Duration::from_secs(5), "A's calls held", || {
            proxy.held().iter().filter(|c| ["one\n", "two\n", "three\n"].iter().any(|l| c.contains(l))).count() == i + 1
        });
    }
    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]).as_deref(), Some("+OK\r\n"));
    // Only the first of A's held calls reaches Redis: NOSCRIPT.
    proxy.release_first_of("one\n");
    thread::sleep(Duration::from_millis(300));
    // B reloads the script (its EVALSHA is refused, its EVAL loads it).
    m[1].send("from b");
    m[1].expect(&format!("{theirs}: from b"));
    // A's two calls that were behind the refused one now reach a Redis
    // that has the script again.
    proxy.open();
    m[0].send("end");

    let mut seen: Vec<Vec<String>> = Vec::new();
    for c in &mut m {
        let mut lines = c.skip_to(&format!("{ours}: end"));
        lines.retain(|l| l.starts_with(&format!("{ours}: ")));
        seen.push(lines);
    }
    let want: Vec<String> = ["one", "two", "three"].iter().map(|l| format!("{ours}: {l}")).collect();
    for lines in &seen {
        assert_eq!(lines, &want, "each of A's lines exactly once, in order (A: {:?})", seen[0]);
    }
    assert!(!a.stderr_text().contains("lost:"), "the link stayed up: {}", a.stderr_text());
}

/// A `/nick` that ran in Redis while its answer was lost with the link,
/// on a server paused until it was reaped (so Redis no longer has the
/// entry that would tell): the rename, replayed from the room's history,
/// is its answer. Before, the member saw its rename replayed, then was
/// announced under its old name and told the `/nick` was refused.
#[test]
fn a_nick_whose_answer_was_lost_is_known_from_its_replayed_event() {
    let Some((_redis, proxy, a, _b, mut m)) = a_through_the_proxy() else { return };
    let old = m[0].nick.clone();
    // A's links stop hearing Redis: the rename runs, its answer (and its
    // publication) never reach A.
    proxy.hold_replies();
    m[0].send("/nick ada");
    m[1].expect(&format!("* {old} is now ada"));
    a.signal(libc::SIGSTOP);
    m[1].expect("* ada left"); // A reaped
    a.signal(libc::SIGCONT);
    let mut seen = m[0].skip_to("* chat backend restored");
    seen.retain(|l| l != "* some lines may have been lost");
    assert_eq!(
        seen,
        ["* chat backend unavailable".to_string(), format!("* {old} is now ada"), "* ada joined".to_string()],
        "the rename, then the return under the new name"
    );
    m[0].send("back");
    m[0].expect("ada: back"); // not a refusal of the /nick first
    m[1].expect("* ada joined");
    m[1].expect("ada: back");
    m[1].send("/nick ada");
    m[1].expect("! nickname ada is in use");
}

/// A line that ran in Redis while its answer (and its publication) was
/// lost with the link, and then Redis restarted empty: the history that
/// would tell is gone, and the line reached the other server's members.
/// "Unavailable" would say nobody got it; its sender gets its own line
/// back just before its gap notice: where the others got it, or, had they
/// not, were told lines may have been lost. Before, it was told
/// unavailable — a line refused yet delivered.
#[test]
fn a_line_whose_fate_redis_forgot_comes_back_to_its_sender() {
    let Some((mut redis, proxy, _a, _b, mut m)) = a_through_the_proxy() else { return };
    let ours = m[0].nick.clone();
    proxy.hold_replies();
    m[0].send("sent before the restart");
    m[1].expect(&format!("{ours}: sent before the restart"));
    redis.restart();
    let own = format!("{ours}: sent before the restart");
    let mut seen = m[0].skip_to("* chat backend restored");
    seen.retain(|l| l.starts_with('!') || l.contains("lost") || *l == own);
    assert_eq!(seen, [own.as_str(), "* some lines may have been lost"], "its line, then the gap notice; no refusal");
    m[0].send("and after");
    m[0].expect(&format!("{ours}: and after"));
    m[1].skip_to(&format!("{ours}: and after"));
}
