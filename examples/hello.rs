//! The smallest useful application: a line server that greets.
//!
//! ```sh
//! cargo run --example hello            # listens on 127.0.0.1:7070
//! printf 'world\n' | nc -N 127.0.0.1 7070    # -> hello, world
//! ```
//!
//! A [`Handler`] gets frames (here, lines: `Framing::Line`) as slices of the
//! connection's read buffer and answers through [`Ctx`]. The reactor does
//! the rest: buffering, flushing, half-close, timeouts.

use edgeloop::{Config, ConnId, Ctx, Framing, Handler, Reactor};

struct Hello;

impl Handler for Hello {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, line: &[u8]) {
        let name = line.strip_suffix(b"\n").unwrap_or(line);
        let name = name.strip_suffix(b"\r").unwrap_or(name);
        // Three pieces, one frame: they leave in the same sendmsg.
        let _ = ctx.send(id, b"hello, ");
        let _ = ctx.send(id, name);
        let _ = ctx.send(id, b"\n");
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7070".into());
    let config = Config { handle_signals: true, ..Config::default() };
    let mut reactor = Reactor::new(config)?;
    let hello = reactor.add_handler(Hello);
    let options = edgeloop::ListenOptions { framing: Framing::Line, ..Default::default() };
    let local = reactor.listen(&addr.parse().expect("an address such as 127.0.0.1:7070"), hello, options)?;
    println!("listening on {local}");
    reactor.run()
}
