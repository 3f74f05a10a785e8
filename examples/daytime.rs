//! The daytime service (RFC 867): on connect, send the time, then close.
//!
//! ```sh
//! cargo run --example daytime          # listens on 127.0.0.1:7013
//! nc 127.0.0.1 7013                    # -> 2026-11-22T04:05:06Z
//! ```
//!
//! It shows a graceful close: [`Ctx::close`] right after [`Ctx::send`] does
//! not lose the reply. The reactor flushes it, shuts down the write side,
//! waits (briefly) for the client's FIN, and only then closes the socket —
//! closing with unread input would make the kernel send a reset that can
//! destroy the reply in flight.

use edgeloop::{Config, ConnId, Ctx, Handler, Reactor};

struct Daytime;

impl Handler for Daytime {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let _ = ctx.send(id, format!("{}\r\n", jiff::Timestamp::now()).as_bytes());
        ctx.close(id);
    }

    fn on_frame(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, _frame: &[u8]) {
        // Whatever the client sends is ignored, as RFC 867 says.
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7013".into());
    let config = Config { handle_signals: true, ..Config::default() };
    let mut reactor = Reactor::new(config)?;
    let daytime = reactor.add_handler(Daytime);
    let local = reactor.listen(
        &addr.parse().expect("an address such as 127.0.0.1:7013"),
        daytime,
        edgeloop::ListenOptions::default(),
    )?;
    println!("listening on {local}");
    reactor.run()
}
