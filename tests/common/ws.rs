//! A WebSocket client for the tests, written from RFC 6455 apart from the
//! library's own encoder (so that a mistake shared by both cannot hide):
//! the handshake, masked client frames, unmasked server frames.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// `scripts/lib/ws_check.py` (an independent client: Python's
/// `websockets`), if python3 and `websockets` are there (see
/// [`super::installed`]).
pub fn python_ws_check() -> Option<PathBuf> {
    let found = Command::new("python3").args(["-c", "import websockets"]).status().is_ok_and(|s| s.success());
    super::installed(found, "python3 with websockets (pip install websockets)")
        .then(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("scripts/lib/ws_check.py"))
}

/// The key of RFC 6455's own example, and the answer it must get.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// An upgrade request for `path`, with `extra` header lines.
pub fn request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads an HTTP response head (through its blank line), byte by byte so
/// that nothing after it is taken.
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => panic!("end of stream inside the response head: {:?}", String::from_utf8_lossy(&head)),
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the response head: {e} (so far {:?})", String::from_utf8_lossy(&head)),
        }
    }
    String::from_utf8(head).expect("ASCII head")
}

/// A masked client frame (the key varies with the payload's length).
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0xa1, 0x5e, (payload.len() % 251) as u8, 0x3c];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// A close frame's payload: a status and a reason.
pub fn close_payload(status: u16, reason: &str) -> Vec<u8> {
    let mut p = status.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// One frame from the server: (fin, opcode, payload). Server frames must
/// not be masked.
pub fn read_frame(stream: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h).expect("a frame header");
    assert_eq!(h[1] & 0x80, 0, "a server frame is masked");
    assert_eq!(h[0] & 0x70, 0, "a server frame has RSV bits");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            stream.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            stream.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).expect("a frame payload");
    (h[0] & 0x80 != 0, h[0] & 0x0f, payload)
}

/// A client connected and upgraded at `path`.
pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(request(path, "").as_bytes()).unwrap();
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains(&format!("Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n")), "{head}");
        Client { stream }
    }

    pub fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.stream.write_all(&frame(fin, opcode, payload)).expect("write a frame");
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next message (a data frame; server messages are never
    /// fragmented): (opcode, payload).
    pub fn recv(&mut self) -> (u8, Vec<u8>) {
        let (fin, opcode, payload) = read_frame(&mut self.stream);
        assert!(fin, "a server message in fragments");
        (opcode, payload)
    }

    /// The server closes with `status`: a close frame with it, then end of
    /// stream (no reset).
    pub fn expect_close(mut self, status: u16) {
        let (fin, opcode, payload) = read_frame(&mut self.stream);
        assert!(fin && opcode == CLOSE, "expected a close frame, got opcode {opcode} {payload:?}");
        assert!(payload.len() >= 2, "close frame without a status");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), status, "close status");
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).expect("end of stream after the close frame, not a reset");
        assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
    }
}
