//! The echo server: every frame back, unchanged, in order.
//!
//! The whole application is a line or two, because the reactor does the
//! rest: the frame arrives as a slice of the read buffer; [`Ctx::send`]
//! queues it with the connection's framing (a prefixed frame gets its
//! header back, a line keeps its `\n`), and the queue is written once all
//! the frames of a read were handled — many lines, one `sendmsg`. In `raw`
//! mode a read is one frame, so [`Ctx::send_now`] writes it straight from
//! the read buffer, saving the copy.
//! Flow control (`--max-outbuf`: stop reading a client that does not read
//! its echoes), half-close (flush, then `SHUT_WR`, then close) and the
//! timeouts are the reactor's, configured by [`edgeloop::Config`].
//!
//! With `ws` framing the first frame is the upgrade request, accepted
//! whatever its path; then every message goes back as one message of the
//! same type ([`Ctx::set_send_kind`] before the send).

use edgeloop::{ConnId, Ctx, Framing, Handler};

/// Echoes every frame to the connection it came from.
#[derive(Debug)]
pub struct Echo {
    framing: Framing,
    /// Fault injection: a frame equal to this panics (see
    /// [`Echo::panicking_on`]).
    panic_on: Option<Vec<u8>>,
}

impl Echo {
    /// An echo server for connections of this framing.
    pub fn new(framing: Framing) -> Echo {
        Echo { framing, panic_on: None }
    }

    /// Panic on a frame equal to `frame` (the command line sets it from
    /// `EDGELOOP_PANIC_ON`): how the tests show that a panicking handler
    /// costs only the connection it was serving.
    pub fn panicking_on(self, frame: Option<Vec<u8>>) -> Echo {
        Echo { panic_on: frame, ..self }
    }
}

impl Handler for Echo {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        if self.panic_on.as_deref() == Some(frame) {
            panic!("{id}: EDGELOOP_PANIC_ON matched (fault injection)");
        }
        if self.framing == Framing::Ws {
            match ctx.message_kind(id) {
                // A refusal (not a valid upgrade) is answered by the library.
                Some(edgeloop::ws::MessageKind::Handshake) => {
                    let _ = ctx.ws_accept(id, frame);
                    return;
                }
                Some(kind) => ctx.set_send_kind(id, kind),
                None => {}
            }
        }
        // A refused send means the connection is closing (or the frame
        // cannot fit its own header, impossible for an echo): nothing to do.
        let _ = if self.framing == Framing::Raw { ctx.send_now(id, frame) } else { ctx.send(id, frame) };
    }
}
