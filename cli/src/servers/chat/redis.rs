//! The bus: a chat server's two connections to Redis.
//!
//! ```text
//!            commands (pipelined)                  subscription
//!   chat ──▶ EVALSHA message ... ─────▶ Redis ───▶ *3 message chan:ROOM "SEQ TAG LINE"
//!        ◀── :17 (replies, in order) ◀──        ◀── SUBSCRIBE / UNSUBSCRIBE
//! ```
//!
//! Both are ordinary connections of the chat's own reactor, started with
//! [`Ctx::connect`] and owned by the chat handler, which tells them from
//! its clients by their [`ConnId`]: nothing blocks, nothing needs a thread.
//! Two, because a RESP2 connection that has subscribed accepts nothing but
//! (P)(UN)SUBSCRIBE, PING and QUIT.
//!
//! - **Commands** are pipelined: each is written as soon as it is made,
//!   and a FIFO (`Pending`) remembers what each reply is for — Redis
//!   answers in order. Scripts are called with `EVALSHA`; a `NOSCRIPT`
//!   answer (the script cache was flushed: Redis restarted, or failed over
//!   to a replica that never saw the script) sends the same call again
//!   with `EVAL` and the script's text. To make that possible the
//!   arguments of every script call in flight are kept in one reused
//!   buffer (a copy of each, no allocation once warm). The calls are
//!   numbered, and each runs only after the one before it (see
//!   [`super::lua`], "Exactly once"), so every call behind a refused one
//!   was refused too, and is sent again with it, in order (see
//!   `Bus::call_again`): nothing runs twice, nothing overtakes.
//! - **The subscription** carries every room with a member on this server,
//!   and the server's own liveness channel.
//!
//! # Lost, and found again
//!
//! Redis is lost when either connection fails or ends, when a reply or a
//! subscription acknowledgement has not come within [`REPLY_TIMEOUT`],
//! when the server's own liveness probe (published every [`HEARTBEAT`]
//! through the command connection) has not come back through the
//! subscription within that time — a connection can look healthy while
//! the Redis behind it no longer delivers (after a failover,
//! centrifugo#1189) — when the server's lease has run out (see
//! [`super::link`], "Fencing"), when a script answers `FENCED`, when a
//! reply breaks the protocol, when the handshake is refused, or when our
//! output to Redis passes [`OUTBUF`] (a Redis that stops reading). An
//! error answer to one member's command is not a loss: it is answered to
//! that member. When lost, both connections are aborted and the chat goes
//! on without Redis (see the chat's docs); the bus reconnects after a
//! back-off that doubles from [`BACKOFF_MIN`] to at most [`BACKOFF_MAX`],
//! each attempt bounded by [`CONNECT_TIMEOUT`] — and never gives up
//! (ActionCable's listener gave up after one attempt, rails#27659).
//!
//! A new pair of connections goes through the states of `Link` (the
//! steps are in [`super::link`], "Finding Redis again"); the link is up
//! once both the reply to the final `PUBLISH` of `synced` on the server's
//! own channel (behind every reply of the registration) and the message
//! itself (behind every event the registration published) have come back.
//!
//! # Backpressure
//!
//! Commands are pipelined without waiting, so a server could queue for a
//! slow Redis without limit. Past [`IN_FLIGHT_HIGH`] commands in flight it
//! stops reading its members (their lines wait in their sockets, and TCP
//! pushes back, as with flood control), and reads them again below
//! [`IN_FLIGHT_LOW`].
//!
//! # Liveness
//!
//! Every server keeps a key `alive:SERVER` that expires after
//! [`ALIVE_TTL`] and renews it every [`HEARTBEAT`]; every
//! [`REAP_EVERY`] it runs the reaping script, which removes every listed
//! server whose key has expired together with its members (see
//! [`super::lua`]). A server killed without a word is therefore announced
//! within `ALIVE_TTL + REAP_EVERY` (8 s), well inside the 30 s SPEC.md
//! allows. The key's value is the server's fencing token (see
//! [`super::lua`], "Fencing").

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::warn;

use super::lua::Script;
use super::resp::{self, Builder, Encoder, Limits, Reader, Reply};
use super::url::{locate, RedisUrl};
use edgeloop::{ConnId, ConnectOptions, Ctx, Framing, OutputPolicy, OverLimit};

/// A reply not received within this long means Redis is lost. Shorter
/// than the lease's margin ([`ALIVE_TTL`] − [`HEARTBEAT`] − [`LEASE_MARGIN`]
/// is 2.5 s of slack, and a stalled heartbeat is caught by the lease
/// itself): a Redis stall is noticed here before anyone may reap us.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// The lease is held until `ALIVE_TTL − LEASE_MARGIN` after the send of
/// the last heartbeat Redis acknowledged: the key cannot have expired
/// before then (it was set after that send), with this much to spare for
/// clocks that run at slightly different rates and for the loop's tick.
pub const LEASE_MARGIN: Duration = Duration::from_millis(1500);
/// Commands in flight to Redis beyond which a server stops reading its
/// members (backpressure), and below which it reads them again.
pub const IN_FLIGHT_HIGH: usize = 4096;
/// See [`IN_FLIGHT_HIGH`].
pub const IN_FLIGHT_LOW: usize = 1024;
/// Events one replay fetches at most (the newest; before them, a gap).
pub const MAX_REPLAY: usize = 100_000;
/// How often the liveness key is refreshed and the probe sent.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a liveness key outlives its last refresh.
pub const ALIVE_TTL: Duration = Duration::from_secs(6);
/// How often the servers whose liveness key expired are reaped.
pub const REAP_EVERY: Duration = Duration::from_secs(2);
/// The first reconnection delay; it doubles with each failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection attempt that has not succeeded after this long failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the chat looks at its clocks (`Config::tick`).
pub const TICK: Duration = Duration::from_millis(100);
/// A room's batch of lines is sent once it is this long, even before the
/// loop turn ends: one script call stays short (Redis runs nothing else
/// meanwhile).
pub const BATCH_BYTES: usize = 64 * 1024;
/// Output queued for Redis beyond this means Redis is not reading.
pub const OUTBUF: usize = 64 << 20;
/// Channels per `SUBSCRIBE` when re-subscribing after a reconnect.
pub const SUBSCRIBE_BATCH: usize = 256;
/// The smallest frame limit of the links to Redis, whatever `--max-frame`
/// says for clients (see `Bus::new`): a reply's lines, and the pieces a
/// long bulk string is read in.
pub const LINK_FRAME_MIN: usize = 64 * 1024;
/// Elements of an array reply at most.
pub const MAX_ARRAY: usize = 1 << 20;
/// The longest `/who` answer, in bytes of names (a room of some 300 000
/// members); a longer one is refused.
pub const WHO_MAX: usize = 8 << 20;

/// Every key and channel starts with this.
pub const PREFIX: &str = "edgeloop:";

/// A name for this chat instance, unique among the servers of one Redis:
/// the process id, the start time and a count of instances in this
/// process (one per worker). Made of hex digits and `-` only.
pub fn server_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static INSTANCES: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{n:x}", std::process::id(), nanos as u64)
}

/// Where the pair of connections stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Link {
    /// No connection; the next attempt is due at `retry_at`.
    Down,
    /// Both connections started, not yet both established.
    Connecting,
    /// `AUTH`, `SELECT`, `SCRIPT LOAD` and the server's own `SUBSCRIBE`
    /// sent; waiting for every answer.
    Loading,
    /// `Register` sent: the lease, and what Redis has of our members.
    Registering,
    /// The rooms' `SUBSCRIBE`s sent; waiting for their acknowledgements.
    Subscribing,
    /// Each room's history asked for what its members missed.
    Replaying,
    /// The members are being registered again; `synced` marks the end.
    Restoring,
    /// Working.
    Up,
}

/// Which of the two connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Which {
    /// Pipelined commands.
    Cmd,
    /// The subscription.
    Sub,
}

/// What a reply on the command connection is for.
#[derive(Clone, Debug)]
pub(super) enum Op {
    /// `SELECT` or `AUTH`: `+OK`.
    Select,
    /// `ROLE` (with Sentinels): it must be the master.
    Role,
    /// `Register`, sent at `sent`: the members as Redis has them.
    Register { sent: Instant },
    /// A heartbeat sent at `sent`: the lease runs from then.
    Heartbeat { sent: Instant },
    /// `Replay` of a room.
    Replay { room: String },
    /// `/who` for a member.
    Who { id: ConnId, serial: u64 },
    /// `SCRIPT LOAD`: the script's SHA1.
    Load(Script),
    /// Nothing to do with the answer but to check it is not an error.
    Ignore,
    /// `Reap`: how many members were dropped.
    Reap,
    /// `Connect` for a member: its nickname.
    Connect { id: ConnId, serial: u64 },
    /// `Restore` for a member: its nickname now.
    Restore { id: ConnId, serial: u64 },
    /// A `Message` call: the members (id, serial) whose lines it carries,
    /// one entry per line, in order.
    Messages(Vec<(ConnId, u64)>),
    /// `Nick` for a member: 1, or 0 if `name` is taken.
    Nick { id: ConnId, serial: u64, name: String },
    /// `Join` for a member.
    Join { id: ConnId, serial: u64 },
    /// `Leave` of a member of `room` (0: nothing was published).
    Leave { room: String },
    /// The `PUBLISH` of `synced` that ends a restore.
    Synced,
}

/// A script call, as it can be sent again.
#[derive(Clone, Copy, Debug)]
pub(super) struct Call {
    script: Script,
    /// Its number in the chain, for a chained script (see [`super::lua`],
    /// "Exactly once").
    number: Option<u64>,
    /// The length of its arguments in the replay buffer, and their count
    /// (those after the ones the bus writes: keys, server, generation,
    /// number).
    len: usize,
    count: usize,
}

/// A command in flight.
#[derive(Debug)]
pub(super) struct Pending {
    /// What its reply is for.
    pub op: Op,
    /// When it was sent.
    pub sent: Instant,
    /// For a script call: how to send it again.
    pub call: Option<Call>,
    /// Already sent again (see `Bus::call_again`): its own answer, a
    /// refusal, is to be ignored.
    pub superseded: bool,
}

impl Pending {
    /// For a chained call: its number.
    pub fn number(&self) -> Option<u64> {
        self.call.and_then(|c| c.number)
    }
}

/// A room's message lines of one loop turn: the arguments of one
/// `Message` call.
#[derive(Debug, Default)]
struct Outgoing {
    room: String,
    /// `TAG LINE` pairs, encoded as RESP arguments.
    args: Vec<u8>,
    /// Whose lines, one entry per line.
    senders: Vec<(ConnId, u64)>,
}

/// The connections, their readers and the FIFO of commands in flight.
#[derive(Debug)]
pub(super) struct Bus {
    /// Where Redis is.
    pub url: RedisUrl,
    addr: SocketAddr,
    /// This server's id (see [`server_id`]).
    pub server: String,
    /// The liveness channel, `edgeloop:node:SERVER`.
    pub node_channel: Vec<u8>,
    /// What a room's channel name starts with: `edgeloop:DB:chan:`.
    pub chan_prefix: String,
    /// The scripts' texts, for this database.
    bodies: Vec<String>,
    limits: Limits,
    /// Where the pair stands.
    pub link: Link,
    /// The command connection.
    pub cmd: Option<ConnId>,
    /// The subscription.
    pub sub: Option<ConnId>,
    opened: usize,
    /// Replies of the command connection.
    pub cmd_reader: Reader,
    builder: Builder,
    /// Replies and pushes of the subscription.
    pub sub_reader: Reader,
    /// The kind (`message`, `subscribe`, ...) of the push being read.
    pub push_kind: Vec<u8>,
    /// The channel of the push being read.
    pub push_channel: Vec<u8>,
    pending: VecDeque<Pending>,
    /// Arguments of the script calls in flight, in order; `replay_head`
    /// bytes at the front are done with.
    replay: Vec<u8>,
    replay_head: usize,
    /// The number of the next chained script call.
    next_call: u64,
    /// Members' lines of this loop turn, per room, not yet sent (see
    /// "One call per room and turn").
    outgoing: Vec<Outgoing>,
    /// Emptied batches, kept so that a warm server does not allocate.
    spare: Vec<Outgoing>,
    shas: Vec<Option<String>>,
    /// Answers the handshake still waits for: `SCRIPT LOAD`s, `SELECT`s.
    pub handshake_due: usize,
    /// Subscription acknowledgements due, and when the last one came.
    pub acks_due: usize,
    acks_progress: Instant,
    /// The liveness probe in flight, if any: when it was sent.
    pub probe_sent: Option<Instant>,
    /// Halves of the end of a restore seen: the reply to the `synced`
    /// publication, and the publication itself.
    pub synced: u8,
    /// When the next heartbeat and reaping are due.
    pub next_heartbeat: Instant,
    /// See `next_heartbeat`.
    pub next_reap: Instant,
    retry_at: Instant,
    backoff: Duration,
    /// Commands are encoded here.
    pub enc: Encoder,
    /// A message's tag is written here.
    pub mark: String,
    /// Why Redis must be given up for lost, found while handling
    /// something else (a send that failed); acted on when that is done.
    pub failed: Option<String>,
    /// The reactor is shutting down: closing connections is expected.
    pub stopping: bool,
    /// The generation of the current link (raised at each `Register`),
    /// and its text: the fencing token every script checks.
    pub gen: u64,
    /// See `gen`.
    pub gen_text: String,
    /// Until when our lease is known to hold (see [`LEASE_MARGIN`]);
    /// `None` before the first `Register` of a link has come back.
    pub lease_until: Option<Instant>,
    /// The highest `guestN` number this server has seen.
    pub max_guest: u64,
    /// Replays whose answers the handshake still waits for.
    pub replays_due: usize,
    /// With Sentinels: the master's address being asked for, on a thread.
    locating: Option<std::sync::mpsc::Receiver<Result<SocketAddr, String>>>,
}

impl Bus {
    /// A bus for Redis at `addr`; `max_frame` bounds what Redis may send.
    pub fn new(url: RedisUrl, addr: SocketAddr, max_frame: usize, now: Instant) -> Bus {
        let server = server_id();
        // A bulk string carries a chat line (at most max_frame) plus its
        // sequence number, tag and nickname.
        // its sequence number, tag and nickname; an answer to `/who`, at
        // most WHO_MAX bytes of names.
        let bulk = max_frame.max(WHO_MAX).saturating_add(4096);
        // The links' frames are Redis's lines and the pieces bulks are read
        // in, not clients' lines: a small `--max-frame` (16) must not cut an
        // error line or a channel name, so the links have a limit of their
        // own, never below LINK_FRAME_MIN.
        let limits = Limits { frame: max_frame.max(LINK_FRAME_MIN), bulk, array: MAX_ARRAY };
        Bus {
            chan_prefix: format!("{PREFIX}{}:chan:", url.db),
            bodies: Script::ALL.iter().map(|s| s.body_for(url.db)).collect(),
            url,
            addr,
            node_channel: format!("{PREFIX}node:{server}").into_bytes(),
            server,
            limits,
            link: Link::Down,
            cmd: None,
            sub: None,
            opened: 0,
            cmd_reader: Reader::new(limits),
            builder: Builder::default(),
            sub_reader: Reader::new(limits),
            push_kind: Vec::new(),
            push_channel: Vec::new(),
            pending: VecDeque::new(),
            replay: Vec::new(),
            replay_head: 0,
            next_call: 1,
            outgoing: Vec::new(),
            spare: Vec::new(),
            shas: vec![None; Script::ALL.len()],
            handshake_due: 0,
            acks_due: 0,
            acks_progress: now,
            probe_sent: None,
            synced: 0,
            next_heartbeat: now,
            next_reap: now,
            retry_at: now,
            backoff: BACKOFF_MIN,
            enc: Encoder::default(),
            mark: String::new(),
            failed: None,
            stopping: false,
            gen: 0,
            gen_text: String::new(),
            lease_until: None,
            max_guest: 0,
            replays_due: 0,
            locating: None,
        }
    }

    /// A fresh reader with this bus's limits.
    pub fn reader(&self) -> Reader {
        Reader::new(self.limits)
    }

    /// Which of the bus's connections `id` is, if it is one.
    pub fn which(&self, id: ConnId) -> Option<Which> {
        if self.cmd == Some(id) {
            Some(Which::Cmd)
        } else if self.sub == Some(id) {
            Some(Which::Sub)
        } else {
            None
        }
    }

    /// Whether a reconnection attempt is due.
    pub fn retry_due(&self, now: Instant) -> bool {
        self.link == Link::Down && now >= self.retry_at
    }

    /// Start both connections. With Sentinels, the master's address is
    /// asked for first, at every attempt (it moves with a failover), on a
    /// thread: the reactor never waits for it; the next ticks look for the
    /// answer.
    pub fn connect(&mut self, ctx: &mut Ctx<'_>) {
        if self.url.master.is_some() {
            use std::sync::mpsc::TryRecvError;
            match self.locating.take() {
                None => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let url = self.url.clone();
                    let spawned =
                        std::thread::Builder::new().name("sentinel".into()).spawn(move || drop(tx.send(locate(&url))));
                    match spawned {
                        Ok(_) => self.locating = Some(rx),
                        Err(e) => self.fail(format!("cannot ask the Sentinels: {e}")),
                    }
                    return;
                }
                Some(rx) => match rx.try_recv() {
                    Ok(Ok(addr)) => self.addr = addr,
                    Ok(Err(why)) => return self.fail(why),
                    Err(TryRecvError::Empty) => {
                        self.locating = Some(rx);
                        return;
                    }
                    Err(TryRecvError::Disconnected) => return self.fail("the Sentinel query failed".into()),
                },
            }
        }
        let options = ConnectOptions {
            framing: Framing::Line,
            timeout: Some(CONNECT_TIMEOUT),
            max_frame: Some(self.limits.frame),
            ..Default::default()
        };
        let policy = OutputPolicy::new(OUTBUF, OverLimit::Disconnect);
        for which in [Which::Cmd, Which::Sub] {
            match ctx.connect(&self.addr, &options) {
                Ok(id) => {
                    ctx.set_output_policy(id, policy);
                    match which {
                        Which::Cmd => self.cmd = Some(id),
                        Which::Sub => self.sub = Some(id),
                    }
                }
                Err(e) => {
                    self.fail(format!("cannot connect to {}: {}", self.addr, edgeloop::sys::describe(&e)));
                    return;
                }
            }
        }
        self.link = Link::Connecting;
        self.opened = 0;
    }

    /// One of the connections is established; true when both are.
    pub fn opened(&mut self) -> bool {
        self.opened += 1;
        self.opened == 2
    }

    /// Drop both connections and everything in flight; the next attempt
    /// after the back-off. Returns what was in flight.
    pub fn reset(&mut self, ctx: &mut Ctx<'_>) -> VecDeque<Pending> {
        for id in [self.cmd.take(), self.sub.take()].into_iter().flatten() {
            ctx.abort(id);
        }
        self.link = Link::Down;
        self.retry_at = ctx.now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.cmd_reader = self.reader();
        self.sub_reader = self.reader();
        self.builder = Builder::default();
        self.replay.clear();
        self.replay_head = 0;
        // Never sent: their members are waiting for them like for those in
        // flight (see `Chat::lost`).
        while let Some(batch) = self.outgoing.pop() {
            self.recycle(batch);
        }
        self.handshake_due = 0;
        self.acks_due = 0;
        self.probe_sent = None;
        self.synced = 0;
        self.failed = None;
        self.lease_until = None;
        self.replays_due = 0;
        self.locating = None;
        std::mem::take(&mut self.pending)
    }

    /// The link is up: the back-off starts again from its minimum. The
    /// first reaping waits a whole liveness TTL: if Redis was stalled or
    /// restarted, every server's key expired at once, and the others are
    /// reconnecting too (within [`BACKOFF_MAX`] and a handshake) — they
    /// must not be reaped for being a moment slower than this one.
    pub fn up(&mut self, now: Instant) {
        self.link = Link::Up;
        self.backoff = BACKOFF_MIN;
        self.next_heartbeat = now + HEARTBEAT;
        self.next_reap = now + ALIVE_TTL;
    }

    /// Remember that Redis must be given up for lost (the first reason
    /// wins).
    pub fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
    }

    /// Whether something has waited too long for Redis.
    pub fn overdue(&self, now: Instant) -> Option<String> {
        if self.link < Link::Loading {
            return None;
        }
        let late = |since: Instant| now.saturating_duration_since(since) > REPLY_TIMEOUT;
        if self.pending.front().is_some_and(|p| late(p.sent)) {
            return Some(format!("no reply from Redis within {} s", REPLY_TIMEOUT.as_secs()));
        }
        if self.acks_due > 0 && late(self.acks_progress) {
            return Some(format!("no subscription acknowledgement within {} s", REPLY_TIMEOUT.as_secs()));
        }
        if self.probe_sent.is_some_and(late) {
            return Some(format!("the liveness probe did not come back within {} s", REPLY_TIMEOUT.as_secs()));
        }
        None
    }

    /// Queue what `enc` holds on connection `which`; false if there is
    /// no such connection now (nothing will answer).
    fn send(&mut self, ctx: &mut Ctx<'_>, which: Which) -> bool {
        let id = match which {
            Which::Cmd => self.cmd,
            Which::Sub => self.sub,
        };
        let Some(id) = id else { return false };
        if let Err(e) = ctx.send(id, &self.enc.buf) {
            self.fail(format!("cannot send to Redis: {e}"));
        }
        true
    }

    /// Send what `enc` holds as a command whose reply is for `op`.
    fn send_command(&mut self, ctx: &mut Ctx<'_>, op: Op, call: Option<Call>) {
        if self.send(ctx, Which::Cmd) {
            self.pending.push_back(Pending { op, sent: ctx.now(), call, superseded: false });
        } else if let Some(call) = call {
            // Never sent: its arguments are not kept either.
            self.replay.truncate(self.replay.len() - call.len);
        }
    }

    /// A command (not a script) whose reply is for `op`.
    pub fn command(&mut self, ctx: &mut Ctx<'_>, args: &[&[u8]], op: Op) {
        self.flush_messages(ctx);
        self.enc.clear();
        self.enc.command(args);
        self.send_command(ctx, op, None);
    }

    /// Load every script (their SHA1s come back in the replies).
    pub fn load_scripts(&mut self, ctx: &mut Ctx<'_>) {
        for script in Script::ALL {
            self.enc.clear();
            self.enc.command(&[b"SCRIPT", b"LOAD", self.bodies[script.index()].as_bytes()]);
            self.send_command(ctx, Op::Load(script), None);
            self.handshake_due += 1;
        }
    }

    /// A script's SHA1 has come back.
    pub fn loaded(&mut self, script: Script, sha: String) {
        self.shas[script.index()] = Some(sha);
    }

    /// Commands sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// A new generation for a new link: the fencing token.
    pub fn next_gen(&mut self) {
        self.gen += 1;
        self.gen_text = format!("{}", self.gen);
        self.next_call = 1;
    }

    /// The lease holds until `sent + ALIVE_TTL − LEASE_MARGIN`.
    pub fn lease_from(&mut self, sent: Instant) {
        let until = sent + ALIVE_TTL - LEASE_MARGIN;
        if self.lease_until.is_none_or(|u| u < until) {
            self.lease_until = Some(until);
        }
    }

    /// Whether the lease has run out (with the link past `Register`).
    pub fn lease_expired(&self, now: Instant) -> bool {
        self.link >= Link::Subscribing && self.lease_until.is_some_and(|u| now >= u)
    }

    /// Call `script` with `args`. No keys (see [`super::lua`]); for a
    /// script that acts for this server, its id and generation (the
    /// fencing token) come first, then, if it is chained, the call's
    /// number: the bus writes those itself.
    pub fn eval(&mut self, ctx: &mut Ctx<'_>, script: Script, args: &[&[u8]], op: Op) {
        self.flush_messages(ctx);
        let number = script.chained().then(|| {
            self.next_call += 1;
            self.next_call - 1
        });
        self.begin_call(script, number, args.len(), false);
        let rest = self.enc.buf.len();
        for arg in args {
            self.enc.arg(arg);
        }
        self.keep_for_replay(rest);
        let call = Call { script, number, len: self.enc.buf.len() - rest, count: args.len() };
        self.send_command(ctx, op, Some(call));
    }

    /// A member's line for `room`, tagged `tag`: added to the room's
    /// batch, sent at the end of the loop turn (or before any other call,
    /// or once it is [`BATCH_BYTES`] long).
    pub fn message(&mut self, ctx: &mut Ctx<'_>, room: &str, tag: &[u8], line: &[u8], sender: (ConnId, u64)) {
        let at = match self.outgoing.iter().position(|b| b.room == room) {
            Some(at) => at,
            None => {
                if self.outgoing.is_empty() {
                    ctx.flush_at_turn_end();
                }
                let mut batch = self.spare.pop().unwrap_or_default();
                batch.room.push_str(room);
                self.outgoing.push(batch);
                self.outgoing.len() - 1
            }
        };
        let batch = &mut self.outgoing[at];
        resp::bulk(&mut batch.args, tag);
        resp::bulk(&mut batch.args, line);
        batch.senders.push(sender);
        if batch.args.len() >= BATCH_BYTES {
            let batch = self.outgoing.swap_remove(at);
            self.send_messages(ctx, batch);
        }
    }

    /// Send every room's batch of lines (see [`Bus::message`]).
    pub fn flush_messages(&mut self, ctx: &mut Ctx<'_>) {
        // In the order the rooms' first lines came (no two batches share a
        // member, so any order would do; this one is the natural one).
        let mut outgoing = std::mem::take(&mut self.outgoing);
        for batch in outgoing.drain(..) {
            self.send_messages(ctx, batch);
        }
        self.outgoing = outgoing;
    }

    /// One `Message` call for `batch`.
    fn send_messages(&mut self, ctx: &mut Ctx<'_>, mut batch: Outgoing) {
        let number = self.next_call;
        self.next_call += 1;
        let count = 1 + 2 * batch.senders.len();
        self.begin_call(Script::Message, Some(number), count, false);
        let rest = self.enc.buf.len();
        self.enc.arg(&batch.room);
        self.enc.buf.extend_from_slice(&batch.args);
        self.keep_for_replay(rest);
        let call = Call { script: Script::Message, number: Some(number), len: self.enc.buf.len() - rest, count };
        let senders = std::mem::take(&mut batch.senders);
        self.send_command(ctx, Op::Messages(senders), Some(call));
        self.recycle(batch);
    }

    /// Keep an emptied batch for reuse.
    fn recycle(&mut self, mut batch: Outgoing) {
        batch.room.clear();
        batch.args.clear();
        batch.senders.clear();
        self.spare.push(batch);
    }

    /// Start a call of `script` in `enc`: `EVALSHA` (or `EVAL`, if its
    /// SHA1 is unknown or `again`), no keys, and for a script that acts
    /// for the server its id, generation and `number`; `count` arguments
    /// are to follow.
    fn begin_call(&mut self, script: Script, number: Option<u64>, count: usize, again: bool) {
        let own = match (script.for_server(), number) {
            (false, _) => 0,
            (true, None) => 2,
            (true, Some(_)) => 3,
        };
        self.enc.clear();
        self.enc.begin(3 + own + count);
        match self.shas[script.index()].as_deref().filter(|_| !again) {
            Some(sha) => self.enc.arg("EVALSHA").arg(sha),
            None => self.enc.arg("EVAL").arg(&self.bodies[script.index()]),
        };
        self.enc.arg("0");
        if own > 0 {
            self.enc.arg(&self.server).arg(&self.gen_text);
        }
        if let Some(number) = number {
            self.enc.arg(number.to_string());
        }
    }

    /// Keep the arguments of the command in `enc` (from `rest` on) until
    /// its reply.
    fn keep_for_replay(&mut self, rest: usize) {
        if self.replay_head == self.replay.len() {
            self.replay.clear();
            self.replay_head = 0;
        } else if self.replay_head > (1 << 20) && self.replay_head * 2 > self.replay.len() {
            self.replay.drain(..self.replay_head);
            self.replay_head = 0;
        }
        self.replay.extend_from_slice(&self.enc.buf[rest..]);
    }

    /// A script call was refused without running: send it again with
    /// `EVAL` and the script's text.
    ///
    /// A call outside the chain (`Register`, `Who`, `Replay`) is sent
    /// again alone. A chained call is sent again with every chained call
    /// in flight behind it, in order, renumbered from `from`: the chain
    /// refused all of them, since each runs only after the one before it
    /// (see [`super::lua`], "Exactly once"). `from` is the refused call's
    /// own number after `NOSCRIPT` (nothing after the last call that ran
    /// has run), or the one after the last that ran, as `ORDER` says. The
    /// originals are marked superseded; their answers, refusals, are
    /// ignored. `pending` was just taken by [`Bus::reply`]; its arguments
    /// are the last `len` bytes before the replay head.
    pub fn call_again(&mut self, ctx: &mut Ctx<'_>, pending: Pending, from: u64) {
        let Some(call) = pending.call else { return };
        // Copied out first: sending may compact the replay buffer. (A rare
        // path: allocating here is fine.)
        let first = self.replay[self.replay_head - call.len..self.replay_head].to_vec();
        let mut again = vec![(pending.op, call, first)];
        if call.number.is_some() {
            let mut offset = self.replay_head;
            for p in self.pending.iter_mut() {
                let Some(behind) = p.call else { continue };
                if behind.number.is_some() && !p.superseded {
                    p.superseded = true;
                    again.push((p.op.clone(), behind, self.replay[offset..offset + behind.len].to_vec()));
                }
                offset += behind.len;
            }
            self.next_call = from;
        }
        for (op, mut call, args) in again {
            if call.number.is_some() {
                call.number = Some(self.next_call);
                self.next_call += 1;
            }
            self.begin_call(call.script, call.number, call.count, true);
            let rest = self.enc.buf.len();
            self.enc.buf.extend_from_slice(&args);
            self.keep_for_replay(rest);
            self.send_command(ctx, op, Some(call));
        }
    }

    /// `SUBSCRIBE` (or `UNSUBSCRIBE`) these channels, in batches.
    pub fn subscribe(&mut self, ctx: &mut Ctx<'_>, verb: &str, channels: &[Vec<u8>]) {
        for batch in channels.chunks(SUBSCRIBE_BATCH) {
            self.enc.clear();
            self.enc.begin(1 + batch.len()).arg(verb);
            for channel in batch {
                self.enc.arg(channel);
            }
            if !self.send(ctx, Which::Sub) {
                return;
            }
            if self.acks_due == 0 {
                self.acks_progress = ctx.now();
            }
            self.acks_due += batch.len();
        }
    }

    /// A command (`AUTH`, `SELECT`) on the subscription connection before
    /// it subscribes (its `+OK` is counted in `handshake_due`).
    pub fn raw_sub(&mut self, ctx: &mut Ctx<'_>, args: &[&[u8]]) {
        self.enc.clear();
        self.enc.command(args);
        if self.send(ctx, Which::Sub) {
            self.handshake_due += 1;
        }
    }

    /// A subscription acknowledgement came.
    pub fn acked(&mut self, now: Instant) {
        self.acks_due = self.acks_due.saturating_sub(1);
        self.acks_progress = now;
    }

    /// Feed a frame of the command connection; returns a completed reply
    /// and what it was for. Sets the framing the next frame needs.
    pub fn reply(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) -> Option<(Pending, Reply)> {
        let before = self.cmd_reader.framing();
        let reply = match self.cmd_reader.feed(frame) {
            Ok(Some(item)) => self.builder.push(&item),
            Ok(None) => None,
            Err(e) => {
                self.fail(e.to_string());
                return None;
            }
        };
        let after = self.cmd_reader.framing();
        if after != before {
            ctx.set_framing(id, after);
        }
        let reply = reply?;
        let Some(pending) = self.pending.pop_front() else {
            self.fail("a reply from Redis to no command".into());
            return None;
        };
        if let Some(call) = pending.call {
            self.replay_head += call.len;
        }
        Some((pending, reply))
    }

    /// Log an error answer to `op`.
    pub fn refused(&mut self, op: &Op, error: &str) {
        warn!("Redis refused {op:?}: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids_differ() {
        let (a, b) = (server_id(), server_id());
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-'), "{a}");
    }
}
