//! The chat's link to Redis: connecting, the handshake, replies and
//! pushes, losing Redis and finding it again.
//!
//! # When Redis is lost
//!
//! (See [`super::redis`] for what counts as lost.) The clients stay
//! connected. Each member receives `* chat backend unavailable` once; a
//! message, `/nick` or `/join` is answered `! chat backend unavailable`
//! and is not delivered, not even here — there is one order or none.
//! `/who` answers from the members this server has; `/quit` works. A
//! command whose answer was lost with the connection is answered
//! `! chat backend unavailable` too (a `/join` or `/nick` may have been
//! done in Redis all the same: the re-registration below puts Redis back
//! in line with what the member was told).
//!
//! When the link is back, this server: loads its scripts again (after a
//! restart Redis has none: `EVALSHA` would answer `NOSCRIPT`); subscribes
//! to its rooms again, in batches; refreshes its liveness key; drops and
//! announces the members that left meanwhile ([`super::lua::Script::Resync`]);
//! registers each remaining member again — its nickname claimed again or,
//! if someone took it meanwhile, a fresh `guestN` announced to its room as
//! `* OLD is now guestN`; and only then tells each member
//! `* chat backend restored` — after every line the re-registration
//! published (the end is marked by an event on the server's own channel,
//! which comes back behind them). Members who connected during the outage
//! get their `guestN` then. The rooms' subscriptions are back before the
//! re-registration starts, so a line another server publishes meanwhile
//! reaches these members as it comes, possibly just before their
//! `restored`.
//!
//! # Gaps
//!
//! Each room remembers the sequence number it expects next. While the
//! subscription holds, Redis delivers every publication, so a gap can
//! only open across a reconnect: the lines other servers published while
//! this one was cut off are not delivered here — these members were told
//! `* chat backend unavailable` before the gap and `* chat backend
//! restored` after it, and see nothing in between. The gap's size is
//! logged. A sequence that goes backwards means Redis lost its data (a
//! restart without persistence): the room starts again from there.
//!

use log::{info, warn};

use super::lua::Script;
use super::redis::{Link, Op, Pending, Which, ALIVE_TTL, HEARTBEAT, REAP_EVERY};
use super::resp::{Item, Reply, Value};
use super::shared::channel;
use super::{figures, Chat, Reg, Sub, LOBBY};
use crate::{CloseReason, ConnId, Ctx};

/// The answer to what cannot be done while Redis is lost.
const UNAVAILABLE: &str = "! chat backend unavailable";

impl Chat {
    /// Every tick: reconnect when due, time out what waits too long,
    /// heartbeat and reap when up.
    pub(super) fn link_tick(&mut self, ctx: &mut Ctx<'_>) {
        let Some(bus) = self.bus.as_deref_mut().filter(|b| !b.stopping) else { return };
        let now = ctx.now();
        if bus.retry_due(now) {
            bus.connect(ctx);
        } else if let Some(why) = bus.overdue(now) {
            bus.fail(why);
        } else if bus.link == Link::Up {
            if now >= bus.next_heartbeat {
                self.heartbeat(ctx);
            }
            let Some(bus) = self.bus.as_deref_mut() else { return };
            if now >= bus.next_reap {
                bus.next_reap = now + REAP_EVERY;
                let server = bus.server.clone();
                bus.eval(ctx, Script::Reap, &[server.as_bytes()], Op::Reap);
            }
        }
        self.after(ctx);
    }

    /// Refresh the liveness key and send the probe.
    pub(super) fn heartbeat(&mut self, ctx: &mut Ctx<'_>) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        let now = ctx.now();
        bus.next_heartbeat = now + HEARTBEAT;
        bus.probe_sent.get_or_insert(now);
        let (server, ttl) = (bus.server.clone(), ALIVE_TTL.as_millis().to_string());
        bus.eval(ctx, Script::Heartbeat, &[server.as_bytes(), ttl.as_bytes()], Op::Ignore);
    }

    /// One of the two connections is established; when both are, the
    /// handshake: `SELECT`, `SCRIPT LOAD`, `SUBSCRIBE` (in batches).
    pub(super) fn link_opened(&mut self, ctx: &mut Ctx<'_>, _id: ConnId) {
        let Chat { bus: Some(bus), rooms, .. } = self else { return };
        if !bus.opened() {
            return;
        }
        bus.link = Link::Loading;
        if bus.url.db != 0 {
            let db = bus.url.db.to_string();
            bus.command(ctx, &[b"SELECT", db.as_bytes()], Op::Select);
            bus.handshake_due += 1;
            bus.select_sub(ctx);
        }
        bus.load_scripts(ctx);
        let mut channels = vec![bus.node_channel.clone()];
        for (name, room) in rooms.iter_mut() {
            room.sub = Sub::Subscribing;
            channels.push(channel(&bus.chan_prefix, name));
        }
        bus.subscribe(ctx, "SUBSCRIBE", &channels);
        self.after(ctx);
    }

    /// A frame from Redis.
    pub(super) fn link_frame(&mut self, ctx: &mut Ctx<'_>, which: Which, id: ConnId, frame: &[u8]) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        match which {
            Which::Cmd => {
                if let Some((pending, reply)) = bus.reply(ctx, id, frame) {
                    self.on_reply(ctx, pending, reply);
                }
            }
            Which::Sub => {
                // Out of the bus while the item (which may borrow it) is
                // handled by code that needs the whole chat.
                let fresh = bus.reader();
                let mut reader = std::mem::replace(&mut bus.sub_reader, fresh);
                let before = reader.framing();
                match reader.feed(frame) {
                    Ok(Some(item)) => self.on_push(ctx, item),
                    Ok(None) => {}
                    Err(e) => {
                        if let Some(bus) = self.bus.as_deref_mut() {
                            bus.fail(e.to_string());
                        }
                    }
                }
                let after = reader.framing();
                if after != before {
                    ctx.set_framing(id, after);
                }
                if let Some(bus) = self.bus.as_deref_mut().filter(|b| b.sub == Some(id)) {
                    bus.sub_reader = reader;
                }
            }
        }
        self.after(ctx);
    }

    /// One item of the subscription: `*3 [kind, channel, payload|count]`,
    /// or the `+OK` of its `SELECT`.
    pub(super) fn on_push(&mut self, ctx: &mut Ctx<'_>, item: Item<'_>) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        match (item.depth, item.index, item.value) {
            (0, _, Value::Array(_)) => bus.push_kind.clear(),
            (0, _, Value::Simple(b"OK")) if bus.link == Link::Loading && bus.handshake_due > 0 => {
                bus.handshake_due -= 1;
                self.handshake_progress(ctx);
            }
            (0, _, Value::Error(e)) => bus.fail(format!("Redis refused: {}", String::from_utf8_lossy(e))),
            (0, _, _) => bus.fail("an unexpected reply on the subscription connection".into()),
            (1, 0, Value::Bulk(kind)) => {
                bus.push_kind.clear();
                bus.push_kind.extend_from_slice(kind);
            }
            (1, 1, Value::Bulk(chan)) => {
                bus.push_channel.clear();
                bus.push_channel.extend_from_slice(chan);
            }
            (1, 2, value) => {
                let chan = std::mem::take(&mut bus.push_channel);
                match (bus.push_kind.as_slice(), value) {
                    (b"message", Value::Bulk(payload)) => self.published(ctx, &chan, payload),
                    (b"subscribe", Value::Int(_)) => self.subscribed(ctx, &chan),
                    (b"unsubscribe", Value::Int(_)) => self.unsubscribed(ctx, &chan),
                    _ => {}
                }
                if let Some(bus) = self.bus.as_deref_mut() {
                    bus.push_channel = chan;
                }
            }
            _ => {}
        }
    }

    /// A reply on the command connection, and what it was for.
    pub(super) fn on_reply(&mut self, ctx: &mut Ctx<'_>, pending: Pending, reply: Reply) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        if pending.superseded {
            // Sent again already, behind an earlier NOSCRIPT.
            if !matches!(&reply, Reply::Error(e) if e.starts_with("NOSCRIPT")) {
                warn!("a script call ran although it was sent again after a script flush: it ran twice");
            }
            return;
        }
        if let Reply::Error(e) = &reply {
            if e.starts_with("NOSCRIPT") && pending.replay.is_some() {
                return bus.eval_again(ctx, pending);
            }
            return bus.refused(&pending.op, e);
        }
        match pending.op {
            Op::Select => {
                bus.handshake_due = bus.handshake_due.saturating_sub(1);
                self.handshake_progress(ctx);
            }
            Op::Load(script) => {
                let Some(sha) = reply.text() else { return bus.fail("SCRIPT LOAD answered no SHA1".into()) };
                bus.loaded(script, sha.to_string());
                bus.handshake_due = bus.handshake_due.saturating_sub(1);
                self.handshake_progress(ctx);
            }
            Op::Ignore | Op::Message => {}
            Op::Reap => {
                if let Reply::Int(n @ 1..) = reply {
                    info!("announced {n} members of servers that stopped answering as left");
                }
            }
            Op::Connect { id, serial } | Op::Restore { id, serial } => {
                let Some(nick) = reply.text() else { return bus.fail("no nickname from Redis".into()) };
                let nick = nick.to_string();
                if let Some(member) = self.member_at(id, serial) {
                    member.nick = nick;
                    member.reg = Reg::Done;
                    if matches!(pending.op, Op::Connect { .. }) {
                        self.release(ctx, id);
                    }
                }
            }
            Op::Nick { id, serial, name } => {
                let Some(member) = self.member_at(id, serial) else { return };
                // A refusal comes back through the room, in order.
                if reply == Reply::Int(1) {
                    member.nick = name;
                }
                self.release(ctx, id);
            }
            Op::Join { id, serial } => {
                if self.member_at(id, serial).is_some() {
                    self.release(ctx, id);
                }
            }
            Op::Leave { room } => {
                if reply == Reply::Int(0) {
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.leaves = r.leaves.saturating_sub(1);
                    }
                    self.maybe_unsubscribe(ctx, &room);
                }
            }
            Op::Synced => self.synced(ctx),
        }
    }

    /// When the handshake is complete: register the members again, then
    /// mark the end with `synced` on the server's own channel.
    pub(super) fn handshake_progress(&mut self, ctx: &mut Ctx<'_>) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        if bus.link != Link::Loading || bus.handshake_due > 0 || bus.acks_due > 0 {
            return;
        }
        bus.link = Link::Restoring;
        self.heartbeat(ctx);
        let Chat { bus: Some(bus), members, .. } = self else { return };
        let server = bus.server.clone();
        let registered = || members.iter().enumerate().filter_map(|(i, m)| Some((i, m.as_ref()?)));
        let registered = move || registered().filter(|(_, m)| m.reg == Reg::Done);
        let serials: Vec<String> = registered().map(|(_, m)| m.serial.to_string()).collect();
        let mut args: Vec<&[u8]> = vec![server.as_bytes()];
        args.extend(serials.iter().map(|s| s.as_bytes()));
        bus.eval(ctx, Script::Resync, &args, Op::Ignore);
        for ((_, member), serial) in registered().zip(&serials) {
            let args = [&server, serial, &member.room, &member.nick].map(|a| a.as_bytes());
            bus.eval(ctx, Script::Restore, &args, Op::Restore { id: member.id, serial: member.serial });
        }
        let node = bus.node_channel.clone();
        bus.command(ctx, &[b"PUBLISH", &node, b"synced"], Op::Synced);
    }

    /// One half of the end of a restore has come back (see
    /// [`super::redis`]); with both, the link is up.
    pub(super) fn synced(&mut self, ctx: &mut Ctx<'_>) {
        let Some(bus) = self.bus.as_deref_mut().filter(|b| b.link == Link::Restoring) else { return };
        bus.synced += 1;
        if bus.synced == 2 {
            self.link_up(ctx);
        }
    }

    /// Everything is registered again: the link is up.
    pub(super) fn link_up(&mut self, ctx: &mut Ctx<'_>) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        bus.up(ctx.now());
        info!("Redis at {}: connected", bus.url.text);
        figures(ctx).backend_up = true;
        self.outage = false;
        for i in 0..self.members.len() {
            let Some(id) = self.members[i].as_ref().map(|m| m.id) else { continue };
            let Some(member) = self.member_mut(id) else { continue };
            if std::mem::take(&mut member.told) {
                self.reply(ctx, id, &["* chat backend restored"]);
            }
            if self.member(id).is_some_and(|m| m.reg == Reg::None) {
                self.hold(ctx, id);
                self.enter_shared(ctx, id, LOBBY);
            }
        }
    }

    /// One of the connections closed.
    pub(super) fn link_closed(&mut self, ctx: &mut Ctx<'_>, which: Which, reason: CloseReason) {
        if self.bus.as_ref().is_some_and(|b| !b.stopping) {
            let which = if which == Which::Cmd { "command" } else { "subscription" };
            self.lost(ctx, &format!("the {which} connection closed ({reason})"));
        }
    }

    /// After a callback: if something found Redis lost, act on it now.
    pub(super) fn after(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(why) = self.bus.as_mut().and_then(|b| b.failed.take()) {
            self.lost(ctx, &why);
        }
    }

    /// Redis is lost: drop the connections, put every member in a state
    /// the re-registration can start from, tell the members.
    pub(super) fn lost(&mut self, ctx: &mut Ctx<'_>, why: &str) {
        let Some(bus) = self.bus.as_deref_mut().filter(|b| !b.stopping) else { return };
        if bus.link >= Link::Loading {
            warn!("Redis at {} lost: {why}; reconnecting", bus.url.text);
        } else {
            info!("Redis at {}: {why}; retrying", bus.url.text);
        }
        // What was in flight is dropped; each member's own flags say what
        // it was waiting for.
        drop(bus.reset(ctx));
        figures(ctx).backend_up = false;
        for i in 0..self.members.len() {
            let Some(id) = self.members[i].as_ref().map(|m| m.id) else { continue };
            let Some(member) = self.member_mut(id) else { continue };
            member.target = None;
            member.unseen = 0;
            if member.reg == Reg::Sent {
                member.reg = Reg::None;
            }
            if member.quitting {
                self.finish_quit(ctx, id);
                continue;
            }
            if member.waiting {
                // A command of a registered member lost its answer.
                if member.reg == Reg::Done {
                    self.reply(ctx, id, &[UNAVAILABLE]);
                }
                self.release(ctx, id);
            }
        }
        // The rooms, from the members: what the re-registration restores.
        for room in self.rooms.values_mut() {
            room.members.clear();
            room.awaiting.clear();
            (room.joins, room.leaves, room.sub) = (0, 0, Sub::Off);
        }
        for member in &self.members {
            if let Some(member) = member.as_ref().filter(|m| m.reg == Reg::Done) {
                self.rooms.entry(member.room.clone()).or_default().members.push(member.id);
            }
        }
        self.rooms.retain(|_, r| !r.members.is_empty());
        if !self.outage {
            self.outage = true;
            for i in 0..self.members.len() {
                let Some(id) = self.members[i].as_ref().map(|m| m.id) else { continue };
                if let Some(member) = self.member_mut(id).filter(|m| !m.told) {
                    member.told = true;
                    self.reply(ctx, id, &["* chat backend unavailable"]);
                }
            }
        }
        self.gauges(ctx);
    }
}
