//! A room's lines of one loop turn, sent to each member as one piece.
//!
//! A message line is not queued for every member as it is handled: it is
//! formatted once into its room's batch, and when the loop turn ends
//! ([`edgeloop::Handler::on_turn_end`]) each room's batch goes to each
//! member with one send, however many lines the senders' reads carried: a
//! small batch is written to each member at once, in the room's order
//! (see `Flush`), a large one shared by reference. That is what the
//! fastest Go and tokio chat servers do, and it is where the cost per
//! delivery went from ~80 ns (a copy per line per member) toward that of
//! one `memcpy` (BENCHMARKS.md, "Chat fan-out").
//! The sender sees its own line in the same turn, so its latency is
//! unchanged. With Redis the same batches carry the events that come back
//! through the subscription (and the senders' lines go to Redis batched
//! too, one script call per room and turn: see `Bus::message`).
//!
//! # Order
//!
//! Lines waiting in a batch were handled before anything the server does
//! next, so they must reach the members first: every other event (a
//! command, a join, a leave, a connection opening or closing) flushes the
//! batches before it acts, and so does every line sent to one member
//! alone (`Chat::reply`, `Chat::send_now`) and every change of a room's
//! list (with Redis: our member's join or leave coming back, a restore).
//! So a member's view is exactly the order in which the server handled
//! the room's events, as without batching — a member leaving gets the
//! lines said before it left, a newcomer none from before it came.

use std::rc::Rc;

use edgeloop::reactor::ctx::SHARE_MIN;
use edgeloop::{ConnId, Ctx};

/// Rooms with lines waiting for the end of the turn.
#[derive(Debug, Default)]
pub(super) struct Batches {
    /// (room, its lines), in the order the rooms' first lines came.
    pending: Vec<(String, Vec<u8>)>,
    /// Emptied buffers, kept so that a warm server does not allocate.
    spare: Vec<Vec<u8>>,
}

impl Batches {
    /// Append `parts` and `\n` to `room`'s batch.
    pub(super) fn push(&mut self, ctx: &mut Ctx<'_>, room: &str, parts: &[&[u8]]) {
        super::append_line(self.batch(ctx, room), parts);
    }

    /// Append `line` (with its `\n`) to `room`'s batch.
    pub(super) fn push_line(&mut self, ctx: &mut Ctx<'_>, room: &str, line: &[u8]) {
        self.batch(ctx, room).extend_from_slice(line);
    }

    /// `room`'s batch; the first of a turn asks the reactor for the end of
    /// the turn.
    fn batch(&mut self, ctx: &mut Ctx<'_>, room: &str) -> &mut Vec<u8> {
        // The last room first: in a busy turn, the same room's lines follow
        // each other.
        let at = match self.pending.iter().rposition(|(r, _)| r == room) {
            Some(at) => at,
            None => {
                if self.pending.is_empty() {
                    ctx.flush_at_turn_end();
                }
                self.pending.push((room.to_string(), self.spare.pop().unwrap_or_default()));
                self.pending.len() - 1
            }
        };
        &mut self.pending[at].1
    }

    /// Send every batch to its room's members, `members(room)` naming
    /// them (a room may be gone: its lines then reach nobody).
    pub(super) fn flush<'a, F>(&mut self, ctx: &mut Ctx<'_>, when: Flush, mut members: F)
    where
        F: FnMut(&str) -> Option<&'a [ConnId]>,
    {
        for (room, mut lines) in self.pending.drain(..) {
            if let Some(members) = members(&room) {
                match when {
                    Flush::TurnEnd if lines.len() < SHARE_MIN => write_to_all(ctx, members, &lines),
                    _ => send_to_all(ctx, members, &lines),
                }
            }
            lines.clear();
            self.spare.push(lines);
        }
    }
}

/// Where a flush happens: in the middle of a turn, before another event
/// (the batches are queued: the turn may add more for the same members,
/// and each still gets one write when it ends), or at the turn's end.
#[derive(Debug, Clone, Copy)]
pub(super) enum Flush {
    MidTurn,
    TurnEnd,
}

/// `bytes` written to each of `members` in turn, at once where nothing is
/// queued ahead ([`Ctx::send_now`]: no copy), at the end of a turn. Each
/// member's lines leave when its place in the list comes; queued, they
/// would all wait for a copy to every member first, which in a room of
/// 1 000 delays the first member's by about 200 µs (BENCHMARKS.md, "Own
/// line"). Small batches only: what the kernel refuses is queued whatever
/// `--max-outbuf` says, so the batch's size is what bounds it.
fn write_to_all(ctx: &mut Ctx<'_>, members: &[ConnId], bytes: &[u8]) {
    for &member in members {
        let _ = ctx.send_now(member, bytes);
    }
}

/// `bytes` to every one of `members`: copied into each one's output, or,
/// from [`SHARE_MIN`] bytes on, shared by reference (one allocation).
pub(super) fn send_to_all(ctx: &mut Ctx<'_>, members: &[ConnId], bytes: &[u8]) {
    // A member that passes --max-outbuf is disconnected inside a send;
    // later sends to it fail, and on_close announces it.
    if bytes.len() < SHARE_MIN {
        for &member in members {
            let _ = ctx.send(member, bytes);
        }
    } else {
        let shared: Rc<[u8]> = Rc::from(bytes);
        for &member in members {
            let _ = ctx.send_shared(member, &shared);
        }
    }
}
