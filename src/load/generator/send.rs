//! Sending: the closed loop's replacements and the open loop's schedules.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::{Flow, Generator, Phase, Slot, SHARED_SENDS};
use crate::load::pattern::Pattern;
use crate::{ConnId, Ctx};

/// The most messages one callback sends. A schedule far behind (a
/// stalled generator, an absurd `--rate`) catches up over several loop
/// iterations instead of in one burst, so reads keep being served and no
/// single queue balloons; the messages held back stay due, are sent at the
/// next turn, and are still timed from when they were due.
const BURST: u64 = 1024;

impl Generator {
    /// Open loop: send the messages of `id` that are due by `until` (at
    /// most the actual time `now`), at most `limit`, each stamped with its
    /// own due time and its actual send time `now` (a late wake-up catches
    /// up at once, and its lateness shows in every message it delayed);
    /// then set the timer for the next one. Returns how many were sent.
    pub(super) fn pump(&mut self, ctx: &mut Ctx<'_>, id: ConnId, now: u64, until: u64, limit: u64) -> u64 {
        if self.phase == Phase::Done {
            return 0;
        }
        let Some(Slot::Open(flow)) = self.slots.get_mut(id.index()) else { return 0 };
        let Some(schedule) = flow.schedule.as_mut() else { return 0 };
        let mut count = 0;
        while count < limit && schedule.due() <= until {
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
        // Sleep until the end of the send window that `next` falls in: the
        // windows are one grid for every connection of the thread, so the
        // messages due in one window share one wake-up (and their echoes
        // tend to arrive together too), at the price of up to one window
        // of send lag, which is measured. The timer counts from the loop's
        // clock (read at the top of this iteration), in whole microseconds:
        // round up, never fire early. (If the burst was cut short, `next`
        // is past: the timer fires on the next turn.)
        let window = self.window_ns();
        let wake = next.div_ceil(window) * window;
        let after_ns = wake.saturating_sub(self.ns(ctx.now()));
        ctx.set_timer(id, Duration::from_micros(after_ns.div_ceil(1000)));
        count
    }

    /// The connection's timer fired: its messages, then anyone else's.
    pub(super) fn on_due(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let now = self.ns(Instant::now());
        let sent = self.pump(ctx, id, now, self.window_closed(now), BURST);
        self.catch_up_within(ctx, BURST.saturating_sub(sent));
    }

    /// The end of the last send window that has closed by `now`: messages
    /// due up to it are sent, later ones wait for their window to close
    /// (with `--send-window 1`, everything due by the microsecond).
    fn window_closed(&self, now: u64) -> u64 {
        now / self.window_ns() * self.window_ns()
    }

    /// `--send-window` in nanoseconds (the closed loop has none: 1 µs).
    fn window_ns(&self) -> u64 {
        self.plan.open.map_or(1000, |o| o.window_ns)
    }

    /// Open loop: send what is due on *any* connection, now. A timer runs
    /// only when the loop gets to its deadlines, after every event of the
    /// iteration; at a high rate an iteration handles many reads, and the
    /// schedules due meanwhile would wait for all of them. So every
    /// callback ends by catching up — never early: only messages whose due
    /// time has passed, and whose send window has closed, are sent (else a
    /// busy loop, woken by echoes all the time, would send each message
    /// alone the moment it falls due, and a window would batch nothing).
    pub(super) fn catch_up(&mut self, ctx: &mut Ctx<'_>) {
        self.catch_up_within(ctx, BURST);
    }

    /// [`Generator::catch_up`], sending at most `budget` messages, and only
    /// messages due by the time it started (so it ends, however high the
    /// rate).
    fn catch_up_within(&mut self, ctx: &mut Ctx<'_>, mut budget: u64) {
        let Some(&Reverse((first, _))) = self.due.peek() else { return };
        let until = self.window_closed(self.ns(Instant::now()));
        if first > until {
            return;
        }
        while budget > 0 {
            let Some(&Reverse((due, i))) = self.due.peek() else { break };
            if due > until {
                break;
            }
            self.due.pop();
            let current = match self.slots.get(i) {
                Some(Slot::Open(Flow { schedule: Some(s), id, .. })) if s.due() == due => Some(*id),
                _ => None,
            };
            if let Some(id) = current {
                // A fresh clock reading per connection: its send lag is
                // measured when it is really sent.
                let now = self.ns(Instant::now());
                budget -= self.pump(ctx, id, now, until, budget);
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
