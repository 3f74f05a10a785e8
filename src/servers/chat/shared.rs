//! The chat across servers (`--redis`): what the chat does with the bus —
//! the sequencer, rooms, joins and leaves, answers in order. The link
//! itself (connecting, replies, losing Redis) is in [`super::link`].
//!
//! # Redis is the sequencer
//!
//! Every room event — a message, a join, a leave, a rename — is one script
//! call ([`super::lua`]) that increments the room's sequence number and
//! publishes `SEQ TAG LINE` on the room's channel. A server shows a room's
//! lines to its members only when they come back through its
//! subscription, in the order they come — its own members' lines too, the
//! sender's own included. Redis runs one script at a time and delivers a
//! channel's messages to every subscriber in publication order, so every
//! member of a room, on every server, receives the room's lines in one
//! order. (Socket.IO's Redis adapter and Phoenix.PubSub deliver locally
//! before Redis echoes, and members on different nodes see different
//! orders; that is what this avoids.) The price is one round trip to Redis
//! before a sender sees its own line.
//!
//! # Entering and leaving a room
//!
//! The first member of a room on this server makes it `SUBSCRIBE`; its
//! join is published only once Redis has acknowledged the subscription,
//! so the server cannot miss the join itself. A join or leave of our own
//! member carries a tag naming it, and the member is added to (or taken
//! from) the room's delivery list exactly when that event comes back: a
//! joiner's first line is its own `* NICK joined`, and the line before it
//! is the same line on every server — the same cut everywhere. When the
//! last local member's leave has come back, the server `UNSUBSCRIBE`s.
//!
//! While a member's registration, `/nick`, `/join` or `/who` is in flight
//! its delivery is off ([`crate::Active::Off`]): its next lines wait, in
//! order, in its socket, so that `/nick bob` followed by `hi` is `bob: hi`.
//! Messages are not waited for: they are pipelined.
//!
//! # Servers that stop
//!
//! A server that shuts down (SIGINT/SIGTERM) announces all its members
//! `* NICK left` in one script during `on_stop`; the command connection
//! flushes it before it closes. A server that dies without a word stops
//! refreshing its liveness key, and the first survivor to notice runs the
//! reaping script (see [`super::redis`], "Liveness"). A server that was cut
//! off longer than the liveness TTL has been reaped by then; when it comes
//! back it registers its members again silently (its peers saw them leave;
//! they reappear without a `joined`).

use std::fmt::Write;

use log::{info, warn};
use memchr::memchr;

use super::lua::Script;
use super::redis::{Link, Op, WHO_MAX};
use super::{fan_out, figures, Chat, Member, Reg, Sub, LOBBY};
use crate::{Active, ConnId, Ctx};

/// The answer to what cannot be done while Redis is lost.
const UNAVAILABLE: &str = "! chat backend unavailable";

/// A room's channel: `prefix` (`edgeloop:DB:chan:`) and its name.
pub(super) fn channel(prefix: &str, room: &str) -> Vec<u8> {
    [prefix.as_bytes(), room.as_bytes()].concat()
}

/// The tag of our member's join (`J`) or leave (`L`) event.
fn tag(kind: char, server: &str, id: ConnId, serial: u64) -> String {
    format!("{kind}.{server}.{}.{serial}", id.index())
}

/// `SEQ TAG LINE` → its parts.
fn split_event(payload: &[u8]) -> Option<(u64, &[u8], &[u8])> {
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

    /// Redis has answered: `id`'s lines again (unless flood control holds
    /// them).
    pub(super) fn release(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if let Some(member) = self.member_mut(id) {
            member.waiting = false;
            if !member.throttled {
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
        if entry.sub == Sub::On {
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
            let args = [server.as_bytes(), serial.as_bytes(), room.as_bytes(), joined.as_bytes()];
            bus.eval(ctx, Script::Connect, &args, Op::Connect { id, serial: member.serial });
            member.reg = Reg::Sent;
            member.room = room.to_string();
        } else {
            let from = std::mem::replace(&mut member.room, room.to_string());
            let left = tag('L', &server, id, member.serial);
            let args = [&server, &serial, &member.nick, &from, room, &left, &joined].map(|a| a.as_bytes());
            bus.eval(ctx, Script::Join, &args, Op::Join { id, serial: member.serial });
            if let Some(old) = rooms.get_mut(&from) {
                old.leaves += 1;
            }
            member.unseen += 1;
        }
        member.unseen += 1;
        rooms.entry(room.to_string()).or_default().joins += 1;
    }

    /// A message from `id` to its room.
    pub(super) fn publish(&mut self, ctx: &mut Ctx<'_>, id: ConnId, line: &str) {
        let Chat { bus: Some(bus), members, scratch, .. } = self else { return };
        let member = members.get(id.index()).and_then(Option::as_ref);
        let Some(member) = member.filter(|m| bus.link == Link::Up && m.reg == Reg::Done) else {
            return self.reply(ctx, id, &[UNAVAILABLE]);
        };
        super::assemble(scratch, &[&member.nick, ": ", line]);
        // The hot path: the tag is written into a buffer kept for it.
        let mut mark = std::mem::take(&mut bus.mark);
        mark.clear();
        let _ = write!(mark, "M.{}.{}.{}", bus.server, id.index(), member.serial);
        bus.eval(ctx, Script::Message, &[member.room.as_bytes(), mark.as_bytes(), scratch], Op::Message);
        bus.mark = mark;
        if let Some(member) = members.get_mut(id.index()).and_then(Option::as_mut) {
            member.unseen += 1;
        }
        figures(ctx).messages += 1;
    }

    /// A line for `id` alone, through its room behind its events in
    /// flight (see [`super::lua`], tags).
    pub(super) fn tell(&mut self, ctx: &mut Ctx<'_>, id: ConnId, parts: &[&str]) {
        if self.link() != Link::Up {
            return self.reply(ctx, id, parts);
        }
        self.tell_as(ctx, id, 'E', parts);
    }

    pub(super) fn tell_as(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: char, parts: &[&str]) {
        let Chat { bus: Some(bus), members, scratch, .. } = self else { return };
        let Some(member) = members.get_mut(id.index()).and_then(Option::as_mut) else { return };
        super::assemble(scratch, parts);
        let mark = tag(kind, &bus.server, id, member.serial);
        bus.eval(ctx, Script::Tell, &[member.room.as_bytes(), mark.as_bytes(), scratch], Op::Ignore);
        member.unseen += 1;
    }

    /// `/quit` while events of the member are on their way: `* bye` (and
    /// the close) when the `/quit` has come back behind them. False if it
    /// can be done at once.
    pub(super) fn quit_later(&mut self, ctx: &mut Ctx<'_>, id: ConnId) -> bool {
        if self.link() != Link::Up || self.member(id).is_none_or(|m| m.unseen == 0) {
            return false;
        }
        self.tell_as(ctx, id, 'Q', &["* bye"]);
        self.hold(ctx, id);
        if let Some(member) = self.member_mut(id) {
            member.quitting = true;
        }
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
        let member = members.get(id.index()).and_then(Option::as_ref);
        let Some(member) = member.filter(|m| bus.link == Link::Up && m.reg == Reg::Done) else {
            return self.reply(ctx, id, &[UNAVAILABLE]);
        };
        let (server, serial) = (bus.server.clone(), member.serial.to_string());
        let (renamed, refused) = (tag('N', &server, id, member.serial), tag('E', &server, id, member.serial));
        let args = [&server, &serial, &member.room, &member.nick, name, &renamed, &refused].map(|a| a.as_bytes());
        let op = Op::Nick { id, serial: member.serial, name: name.to_string() };
        bus.eval(ctx, Script::Nick, &args, op);
        // Either the rename or the refusal comes back.
        if let Some(member) = self.member_mut(id) {
            member.unseen += 1;
        }
        self.hold(ctx, id);
    }

    /// `/join room` (checked) for `id`.
    pub(super) fn move_to(&mut self, ctx: &mut Ctx<'_>, id: ConnId, room: &str) {
        if self.link() != Link::Up || self.member(id).is_none_or(|m| m.reg != Reg::Done) {
            return self.reply(ctx, id, &[UNAVAILABLE]);
        }
        self.hold(ctx, id);
        self.enter_shared(ctx, id, room);
    }

    /// `/who` from Redis: the room's members on every server, as they
    /// are at that point of the room's events.
    pub(super) fn who_everywhere(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let Chat { bus: Some(bus), members, .. } = self else { return };
        let Some(member) = members.get_mut(id.index()).and_then(Option::as_mut) else { return };
        let (mark, refused) = (tag('W', &bus.server, id, member.serial), tag('E', &bus.server, id, member.serial));
        let limit = WHO_MAX.to_string();
        let args = [&member.room, &mark, &limit, &refused].map(|a| a.as_bytes());
        bus.eval(ctx, Script::Who, &args, Op::Ignore);
        member.unseen += 1;
    }

    /// `/who` while Redis is lost: the room's members on this server.
    pub(super) fn who_here(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let Some(room) = self.member(id).map(|m| m.room.as_str()) else { return };
        let mut nicks: Vec<&str> = (self.members.iter().flatten())
            .filter(|m| m.room == room && !m.nick.is_empty())
            .map(|m| m.nick.as_str())
            .collect();
        nicks.sort_unstable();
        let list = nicks.join(" ");
        self.reply(ctx, id, &["* members: ", &list]);
    }

    /// `member` (taken out of the table) has quit or disconnected: its
    /// leave published, unless the server is shutting down (`on_stop` has
    /// announced everyone) or Redis is lost (the re-registration will).
    pub(super) fn depart(&mut self, ctx: &mut Ctx<'_>, id: ConnId, member: Member, shutdown: bool) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        if let Some(room) = rooms.get_mut(&member.room) {
            room.members.retain(|&m| m != id);
        }
        if let Some(room) = member.target.as_ref().and_then(|t| rooms.get_mut(t)) {
            room.awaiting.retain(|&(m, _)| m != id);
        }
        if !shutdown && !bus.stopping && member.reg != Reg::None && bus.link >= Link::Restoring {
            let (server, serial) = (bus.server.clone(), member.serial.to_string());
            let left = tag('L', &server, id, member.serial);
            // Counted only where the event will come back to us.
            let room = rooms.get_mut(&member.room).filter(|r| matches!(r.sub, Sub::On | Sub::Subscribing));
            let op = match room {
                Some(room) => {
                    room.leaves += 1;
                    Op::Leave { room: member.room.clone() }
                }
                None => Op::Ignore,
            };
            bus.eval(ctx, Script::Leave, &[server.as_bytes(), serial.as_bytes(), left.as_bytes()], op);
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
        if bus.link >= Link::Restoring {
            let server = bus.server.clone();
            bus.eval(ctx, Script::Retire, &[server.as_bytes()], Op::Ignore);
        }
        bus.stopping = true;
    }

    // ---------------------------------------------------------------- rooms

    /// Subscribe to `room` unless subscribed or on the way.
    pub(super) fn subscribe_room(&mut self, ctx: &mut Ctx<'_>, room: &str) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        let Some(entry) = rooms.get_mut(room) else { return };
        if matches!(entry.sub, Sub::Off | Sub::Leaving) {
            entry.sub = Sub::Subscribing;
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
                bus.subscribe(ctx, "UNSUBSCRIBE", &[channel(&bus.chan_prefix, room)]);
            }
            Sub::Leaving => {}
        }
        self.gauges(ctx);
    }

    /// Redis acknowledged a subscription.
    pub(super) fn subscribed(&mut self, ctx: &mut Ctx<'_>, chan: &[u8]) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        bus.acked(ctx.now());
        let Some(name) = room_of(chan, &bus.chan_prefix) else { return self.handshake_progress(ctx) };
        let Some(room) = rooms.get_mut(name).filter(|r| r.sub == Sub::Subscribing) else { return };
        room.sub = Sub::On;
        if bus.link == Link::Up {
            for (id, serial) in std::mem::take(&mut room.awaiting) {
                if self.member_at(id, serial).is_some() {
                    self.send_entry(ctx, id, name);
                }
            }
            self.maybe_unsubscribe(ctx, name);
        }
        self.handshake_progress(ctx);
    }

    /// Redis acknowledged an unsubscription.
    pub(super) fn unsubscribed(&mut self, ctx: &mut Ctx<'_>, chan: &[u8]) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        bus.acked(ctx.now());
        let Some(name) = room_of(chan, &bus.chan_prefix) else { return };
        if rooms.get(name).is_some_and(|r| r.sub == Sub::Leaving && !r.needed()) {
            rooms.remove(name);
            self.gauges(ctx);
        }
    }

    /// An event came back through the subscription: to the room's members
    /// here, in the order it came.
    pub(super) fn published(&mut self, ctx: &mut Ctx<'_>, chan: &[u8], payload: &[u8]) {
        let Chat { bus: Some(bus), rooms, members, .. } = self else { return };
        if chan == bus.node_channel.as_slice() {
            if payload == b"synced" {
                return self.synced(ctx);
            }
            bus.probe_sent = None;
            return;
        }
        let Some(name) = room_of(chan, &bus.chan_prefix) else { return };
        let Some(room) = rooms.get_mut(name).filter(|r| r.sub == Sub::On) else { return };
        let Some((seq, tag, line)) =
            split_event(payload).filter(|(_, _, l)| l.last() == Some(&b'\n') && memchr(b'\n', l) == Some(l.len() - 1))
        else {
            warn!("room {name}: an event that is not SEQ TAG LINE was ignored");
            return;
        };
        if seq == 0 {
            // A private event: it takes no place in the room's sequence.
        } else if room.next_seq != 0 && seq != room.next_seq {
            if seq > room.next_seq {
                warn!("room {name}: {} lines were lost while the subscription was down", seq - room.next_seq);
            } else {
                info!("room {name}: its sequence started again at {seq} (Redis lost its data)");
            }
        }
        if seq != 0 {
            room.next_seq = seq.saturating_add(1);
        }
        let mut left = false;
        let mut quit = None;
        let ours = our_tag(tag, &bus.server);
        if let Some((kind, conn, serial)) = ours {
            let here = members.get_mut(conn).and_then(Option::as_mut).filter(|m| m.serial == serial);
            let id = here.as_ref().map(|m| m.id);
            let in_room = here.as_ref().is_some_and(|m| m.room == name);
            if let Some(member) = here {
                let id = member.id;
                member.unseen = member.unseen.saturating_sub(1);
                match kind {
                    b'W' => {
                        let mut nicks: Vec<&[u8]> = line[..line.len() - 1].split(|&b| b == b' ').collect();
                        nicks.retain(|n| !n.is_empty());
                        nicks.sort_unstable();
                        let mut text = b"* members: ".to_vec();
                        text.extend_from_slice(&nicks.join(&b' '));
                        text.push(b'\n');
                        let _ = ctx.send(id, &text);
                    }
                    b'E' => {
                        let _ = ctx.send(id, line);
                    }
                    b'Q' => quit = Some(id),
                    b'L' => room.members.retain(|&m| m != id),
                    _ => {}
                }
            }
            match kind {
                b'J' => {
                    room.joins = room.joins.saturating_sub(1);
                    if let Some(id) = id.filter(|id| in_room && !room.members.contains(id)) {
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
        // Private events (answers to one member) go no further.
        if !matches!(tag.first(), Some(b'W' | b'E' | b'Q')) {
            fan_out(ctx, Some(room), line);
        }
        if left {
            self.maybe_unsubscribe(ctx, name);
        }
        if let Some(id) = quit {
            self.finish_quit(ctx, id);
        }
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
        let t = tag('J', "ab-1", ConnId::new(5, 1), 9);
        assert_eq!(our_tag(t.as_bytes(), "ab-1"), Some((b'J', 5, 9)));
        assert_eq!(our_tag(t.as_bytes(), "ab-2"), None);
        assert_eq!(our_tag(b"-", "ab-1"), None);
        assert_eq!(room_of(b"edgeloop:0:chan:lobby", "edgeloop:0:chan:"), Some("lobby"));
        assert_eq!(room_of(b"edgeloop:node:x", "edgeloop:0:chan:"), None);
    }
}
