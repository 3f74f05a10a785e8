//! `chat --ws ADDR`: the page, WebSocket members talking with TCP members
//! (a client written here from the RFC, Python's `websockets`, and across
//! two servers on Redis). The browser test is `tests/chat_browser.rs`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::chat::Client as TcpMember;
use common::metrics::{free_addr, http};
use common::ws::{self, Client, BINARY, TEXT};
use common::{Redis, Server};

/// `edgeloop chat ARGS --ws ADDR` on a free port; retried if the port was
/// taken in between.
pub fn chat_with_ws(args: &[&str]) -> (Server, SocketAddr) {
    for _ in 0..5 {
        let web = free_addr();
        let addr = web.to_string();
        let mut all = vec!["chat"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--ws", &addr]);
        match Server::try_start_with(Command::new(env!("CARGO_BIN_EXE_edgeloop")), &all) {
            Ok(server) => return (server, web),
            Err(e) if e.contains(&addr) && e.contains("in use") => eprintln!("note: {addr} was taken; retrying"),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free port for --ws after 5 tries");
}

/// A WebSocket member: upgraded at /chat, its own `* NICK joined` read.
fn join(web: SocketAddr) -> (Client, String) {
    let mut c = Client::connect(web, "/chat");
    let joined = text(&mut c);
    let nick = joined.strip_prefix("* ").and_then(|l| l.strip_suffix(" joined")).expect("joined").to_string();
    (c, nick)
}

/// The next message, which must be text: one chat line, without `\n`.
fn text(c: &mut Client) -> String {
    let (opcode, payload) = c.recv();
    assert_eq!(opcode, TEXT, "a chat line as a binary message");
    let line = String::from_utf8(payload).expect("UTF-8");
    assert!(!line.contains('\n'), "a chat message with a newline: {line:?}");
    line
}

#[test]
fn the_page_is_served_whole_and_other_paths_are_404() {
    let (_server, web) = chat_with_ws(&[]);
    let (head, body) = http(web, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Content-Type: text/html; charset=utf-8"), "{head}");
    assert!(body.starts_with("<!DOCTYPE html>") && body.contains("new WebSocket("), "{body:.200}");
    // Self-contained: nothing loaded from anywhere else.
    for outside in ["http://", "https://", " src=", "<link", "@import", "url("] {
        assert!(!body.contains(outside), "the page refers to something outside: {outside}");
    }
    let (head, _) = http(web, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    // /chat without an upgrade is not a member.
    let (head, _) = http(web, b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
}

#[test]
fn a_websocket_member_is_a_member_like_any_other() {
    let (server, web) = chat_with_ws(&[]);
    let mut tcp = TcpMember::join(&server);
    let (mut w, nick) = join(web);
    tcp.expect(&format!("* {nick} joined"));
    // Lines cross both ways.
    w.send(true, TEXT, "hello from a browser, é".as_bytes());
    assert_eq!(text(&mut w), format!("{nick}: hello from a browser, é"));
    tcp.expect(&format!("{nick}: hello from a browser, é"));
    tcp.send("hello from nc");
    assert_eq!(text(&mut w), format!("{}: hello from nc", tcp.nick));
    tcp.expect(&format!("{}: hello from nc", tcp.nick));
    // Commands, a trailing line end tolerated, a fragmented message.
    w.send(true, TEXT, b"/nick webby\r\n");
    assert_eq!(text(&mut w), format!("* {nick} is now webby"));
    tcp.expect(&format!("* {nick} is now webby"));
    w.send(false, TEXT, b"/w");
    w.send(true, ws::CONT, b"ho");
    assert_eq!(text(&mut w), format!("* members: {} webby", tcp.nick));
    // A line break inside one message would be two lines for TCP members.
    w.send(true, TEXT, b"one\ntwo");
    assert!(text(&mut w).starts_with("! "));
    // /quit: `* bye`, then a clean close.
    w.send(true, TEXT, b"/quit");
    assert_eq!(text(&mut w), "* bye");
    w.expect_close(1000);
    tcp.expect("* webby left");
}

/// A room's lines of one loop turn go to each member as one piece (the
/// chat's fan-out); a WebSocket member still gets one message per line,
/// from a small batch (written at once at the turn's end) and from a large
/// one (shared by reference).
#[test]
fn lines_gathered_in_one_turn_reach_a_websocket_member_one_message_each() {
    let (server, web) = chat_with_ws(&[]);
    let mut tcp = TcpMember::join(&server);
    let (mut w, nick) = join(web);
    tcp.expect(&format!("* {nick} joined"));
    for count in [3, 200] {
        let lines: Vec<String> = (0..count).map(|i| format!("line {i} of {count}")).collect();
        tcp.send(&lines.join("\n"));
        for line in &lines {
            assert_eq!(text(&mut w), format!("{}: {line}", tcp.nick));
        }
    }
}

#[test]
fn a_binary_message_closes_with_1003_and_the_room_is_told() {
    let (server, web) = chat_with_ws(&[]);
    let mut tcp = TcpMember::join(&server);
    let (mut w, nick) = join(web);
    tcp.expect(&format!("* {nick} joined"));
    w.send(true, BINARY, b"\x00\x01");
    w.expect_close(1003);
    tcp.expect(&format!("* {nick} left"));
}

#[test]
fn flood_control_delays_a_websocket_member_without_dropping_lines() {
    let (server, web) = chat_with_ws(&["--chat-rate", "50"]);
    let (mut w, nick) = join(web);
    let mut tcp = TcpMember::join(&server);
    assert_eq!(text(&mut w), format!("* {} joined", tcp.nick));
    // 300 lines at once: at 50 a second, bursts of 100, the last waits
    // about 4 s; none is lost or reordered.
    let mut wire = Vec::new();
    for i in 0..300 {
        wire.extend(ws::frame(true, TEXT, format!("line {i}").as_bytes()));
    }
    let start = std::time::Instant::now();
    w.write_raw(&wire);
    for i in 0..300 {
        tcp.expect(&format!("{nick}: line {i}"));
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(3), "300 lines at 50/s took only {took:?}");
}

#[test]
fn python_websockets_member_talks_with_a_tcp_member() {
    let Some(script) = common::ws::python_ws_check() else { return };
    let (server, web) = chat_with_ws(&[]);
    let mut tcp = TcpMember::join(&server);
    let mut py = Command::new("python3")
        .arg(&script)
        .args(["chat", &format!("ws://{web}/chat"), "hi from python"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut line = || {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        l.trim_end_matches('\n').to_string()
    };
    let joined = line();
    let nick = joined.strip_prefix("* ").and_then(|l| l.strip_suffix(" joined")).expect("joined").to_string();
    tcp.expect(&format!("* {nick} joined"));
    tcp.expect(&format!("{nick}: hi from python"));
    assert_eq!(line(), format!("{nick}: hi from python"));
    tcp.send("hi from tcp");
    assert_eq!(line(), format!("{}: hi from tcp", tcp.nick));
    tcp.expect(&format!("{}: hi from tcp", tcp.nick));
    py.stdin.take().unwrap().write_all(b"stop\n").unwrap();
    assert!(py.wait().unwrap().success(), "ws_check.py chat failed");
    tcp.expect(&format!("* {nick} left"));
}

#[test]
fn a_websocket_member_on_one_server_talks_with_a_tcp_member_on_another_through_redis() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let (_a, web) = chat_with_ws(&["--redis", &url]);
    let b = Server::start(&["chat", "--redis", &url]);
    let mut tcp = TcpMember::join(&b);
    let (mut w, nick) = join(web);
    tcp.expect(&format!("* {nick} joined"));
    w.send(true, TEXT, b"across servers");
    assert_eq!(text(&mut w), format!("{nick}: across servers"));
    tcp.expect(&format!("{nick}: across servers"));
    tcp.send("/who");
    let who = tcp.line();
    assert_eq!(who, format!("* members: {}", sorted(&[&nick, &tcp.nick])));
    tcp.send("back");
    assert_eq!(text(&mut w), format!("{}: back", tcp.nick));
}

fn sorted(names: &[&str]) -> String {
    let mut v = names.to_vec();
    v.sort_unstable();
    v.join(" ")
}
