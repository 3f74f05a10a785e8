//! The seed's first chat room: every line goes to everyone, the sender
//! included.
//!
//! ```sh
//! cargo run --release --example chat_room            # 127.0.0.1:7071
//! nc 127.0.0.1 7071                                  # in two terminals; type
//! ```
//!
//! Where Erlang has a room process that keeps the sockets of its members
//! and a `gen_tcp:send` to each, a reactor has one handler that keeps the
//! ids of its members. A line is copied once into an `Rc<[u8]>` and
//! queued to every member by reference ([`Ctx::send_shared`]). A member
//! too slow to read its share is disconnected once a megabyte waits for it
//! (`OverLimit::Disconnect`), rather than holding memory for ever. (`edgeloop
//! chat` is the full server: nicknames, rooms, commands.)

use std::rc::Rc;

use edgeloop::{CloseReason, Config, ConnId, Ctx, Framing, Handler, ListenOptions, OutputPolicy, OverLimit, Reactor};

#[derive(Default)]
struct Room {
    members: Vec<ConnId>,
}

impl Handler for Room {
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, id: ConnId) {
        self.members.push(id);
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, line: &[u8]) {
        let line: Rc<[u8]> = line.into();
        for &member in &self.members {
            let _ = ctx.send_shared(member, &line);
        }
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _reason: CloseReason) {
        self.members.retain(|&member| member != id);
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7071".into());
    let addr = addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let output = OutputPolicy::new(1 << 20, OverLimit::Disconnect);
    let mut reactor = Reactor::new(Config { handle_signals: true, output, ..Config::default() })?;
    let room = reactor.add_handler(Room::default());
    let local = reactor.listen(&addr, room, ListenOptions { framing: Framing::Line, ..Default::default() })?;
    println!("listening on {local}");
    reactor.run()
}
