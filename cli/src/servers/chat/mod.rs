//! The chat server: nicknames, rooms, and a fan-out that copies nothing.
//!
//! # The protocol
//!
//! Everything is a line. Clients may end lines in `\n` or `\r\n`; the
//! server's lines end in `\n`. A client gets the nickname `guestN` and joins
//! the room `lobby` on connect; every member of `lobby`, the newcomer
//! included, receives `* guestN joined`.
//!
//! | client sends | who receives what |
//! |---|---|
//! | `TEXT` (not starting with `/`) | the room, sender included: `NICK: TEXT` |
//! | `/nick NAME` | the room: `* OLD is now NAME` |
//! | `/join ROOM` | the old room: `* NICK left`; the new room, joiner included: `* NICK joined` |
//! | `/who` | the sender: `* members: ` and the room's nicknames, sorted (byte order), one space apart |
//! | `/quit` | the sender: `* bye`, then the connection is closed; the room: `* NICK left` |
//! | (disconnects, for any reason) | the room: `* NICK left` |
//!
//! Names (nicknames and rooms) are 1–32 characters of `A-Z a-z 0-9 _ -`,
//! compared case-sensitively. A room exists while it has members. `guestN`
//! numbers are never reused in a server's life; if someone has taken the
//! name `guestN` with `/nick`, that number is skipped.
//!
//! # Bad input, and what happens to it
//!
//! Nothing a client sends can crash or stall the server, or reach another
//! client as anything but a well-formed line. Error lines go to the sender
//! alone and start with `! `.
//!
//! | input | outcome |
//! |---|---|
//! | empty line (`\n` or `\r\n` alone) | ignored |
//! | a line containing a NUL byte | `! NUL bytes are not allowed`; nothing relayed |
//! | a line that is not valid UTF-8 | `! invalid UTF-8`; nothing relayed (others only ever receive UTF-8) |
//! | a line longer than `--max-frame` (with its `\n`) | the reactor closes the connection (protocol error, logged); the room: `* NICK left` |
//! | `/nick`, or `/nick A B` | `! usage: /nick NAME` |
//! | `/join`, or `/join A B` | `! usage: /join ROOM` |
//! | `/who x` | `! usage: /who` |
//! | `/quit x` | `! usage: /quit` |
//! | a name over 32 characters | `! name too long: at most 32 characters` |
//! | a name with other characters | `! invalid name: use only A-Z a-z 0-9 _ -` |
//! | `/nick` a name someone else has | `! nickname NAME is in use` |
//! | `/nick` one's own name | `! you are already NAME` |
//! | `/join` one's own room | `! you are already in ROOM` |
//! | any other line starting with `/` (commands are case-sensitive: `/NICK` is unknown) | `! unknown command: WORD (commands: /nick /join /who /quit)` |
//! | a final line without `\n` at end of stream | handled like any line, then the client has left |
//!
//! Arguments are separated by spaces or tabs; extra blanks around them are
//! ignored. A message's text is relayed exactly as sent (minus its line
//! end), blanks and all. [`command::parse`] applies the rules that depend
//! on the line alone.
//!
//! # Fan-out: one copy per member per turn
//!
//! One message to a room of N members costs:
//!
//! - **Reading**: none per message. The sender's bytes arrive in its pooled
//!   read buffer, one `read` for as many lines as have arrived (up to
//!   64 KiB); each line is handed to [`Chat::on_frame`] as a slice of that
//!   buffer.
//! - **Formatting: once.** `NICK: TEXT\n` is appended to its room's batch
//!   for this loop turn (see [`batch`]); the batch's buffer is reused, so
//!   a warm server allocates nothing per message.
//! - **Queuing: at most one copy per member per turn.** When the turn ends
//!   ([`edgeloop::Handler::on_turn_end`]), each room's batch — every line
//!   its senders' reads carried in this turn — goes to each member in the
//!   room's order: written at once where the member has nothing queued
//!   ([`Ctx::send_now`], no copy), else copied once into its contiguous
//!   output ([`Ctx::send`]); a batch of
//!   [`edgeloop::reactor::ctx::SHARE_MIN`] bytes or more is shared by
//!   reference instead ([`Ctx::send_shared`]). A 41-byte line shared by
//!   reference cost a reference count, a queue entry and an iovec per
//!   member; a copy of the whole batch costs one `memcpy`.
//! - **Writing: one system call per member per turn.** A member written
//!   at once costs its `send`; the reactor flushes every other dirty
//!   connection once, just before `epoll_wait`, with one `sendmsg` over
//!   its pending 4 KiB chunks (up to 64 of them).
//!
//! Measured with `scripts/chat-fanout.sh` (100 members, 4 senders, 32-byte
//! texts, one noisy run): 232 ns of server CPU per delivery with a
//! reference per line, 80 ns with a copy per line, 21 ns with a copy per
//! batch. BENCHMARKS.md, "Chat fan-out", has the table beside Go and tokio.
//!
//! # Order and slow consumers
//!
//! The loop is single-threaded and every output queue is first-in
//! first-out, so every member of a room receives the room's messages in the
//! order the server handled them, the sender included.
//!
//! The server runs with [`edgeloop::OverLimit::Disconnect`]: a member whose
//! pending output passes `--max-outbuf` is disconnected by the reactor
//! (`CloseReason::OutbufFull`), its queued references are dropped, and
//! [`Chat::on_close`] tells the room it left. Nobody waits for a slow
//! member: a broadcast only queues, and the sender is never paused for
//! someone else's backlog. `--send-timeout` and `--idle-timeout` close
//! members the same way.
//!
//! "Pending" means what the kernel has refused: before disconnecting, the
//! reactor offers the queue to the kernel, so a burst queued in one loop
//! iteration does not cut off a member that reads promptly.
//!
//! # Flood control
//!
//! Each client has a token bucket (`--chat-rate R` lines per second,
//! bursts of up to 2R; commands count; 0 turns it off); a client that
//! empties it is not read until about 10 ms' worth has refilled, so TCP
//! pushes back on a flooder and nobody else is slowed. See [`flood`].
//! Each throttling is counted (`throttled=` in `--stats`).
//!
//! # Leaving
//!
//! `/quit` is announced at once, when the command is handled: the reactor
//! then flushes `* bye`, shuts down the write side and waits (briefly) for
//! the client's FIN before calling `on_close`, and the room should not wait
//! with it. The member is forgotten at that moment, so `on_close` has
//! nothing left to announce. A client that shuts down its write side has
//! left as well: the reactor sends what it is owed, then closes, and
//! `on_close` announces it. At shutdown (SIGINT/SIGTERM) every connection
//! is closing and can receive nothing more, so no notices are sent.
//!
//! # Across servers (`--redis`)
//!
//! With [`Chat::with_redis`], every chat server on one Redis database is
//! one chat: the protocol above, byte for byte, with rooms, nicknames,
//! `guestN` numbers and `/who` shared. The design, and why:
//!
//! - **Redis is the sequencer, not a cache.** Every room event is
//!   numbered and published by a Lua script (a room's message lines of one
//!   loop turn by one call, each still an event of its own); a server
//!   shows its members
//!   a room's lines only as they come back through its subscription — the
//!   sender's own too. So every member, on every server, sees one order
//!   ([`shared`], "Redis is the sequencer"; the scripts and keys are in
//!   [`lua`]). A server that delivered locally first would show its own
//!   members a different order than the others see.
//! - **Its connections are the reactor's own.** Two per chat instance —
//!   pipelined commands, and the subscription (a subscribed RESP2
//!   connection accepts nothing else) — connected with
//!   [`Ctx::connect`], read and written like any client, bounded like any
//!   client: nothing blocks, nothing needs a thread ([`redis`]).
//! - **RESP on the library's own framing.** RESP is lines and counted
//!   bulk strings, exactly what `Line` and `Exact(n)` framing cut; a small
//!   state machine on top reads replies zero-copy from the read buffer
//!   ([`resp`]).
//! - **Redis lost is an event, not a failure.** Clients stay connected
//!   and are told; what needs Redis is refused rather than half done;
//!   reconnection never gives up and registers everyone again
//!   ([`shared`], "When Redis is lost").
//! - **Servers die; their members leave.** A liveness key with a short
//!   TTL per server, and one atomic script that any survivor may run, so
//!   each member of a dead server is announced exactly once ([`redis`],
//!   "Liveness").
//!
//! Faults are the normal case, and each has its place:
//!
//! - **A server paused or a Redis stalled** past the liveness margin:
//!   the server checks its lease before it acts and treats Redis as lost
//!   first; every script checks a fencing token, so a server declared
//!   dead changes nothing; returning, it announces its members joined
//!   again ([`link`], "Fencing").
//! - **A subscription or link dropped, Redis restarted empty, a failover
//!   that lost writes**: each room has a bounded history in Redis and a
//!   sequence never reused; a returning server replays what its members
//!   missed, or tells them `* some lines may have been lost` at the place
//!   of the gap ([`lua`], "Sequence numbers and history"; [`shared`],
//!   "Gaps and replay"). Every line a member sends gets one outcome: its
//!   own line back, or `! chat backend unavailable` ([`link`], "When Redis
//!   is lost").
//! - **One member asking much**: answers for one member are never
//!   published ([`shared`], "Answers stay on the member's server").
//! - **Redis memory**: only what is live is kept; a room nobody is in has
//!   no key ([`lua`]). Run Redis with `maxmemory-policy noeviction`.
//! - **Redis slower than the servers**: past a bound of commands in
//!   flight, the server stops reading its members until Redis catches up
//!   ([`redis::IN_FLIGHT_HIGH`]), as flood control does.
//! - **An error reply** (OOM, `LOADING`) is answered to the member it was
//!   for; the link stays ([`link`]).
//! - **Credentials**: `redis://[USER]:PASSWORD@…`, `AUTH` on every
//!   connection; the password is masked in every message ([`url::RedisUrl`]).
//! - **Failover with Sentinel** (`redis-sentinel://…/MASTER`): the master
//!   is asked for at every reconnection, off the reactor's thread, and
//!   checked with `ROLE`; `READONLY` means it was failed over: the link
//!   is dropped and found again ([`url::locate`], and `Bus::connect` in [`redis`]).
//!
//! - **Exactly once**: a server's script calls are numbered and each runs
//!   only after the one before it, so calls sent again after a script
//!   flush never run twice ([`lua`], "Exactly once").
//!
//! The fan-out itself stays local, through the per-turn batches as above:
//! Redis carries one copy of a line per server, whatever the number of
//! members.
//! Flood control is applied by the client's own server before anything
//! is published.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use edgeloop::{Active, CloseReason, Config, ConnId, Ctx, Handler};

pub mod batch;
pub mod command;
pub mod figures;
pub mod flood;
pub mod link;
pub mod lua;
pub mod redis;
pub mod resp;
pub mod shared;
pub mod url;
pub mod web;

use batch::{Batches, Flush};
use command::Command;
pub use figures::ChatCounters;
use flood::Bucket;
use redis::Bus;
use url::RedisUrl;

/// The room every client joins on connect.
pub const LOBBY: &str = "lobby";
/// The longest nickname or room name, in characters.
pub const MAX_NAME: usize = 32;

/// The default `--chat-rate`: lines per second from each client.
pub const DEFAULT_RATE: u32 = 1000;

/// The reactor settings the chat wants on top of the server's: a chat
/// line read is written N times (fan-out), so one read's worth per sender
/// per turn keeps each loop iteration short; with Redis, a tick drives
/// the reconnections, heartbeats and timeouts.
pub fn tune(config: Config, redis: bool) -> Config {
    let tick = if redis { redis::TICK } else { config.tick };
    Config { read_budget: edgeloop::buffer::READ_BUF_SIZE, tick, ..config }
}

/// The chat server: see the module docs for the protocol.
#[derive(Debug, Default)]
pub struct Chat {
    /// Lines per second handled from each client (0: no limit).
    rate: f64,
    /// Per-connection state, indexed by [`ConnId::index`] (slab keys are
    /// dense). `None` for free slots, for members that have quit, and for
    /// the connections to Redis.
    members: Vec<Option<Member>>,
    /// Members connected (a gauge).
    population: usize,
    /// Rooms with at least one member here (with Redis, also those being
    /// joined or left).
    rooms: HashMap<String, Room>,
    /// Nicknames in use (without Redis).
    nicks: HashSet<String>,
    /// The last `guestN` number given out (without Redis).
    guests: u64,
    /// The last serial number given to a member (names it in Redis).
    serials: u64,
    /// Where outgoing lines are assembled; reused, so it allocates only
    /// while warming up.
    scratch: Vec<u8>,
    /// With `--redis`: the connections to Redis.
    bus: Option<Box<Bus>>,
    /// With `--redis`: Redis was lost and the members were told.
    outage: bool,
    /// Message lines of this turn, per room (see [`batch`]).
    batches: Batches,
    /// Message lines handled this turn, added to the `messages` counter
    /// at its end: looking the counters up for every line cost 8 % of the
    /// CPU at 10 members (BENCHMARKS.md, "Chat fan-out").
    said: u64,
    /// With `--redis`: too many commands in flight to Redis; the members
    /// are not read until it catches up (backpressure).
    congested: bool,
}

#[derive(Debug)]
struct Member {
    /// Its connection: tables are indexed by `id.index()`, and a walk over
    /// them needs the whole id back (ids carry a generation).
    id: ConnId,
    /// Empty until Redis has given the member a `guestN`.
    nick: String,
    room: String,
    /// Its lines (see [`flood`]).
    bucket: Bucket,
    /// Names the member in Redis (connection ids are reused).
    serial: u64,
    /// Where its registration in Redis stands (always `Done` without).
    reg: Reg,
    /// A room it is waiting to enter (its subscription is not yet
    /// acknowledged).
    target: Option<String>,
    /// Paused by flood control.
    throttled: bool,
    /// Paused until Redis answers (its registration, a command): its
    /// lines wait, in order.
    waiting: bool,
    /// Told `* chat backend unavailable`, not yet `restored`.
    told: bool,
    /// Its own room events sent to Redis, and come back: while some are
    /// on their way, an answer to it waits behind them in `later`.
    sent: u64,
    seen: u64,
    /// Its messages on their way, as members read them (each gets one
    /// outcome; see `Chat::forgotten` in `link` for why the text is kept).
    in_flight: VecDeque<Vec<u8>>,
    /// Answers waiting for their place among its own lines.
    later: VecDeque<Later>,
    /// A `/join` or `/nick` on its way: its room and nickname before.
    asked: Option<(String, String)>,
    /// A `/who` on its way.
    asking_who: bool,
    /// Redis was lost with something of its in flight: not read until
    /// the link is back and its outcome known.
    limbo: bool,
    /// Its `/quit` waits behind its own lines.
    quitting: bool,
}

/// An answer for one member, held until `mark` of its own events have
/// come back (or its `/quit`).
#[derive(Debug)]
struct Later {
    mark: u64,
    line: Option<Vec<u8>>,
    quit: bool,
}

/// A member's registration in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    /// Not registered, and nothing sent yet.
    None,
    /// `Connect` sent; its nickname is coming.
    Sent,
    /// Registered: it has its nickname.
    Done,
}

/// A room's subscription on this server (with Redis).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Sub {
    /// Not subscribed.
    #[default]
    Off,
    /// `SUBSCRIBE` sent, not yet acknowledged.
    Subscribing,
    /// Acknowledged: the room's events arrive.
    On,
    /// `UNSUBSCRIBE` sent.
    Leaving,
}

#[derive(Debug, Default)]
struct Room {
    /// The members here that receive the room's lines, in joining order.
    /// Any fixed order would do: every member's queue is FIFO, so all see
    /// the same sequence of messages.
    members: Vec<ConnId>,
    /// With Redis: the subscription.
    sub: Sub,
    /// Members (id, serial) waiting for the subscription to enter.
    awaiting: Vec<(ConnId, u64)>,
    /// Join and leave events of our members published and not yet back.
    joins: u32,
    leaves: u32,
    /// The sequence number the next event should have (0: unknown).
    next_seq: u64,
    /// `SUBSCRIBE`/`UNSUBSCRIBE` acknowledgements still due.
    acks: u32,
    /// While the room's history is replayed: the live events, held.
    replay: Option<Vec<Vec<u8>>>,
}

impl Room {
    /// Whether this server still needs the room's events.
    fn needed(&self) -> bool {
        !self.members.is_empty() || !self.awaiting.is_empty() || self.joins > 0 || self.leaves > 0
    }
}

impl Handler for Chat {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        if self.bus.is_some() {
            ChatCounters::of(ctx).backend_up = false;
            self.link_tick(ctx);
        } else {
            ChatCounters::of(ctx).backend_up = true;
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if self.bus.as_ref().and_then(|b| b.which(id)).is_some() {
            return self.link_opened(ctx, id);
        }
        if Chat::waits_for_upgrade(ctx, id) {
            return; // a member once upgraded (see `web`)
        }
        self.flush_lines(ctx);
        self.serials += 1;
        let nick = if self.bus.is_some() { String::new() } else { self.next_guest() };
        if self.members.len() <= id.index() {
            self.members.resize_with(id.index() + 1, || None);
        }
        let member = Member {
            id,
            nick,
            room: LOBBY.to_string(),
            bucket: Bucket::full(self.rate, ctx.now()),
            serial: self.serials,
            reg: if self.bus.is_some() { Reg::None } else { Reg::Done },
            target: None,
            throttled: false,
            waiting: false,
            told: false,
            sent: 0,
            seen: 0,
            in_flight: VecDeque::new(),
            later: VecDeque::new(),
            asked: None,
            asking_who: false,
            limbo: false,
            quitting: false,
        };
        self.members[id.index()] = Some(member);
        self.population += 1;
        if self.bus.is_some() {
            self.arrive(ctx, id);
        } else {
            self.enter(ctx, id, LOBBY);
        }
        self.gauges(ctx);
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        if let Some(which) = self.bus.as_ref().and_then(|b| b.which(id)) {
            return self.link_frame(ctx, which, id, frame);
        }
        if !self.web_frame(ctx, id, frame) {
            return;
        }
        if self.bus.is_some() && self.lease_lost(ctx) {
            self.after(ctx);
        }
        if self.rate > 0.0 {
            self.spend_token(ctx, id);
        }
        let command = command::parse(frame);
        if !matches!(command, Ok(Command::Say(_) | Command::Empty)) {
            self.flush_lines(ctx); // see "Order" in `batch`
        }
        match command {
            Ok(Command::Empty) => return,
            Ok(Command::Say(text)) if self.bus.is_some() => self.publish(ctx, id, text),
            Ok(Command::Say(text)) => {
                let Some(member) = self.members.get(id.index()).and_then(Option::as_ref) else {
                    return;
                };
                self.batches.push(ctx, &member.room, &[member.nick.as_bytes(), b": ", text]);
                self.said += 1;
            }
            Ok(Command::Nick(name)) => self.nick(ctx, id, name),
            Ok(Command::Join(room)) => self.join(ctx, id, room),
            Ok(Command::Who) => self.who(ctx, id),
            Ok(Command::Quit) => self.quit(ctx, id),
            Err(error) => self.answer(ctx, id, &["! ", &error.to_string()]),
        }
        self.after(ctx);
    }

    /// The throttled client's budget has refilled: its waiting lines now.
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if let Some(member) = self.members.get_mut(id.index()).and_then(Option::as_mut) {
            member.throttled = false;
            if !member.waiting && !member.limbo && !self.congested {
                ctx.set_active(id, Active::On);
            }
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) {
        if let Some(which) = self.bus.as_ref().and_then(|b| b.which(id)) {
            return self.link_closed(ctx, which, reason);
        }
        self.flush_lines(ctx);
        // None: the member quit, and was announced then.
        let Some(member) = self.members.get_mut(id.index()).and_then(Option::take) else {
            return;
        };
        self.population -= 1;
        if self.bus.is_some() {
            self.depart(ctx, id, member, reason == CloseReason::Shutdown);
            self.after(ctx);
        } else {
            self.nicks.remove(&member.nick);
            self.remove_from_room(id, &member.room);
            if reason != CloseReason::Shutdown {
                self.broadcast(ctx, &member.room, &["* ", &member.nick, " left"]);
            }
        }
        self.gauges(ctx);
    }

    fn on_turn_end(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(bus) = self.bus.as_deref_mut() {
            bus.flush_messages(ctx);
        }
        self.send_batches(ctx, Flush::TurnEnd);
        ChatCounters::of(ctx).messages += std::mem::take(&mut self.said);
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        if self.bus.is_some() {
            self.link_tick(ctx);
            self.room_keys(ctx);
        }
    }

    /// With Redis: every member's leave, published before the connections
    /// close (see "Across servers").
    fn on_stop(&mut self, ctx: &mut Ctx<'_>) {
        if self.bus.is_some() {
            self.retire(ctx);
        }
    }
}

impl Chat {
    /// A chat server handling at most `rate` lines per second from each
    /// client, in bursts of up to `2 * rate`; 0 means no limit.
    pub fn new(rate: u32) -> Chat {
        Chat { rate: rate.into(), ..Chat::default() }
    }

    /// A chat server sharing its rooms, nicknames and `/who` with every
    /// chat server on the Redis at `addr` (see "Across servers");
    /// `max_frame` is the reactor's. [`url::probe`] checks the URL and
    /// finds the address.
    pub fn with_redis(rate: u32, url: RedisUrl, addr: SocketAddr, max_frame: usize) -> Chat {
        let bus = Bus::new(url, addr, max_frame, std::time::Instant::now());
        Chat { bus: Some(Box::new(bus)), ..Chat::new(rate) }
    }

    /// The next free `guestN` (without Redis): numbers are never reused,
    /// and one someone has taken with `/nick` is skipped.
    fn next_guest(&mut self) -> String {
        loop {
            self.guests += 1;
            let nick = format!("guest{}", self.guests);
            if self.nicks.insert(nick.clone()) {
                return nick;
            }
        }
    }

    /// Charge one line to the client's bucket; when it runs dry, stop
    /// delivering its lines until about 10 ms' worth have refilled.
    fn spend_token(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        let Some(member) = self.members.get_mut(id.index()).and_then(Option::as_mut) else { return };
        if let Some(wait) = member.bucket.spend(self.rate, ctx.now()) {
            member.throttled = true;
            ctx.set_active(id, Active::Off);
            ctx.set_timer(id, wait);
            ChatCounters::of(ctx).throttled += 1;
        }
    }

    fn member(&self, id: ConnId) -> Option<&Member> {
        self.members.get(id.index()).and_then(Option::as_ref)
    }

    fn nick(&mut self, ctx: &mut Ctx<'_>, id: ConnId, name: &str) {
        let Some(member) = self.members.get_mut(id.index()).and_then(Option::as_mut) else {
            return;
        };
        if member.nick == name {
            return self.answer(ctx, id, &["! you are already ", name]);
        }
        if self.bus.is_some() {
            return self.rename(ctx, id, name);
        }
        if self.nicks.contains(name) {
            return self.reply(ctx, id, &["! nickname ", name, " is in use"]);
        }
        let old = std::mem::replace(&mut member.nick, name.to_string());
        let room = member.room.clone();
        self.nicks.remove(&old);
        self.nicks.insert(name.to_string());
        self.broadcast(ctx, &room, &["* ", &old, " is now ", name]);
    }

    fn join(&mut self, ctx: &mut Ctx<'_>, id: ConnId, room: &str) {
        let Some(member) = self.members.get_mut(id.index()).and_then(Option::as_mut) else {
            return;
        };
        if member.room == room {
            return self.answer(ctx, id, &["! you are already in ", room]);
        }
        if self.bus.is_some() {
            return self.move_to(ctx, id, room);
        }
        let old = std::mem::replace(&mut member.room, room.to_string());
        let nick = member.nick.clone();
        self.remove_from_room(id, &old);
        self.broadcast(ctx, &old, &["* ", &nick, " left"]);
        self.enter(ctx, id, room);
    }

    fn who(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if let Some(bus) = &self.bus {
            if bus.link == redis::Link::Up {
                return self.who_everywhere(ctx, id);
            }
            return self.who_here(ctx, id);
        }
        let Some(room) = self.member(id).and_then(|m| self.rooms.get(&m.room)) else {
            return;
        };
        let mut nicks: Vec<&str> =
            room.members.iter().filter_map(|&m| self.member(m)).map(|m| m.nick.as_str()).collect();
        nicks.sort_unstable();
        let list = nicks.join(" ");
        self.reply(ctx, id, &["* members: ", &list]);
    }

    /// `* bye`, a graceful close, and the room told now rather than when
    /// the reactor has finished closing (see "Leaving").
    fn quit(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if self.bus.is_some() && self.quit_later(ctx, id) {
            return;
        }
        self.reply(ctx, id, &["* bye"]);
        ctx.close(id);
        let Some(member) = self.members.get_mut(id.index()).and_then(Option::take) else {
            return;
        };
        self.population -= 1;
        if self.bus.is_some() {
            self.depart(ctx, id, member, false);
        } else {
            self.nicks.remove(&member.nick);
            self.remove_from_room(id, &member.room);
            self.broadcast(ctx, &member.room, &["* ", &member.nick, " left"]);
        }
        self.gauges(ctx);
    }

    /// Add `id` (whose `room` is already set) to `room` and announce it
    /// (without Redis).
    fn enter(&mut self, ctx: &mut Ctx<'_>, id: ConnId, room: &str) {
        self.rooms.entry(room.to_string()).or_default().members.push(id);
        let Some(member) = self.member(id) else { return };
        let nick = member.nick.clone();
        self.broadcast(ctx, room, &["* ", &nick, " joined"]);
        self.gauges(ctx);
    }

    /// Rooms and members now, for `--stats` and metrics.
    fn gauges(&self, ctx: &mut Ctx<'_>) {
        let counters = ChatCounters::of(ctx);
        counters.rooms = self.rooms.len() as u64;
        counters.members = self.population as u64;
    }

    /// With Redis (and so perhaps `--workers`): which rooms this worker
    /// has, as hashes of their names, for the server's sum to count a room
    /// with members on two workers once (see
    /// [`ChatCounters::room_keys`]). Once a tick: the count
    /// itself is exact at once, the overlap at most a tick late.
    fn room_keys(&self, ctx: &mut Ctx<'_>) {
        let mut keys: Vec<u64> = self.rooms.keys().map(|name| figures::room_key(name)).collect();
        keys.sort_unstable();
        let counters = ChatCounters::of(ctx);
        // The count with its keys, so that the sum subtracts the overlap
        // from counts that agree with it.
        counters.rooms = keys.len() as u64;
        counters.room_keys = Some(keys.into());
    }

    /// Take `id` out of `room`; an empty room ceases to exist (without
    /// Redis).
    fn remove_from_room(&mut self, id: ConnId, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.members.retain(|&m| m != id);
            if r.members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// A line to the sender alone, in order with the lines it has sent:
    /// with Redis, behind its events still on their way.
    fn answer(&mut self, ctx: &mut Ctx<'_>, id: ConnId, parts: &[&str]) {
        if self.bus.is_some() {
            self.tell(ctx, id, parts);
        } else {
            self.reply(ctx, id, parts);
        }
    }

    /// One line to one connection (an error, `* bye`): copied into its
    /// output queue.
    fn reply(&mut self, ctx: &mut Ctx<'_>, id: ConnId, parts: &[&str]) {
        self.flush_lines(ctx);
        assemble(&mut self.scratch, parts);
        // Refused only if the connection is closing: nobody to tell.
        let _ = ctx.send(id, &self.scratch);
    }

    /// `line` to one member, behind the room lines of this turn (see
    /// "Order" in `batch`).
    fn send_now(&mut self, ctx: &mut Ctx<'_>, id: ConnId, line: &[u8]) {
        self.flush_lines(ctx);
        // Refused only if the connection is closing: nobody to tell.
        let _ = ctx.send(id, line);
    }

    /// Queue the lines of this turn waiting in [`Chat::batches`].
    fn flush_lines(&mut self, ctx: &mut Ctx<'_>) {
        self.send_batches(ctx, Flush::MidTurn);
    }

    /// Send the lines waiting in [`Chat::batches`] to their rooms' members.
    fn send_batches(&mut self, ctx: &mut Ctx<'_>, when: Flush) {
        let rooms = &self.rooms;
        self.batches.flush(ctx, when, |room| rooms.get(room).map(|r| r.members.as_slice()));
    }

    /// One line to every member of `room`.
    fn broadcast(&mut self, ctx: &mut Ctx<'_>, room: &str, parts: &[&str]) {
        assemble(&mut self.scratch, parts);
        fan_out(ctx, self.rooms.get(room), &self.scratch);
    }
}

/// `line` to every member of `room` (see [`batch::send_to_all`]).
fn fan_out(ctx: &mut Ctx<'_>, room: Option<&Room>, line: &[u8]) {
    if let Some(room) = room {
        batch::send_to_all(ctx, &room.members, line);
    }
}

/// `parts` joined, plus `\n`, into `buf`.
fn assemble<P: AsRef<[u8]>>(buf: &mut Vec<u8>, parts: &[P]) {
    buf.clear();
    append_line(buf, parts);
}

/// `parts` joined, plus `\n`, added to `buf`.
fn append_line<P: AsRef<[u8]>>(buf: &mut Vec<u8>, parts: &[P]) {
    buf.reserve(parts.iter().map(|p| p.as_ref().len()).sum::<usize>() + 1);
    for part in parts {
        buf.extend_from_slice(part.as_ref());
    }
    buf.push(b'\n');
}
