//! WebSocket conformance of `edgeloop echo --framing ws`, over real
//! sockets, rule by rule of SPEC's "WebSocket" section (and the cases of
//! the Autobahn testsuite they come from: 1.x framing, 2.x pings, 3.x
//! reserved bits, 4.x opcodes, 5.x fragmentation, 6.x UTF-8, 7.x close,
//! 9.x sizes).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ws::{self, Client, BINARY, CLOSE, CONT, PING, PONG, TEXT};
use common::Server;

fn echo(extra: &[&str]) -> Server {
    let mut args = vec!["echo", "--framing", "ws"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Sends `head` raw and returns the status line and head of the answer,
/// after checking the server then closes.
fn refused(server: &Server, head: &[u8]) -> String {
    let mut s = server.connect();
    s.write_all(head).unwrap();
    let answer = ws::read_head(&mut s);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("closed after the refusal, not reset");
    answer
}

#[test]
fn the_rfc_example_key_gets_the_rfc_accept_value() {
    let server = echo(&[]);
    let mut s = server.connect();
    // Exactly the request of RFC 6455 section 1.3 (with its subprotocols,
    // which the server may ignore).
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
          Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let head = ws::read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
    assert!(head.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\nupgrade: websocket\r\n"), "{head}");
    // And it is now a WebSocket.
    let mut c = Client { stream: s };
    c.send(true, TEXT, b"hi");
    assert_eq!(c.recv(), (TEXT, b"hi".to_vec()));
}

#[test]
fn token_lists_and_any_path_are_accepted() {
    let server = echo(&[]);
    let mut s = server.connect();
    let head = ws::request("/any/path?x=1", "").replace("Connection: Upgrade", "connection: keep-alive, UPGRADE");
    s.write_all(head.as_bytes()).unwrap();
    assert!(ws::read_head(&mut s).starts_with("HTTP/1.1 101 "));
}

#[test]
fn bad_upgrades_get_400_and_other_versions_426() {
    let server = echo(&[]);
    let plain = refused(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.starts_with("HTTP/1.1 400 "), "{plain}");
    let no_key = ws::request("/", "").replace(&format!("Sec-WebSocket-Key: {}\r\n", ws::RFC_KEY), "");
    assert!(refused(&server, no_key.as_bytes()).starts_with("HTTP/1.1 400 "));
    let not_http = refused(&server, b"\x16\x03\x01\x02\x00 hello\r\n\r\n");
    assert!(not_http.starts_with("HTTP/1.1 400 "), "{not_http}");
    let v8 = ws::request("/", "").replace("Version: 13", "Version: 8");
    let answer = refused(&server, v8.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{answer}");
    assert!(answer.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{answer}");
}

#[test]
fn a_head_over_8_kib_gets_431() {
    let server = echo(&[]);
    let big = ws::request("/", &format!("X-Filler: {}\r\n", "a".repeat(8300)));
    let mut s = server.connect();
    // The server may answer and close before it has read everything: the
    // write may then fail, and a reset may follow the answer.
    let _ = s.write_all(big.as_bytes());
    let head = ws::read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    // Just under the limit is served.
    let fits = ws::request("/", &format!("X-Filler: {}\r\n", "a".repeat(7900)));
    let mut s = server.connect();
    s.write_all(fits.as_bytes()).unwrap();
    assert!(ws::read_head(&mut s).starts_with("HTTP/1.1 101 "));
}

#[test]
fn no_handshake_within_10_seconds_is_closed() {
    let server = echo(&[]);
    // Upgraded at once, and idle past its handshake's deadline below.
    let mut c = Client::connect(server.addr, "/");
    let mut s = server.connect();
    let start = Instant::now();
    // A slow head: a byte a second does not keep it open.
    for b in b"GET / HT" {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(900));
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(14), "closed after {took:?}");
    // An upgraded connection is not bound by it (with no idle timeout,
    // nothing is).
    std::thread::sleep(Duration::from_secs(1));
    c.send(true, TEXT, b"still here");
    assert_eq!(c.recv(), (TEXT, b"still here".to_vec()));
}

#[test]
fn messages_come_back_with_their_type() {
    let server = echo(&[]);
    let mut c = Client::connect(server.addr, "/");
    c.send(true, TEXT, "héllo".as_bytes());
    assert_eq!(c.recv(), (TEXT, "héllo".as_bytes().to_vec()));
    c.send(true, BINARY, &[0, 255, 1]);
    assert_eq!(c.recv(), (BINARY, vec![0, 255, 1]));
    c.send(true, TEXT, b"");
    assert_eq!(c.recv(), (TEXT, vec![]));
    // 125, 126 and 65536 bytes: each length form.
    for n in [125, 126, 65_535, 65_536] {
        let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        c.send(true, BINARY, &payload);
        assert_eq!(c.recv(), (BINARY, payload));
    }
}

#[test]
fn binary_of_300_kb_whole_and_in_fragments() {
    let server = echo(&[]);
    let mut c = Client::connect(server.addr, "/");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    c.send(true, BINARY, &payload);
    assert_eq!(c.recv(), (BINARY, payload.clone()));
    c.send(false, BINARY, &payload[..100_000]);
    c.send(false, CONT, &payload[100_000..100_001]);
    c.send(true, CONT, &payload[100_001..]);
    assert_eq!(c.recv(), (BINARY, payload));
}

#[test]
fn a_ping_between_fragments_is_answered_at_once() {
    let server = echo(&[]);
    let mut c = Client::connect(server.addr, "/");
    c.send(false, TEXT, b"frag");
    c.send(true, PING, b"are you there");
    let (fin, opcode, payload) = ws::read_frame(&mut c.stream);
    assert_eq!((fin, opcode, payload), (true, PONG, b"are you there".to_vec()));
    c.send(false, CONT, b"men");
    c.send(true, PONG, b"unsolicited");
    c.send(true, CONT, b"ted");
    assert_eq!(c.recv(), (TEXT, b"fragmented".to_vec()));
    // A ping on its own, empty.
    c.send(true, PING, b"");
    assert_eq!(ws::read_frame(&mut c.stream), (true, PONG, vec![]));
}

#[test]
fn many_messages_in_one_write() {
    let server = echo(&[]);
    let mut c = Client::connect(server.addr, "/");
    let mut wire = Vec::new();
    for i in 0..500 {
        let msg = format!("message {i}");
        if i % 7 == 0 {
            wire.extend(ws::frame(false, TEXT, &msg.as_bytes()[..3]));
            wire.extend(ws::frame(true, PING, b"p"));
            wire.extend(ws::frame(true, CONT, &msg.as_bytes()[3..]));
        } else {
            wire.extend(ws::frame(true, if i % 2 == 0 { TEXT } else { BINARY }, msg.as_bytes()));
        }
    }
    c.write_raw(&wire);
    for i in 0..500 {
        if i % 7 == 0 {
            assert_eq!(ws::read_frame(&mut c.stream), (true, PONG, b"p".to_vec()));
        }
        let kind = if i % 7 == 0 || i % 2 == 0 { TEXT } else { BINARY };
        assert_eq!(c.recv(), (kind, format!("message {i}").into_bytes()), "message {i}");
    }
}

#[test]
fn a_message_split_at_every_byte() {
    let server = echo(&[]);
    let mut c = Client::connect(server.addr, "/");
    // A fragmented text message with a 2-byte code point cut between
    // fragments, a ping between them, then a 200-byte binary message (a
    // 16-bit length), each written one byte at a time.
    let mut wire = ws::frame(false, TEXT, b"caf\xc3");
    wire.extend(ws::frame(true, PING, b"x"));
    wire.extend(ws::frame(true, CONT, b"\xa9!"));
    let binary: Vec<u8> = (0..200).map(|i| i as u8).collect();
    wire.extend(ws::frame(true, BINARY, &binary));
    for b in &wire {
        c.write_raw(&[*b]);
        std::thread::sleep(Duration::from_micros(300));
    }
    assert_eq!(ws::read_frame(&mut c.stream), (true, PONG, b"x".to_vec()));
    assert_eq!(c.recv(), (TEXT, "café!".as_bytes().to_vec()));
    assert_eq!(c.recv(), (BINARY, binary));
}

#[test]
fn the_close_handshake_returns_the_status() {
    let server = echo(&[]);
    let mut c = Client::connect(server.addr, "/");
    c.send(true, CLOSE, &ws::close_payload(1000, "bye"));
    c.expect_close(1000);
    let mut c = Client::connect(server.addr, "/");
    c.send(true, CLOSE, b"");
    c.expect_close(1000);
    let mut c = Client::connect(server.addr, "/");
    c.send(true, CLOSE, &ws::close_payload(3000, "an application's own"));
    c.expect_close(3000);
    // Nothing sent after a close is echoed.
    let mut c = Client::connect(server.addr, "/");
    let mut wire = ws::frame(true, CLOSE, &ws::close_payload(1001, ""));
    wire.extend(ws::frame(true, TEXT, b"too late"));
    c.write_raw(&wire);
    c.expect_close(1001);
}

/// Each violation of SPEC closes with its status, the others unaffected.
#[test]
fn every_violation_closes_with_its_status() {
    let server = echo(&["--max-frame", "1000", "--stats", "1"]);
    let mut bystander = Client::connect(server.addr, "/");
    let mut rsv = ws::frame(true, TEXT, b"a");
    rsv[0] |= 0x40;
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"hi");
    let mut over_two = ws::frame(false, BINARY, &[7; 600]);
    over_two.extend(ws::frame(true, CONT, &[7; 401]));
    let mut utf8_across = ws::frame(false, TEXT, "ok so far é".as_bytes());
    utf8_across.extend(ws::frame(true, CONT, b"\xed\xa0\x80")); // a surrogate
    let mut utf8_cut = ws::frame(false, TEXT, b"a");
    utf8_cut.extend(ws::frame(true, CONT, b"\xe2\x82")); // incomplete at the end
    let mut new_inside = ws::frame(false, TEXT, b"a");
    new_inside.extend(ws::frame(true, TEXT, b"b"));
    let mut huge_64 = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
    huge_64.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", unmasked, 1002),
        ("RSV bits", rsv, 1002),
        ("unknown data opcode 3", ws::frame(true, 0x3, b""), 1002),
        ("unknown control opcode 11", ws::frame(true, 0xB, b""), 1002),
        ("control frame over 125 bytes", ws::frame(true, PING, &[0; 126]), 1002),
        ("fragmented control frame", ws::frame(false, PING, b"x"), 1002),
        ("continuation first", ws::frame(true, CONT, b"x"), 1002),
        ("a new message inside a fragmented one", new_inside, 1002),
        ("64-bit length with the top bit", huge_64, 1002),
        (
            "invalid UTF-8 in one frame",
            ws::frame(true, TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),
            1007,
        ),
        ("invalid UTF-8 across fragments", utf8_across, 1007),
        ("a code point cut at the end of the message", utf8_cut, 1007),
        ("close with a 1-byte payload", ws::frame(true, CLOSE, b"\x03"), 1002),
        ("close status 1005, which may not be sent", ws::frame(true, CLOSE, &ws::close_payload(1005, "")), 1002),
        ("close status 999", ws::frame(true, CLOSE, &ws::close_payload(999, "")), 1002),
        ("close status 1004 (reserved)", ws::frame(true, CLOSE, &ws::close_payload(1004, "")), 1002),
        ("close status 2000", ws::frame(true, CLOSE, &ws::close_payload(2000, "")), 1002),
        ("close reason not UTF-8", ws::frame(true, CLOSE, &[0x03, 0xe8, 0xff, 0xfe]), 1007),
        ("one frame over --max-frame", ws::frame(true, BINARY, &[1; 1001]), 1009),
        ("a message over --max-frame in two fragments", over_two, 1009),
    ];
    let too_big = cases.iter().filter(|(_, _, status)| *status == 1009).count();
    let other = cases.len() - too_big;
    for (what, wire, status) in cases {
        let mut c = Client::connect(server.addr, "/");
        c.send(true, TEXT, b"before");
        assert_eq!(c.recv(), (TEXT, b"before".to_vec()), "{what}");
        c.write_raw(&wire);
        // The check names the case if it fails.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.expect_close(status)));
        assert!(result.is_ok(), "case: {what}");
        bystander.send(true, TEXT, what.as_bytes());
        assert_eq!(bystander.recv(), (TEXT, what.as_bytes().to_vec()));
    }
    // A message exactly at the limit is fine.
    bystander.send(true, BINARY, &[9; 1000]);
    assert_eq!(bystander.recv(), (BINARY, vec![9; 1000]));
    // Monitoring tells a message too large from a broken client.
    let counted = format!(" closed_frame_too_large={too_big} ");
    let broken = format!(" closed_protocol_error={other}");
    common::wait_until(Duration::from_secs(5), "the closes counted by kind in --stats", || {
        server.stderr_text().lines().any(|l| l.contains(&counted) && l.contains(&broken))
    });
}

/// A 1009 is decided by the header: the payload is never awaited.
#[test]
fn an_oversized_length_is_refused_before_its_payload() {
    let server = echo(&["--max-frame", "1000"]);
    let mut c = Client::connect(server.addr, "/");
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    c.write_raw(&header);
    c.expect_close(1009);
}

/// The server's own close: a close frame (1001 at shutdown) before the FIN.
#[test]
fn shutdown_sends_going_away() {
    let mut server = echo(&[]);
    let mut c = Client::connect(server.addr, "/");
    c.send(true, TEXT, b"x");
    assert_eq!(c.recv(), (TEXT, b"x".to_vec()));
    server.signal(libc::SIGTERM);
    let (_, opcode, payload) = ws::read_frame(&mut c.stream);
    assert_eq!((opcode, &payload[..]), (CLOSE, &1001u16.to_be_bytes()[..]));
    drop(c);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

/// Other framings are unchanged by the ws build: a quick line echo.
#[test]
fn other_framings_are_unchanged_by_the_ws_build() {
    let server = Server::start(&["echo", "--framing", "line"]);
    let mut s: TcpStream = server.connect();
    common::round_trip(&mut s, b"GET / HTTP/1.1\n");
}
