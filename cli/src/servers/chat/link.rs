//! The chat's link to Redis: connecting, the handshake, replies and
//! pushes, losing Redis and finding it again.
//!
//! # When Redis is lost
//!
//! (See [`super::redis`] for what counts as lost.) The clients stay
//! connected. Each member receives `* chat backend unavailable` once; a
//! message, `/nick` or `/join` is answered `! chat backend unavailable`
//! and is not delivered, not even here — there is one order or none.
//! `/who` answers from the members this server has; `/quit` works.
//!
//! A member with something still on its way through Redis at the loss (a
//! message, a `/join`...) is not read until the link is back, because
//! only then can the server know what happened to it: every line gets
//! exactly one outcome. After the reconnection's `Register` (which fences
//! off everything the old connections might still do, see
//! [`super::lua`], "Fencing"), what Redis has is final: a message that
//! ran is in its room's history and comes back to the sender in the
//! replay; one that did not is answered `! chat backend unavailable` —
//! unless the room's history itself was lost (a gap notice): then it may
//! have reached the others before the loss, and its sender gets its own
//! line back, which the gap notice covers either way; a
//! `/join` or `/nick` whose answer was lost is taken as done if Redis has
//! the member in the new room or under the new name, and answered
//! unavailable otherwise — never answered unavailable yet done.
//!
//! # Fencing (no ghosts)
//!
//! The lease (`alive:SERVER`, renewed every [`HEARTBEAT`]) expires
//! [`ALIVE_TTL`] after its last renewal; survivors reap a server whose
//! lease expired. This server counts its lease as held only until
//! `ALIVE_TTL − LEASE_MARGIN` after it sent the last renewal Redis
//! acknowledged, and checks that before it acts on anything — a member's
//! line, a reply, a push, a tick: a server that was paused (SIGSTOP, a
//! slow fork, a paused VM) or whose Redis stalled treats Redis as lost
//! *before* anyone may reap it, and drops whatever its old connections
//! still held unread. Should it be reaped all the same (a clock jump),
//! every script it sends is refused `FENCED` (the token is gone) and it
//! reconnects; it never acts as a live server after being declared dead.
//!
//! # Finding Redis again
//!
//! The handshake, in steps (`Link`): `AUTH`, `SELECT`, `SCRIPT LOAD` and
//! the server's own channel; `Register` (a new lease and generation, and
//! the members as Redis has them); `SUBSCRIBE` to every room of a member;
//! `Replay` of each room from the number it expects next — the events the
//! members missed, delivered in order, the live ones held until then, a
//! gap notice where the history cannot fill the gap (Redis restarted
//! empty, a failover lost writes, the gap is older than the history, or
//! this server was reaped: the lines between its members' reaping and
//! their return were not theirs); then `Resync` (members that left
//! meanwhile dropped and announced) and `Restore` of each member: its
//! nickname claimed again, or a fresh `guestN` if taken; a member the
//! others were told had left (the server was reaped) is announced
//! `* NICK joined` again (renamed, the member itself hears
//! `* NICK is now guestN` there instead: see `Chat::deliver`). Only then
//! is each member told `* chat backend restored`, behind every line the
//! re-registration published (the end is marked by an event on the
//! server's own channel), and given the outcome of what it had in flight.

use log::{info, warn};

use super::lua::Script;
use super::redis::{
    Link, Op, Pending, Which, ALIVE_TTL, HEARTBEAT, IN_FLIGHT_HIGH, IN_FLIGHT_LOW, MAX_REPLAY, REAP_EVERY,
};
use super::resp::{Item, Reply, Value};
use super::shared::{channel, split_event, tag, GAP, UNAVAILABLE};
use super::{Chat, ChatCounters, Later, Reg, Sub, LOBBY};
use edgeloop::{Active, CloseReason, ConnId, Ctx};

impl Chat {
    /// Every tick: reconnect when due, time out what waits too long,
    /// heartbeat and reap when up.
    pub(super) fn link_tick(&mut self, ctx: &mut Ctx<'_>) {
        if self.lease_lost(ctx) {
            return self.after(ctx);
        }
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
                bus.eval(ctx, Script::Reap, &[], Op::Reap);
            }
        }
        self.after(ctx);
    }

    /// Whether the lease has run out: then Redis is lost, now, before
    /// anything else is done (see "Fencing").
    pub(super) fn lease_lost(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let expired = self.bus.as_ref().is_some_and(|b| !b.stopping && b.lease_expired(ctx.now()));
        if expired {
            self.lost(ctx, "this server's lease ran out (it was paused, or Redis stalled)");
        }
        expired
    }

    /// Renew the lease and send the probe.
    pub(super) fn heartbeat(&mut self, ctx: &mut Ctx<'_>) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        let now = ctx.now();
        bus.next_heartbeat = now + HEARTBEAT;
        bus.probe_sent.get_or_insert(now);
        let ttl = ALIVE_TTL.as_millis().to_string();
        bus.eval(ctx, Script::Heartbeat, &[ttl.as_bytes()], Op::Heartbeat { sent: now });
    }

    /// One of the two connections is established; when both are, the
    /// handshake's first step.
    pub(super) fn link_opened(&mut self, ctx: &mut Ctx<'_>, _id: ConnId) {
        let Chat { bus: Some(bus), .. } = self else { return };
        if !bus.opened() {
            return;
        }
        bus.link = Link::Loading;
        let url = bus.url.clone();
        if let Some(auth) = url.auth() {
            bus.command(ctx, &auth, Op::Select);
            bus.handshake_due += 1;
            bus.raw_sub(ctx, &auth);
        }
        if url.db != 0 {
            let db = url.db.to_string();
            bus.command(ctx, &[b"SELECT", db.as_bytes()], Op::Select);
            bus.handshake_due += 1;
            bus.raw_sub(ctx, &[b"SELECT", db.as_bytes()]);
        }
        if url.master.is_some() {
            // A Sentinel's answer may be stale: this must be the master.
            bus.command(ctx, &[b"ROLE"], Op::Role);
            bus.handshake_due += 1;
        }
        bus.load_scripts(ctx);
        let node = bus.node_channel.clone();
        bus.subscribe(ctx, "SUBSCRIBE", &[node]);
        self.after(ctx);
    }

    /// A frame from Redis.
    pub(super) fn link_frame(&mut self, ctx: &mut Ctx<'_>, which: Which, id: ConnId, frame: &[u8]) {
        if self.lease_lost(ctx) {
            return self.after(ctx);
        }
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
    /// or the `+OK` of its `AUTH` or `SELECT`.
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
                    (b"subscribe", Value::Int(_)) => self.acknowledged(ctx, &chan, false),
                    (b"unsubscribe", Value::Int(_)) => self.acknowledged(ctx, &chan, true),
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
            // Sent again already, behind an earlier refusal: refused too
            // (the chain guarantees it; see lua.rs, "Exactly once").
            if !matches!(reply, Reply::Error(_)) {
                return bus.fail(format!("a script call sent again had run after all: {reply:?}"));
            }
            return;
        }
        if let Reply::Error(e) = &reply {
            if e.starts_with("NOSCRIPT") && pending.call.is_some() {
                let from = pending.number().unwrap_or(0);
                return bus.call_again(ctx, pending, from);
            }
            if let Some(last) = e.strip_prefix("ORDER ") {
                // An earlier call did not run (OOM, LOADING): this one and
                // those behind it are sent again, numbered on from the
                // last that ran.
                let Some(last) = last.parse::<u64>().ok().filter(|&l| pending.number().is_some_and(|n| l < n)) else {
                    return bus.fail(format!("Redis answered {e} to call {:?}", pending.number()));
                };
                return bus.call_again(ctx, pending, last + 1);
            }
            if e.starts_with("FENCED") {
                return bus.fail("Redis no longer counts this server as alive (fenced)".into());
            }
            if e.starts_with("READONLY") || e.starts_with("MASTERDOWN") {
                // Failed over: this node is a replica now.
                return bus.fail(format!("Redis is no longer the master: {e}"));
            }
            let e = e.clone();
            return self.refused(ctx, pending.op, &e);
        }
        match pending.op {
            Op::Select => {
                bus.handshake_due = bus.handshake_due.saturating_sub(1);
                self.handshake_progress(ctx);
            }
            Op::Role => {
                let role = match &reply {
                    Reply::Array(parts) => parts.first().and_then(Reply::text),
                    _ => None,
                };
                if role != Some("master") {
                    return bus.fail(format!("Redis there is not the master (ROLE: {role:?})"));
                }
                bus.handshake_due = bus.handshake_due.saturating_sub(1);
                self.handshake_progress(ctx);
            }
            Op::Load(script) => {
                let Some(sha) = reply.text() else { return bus.fail("SCRIPT LOAD answered no SHA1".into()) };
                bus.loaded(script, sha.to_string());
                bus.handshake_due = bus.handshake_due.saturating_sub(1);
                self.handshake_progress(ctx);
            }
            Op::Register { sent } => {
                bus.lease_from(sent);
                self.registered(ctx, reply);
            }
            Op::Heartbeat { sent } => bus.lease_from(sent),
            Op::Replay { room } => self.replayed(ctx, &room, reply),
            Op::Who { id, serial } => {
                if self.member_at(id, serial).is_some() {
                    let names = match &reply {
                        Reply::Int(n) => Err(*n),
                        Reply::Bulk(b) | Reply::Simple(b) => Ok(b.as_slice()),
                        _ => Ok(&b""[..]),
                    };
                    self.who_answered(ctx, id, names);
                }
            }
            Op::Ignore | Op::Messages(_) => {}
            Op::Reap => {
                if let Reply::Int(n @ 1..) = reply {
                    info!("announced {n} members of servers that stopped answering as left");
                }
            }
            Op::Connect { id, serial } | Op::Restore { id, serial } => {
                let Some(nick) = reply.text() else { return bus.fail("no nickname from Redis".into()) };
                let nick = nick.to_string();
                if let Some(n) = nick.strip_prefix("guest").and_then(|n| n.parse().ok()) {
                    bus.max_guest = bus.max_guest.max(n);
                }
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
                member.asked = None;
                if reply == Reply::Int(1) {
                    member.nick = name;
                } else {
                    self.tell(ctx, id, &["! nickname ", &name, " is in use"]);
                }
                self.release(ctx, id);
            }
            Op::Join { id, serial } => {
                if let Some(member) = self.member_at(id, serial) {
                    member.asked = None;
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

    /// An error reply to one command (OOM, `LOADING`, a script's own
    /// error): answered to the member it was for; the link stays, unless
    /// the handshake itself was refused.
    fn refused(&mut self, ctx: &mut Ctx<'_>, op: Op, error: &str) {
        if let Some(bus) = self.bus.as_deref_mut() {
            bus.refused(&op, error);
            if matches!(op, Op::Select | Op::Role | Op::Load(_) | Op::Register { .. } | Op::Replay { .. } | Op::Synced)
            {
                return bus.fail(format!("Redis answered an error: {error}"));
            }
        }
        match op {
            Op::Messages(senders) => {
                for (id, serial) in senders {
                    let Some(member) = self.member_at(id, serial) else { continue };
                    // Its event will not come back: the held answers behind
                    // it move up one place, and its outcome takes its place.
                    member.sent = member.sent.saturating_sub(1);
                    member.in_flight.pop_front();
                    let seen = member.seen;
                    for later in member.later.iter_mut().filter(|l| l.mark > seen) {
                        later.mark -= 1;
                    }
                    self.tell(ctx, id, &[UNAVAILABLE]);
                }
            }
            Op::Connect { id, serial } => {
                let Some(member) = self.member_at(id, serial) else { return };
                member.reg = Reg::None;
                member.sent = member.sent.saturating_sub(1);
                let room = member.room.clone();
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.joins = r.joins.saturating_sub(1);
                }
                // Without a name it cannot take part: told, and closed.
                self.reply(ctx, id, &[UNAVAILABLE]);
                ctx.close(id);
                self.maybe_unsubscribe(ctx, &room);
            }
            Op::Join { id, serial } | Op::Nick { id, serial, .. } => {
                let Some(member) = self.member_at(id, serial) else { return };
                if let Some((room, _)) = member.asked.take().filter(|_| matches!(op, Op::Join { .. })) {
                    let to = std::mem::replace(&mut member.room, room.clone());
                    member.sent = member.sent.saturating_sub(2);
                    if let Some(r) = self.rooms.get_mut(&to) {
                        r.joins = r.joins.saturating_sub(1);
                    }
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.leaves = r.leaves.saturating_sub(1);
                    }
                    self.maybe_unsubscribe(ctx, &to);
                }
                self.tell(ctx, id, &[UNAVAILABLE]);
                self.release(ctx, id);
            }
            Op::Who { id, serial } if self.member_at(id, serial).is_some() => {
                if let Some(member) = self.member_mut(id) {
                    member.asking_who = false;
                }
                self.tell(ctx, id, &[UNAVAILABLE]);
                self.release(ctx, id);
            }
            _ => {}
        }
    }

    /// The handshake's next step, when the current one is complete.
    pub(super) fn handshake_progress(&mut self, ctx: &mut Ctx<'_>) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        match bus.link {
            Link::Loading if bus.handshake_due == 0 && bus.acks_due == 0 => {
                bus.link = Link::Registering;
                bus.next_gen();
                let (ttl, guests) = (ALIVE_TTL.as_millis().to_string(), bus.max_guest.to_string());
                let op = Op::Register { sent: ctx.now() };
                bus.eval(ctx, Script::Register, &[ttl.as_bytes(), guests.as_bytes()], op);
            }
            Link::Subscribing if bus.acks_due == 0 => self.replay_rooms(ctx),
            Link::Replaying if bus.replays_due == 0 => self.restore(ctx),
            _ => {}
        }
    }

    /// `Register` answered with our members as Redis has them: adopt what
    /// a `/join` or `/nick` whose answer was lost did, then subscribe to
    /// every room a member is in (or was in, for the replay).
    fn registered(&mut self, ctx: &mut Ctx<'_>, reply: Reply) {
        let mut entries = std::collections::HashMap::new();
        if let Reply::Array(items) = reply {
            for pair in items.chunks(2) {
                if let [serial, entry] = pair {
                    let serial = serial.text().and_then(|s| s.parse::<u64>().ok());
                    let entry = entry.text().and_then(|e| e.split_once(' '));
                    if let (Some(serial), Some((room, nick))) = (serial, entry) {
                        entries.insert(serial, (room.to_string(), nick.to_string()));
                    }
                }
            }
        }
        for member in self.members.iter_mut().flatten() {
            let now = entries.remove(&member.serial);
            match member.reg {
                Reg::None => {}
                Reg::Sent => match now {
                    // Its `Connect` ran: its join is in the history.
                    Some((room, nick)) => (member.reg, member.room, member.nick) = (Reg::Done, room, nick),
                    None => member.reg = Reg::None,
                },
                Reg::Done => match (member.asked.take(), now) {
                    (Some(before), Some(now)) if now != before => (member.room, member.nick) = now,
                    (Some(before), _) => {
                        (member.room, member.nick) = before.clone();
                        member.asked = Some(before);
                    }
                    (None, _) => {}
                },
            }
        }
        let Chat { bus: Some(bus), rooms, members, .. } = self else { return };
        bus.link = Link::Subscribing;
        for member in members.iter().flatten().filter(|m| m.reg == Reg::Done) {
            rooms.entry(member.room.clone()).or_default();
        }
        let mut channels = Vec::new();
        for (name, room) in rooms.iter_mut() {
            (room.sub, room.acks) = (Sub::Subscribing, 1);
            channels.push(channel(&bus.chan_prefix, name));
        }
        bus.subscribe(ctx, "SUBSCRIBE", &channels);
        self.handshake_progress(ctx);
    }

    /// Ask each room's history for what its members missed; the live
    /// events are held meanwhile.
    ///
    /// A room this server has seen no event of yet is asked too when a
    /// member of ours in limbo is in it: its join (a `/join`, or the
    /// `Connect` of a newcomer) ran, but its own `* NICK joined` had not
    /// come back when the link was lost. The room's newest events hold it;
    /// `deliver` puts the member on the room's list at its own join, so it
    /// gets that line — its outcome — and everything after, nothing before.
    fn replay_rooms(&mut self, ctx: &mut Ctx<'_>) {
        let Chat { bus: Some(bus), rooms, members, .. } = self else { return };
        bus.link = Link::Replaying;
        let max = MAX_REPLAY.to_string();
        for (name, room) in rooms.iter_mut() {
            room.sub = Sub::On;
            let ask = match room.next_seq {
                0 => members.iter().flatten().any(|m| m.limbo && m.room == *name),
                _ => !room.members.is_empty(),
            };
            if !ask {
                continue;
            }
            room.replay = Some(Vec::new());
            // From 1: the newest events, as many as a replay takes.
            let from = room.next_seq.max(1).to_string();
            let args = [name.as_bytes(), from.as_bytes(), max.as_bytes()];
            bus.eval(ctx, Script::Replay, &args, Op::Replay { room: name.clone() });
            bus.replays_due += 1;
        }
        self.handshake_progress(ctx);
    }

    /// A room's history came back: the events missed, in order (a gap
    /// notice where they are not all there), then the live ones held.
    fn replayed(&mut self, ctx: &mut Ctx<'_>, name: &str, reply: Reply) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        bus.replays_due = bus.replays_due.saturating_sub(1);
        let Some(room) = self.rooms.get_mut(name) else { return self.handshake_progress(ctx) };
        let held = room.replay.take().unwrap_or_default();
        let from = room.next_seq;
        let items = match reply {
            Reply::Array(items) => items,
            _ => Vec::new(),
        };
        let top: u64 = items.first().and_then(Reply::text).and_then(|t| t.parse().ok()).unwrap_or(0);
        let first = items.get(1).and_then(Reply::text).and_then(|e| split_event(e.as_bytes()));
        // Nothing to replay, yet the room is not where we left it: gone
        // (Redis restarted empty, or the room was emptied), gone back (a
        // failover lost writes), or past its history. (A room never seen,
        // `from` 0, was left nowhere: no gap there.)
        let seen = from != 0;
        let gone = seen && top.saturating_add(1) != from && first.is_none();
        if gone {
            warn!("room {name}: expected event {from}, Redis is at {top}; the members were told");
            room.next_seq = if top == 0 { 0 } else { top + 1 };
        }
        // Or the history starts after a gap (Redis restarted empty and
        // numbers from a new epoch, or the gap is older than the history):
        // `deliver` tells the members at its first event. Either way the
        // lines whose fate was forgotten go back first.
        if gone || (seen && first.is_some_and(|(seq, _, _)| seq > from)) {
            self.forgotten(ctx, name, &items);
            if gone {
                self.batches.push_line(ctx, name, GAP.as_bytes());
            }
        }
        let mut whole = true;
        for item in items.iter().skip(1) {
            let Reply::Bulk(event) = item else { continue };
            if !self.deliver(ctx, name, event, true) {
                whole = false;
                break;
            }
        }
        if let Some(room) = self.rooms.get_mut(name) {
            if top > 0 && (!whole || top >= room.next_seq) {
                room.next_seq = top + 1;
            }
        }
        for event in held {
            self.deliver(ctx, name, &event, false);
        }
        self.handshake_progress(ctx);
    }

    /// Redis has forgotten part of `name`'s history (restarted empty, a
    /// failover lost writes, the gap is older than the history): whether
    /// the lines its members here had in flight at the loss ran, and
    /// reached the others, nobody can tell from what is left (`replay`)
    /// unless one of them is in it. "Unavailable" would say nobody got
    /// them; so each sender gets its own lines back, here, just before the
    /// room's gap notice — the place where the others either got them or
    /// are told lines may have been lost. (Where the history is whole, the
    /// replay gives back the lines that ran, and the rest did not run. A
    /// member with one of its lines in what is left is taken to have lost
    /// none: lines that ran and were trimmed from a 10 000-event history
    /// while the server was away, beside one that was not, are refused.)
    fn forgotten(&mut self, ctx: &mut Ctx<'_>, name: &str, replay: &[Reply]) {
        let Some(server) = self.bus.as_ref().map(|b| b.server.clone()) else { return };
        let tags: Vec<&[u8]> = (replay.iter().skip(1).filter_map(Reply::text))
            .filter_map(|e| split_event(e.as_bytes()).map(|(_, tag, _)| tag))
            .collect();
        for i in 0..self.members.len() {
            let Some(member) = self.members[i].as_mut().filter(|m| m.limbo && m.room == name) else { continue };
            let id = member.id;
            if tags.contains(&tag('M', &server, id, member.serial).as_bytes()) {
                continue;
            }
            for line in std::mem::take(&mut member.in_flight) {
                self.send_now(ctx, id, &line);
            }
        }
    }

    /// The history is in: the delivery lists from the members, then each
    /// member registered again, then `synced` marks the end.
    fn restore(&mut self, ctx: &mut Ctx<'_>) {
        self.flush_lines(ctx); // the lists change (see "Order" in `batch`)
        for room in self.rooms.values_mut() {
            room.members.clear();
        }
        for member in &self.members {
            if let Some(member) = member.as_ref().filter(|m| m.reg == Reg::Done) {
                self.rooms.entry(member.room.clone()).or_default().members.push(member.id);
            }
        }
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            self.maybe_unsubscribe(ctx, &name);
        }
        let Some(bus) = self.bus.as_deref_mut() else { return };
        bus.link = Link::Restoring;
        self.heartbeat(ctx);
        let Chat { bus: Some(bus), members, .. } = self else { return };
        let registered = || members.iter().enumerate().filter_map(|(i, m)| Some((i, m.as_ref()?)));
        let registered = move || registered().filter(|(_, m)| m.reg == Reg::Done);
        let serials: Vec<String> = registered().map(|(_, m)| m.serial.to_string()).collect();
        let args: Vec<&[u8]> = serials.iter().map(|s| s.as_bytes()).collect();
        bus.eval(ctx, Script::Resync, &args, Op::Ignore);
        for ((_, member), serial) in registered().zip(&serials) {
            // Its tag if it has to be announced again under a new name.
            let again = format!("{}.{}", tag('A', &bus.server, member.id, member.serial), member.nick);
            let args = [serial, &member.room, &member.nick, &again].map(|a| a.as_bytes());
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

    /// Everything is registered again: the link is up. Each member is
    /// told, then given the outcome of what it had in flight.
    pub(super) fn link_up(&mut self, ctx: &mut Ctx<'_>) {
        let Some(bus) = self.bus.as_deref_mut() else { return };
        bus.up(ctx.now());
        info!("Redis at {}: connected", bus.url.text);
        ChatCounters::of(ctx).backend_up = true;
        self.outage = false;
        for i in 0..self.members.len() {
            let Some(id) = self.members[i].as_ref().map(|m| m.id) else { continue };
            let Some(member) = self.member_mut(id) else { continue };
            if std::mem::take(&mut member.told) {
                self.reply(ctx, id, &["* chat backend restored"]);
            }
            let Some(member) = self.member_mut(id) else { continue };
            if std::mem::take(&mut member.limbo) {
                // What did not come back did not happen: the replay has
                // given back every line that ran (or, where Redis forgot,
                // `forgotten` has).
                let lines = std::mem::take(&mut member.in_flight).len();
                let asked = member.asked.take().is_some();
                let held: Vec<Later> = member.later.drain(..).collect();
                (member.sent, member.seen) = (0, 0);
                for _ in 0..lines {
                    self.reply(ctx, id, &[UNAVAILABLE]);
                }
                if asked {
                    self.reply(ctx, id, &[UNAVAILABLE]);
                }
                for later in held {
                    if let Some(line) = later.line {
                        self.send_now(ctx, id, &line);
                    }
                    if later.quit {
                        self.finish_quit(ctx, id);
                    }
                }
                self.release(ctx, id);
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

    /// After a callback: if something found Redis lost, act on it now;
    /// and stop or start reading the members as Redis keeps up.
    pub(super) fn after(&mut self, ctx: &mut Ctx<'_>) {
        // Without Redis there is nothing to do, and this runs for every line.
        let Some(bus) = self.bus.as_mut() else { return };
        if let Some(why) = bus.failed.take() {
            self.lost(ctx, &why);
        }
        let in_flight = self.bus.as_ref().map_or(0, |b| b.in_flight());
        let congested = if self.congested { in_flight > IN_FLIGHT_LOW } else { in_flight > IN_FLIGHT_HIGH };
        if congested != self.congested {
            self.congested = congested;
            ChatCounters::of(ctx).throttled += u64::from(congested);
            for i in 0..self.members.len() {
                let Some(id) = self.members[i].as_ref().map(|m| m.id) else { continue };
                if congested {
                    ctx.set_active(id, Active::Off);
                } else {
                    self.resume(ctx, id);
                }
            }
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
        // What was in flight is dropped; each member's own counts say what
        // it was waiting for.
        drop(bus.reset(ctx));
        ChatCounters::of(ctx).backend_up = false;
        for i in 0..self.members.len() {
            let Some(id) = self.members[i].as_ref().map(|m| m.id) else { continue };
            let list = self.local_names(id);
            let Some(member) = self.member_mut(id) else { continue };
            member.target = None;
            if member.quitting {
                self.finish_quit(ctx, id);
                continue;
            }
            if std::mem::take(&mut member.asking_who) {
                // Answered from what this server knows, in its place.
                let mark = member.sent;
                let line = format!("* members: {list}\n").into_bytes();
                member.later.push_back(Later { mark, line: Some(line), quit: false });
            }
            if member.reg == Reg::Sent
                || member.sent > member.seen
                || !member.later.is_empty()
                || member.asked.is_some()
            {
                // Its outcome is known only once the link is back.
                member.limbo = true;
                member.waiting = false;
                ctx.set_active(id, Active::Off);
            } else if member.waiting {
                self.release(ctx, id);
            }
        }
        // The rooms keep their delivery lists (the replay is for them).
        for room in self.rooms.values_mut() {
            room.awaiting.clear();
            room.replay = None;
            (room.joins, room.leaves, room.sub, room.acks) = (0, 0, Sub::Off, 0);
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
        self.after(ctx);
        self.gauges(ctx);
    }
}
