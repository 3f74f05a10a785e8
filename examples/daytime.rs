//! The daytime service (RFC 867): on connect, one line with the time, then
//! close.
//!
//! ```sh
//! cargo run --release --example daytime              # 127.0.0.1:7013
//! nc 127.0.0.1 7013                                  # 2026-11-29T14:05:06.123456Z
//! ```
//!
//! The time is UTC in RFC 3339, to the microsecond, ending in `\r\n`.
//!
//! # The gen_tcp notion: closing without losing the reply
//!
//! The Erlang version is `gen_tcp:send(S, Time), gen_tcp:close(S)`, and
//! the gen_tcp manual warns that it may lose data: `close` with bytes still
//! queued, or with unread bytes from the client, can end in a reset that
//! destroys the reply in flight. Its advice is `shutdown(S, write)` and
//! waiting for the peer to close. [`Ctx::close`] is that advice built in:
//! the reply is flushed, the write side shut (the FIN follows the data),
//! the client's FIN awaited (briefly), and only then is the socket closed.
//! So a server may send and close in the same callback.

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;

use edgeloop::{Config, ConnId, Ctx, Handler, ListenOptions, Reactor};

struct Daytime;

impl Handler for Daytime {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        // `{:.6}`: exactly six fractional digits, as jiff prints a precision.
        let now = format!("{:.6}\r\n", jiff::Timestamp::now());
        let _ = ctx.send(id, now.as_bytes());
        ctx.close(id);
    }

    fn on_frame(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, _frame: &[u8]) {
        // Whatever the client sends is ignored, as RFC 867 says.
    }
}

fn serve(addr: &str) -> Result<(), Box<dyn Error>> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    // The reactor turns SIGINT/SIGTERM into a graceful shutdown; `run`
    // then returns.
    let mut reactor = Reactor::new(Config { handle_signals: true, ..Config::default() })?;
    let daytime = reactor.add_handler(Daytime);
    let local = reactor.listen(&addr, daytime, ListenOptions::default())?;
    // Standard output is line-buffered: whoever waits for this line gets it now.
    println!("listening on {local}");
    Ok(reactor.run()?)
}

fn main() -> ExitCode {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7013".into());
    match serve(&addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daytime: {e}");
            ExitCode::FAILURE
        }
    }
}
