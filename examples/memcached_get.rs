//! A memcached `get` client that switches framing mid-stream.
//!
//! ```sh
//! memcached -p 11211 -U 0 &
//! printf 'set greeting 0 0 5\r\nhello\r\n' | nc -N 127.0.0.1 11211
//! cargo run --example memcached_get -- 127.0.0.1:11211 greeting missing
//! # greeting = "hello"
//! # missing: not found
//! ```
//!
//! The memcached text protocol mixes lines and counted bytes:
//!
//! ```text
//!   get KEY\r\n                          → server
//!   VALUE KEY FLAGS BYTES\r\n             ← a line         (framing: line)
//!   <BYTES bytes of data>\r\nEND\r\n       ← counted bytes  (framing: raw)
//!   END\r\n                               ← a miss: just this line
//! ```
//!
//! So the client reads the header in `line` mode, then switches to `raw`
//! and counts `BYTES + 7` bytes (the data, `\r\n`, `END\r\n`), then back
//! to `line` for the next key — what an Erlang client does with
//! `inet:setopts(S, [{packet, raw}])`. The switch takes effect at once,
//! on bytes already buffered too: the data that arrived in the same read as
//! the header is decoded as `raw`, not as lines.

use std::net::SocketAddr;

use edgeloop::{CloseReason, Config, ConnId, Ctx, Framing, Handler, Reactor};

const TRAILER: &[u8] = b"\r\nEND\r\n";

enum State {
    /// Waiting for `VALUE ...` or `END`.
    Header,
    /// Collecting the data block and its trailer.
    Data { want: usize },
}

struct Client {
    keys: Vec<String>,
    next: usize,
    state: State,
    value: Vec<u8>,
    failed: bool,
}

impl Client {
    fn ask(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        match self.keys.get(self.next) {
            Some(key) => {
                let _ = ctx.send(id, format!("get {key}\r\n").as_bytes());
            }
            None => ctx.stop(),
        }
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, what: &str) {
        eprintln!("memcached_get: {what}");
        self.failed = true;
        ctx.stop();
    }
}

impl Handler for Client {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.ask(ctx, id);
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        match self.state {
            State::Header => {
                let key = &self.keys[self.next];
                let line = String::from_utf8_lossy(frame);
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["END"] => {
                        println!("{key}: not found");
                        self.next += 1;
                        self.ask(ctx, id);
                    }
                    ["VALUE", k, _flags, bytes] if *k == key => match bytes.parse::<usize>() {
                        Ok(n) => {
                            self.value.clear();
                            self.state = State::Data { want: n + TRAILER.len() };
                            ctx.set_framing(id, Framing::Raw);
                        }
                        Err(_) => self.fail(ctx, &format!("bad length in {line:?}")),
                    },
                    _ => self.fail(ctx, &format!("unexpected reply {line:?}")),
                }
            }
            State::Data { want } => {
                self.value.extend_from_slice(frame);
                if self.value.len() < want {
                    return;
                }
                if self.value.len() > want || !self.value.ends_with(TRAILER) {
                    return self.fail(ctx, "data block does not end with \\r\\nEND\\r\\n");
                }
                let data = &self.value[..want - TRAILER.len()];
                println!("{} = {:?}", self.keys[self.next], String::from_utf8_lossy(data));
                self.state = State::Header;
                ctx.set_framing(id, Framing::Line);
                self.next += 1;
                self.ask(ctx, id);
            }
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, reason: CloseReason) {
        if self.next < self.keys.len() {
            self.fail(ctx, &format!("connection closed early: {reason}"));
        }
    }
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), keys) = (args.next(), args.collect::<Vec<_>>()) else {
        eprintln!("usage: memcached_get ADDR KEY...");
        return std::process::ExitCode::from(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("memcached_get: {addr}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let client = Client { keys, next: 0, state: State::Header, value: Vec::new(), failed: false };
    let result = Reactor::new(Config::default()).and_then(|mut reactor| {
        let client = reactor.add_handler(client);
        reactor.ctx().connect(&addr, &edgeloop::ConnectOptions { framing: Framing::Line, ..Default::default() })?;
        reactor.run()?;
        Ok(reactor.handler::<Client>(client).is_none_or(|c| c.failed))
    });
    match result {
        Ok(false) => std::process::ExitCode::SUCCESS,
        Ok(true) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("memcached_get: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
