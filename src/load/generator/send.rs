//! Sending: the closed loop's replacements and the open loop's schedules.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::{Flow, Generator, Phase, Slot, SHARED_SENDS};
use crate::load::pattern::Pattern;
use crate::{ConnId, Ctx};

impl Generator {
    /// Open loop: send every message of `id` that is due by `now` (the
    /// actual time), each stamped with its own due time (a late wake-up
    /// catches up at once, and its lateness shows in every message it
    /// delayed), then set the timer for the next one.
    pub(super) fn pump(&mut self, ctx: &mut Ctx<'_>, id: ConnId, now: u64) {
        if self.phase == Phase::Done {
            return;
        }
        let Some(Slot::Open(flow)) = self.slots.get_mut(id.index()) else { return };
        let Some(schedule) = flow.schedule.as_mut() else { return };
        let mut count = 0;
        while schedule.due() <= now {
            flow.in_flight.push_back((schedule.due(), now));
            schedule.advance();
            count += 1;
        }
        let next = schedule.due();
        if count > 0 {
            write_messages(ctx, id, flow, &self.pattern, &mut self.scratch, count);
            self.in_flight += count;
            if self.measuring {
                self.window_sent += count;
            }
        }
        self.due.push(Reverse((next, id.index())));
        // The timer counts from the loop's clock (read at the top of this
        // iteration), in whole microseconds: round up, never fire early.
        let after_ns = next.saturating_sub(self.ns(ctx.now()));
        ctx.set_timer(id, Duration::from_micros(after_ns.div_ceil(1000)));
    }

    /// Open loop: send what is due on *any* connection, now. A timer runs
    /// only when the loop gets to its deadlines, after every event of the
    /// iteration; at a high rate an iteration handles many reads, and the
    /// schedules due meanwhile would wait for all of them. So every
    /// callback ends by catching up — never early: only messages whose due
    /// time has passed are sent.
    pub(super) fn catch_up(&mut self, ctx: &mut Ctx<'_>) {
        let Some(&Reverse((first, _))) = self.due.peek() else { return };
        let mut now = self.ns(Instant::now());
        if first > now {
            return;
        }
        while let Some(&Reverse((due, i))) = self.due.peek() {
            if due > now {
                break;
            }
            self.due.pop();
            let current = matches!(
                self.slots.get(i),
                Some(Slot::Open(Flow { schedule: Some(s), .. })) if s.due() == due
            );
            if current {
                self.pump(ctx, ConnId(i), now);
                now = self.ns(Instant::now());
            }
        }
    }
}

/// Queue the next `count` messages of a flow: a few short ones by
/// reference to their prebuilt copies, otherwise copied into one `send`.
pub(super) fn write_messages(
    ctx: &mut Ctx<'_>,
    id: ConnId,
    flow: &mut Flow,
    pattern: &Pattern,
    scratch: &mut Vec<u8>,
    count: u64,
) {
    let by_reference = count <= SHARED_SENDS && pattern.prebuilt(0).is_some();
    scratch.clear();
    for _ in 0..count {
        match pattern.prebuilt(flow.send_rot) {
            Some(msg) if by_reference => {
                let _ = ctx.send_shared(id, msg);
            }
            _ => pattern.write(flow.send_rot, scratch),
        }
        flow.send_rot = Pattern::next_rotation(flow.send_rot);
    }
    flow.sent += count;
    if !scratch.is_empty() {
        let _ = ctx.send(id, scratch);
    }
}
