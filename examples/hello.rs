//! The `HELLO?` protocol of the seed talk, both sides of it.
//!
//! ```sh
//! cargo run --release --example hello                               # server on 127.0.0.1:7070
//! cargo run --release --example hello -- --connect 127.0.0.1:7070 Joe   # Hello, Joe!
//! ```
//!
//! ```text
//!   server → client   HELLO?                 six bytes, no line end
//!   client → server   Joe\n                  one line (\n or \r\n)
//!   server → client   Hello, Joe!\r\n        then the server closes
//! ```
//!
//! A client that sends no line within 5 seconds is disconnected without
//! an answer (`HELLO_TIMEOUT_MS=300` in the server's environment makes it
//! 300 ms, for tests). A client that half-closes after a last line without
//! `\n` (`printf Joe | nc -N ...`) still gets its answer: the reactor
//! delivers an unterminated final line at the end of the stream.
//!
//! # The gen_tcp notions
//!
//! - **A protocol timeout.** In Erlang the server would call
//!   `gen_tcp:recv(S, 0, 5000)` and close on `{error, timeout}`. An event
//!   loop cannot block in `recv`, so the timeout is a per-connection timer
//!   instead: [`Ctx::set_timer`] when the greeting goes out,
//!   [`Ctx::cancel_timer`] when the name arrives, and
//!   [`Handler::on_timer`] if it does not.
//! - **Switching `packet` mid-stream.** The greeting has no line end, so
//!   the client cannot read it as a line: it connects with
//!   `Framing::Exact(6)` (`gen_tcp:recv(S, 6)`), then switches to `Line`
//!   (`inet:setopts(S, [{packet, line}])`) for the answer.
//! - **`connect` with a timeout** (`gen_tcp:connect(Host, Port, Opts,
//!   Timeout)`): [`ConnectOptions::timeout`]; a failed connect arrives as
//!   `on_close` with [`CloseReason::ConnectFailed`] and the reason.

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use edgeloop::{CloseReason, Config, ConnId, ConnectOptions, Ctx, Framing, Handler, ListenOptions, Reactor};

const GREETING: &[u8] = b"HELLO?";

// ---------------------------------------------------------------- server

struct Server {
    /// How long a client has to send its name.
    timeout: Duration,
}

impl Handler for Server {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let _ = ctx.send(id, GREETING);
        ctx.set_timer(id, self.timeout);
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, line: &[u8]) {
        // Left set, the timer would still fire while the close lingers.
        ctx.cancel_timer(id);
        let name = line.strip_suffix(b"\n").unwrap_or(line);
        let name = name.strip_suffix(b"\r").unwrap_or(name);
        let _ = ctx.send(id, &[b"Hello, ", name, b"!\r\n"].concat());
        // Flushes the answer first; no further line is delivered.
        ctx.close(id);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        ctx.close(id);
    }
}

fn serve(addr: &str) -> Result<(), Box<dyn Error>> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let timeout = match std::env::var("HELLO_TIMEOUT_MS") {
        Ok(ms) => Duration::from_millis(ms.parse().map_err(|e| format!("HELLO_TIMEOUT_MS={ms}: {e}"))?),
        Err(_) => Duration::from_secs(5),
    };
    let mut reactor = Reactor::new(Config { handle_signals: true, ..Config::default() })?;
    let server = reactor.add_handler(Server { timeout });
    let local = reactor.listen(&addr, server, ListenOptions { framing: Framing::Line, ..Default::default() })?;
    // Standard output is line-buffered: whoever waits for this line gets it now.
    println!("listening on {local}");
    Ok(reactor.run()?)
}

// ---------------------------------------------------------------- client

struct Client {
    server: SocketAddr,
    name: String,
    greeted: bool,
    answered: bool,
    /// Why the exchange failed, if it did.
    failure: Option<String>,
}

impl Handler for Client {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        if self.greeted {
            let line = frame.strip_suffix(b"\n").unwrap_or(frame);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            println!("{}", String::from_utf8_lossy(line));
            self.answered = true;
        } else if frame == GREETING {
            self.greeted = true;
            ctx.set_framing(id, Framing::Line);
            let _ = ctx.send(id, format!("{}\n", self.name).as_bytes());
        } else {
            self.failure = Some(format!("unexpected greeting {:?}", String::from_utf8_lossy(frame)));
            ctx.abort(id);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, reason: CloseReason) {
        if self.failure.is_none() {
            self.failure = match reason {
                CloseReason::ConnectFailed(e) => Some(cannot_connect(self.server, e.into())),
                _ if !self.greeted => Some(format!("connection closed before the greeting ({reason})")),
                CloseReason::PeerClosed if self.answered => None,
                CloseReason::PeerClosed => Some("the server closed without an answer".into()),
                _ => Some(format!("connection closed: {reason}")),
            };
        }
        ctx.stop(); // the only connection: the program is done
    }
}

fn cannot_connect(server: SocketAddr, e: std::io::Error) -> String {
    format!("cannot connect to {server}: {}", edgeloop::sys::describe(&e))
}

fn connect(server: &str, name: &str) -> Result<(), Box<dyn Error>> {
    let server: SocketAddr = server.parse().map_err(|e| format!("{server}: {e}"))?;
    if name.contains(['\r', '\n']) {
        return Err("a name is one line".into());
    }
    let mut reactor = Reactor::new(Config::default())?;
    let client =
        reactor.add_handler(Client { server, name: name.into(), greeted: false, answered: false, failure: None });
    let options = ConnectOptions {
        framing: Framing::Exact(GREETING.len() as u32),
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    // An error here is immediate; most failures come later, to `on_close`.
    reactor.ctx().connect(&server, &options).map_err(|e| cannot_connect(server, e))?;
    reactor.run()?;
    match reactor.handler::<Client>(client).and_then(|c| c.failure.clone()) {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => serve("127.0.0.1:7070"),
        [addr] if addr != "--connect" => serve(addr),
        [flag, addr, name] if flag == "--connect" => connect(addr, name),
        _ => {
            eprintln!("usage: hello [ADDR] | hello --connect ADDR NAME");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::FAILURE
        }
    }
}
