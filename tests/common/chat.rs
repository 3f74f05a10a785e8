//! One chat client for the chat tests: a line reader and a writer on the
//! same socket, and the nickname the server gave it.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;

use super::Server;

pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
    /// Empty until `join` read the client's own `* NICK joined`.
    pub nick: String,
}

impl Client {
    /// Connect without reading anything.
    pub fn connect(server: &Server) -> Client {
        let stream = server.connect();
        Client { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream), nick: String::new() }
    }

    /// Connect and read the client's own `* guestN joined`.
    pub fn join(server: &Server) -> Client {
        let mut c = Client::connect(server);
        let line = c.line();
        c.nick = line
            .strip_prefix("* ")
            .and_then(|l| l.strip_suffix(" joined"))
            .unwrap_or_else(|| panic!("expected a joined notice, got {line:?}"))
            .to_string();
        c
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// The next line, without its `\n` (which must be there).
    pub fn line(&mut self) -> String {
        let mut buf = Vec::new();
        self.reader.read_until(b'\n', &mut buf).expect("read a line");
        assert!(buf.ends_with(b"\n"), "expected a whole line, got {buf:?}");
        buf.pop();
        String::from_utf8(buf).expect("server lines are UTF-8")
    }

    pub fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want, "{}", self.nick);
    }

    /// Skip lines until `want`; returns the lines skipped.
    pub fn skip_to(&mut self, want: &str) -> Vec<String> {
        let mut skipped = Vec::new();
        loop {
            let line = self.line();
            if line == want {
                return skipped;
            }
            skipped.push(line);
        }
    }

    /// `/nick name`, and its notice back.
    pub fn rename(&mut self, name: &str) {
        self.send(&format!("/nick {name}"));
        let old = std::mem::replace(&mut self.nick, name.to_string());
        self.skip_to(&format!("* {old} is now {name}"));
    }

    /// Read until the server closes the connection (end of stream or reset).
    pub fn drain_to_eof(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected end of stream, got {e}"),
        }
        rest
    }

    /// The server closed the connection, with nothing more to read.
    pub fn expect_closed(&mut self) {
        let rest = self.drain_to_eof();
        assert!(rest.is_empty(), "unexpected bytes before EOF: {rest:?}");
    }
}

/// Clients joining in turn, alternating over `servers`; when this
/// returns, every client has seen every later client's join.
pub fn clients(servers: &[&Server], n: usize) -> Vec<Client> {
    let mut all: Vec<Client> = Vec::new();
    for i in 0..n {
        let c = Client::join(servers[i % servers.len()]);
        for earlier in &mut all {
            earlier.expect(&format!("* {} joined", c.nick));
        }
        all.push(c);
    }
    all
}
