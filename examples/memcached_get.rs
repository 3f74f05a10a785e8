//! A memcached `get` client: lines and counted bytes on one stream.
//!
//! ```sh
//! memcached -l 127.0.0.1 -p 11211 -U 0 &
//! printf 'set greeting 0 0 5\r\nhello\r\n' | nc -N 127.0.0.1 11211
//! cargo run --release --example memcached_get -- 127.0.0.1:11211 greeting missing
//! # greeting = "hello"
//! # missing: not found
//! ```
//!
//! The memcached text protocol mixes lines with a block of counted bytes,
//! and the block may contain anything, line ends and `END` included:
//!
//! ```text
//!   get KEY\r\n                        →  the request
//!   VALUE KEY FLAGS BYTES\r\n          ←  a hit: a line             (Line)
//!   <BYTES bytes of data>\r\n          ←  counted bytes             (Exact(BYTES + 2))
//!   END\r\n                            ←  a line                    (Line)
//!
//!   END\r\n                            ←  a miss: just this line    (Line)
//! ```
//!
//! # The gen_tcp notion: `recv(S, N)`, and switching `packet` mid-stream
//!
//! An Erlang client reads the header with `{packet, line}`, then
//! `inet:setopts(S, [{packet, raw}])` and `gen_tcp:recv(S, Bytes + 2)` for
//! the block, then back to `line`. Here the block is one frame:
//! [`Ctx::set_framing`] with `Framing::Exact(BYTES + 2)`, delivered as one
//! slice of the read buffer however many reads it took to arrive — no copy
//! into a `Vec` of our own. The switch takes effect at once, on bytes
//! already buffered too: the data that arrived in the same read as the
//! `VALUE` line is cut by the new framing, not as lines.
//!
//! The requests for all keys go out at once (pipelining, in one write);
//! the replies come back in order.
//!
//! # Output
//!
//! One line per key, in order: `KEY = "VALUE"` for a hit, the value in
//! Rust's escaped form (`{:?}` of the string: `"a\r\nb"`); a value that is
//! not UTF-8 prints as a Rust byte-string literal, every byte that is not
//! printable ASCII as `\xNN` (`b"\xff\x00a"`), so nothing is lost. A miss
//! prints `KEY: not found`. Exit status 0; 1, with the reason on standard
//! error, if the client cannot connect or the reply is malformed; 2 for
//! bad arguments.

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use edgeloop::{CloseReason, Config, ConnId, ConnectOptions, Ctx, Framing, Handler, Reactor};

/// The largest value read: memcached's own ceiling for an item (`-I 1024m`).
const MAX_VALUE: usize = 1 << 30;

/// What the next frame must be.
#[derive(Clone, Copy)]
enum Expect {
    /// `VALUE KEY FLAGS BYTES` (a hit) or `END` (a miss), in `Line` framing.
    Header,
    /// The data block and its `\r\n`, in `Exact(BYTES + 2)` framing.
    Data,
    /// The `END` after a hit, in `Line` framing.
    End,
}

struct Client {
    server: SocketAddr,
    keys: Vec<String>,
    /// The key whose reply is being read.
    next: usize,
    expect: Expect,
    /// Why the client failed, if it did.
    failure: Option<String>,
}

impl Client {
    /// The reply for the current key is complete.
    fn answered(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.next += 1;
        self.expect = Expect::Header;
        if self.next == self.keys.len() {
            ctx.close(id);
        }
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, id: ConnId, why: String) {
        self.failure.get_or_insert(why);
        ctx.abort(id);
    }

    /// The length announced by `VALUE KEY FLAGS BYTES` for the current key.
    fn value_length(&self, header: &str) -> Option<usize> {
        match header.split(' ').collect::<Vec<_>>()[..] {
            ["VALUE", key, flags, bytes] if key == self.keys[self.next] && flags.parse::<u32>().is_ok() => {
                bytes.parse().ok().filter(|&n| n <= MAX_VALUE)
            }
            _ => None,
        }
    }
}

impl Handler for Client {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        for key in &self.keys {
            let _ = ctx.send(id, format!("get {key}\r\n").as_bytes());
        }
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        let key = &self.keys[self.next];
        match self.expect {
            Expect::Header => {
                let line = String::from_utf8_lossy(frame);
                if line == "END\r\n" {
                    println!("{key}: not found");
                    self.answered(ctx, id);
                } else if let Some(bytes) = line.strip_suffix("\r\n").and_then(|l| self.value_length(l)) {
                    self.expect = Expect::Data;
                    ctx.set_framing(id, Framing::Exact(bytes as u32 + 2));
                } else {
                    self.fail(ctx, id, format!("unexpected reply to `get {key}`: {line:?}"));
                }
            }
            Expect::Data => {
                let Some(data) = frame.strip_suffix(b"\r\n") else {
                    return self.fail(ctx, id, format!("the data block of {key} does not end with \\r\\n"));
                };
                match std::str::from_utf8(data) {
                    Ok(text) => println!("{key} = {text:?}"),
                    Err(_) => println!("{key} = b\"{}\"", data.escape_ascii()),
                }
                self.expect = Expect::End;
                ctx.set_framing(id, Framing::Line);
            }
            Expect::End if frame == b"END\r\n" => self.answered(ctx, id),
            Expect::End => {
                let line = String::from_utf8_lossy(frame);
                self.fail(ctx, id, format!("expected END after the value of {key}, got {line:?}"));
            }
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, reason: CloseReason) {
        if self.failure.is_none() && self.next < self.keys.len() {
            self.failure = Some(match reason {
                CloseReason::ConnectFailed(e) => cannot_connect(self.server, e.into()),
                _ => format!("connection closed before every key was answered: {reason}"),
            });
        }
        ctx.stop(); // the only connection: the program is done
    }
}

fn cannot_connect(server: SocketAddr, e: std::io::Error) -> String {
    format!("cannot connect to {server}: {}", edgeloop::sys::describe(&e))
}

fn get(server: SocketAddr, keys: Vec<String>) -> Result<(), Box<dyn Error>> {
    // A frame may be as large as the largest value memcached can hold;
    // memory is taken only when such a value arrives.
    let mut reactor = Reactor::new(Config { max_frame: MAX_VALUE + 2, ..Config::default() })?;
    let client = reactor.add_handler(Client { server, keys, next: 0, expect: Expect::Header, failure: None });
    let options =
        ConnectOptions { framing: Framing::Line, timeout: Some(Duration::from_secs(5)), ..Default::default() };
    reactor.ctx().connect(&server, &options).map_err(|e| cannot_connect(server, e))?;
    reactor.run()?;
    match reactor.handler::<Client>(client).and_then(|c| c.failure.clone()) {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

/// A key memcached accepts: 1 to 250 bytes, no spaces or control characters.
fn valid_key(key: &str) -> bool {
    (1..=250).contains(&key.len()) && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((server, keys)) = args.split_first().filter(|(_, keys)| !keys.is_empty()) else {
        eprintln!("usage: memcached_get ADDR KEY...");
        return ExitCode::from(2);
    };
    let server: SocketAddr = match server.parse() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("memcached_get: {server}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(key) = keys.iter().find(|k| !valid_key(k)) {
        eprintln!("memcached_get: {key:?} is not a memcached key");
        return ExitCode::from(2);
    }
    match get(server, keys.to_vec()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memcached_get: {e}");
            ExitCode::FAILURE
        }
    }
}
