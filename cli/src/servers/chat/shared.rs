//! The chat across servers (`--redis`): what the chat does with the bus —
//! the sequencer, rooms, joins and leaves, answers in order, replay. The
//! link itself (connecting, the handshake, losing Redis) is in
//! [`super::link`].
//!
//! # Redis is the sequencer
//!
//! Every room event — a message, a join, a leave, a rename — is one script
//! call ([`super::lua`]) that numbers it, appends it to the room's history
//! and publishes `SEQ TAG LINE` on the room's channel. A server shows a
//! room's lines to its members only when they come back through its
//! subscription (or, after an outage, from the history), in the order of
//! their numbers — its own members' lines too, the sender's own included.
//! Redis runs one script at a time and delivers a channel's messages to
//! every subscriber in publication order, so every member of a room, on
//! every server, receives the room's lines in one order. (Socket.IO's
//! Redis adapter and Phoenix.PubSub deliver locally before Redis echoes,
//! and members on different nodes see different orders; that is what this
//! avoids.) The price is one round trip to Redis before a sender sees its
//! own line.
//!
//! # Entering and leaving a room
//!
//! The first member of a room on this server makes it `SUBSCRIBE`; its
//! join is published only once Redis has acknowledged the subscription,
//! so the server cannot miss the join itself. Acknowledgements are counted
//! per room: after `SUBSCRIBE`, `UNSUBSCRIBE`, `SUBSCRIBE` in quick
//! succession the room is live only at the third acknowledgement, not at
//! the first (whose channel Redis unsubscribed right after). A join or
//! leave of our own member carries a tag naming it, and the member is
//! added to (or taken from) the room's delivery list exactly when that
//! event comes back: a joiner's first line is its own `* NICK joined`, and
//! the line before it is the same line on every server — the same cut
//! everywhere. When the last local member's leave has come back, the
//! server `UNSUBSCRIBE`s.
//!
//! While a member's registration, `/nick`, `/join` or `/who` is in flight
//! its delivery is off ([`edgeloop::Active::Off`]): its next lines wait, in
//! order, in its socket, so that `/nick bob` followed by `hi` is `bob: hi`.
//! Messages are not waited for: they are pipelined.
//!
//! # Answers stay on the member's server
//!
//! An answer for one member (`/who`, an error, `* bye`) is never
//! published: `/who` is a command whose reply comes back to this server
//! alone, so it costs the other servers nothing. To keep it in order with
//! the member's own lines still on their way through Redis, each member
//! counts its events sent and come back; an answer is held in the
//! member's `later` queue, marked with the count of events sent before it,
//! and written when that many have come back — exactly where it would be
//! on one server.
//!
//! # Gaps and replay
//!
//! Each room remembers the sequence number it expects next. A number
//! further on means events were missed: the members of the room get
//! `* some lines may have been lost` once, there. A number already seen is
//! a duplicate (the replay and the live subscription overlap) and is
//! dropped. After an outage [`super::link`] asks the history for every
//! event from the expected number on and feeds them through the same
//! path, holding the live ones until the replay is in.
//!
//! # Servers that stop
//!
//! A server that shuts down (SIGINT/SIGTERM) announces all its members
//! `* NICK left` in one script during `on_stop`; the command connection
//! flushes it before it closes. A server that dies without a word stops
//! renewing its lease, and the first survivor to notice runs the reaping
//! script (see [`super::redis`], "Liveness"). A server that was paused or
//! cut off longer than that has lost its lease before anyone could reap
//! it (it checks, see [`super::link`]); when it comes back, members the
//! others were told had left are announced `* NICK joined` again — and a
//! member whose name was taken meanwhile, announced under a fresh
//! `guestN`, hears `* NICK is now guestN` in that place instead (its
//! event's tag, `A.SERVER.CONN.SERIAL.NICK`, says whose it is).

use std::fmt::Write;

use log::warn;
use memchr::memchr;

use super::batch::send_to_all;
use super::lua::Script;
use super::redis::{Link, Op, WHO_MAX};
use super::{Chat, Later, Member, Reg, Sub, LOBBY};
use edgeloop::{Active, ConnId, Ctx};

/// The answer to what cannot be done while Redis is lost.
pub(super) const UNAVAILABLE: &str = "! chat backend unavailable";
/// Where a room's events could not all be delivered.
pub(super) const GAP: &str = "* some lines may have been lost\n";

/// A room's channel: `prefix` (`edgeloop:DB:chan:`) and its name.
pub(super) fn channel(prefix: &str, room: &str) -> Vec<u8> {
    [prefix.as_bytes(), room.as_bytes()].concat()
}

/// The tag of our member's join (`J`), leave (`L`), rename (`N`) or
/// return under a new name (`A`, followed by `.OLD`) event.
pub(super) fn tag(kind: char, server: &str, id: ConnId, serial: u64) -> String {
    format!("{kind}.{server}.{}.{serial}", id.index())
}

/// `SEQ TAG LINE` → its parts.
pub(super) fn split_event(payload: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let at = memchr(b' ', payload)?;
    let seq = std::str::from_utf8(&payload[..at]).ok()?.parse().ok()?;
    let rest = &payload[at + 1..];
    let at = memchr(b' ', rest)?;
    Some((seq, &rest[..at], &rest[at + 1..]))
}

/// A tag naming one of `server`'s members: (kind, connection, serial).
fn our_tag(tag: &[u8], server: &str) -> Option<(u8, usize, u64)> {
    let mut parts = std::str::from_utf8(tag).ok()?.split('.');
    let kind = parts.next()?.bytes().next()?;
    if parts.next()? != server {
        return None;
    }
    Some((kind, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The number of a `* guestN joined` line.
fn guest_number(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"* guest")?.strip_suffix(b" joined\n")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// OLD, from the tag `A.SERVER.CONN.SERIAL.OLD` of a member announced
/// again under a new name.
fn old_name(tag: &[u8]) -> Option<&str> {
    std::str::from_utf8(tag).ok()?.splitn(5, '.').nth(4)
}

/// NEW, from `* NEW joined\n`.
fn joined_name(line: &[u8]) -> Option<&str> {
    std::str::from_utf8(line.strip_prefix(b"* ")?.strip_suffix(b" joined\n")?).ok()
}

/// NEW, from `* OLD is now NEW\n`.
fn renamed_to(line: &[u8]) -> Option<&str> {
    let rest = std::str::from_utf8(line.strip_prefix(b"* ")?.strip_suffix(b"\n")?).ok()?;
    rest.rsplit_once(" is now ").map(|(_, new)| new)
}

impl Chat {
    // ---------------------------------------------------------------- members

    pub(super) fn member_mut(&mut self, id: ConnId) -> Option<&mut Member> {
        self.members.get_mut(id.index()).and_then(Option::as_mut)
    }

    /// The member `id`, if it is still the one with this serial.
    pub(super) fn member_at(&mut self, id: ConnId, serial: u64) -> Option<&mut Member> {
        self.member_mut(id).filter(|m| m.serial == serial)
    }

    pub(super) fn link(&self) -> Link {
        self.bus.as_ref().map_or(Link::Down, |b| b.link)
    }

    /// Stop delivering `id`'s lines until Redis has answered.
    pub(super) fn hold(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if let Some(member) = self.member_mut(id) {
            member.waiting = true;
            ctx.set_active(id, Active::Off);
        }
    }

    /// Redis has answered: `id`'s lines again (unless something else
    /// holds them).
    pub(super) fn release(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if let Some(member) = self.member_mut(id) {
            member.waiting = false;
        }
        self.resume(ctx, id);
    }

    /// Read `id` again if nothing holds it: flood control, a command in
    /// flight, an outage it awaits the end of, Redis too far behind.
    pub(super) fn resume(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let congested = self.congested;
        if let Some(member) = self.member_mut(id) {
            if !member.throttled && !member.waiting && !member.limbo && !congested {
                ctx.set_active(id, Active::On);
            }
        }
    }

    /// A new client: registered (and given its `guestN`) once the link is
    /// up.
    pub(super) fn arrive(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if self.link() == Link::Up {
            self.hold(ctx, id);
            self.enter_shared(ctx, id, LOBBY);
        } else if self.outage {
            if let Some(member) = self.member_mut(id) {
                member.told = true;
            }
            self.reply(ctx, id, &["* chat backend unavailable"]);
        } else {
            // The first connection to Redis is being made: wait for it.
            self.hold(ctx, id);
        }
    }

    /// `id` enters `room`: at once if the room's subscription is
    /// acknowledged, else once it is.
    pub(super) fn enter_shared(&mut self, ctx: &mut Ctx<'_>, id: ConnId, room: &str) {
        let Some(serial) = self.member(id).map(|m| m.serial) else { return };
        let entry = self.rooms.entry(room.to_string()).or_default();
        if entry.sub == Sub::On && entry.acks == 0 {
            return self.send_entry(ctx, id, room);
        }
        entry.awaiting.push((id, serial));
        if let Some(member) = self.member_mut(id) {
            member.target = Some(room.to_string());
        }
        self.subscribe_room(ctx, room);
    }

    /// Publish `id`'s entry into `room` (subscribed): its registration
    /// with a fresh `guestN`, or a move from its room.
    pub(super) fn send_entry(&mut self, ctx: &mut Ctx<'_>, id: ConnId, room: &str) {
        let Chat { bus: Some(bus), members, rooms, .. } = self else { return };
        let Some(member) = members.get_mut(id.index()).and_then(Option::as_mut) else { return };
        member.target = None;
        let serial = member.serial.to_string();
        let server = bus.server.clone();
        let joined = tag('J', &server, id, member.serial);
        if member.reg == Reg::None {
            let args = [&serial, room, &joined].map(|a| a.as_bytes());
            bus.eval(ctx, Script::Connect, &args, Op::Connect { id, serial: member.serial });
            member.reg = Reg::Sent;
            member.room = room.to_string();
        } else {
            let from = std::mem::replace(&mut member.room, room.to_string());
            let left = tag('L', &server, id, member.serial);
            let args = [&serial, &member.nick, &from, room, &left, &joined].map(|a| a.as_bytes());
            bus.eval(ctx, Script::Join, &args, Op::Join { id, serial: member.serial });
            if let Some(old) = rooms.get_mut(&from) {
                old.leaves += 1;
            }
            member.sent += 1;
        }
        member.sent += 1;
        rooms.entry(room.to_string()).or_default().joins += 1;
    }

    /// A message from `id` to its room.
    pub(super) fn publish(&mut self, ctx: &mut Ctx<'_>, id: ConnId, line: &[u8]) {
        let Chat { bus: Some(bus), members, scratch, said, .. } = self else { return };
        let member = members.get(id.index()).and_then(Option::as_ref);
        let Some(member) = member.filter(|m| bus.link == Link::Up && m.reg == Reg::Done) else {
            return self.reply(ctx, id, &[UNAVAILABLE]);
        };
        super::assemble(scratch, &[member.nick.as_bytes(), b": ", line]);
        // The hot path: the tag is written into a buffer kept for it.
        let mut mark = std::mem::take(&mut bus.mark);
        mark.clear();
        let _ = write!(mark, "M.{}.{}.{}", bus.server, id.index(), member.serial);
        bus.message(ctx, &member.room, mark.as_bytes(), scratch, (id, member.serial));
        bus.mark = mark;
        if let Some(member) = members.get_mut(id.index()).and_then(Option::as_mut) {
            member.sent += 1;
            member.in_flight.push_back(scratch.clone());
        }
        *said += 1;
    }

    /// A line for `id` alone, in order with its own lines still on their
    /// way through Redis (see "Answers stay on the member's server").
    pub(super) fn tell(&mut self, ctx: &mut Ctx<'_>, id: ConnId, parts: &[&str]) {
        let Some(member) = self.member(id) else { return };
        if member.sent <= member.seen && member.later.is_empty() {
            return self.reply(ctx, id, parts);
        }
        super::assemble(&mut self.scratch, parts);
        let line = self.scratch.clone();
        if let Some(member) = self.member_mut(id) {
            let mark = member.sent;
            member.later.push_back(Later { mark, line: Some(line), quit: false });
        }
        self.flush_later(ctx, id);
    }

    /// Write `id`'s held answers whose place has come.
    pub(super) fn flush_later(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let mut quit = false;
        while let Some(member) = self.member_mut(id) {
            let Some(first) = member.later.front().filter(|l| l.mark <= member.seen) else { break };
            quit |= first.quit;
            if let Some(line) = member.later.pop_front().and_then(|l| l.line) {
                self.send_now(ctx, id, &line);
            }
            if quit {
                break;
            }
        }
        if quit {
            self.finish_quit(ctx, id);
        }
    }

    /// `/quit` while events of the member are on their way: `* bye` (and
    /// the close) when they have come back. False if it can be done at
    /// once.
    pub(super) fn quit_later(&mut self, ctx: &mut Ctx<'_>, id: ConnId) -> bool {
        if self.link() != Link::Up || self.member(id).is_none_or(|m| m.sent <= m.seen && m.later.is_empty()) {
            return false;
        }
        self.hold(ctx, id);
        if let Some(member) = self.member_mut(id) {
            member.quitting = true;
            let mark = member.sent;
            member.later.push_back(Later { mark, line: None, quit: true });
        }
        self.flush_later(ctx, id);
        true
    }

    /// The `/quit` of `id` has come back (or Redis was lost meanwhile).
    pub(super) fn finish_quit(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.reply(ctx, id, &["* bye"]);
        ctx.close(id);
        if let Some(member) = self.members.get_mut(id.index()).and_then(Option::take) {
            self.population -= 1;
            self.depart(ctx, id, member, false);
            self.gauges(ctx);
        }
    }

    /// `/nick name` (checked) for `id`.
    pub(super) fn rename(&mut self, ctx: &mut Ctx<'_>, id: ConnId, name: &str) {
        let Chat { bus: Some(bus), members, .. } = self else { return };
        let member = members.get_mut(id.index()).and_then(Option::as_mut);
        let Some(member) = member.filter(|m| bus.link == Link::Up && m.reg == Reg::Done) else {
            return self.reply(ctx, id, &[UNAVAILABLE]);
        };
        let serial = member.serial.to_string();
        let renamed = tag('N', &bus.server, id, member.serial);
        let args = [&serial, &member.room, &member.nick, name, &renamed].map(|a| a.as_bytes());
        let op = Op::Nick { id, serial: member.serial, name: name.to_string() };
        bus.eval(ctx, Script::Nick, &args, op);
        member.asked = Some((member.room.clone(), member.nick.clone()));
        self.hold(ctx, id);
    }

    /// `/join room` (checked) for `id`.
    pub(super) fn move_to(&mut self, ctx: &mut Ctx<'_>, id: ConnId, room: &str) {
        if self.link() != Link::Up || self.member(id).is_none_or(|m| m.reg != Reg::Done) {
            return self.reply(ctx, id, &[UNAVAILABLE]);
        }
        if let Some(member) = self.member_mut(id) {
            member.asked = Some((member.room.clone(), member.nick.clone()));
        }
        self.hold(ctx, id);
        self.enter_shared(ctx, id, room);
    }

    /// `/who` from Redis: the room's members on every server. The reply
    /// comes to this server alone.
    pub(super) fn who_everywhere(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let Chat { bus: Some(bus), members, .. } = self else { return };
        let Some(member) = members.get_mut(id.index()).and_then(Option::as_mut) else { return };
        let limit = WHO_MAX.to_string();
        bus.eval(ctx, Script::Who, &[member.room.as_bytes(), limit.as_bytes()], Op::Who { id, serial: member.serial });
        member.asking_who = true;
        self.hold(ctx, id);
    }

    /// The reply to `/who`: the names, or their number if too many.
    pub(super) fn who_answered(&mut self, ctx: &mut Ctx<'_>, id: ConnId, names: Result<&[u8], i64>) {
        let text = match names {
            Ok(names) => {
                let mut nicks: Vec<&[u8]> = names.split(|&b| b == b' ').filter(|n| !n.is_empty()).collect();
                nicks.sort_unstable();
                format!("* members: {}", String::from_utf8_lossy(&nicks.join(&b' ')))
            }
            Err(n) => format!("! too many members to list ({n})"),
        };
        if let Some(member) = self.member_mut(id) {
            member.asking_who = false;
        }
        self.tell(ctx, id, &[&text]);
        self.release(ctx, id);
    }

    /// `/who` while Redis is lost: the room's members on this server.
    pub(super) fn who_here(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let list = self.local_names(id);
        self.reply(ctx, id, &["* members: ", &list]);
    }

    /// The names of the members here in `id`'s room, sorted.
    pub(super) fn local_names(&self, id: ConnId) -> String {
        let Some(room) = self.member(id).map(|m| m.room.as_str()) else { return String::new() };
        let mut nicks: Vec<&str> = (self.members.iter().flatten())
            .filter(|m| m.room == room && !m.nick.is_empty())
            .map(|m| m.nick.as_str())
            .collect();
        nicks.sort_unstable();
        nicks.join(" ")
    }

    /// `member` (taken out of the table) has quit or disconnected: its
    /// leave published, unless the server is shutting down (`on_stop` has
    /// announced everyone) or not registered with Redis now (the
    /// re-registration's `Resync` will).
    pub(super) fn depart(&mut self, ctx: &mut Ctx<'_>, id: ConnId, member: Member, shutdown: bool) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        // Its room, and the room it is leaving if a `/join` is in flight
        // (it stays on that room's list until its leave comes back).
        let old = member.asked.as_ref().map(|(room, _)| room);
        for name in std::iter::once(&member.room).chain(old) {
            if let Some(room) = rooms.get_mut(name) {
                room.members.retain(|&m| m != id);
            }
        }
        if let Some(room) = member.target.as_ref().and_then(|t| rooms.get_mut(t)) {
            room.awaiting.retain(|&(m, _)| m != id);
        }
        if !shutdown && !bus.stopping && member.reg != Reg::None && bus.link >= Link::Registering {
            let serial = member.serial.to_string();
            let left = tag('L', &bus.server, id, member.serial);
            // Counted only where the event will come back to us.
            let room = rooms.get_mut(&member.room).filter(|r| matches!(r.sub, Sub::On | Sub::Subscribing));
            let op = match room {
                Some(room) => {
                    room.leaves += 1;
                    Op::Leave { room: member.room.clone() }
                }
                None => Op::Ignore,
            };
            let args = [&serial, &left].map(|a| a.as_bytes());
            bus.eval(ctx, Script::Leave, &args, op);
        }
        self.maybe_unsubscribe(ctx, &member.room);
        if let Some(target) = &member.target {
            self.maybe_unsubscribe(ctx, target);
        }
    }

    /// Shutdown: every member's leave, in one script, flushed before the
    /// command connection closes.
    pub(super) fn retire(&mut self, ctx: &mut Ctx<'_>) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        if bus.link >= Link::Registering {
            bus.eval(ctx, Script::Retire, &[], Op::Ignore);
        }
        bus.stopping = true;
    }

    // ---------------------------------------------------------------- rooms

    /// Subscribe to `room` unless subscribed or on the way.
    pub(super) fn subscribe_room(&mut self, ctx: &mut Ctx<'_>, room: &str) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        let Some(entry) = rooms.get_mut(room) else { return };
        if matches!(entry.sub, Sub::Off | Sub::Leaving) && bus.link >= Link::Subscribing {
            entry.sub = Sub::Subscribing;
            entry.acks += 1;
            bus.subscribe(ctx, "SUBSCRIBE", &[channel(&bus.chan_prefix, room)]);
        }
    }

    /// Unsubscribe from `room` if this server no longer needs it.
    pub(super) fn maybe_unsubscribe(&mut self, ctx: &mut Ctx<'_>, room: &str) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        let Some(entry) = rooms.get_mut(room).filter(|r| !r.needed()) else { return };
        match entry.sub {
            Sub::Off => {
                rooms.remove(room);
            }
            Sub::On | Sub::Subscribing => {
                entry.sub = Sub::Leaving;
                entry.acks += 1;
                bus.subscribe(ctx, "UNSUBSCRIBE", &[channel(&bus.chan_prefix, room)]);
            }
            Sub::Leaving => {}
        }
        self.gauges(ctx);
    }

    /// Redis acknowledged a subscription (or, with `unsub`, an
    /// unsubscription) of `chan`: counted per room, and acted on at the
    /// last one due, which says what the channel is now.
    pub(super) fn acknowledged(&mut self, ctx: &mut Ctx<'_>, chan: &[u8], unsub: bool) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        bus.acked(ctx.now());
        let Some(name) = super::shared::room_of(chan, &bus.chan_prefix) else { return self.handshake_progress(ctx) };
        let Some(room) = rooms.get_mut(name) else { return self.handshake_progress(ctx) };
        room.acks = room.acks.saturating_sub(1);
        if room.acks > 0 {
            return self.handshake_progress(ctx);
        }
        match room.sub {
            Sub::Subscribing if !unsub => {
                room.sub = Sub::On;
                if bus.link == Link::Up {
                    for (id, serial) in std::mem::take(&mut room.awaiting) {
                        if self.member_at(id, serial).is_some() {
                            self.send_entry(ctx, id, name);
                        }
                    }
                    self.maybe_unsubscribe(ctx, name);
                }
            }
            Sub::Leaving if unsub => {
                if room.needed() {
                    self.subscribe_room(ctx, name);
                } else {
                    rooms.remove(name);
                    self.gauges(ctx);
                }
            }
            _ => {}
        }
        self.handshake_progress(ctx);
    }

    /// An event came through the subscription: to the room's members
    /// here, in the order it came (held while the room is replaying).
    pub(super) fn published(&mut self, ctx: &mut Ctx<'_>, chan: &[u8], payload: &[u8]) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        if chan == bus.node_channel.as_slice() {
            if payload == b"synced" {
                return self.synced(ctx);
            }
            bus.probe_sent = None;
            return;
        }
        let Some(name) = room_of(chan, &bus.chan_prefix) else { return };
        let Some(room) = rooms.get_mut(name) else { return };
        // A `Message` call publishes a turn's lines together: events one
        // after the other, each ending with its line's `\n`.
        let events = payload.split_inclusive(|&b| b == b'\n');
        if let Some(held) = room.replay.as_mut() {
            held.extend(events.map(<[u8]>::to_vec));
            return;
        }
        let name = name.to_string();
        for event in events {
            self.deliver(ctx, &name, event, false);
        }
    }

    /// One event of `name` (from the subscription, or `replayed` from the
    /// history): checked against the room's sequence, then into the room's
    /// batch for its members here (see [`super::batch`]). False if the rest
    /// of a replay is not for them (this server's members were reaped at
    /// this point).
    pub(super) fn deliver(&mut self, ctx: &mut Ctx<'_>, name: &str, payload: &[u8], replayed: bool) -> bool {
        let Some((seq, tag, line)) =
            split_event(payload).filter(|(_, _, l)| l.last() == Some(&b'\n') && memchr(b'\n', l) == Some(l.len() - 1))
        else {
            warn!("room {name}: an event that is not SEQ TAG LINE was ignored");
            return true;
        };
        let Some(bus) = self.bus.as_deref() else { return true };
        if matches!(our_tag(tag, &bus.server), Some((b'J' | b'L', _, _))) {
            // The room's list changes here: its batched lines go to the
            // members they were for first (see "Order" in `batch`).
            self.flush_lines(ctx);
        }
        let Chat { bus: Some(bus), rooms, members, batches, .. } = self else { return true };
        let Some(room) = rooms.get_mut(name) else { return true };
        if room.next_seq != 0 && seq < room.next_seq {
            // Already delivered: the replay and the subscription overlap.
            return true;
        }
        if room.next_seq != 0 && seq > room.next_seq && !room.members.is_empty() {
            warn!("room {name}: {} events missed; the members were told", seq - room.next_seq);
            batches.push_line(ctx, name, GAP.as_bytes());
        }
        room.next_seq = seq.saturating_add(1);
        if let Some(n) = guest_number(line) {
            bus.max_guest = bus.max_guest.max(n);
        }
        if tag.len() == 2 + bus.server.len() && tag.starts_with(b"R.") && &tag[2..] == bus.server.as_bytes() {
            // Our members were reaped: this server was declared dead.
            if replayed {
                if !room.members.is_empty() {
                    batches.push_line(ctx, name, GAP.as_bytes());
                }
                return false;
            }
            bus.fail("this server was declared dead (its members were reaped)".into());
            return true;
        }
        let mut left = false;
        let mut own = None;
        let mut renamed = None;
        if let Some((kind, conn, serial)) = our_tag(tag, &bus.server) {
            let here = members.get_mut(conn).and_then(Option::as_mut).filter(|m| m.serial == serial);
            // Our member, if it is still here and in this room.
            let in_room = here.as_ref().filter(|m| m.room == name).map(|m| m.id);
            if let Some(member) = here {
                let id = member.id;
                if matches!(kind, b'M' | b'J' | b'L') {
                    member.seen += 1;
                    own = Some(id);
                }
                if kind == b'M' {
                    member.in_flight.pop_front();
                }
                if kind == b'L' {
                    room.members.retain(|&m| m != id);
                }
                if kind == b'N' && member.limbo && member.asked.is_some() {
                    // A `/nick` whose answer was lost with the link, and
                    // that Redis's entry could not settle (this server was
                    // reaped): its event, replayed, says it ran.
                    if let Some(new) = renamed_to(line) {
                        member.nick = new.to_string();
                        member.asked = None;
                    }
                }
            }
            match kind {
                b'A' => renamed = in_room.zip(old_name(tag).zip(joined_name(line))),
                b'J' => {
                    room.joins = room.joins.saturating_sub(1);
                    if let Some(id) = in_room.filter(|id| !room.members.contains(id)) {
                        room.members.push(id);
                    }
                }
                b'L' => {
                    room.leaves = room.leaves.saturating_sub(1);
                    left = true;
                }
                _ => {}
            }
        }
        match renamed {
            // Our member, back after its server was reaped, under a new
            // name: the rest of the room was told it left and now hears
            // `* NEW joined`; the member itself never left, and learns its
            // name as on any return (`* OLD is now NEW`), at the same place.
            Some((id, (old, new))) => {
                let mine = format!("* {old} is now {new}\n");
                self.flush_lines(ctx);
                if let Some(room) = self.rooms.get(name) {
                    let others: Vec<ConnId> = room.members.iter().copied().filter(|&m| m != id).collect();
                    send_to_all(ctx, &others, line);
                }
                self.send_now(ctx, id, mine.as_bytes());
            }
            None => batches.push_line(ctx, name, line),
        }
        if left {
            self.maybe_unsubscribe(ctx, name);
        }
        if let Some(id) = own {
            self.flush_later(ctx, id);
        }
        true
    }
}

/// The room whose channel `chan` is.
pub(super) fn room_of<'a>(chan: &'a [u8], prefix: &str) -> Option<&'a str> {
    std::str::from_utf8(chan.strip_prefix(prefix.as_bytes())?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn events_and_tags() {
        assert_eq!(split_event(b"17 - a: hi\n"), Some((17, &b"-"[..], &b"a: hi\n"[..])));
        assert_eq!(split_event(b"x - a\n"), None);
        assert_eq!(split_event(b"1 -"), None);
        // What `tag('J', "ab-1", id, 9)` writes for connection index 5.
        let t = "J.ab-1.5.9";
        assert_eq!(our_tag(t.as_bytes(), "ab-1"), Some((b'J', 5, 9)));
        assert_eq!(our_tag(t.as_bytes(), "ab-2"), None);
        assert_eq!(our_tag(b"-", "ab-1"), None);
        assert_eq!(our_tag(b"R.ab-1", "ab-1"), None);
        assert_eq!(room_of(b"edgeloop:0:chan:lobby", "edgeloop:0:chan:"), Some("lobby"));
        assert_eq!(room_of(b"edgeloop:node:x", "edgeloop:0:chan:"), None);
        assert_eq!(guest_number(b"* guest12 joined\n"), Some(12));
        assert_eq!(guest_number(b"* guestx joined\n"), None);
        assert_eq!(guest_number(b"* bob joined\n"), None);
        assert_eq!(renamed_to(b"* ann is now bob\n"), Some("bob"));
        assert_eq!(renamed_to(b"* ann joined\n"), None);
        assert_eq!(old_name(b"A.ab-1.5.9.ann"), Some("ann"));
        assert_eq!(old_name(b"J.ab-1.5.9"), None);
        assert_eq!(joined_name(b"* guest7 joined\n"), Some("guest7"));
    }
}
