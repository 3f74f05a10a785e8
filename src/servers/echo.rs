//! The echo server: every frame back, unchanged, in order.
//!
//! The whole application is one line, because the reactor does the rest:
//! the frame arrives as a slice of the read buffer; [`Ctx::send`] queues it
//! with the connection's framing (a prefixed frame gets its header back, a
//! line keeps its `\n`); the queue is flushed before the loop sleeps.
//! Flow control (`--max-outbuf`: stop reading a client that does not read
//! its echoes), half-close (flush, then `SHUT_WR`, then close) and the
//! timeouts are the reactor's, configured by [`crate::Config`].

use crate::{ConnId, Ctx, Handler};

/// Echoes every frame to the connection it came from.
#[derive(Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        ctx.send(id, frame);
    }
}
