//! Counters: plain integers on the reactor, printed by `--stats`.
//!
//! A server's figures are its workers' added up ([`Counters::add`]), with
//! one exception: a chat room with members on two workers is one room of
//! the server, not two. So each worker also publishes which rooms it has
//! (hashes of their names, [`ChatCounters::room_keys`]), and the sum
//! counts the rooms two workers share once (the edge case "rooms across
//! workers").

use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::handler::CloseReason;

/// The chat server's figures, kept on its reactor's [`Counters`].
#[derive(Clone, Debug, Default)]
pub struct ChatCounters {
    /// Rooms with a member on this reactor (a gauge); in a sum over
    /// workers, rooms with a member on any of them, each once.
    pub rooms: u64,
    /// Members connected to this reactor (a gauge).
    pub members: u64,
    /// Message lines handled (sent to a room) from this reactor's members.
    pub messages: u64,
    /// Times a client was paused for exceeding `--chat-rate`.
    pub throttled: u64,
    /// With `--redis`: Redis is reachable now (always true without it).
    pub backend_up: bool,
    /// The rooms counted in `rooms`, as [`room_key`]s, sorted (`None`:
    /// not published — a single worker needs none). In a sum, the union.
    pub room_keys: Option<Arc<[u64]>>,
}

/// A room's name as a key for [`ChatCounters::room_keys`]: a 64-bit hash,
/// the same on every thread (`DefaultHasher::new` has fixed keys). Two
/// names colliding would make two rooms count as one, with odds of about
/// one in 2^64 per pair.
pub fn room_key(name: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

/// How many keys two sorted lists share, and their union.
fn overlap(a: &[u64], b: &[u64]) -> (u64, Vec<u64>) {
    let (mut i, mut j, mut shared, mut union) = (0, 0, 0, Vec::with_capacity(a.len().max(b.len())));
    while i < a.len() || j < b.len() {
        let (x, y) = (a.get(i), b.get(j));
        match (x, y) {
            (Some(x), Some(y)) if x == y => {
                shared += 1;
                union.push(*x);
                (i, j) = (i + 1, j + 1);
            }
            (Some(x), Some(y)) if x < y => {
                union.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                union.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                union.push(*y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (shared, union)
}

/// What one reactor counts: plain integers, touched only by its own
/// thread, read by `--stats` (and summed over workers).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Connections accepted by `accept4` (including those refused after).
    pub accepted: u64,
    /// Refused because `--max-conns` connections were open.
    pub refused_full: u64,
    /// Refused by `--allow`/`--deny`.
    pub refused_denied: u64,
    /// `accept4` failures for lack of descriptors or memory
    /// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): each pauses accepting.
    pub accept_exhausted: u64,
    /// Connections closed, by [`CloseReason::index`].
    pub closed: [u64; CloseReason::NAMES.len()],
    /// Callbacks that panicked (each aborted its connection, if any).
    pub panics: u64,
    /// The chat server's own figures (`None` for other applications).
    pub chat: Option<ChatCounters>,
    /// Counted connections open now (a gauge, updated when published).
    pub connections: usize,
    /// Bytes waiting in output queues (a gauge, updated when published).
    pub output_queued: usize,
    /// Payload bytes read.
    pub bytes_in: u64,
    /// Payload bytes written.
    pub bytes_out: u64,
    /// Frames delivered to handlers.
    pub frames_in: u64,
    /// System calls of the data path.
    pub reads: u64,
    /// `send`/`sendmsg` calls.
    pub writes: u64,
    /// `epoll_wait` calls.
    pub waits: u64,
    /// Times a connection was paused because its output passed the limit.
    pub flow_pauses: u64,
    /// The largest output queue seen on any connection, in bytes.
    pub outq_high_water: usize,
    /// Connections to the `/metrics` endpoint open now (a gauge; they
    /// are not among `connections`).
    pub metrics_connections: usize,
    /// Metrics connections refused because too many were open.
    pub metrics_refused: u64,
}

impl Counters {
    /// Add another reactor's figures to these (a server's sum over its
    /// workers): counters and gauges add up; the high-water mark is the
    /// largest.
    pub fn add(&mut self, other: &Counters) {
        self.accepted += other.accepted;
        self.refused_full += other.refused_full;
        self.refused_denied += other.refused_denied;
        self.accept_exhausted += other.accept_exhausted;
        for (mine, theirs) in self.closed.iter_mut().zip(other.closed) {
            *mine += theirs;
        }
        self.panics += other.panics;
        self.connections += other.connections;
        self.output_queued += other.output_queued;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.frames_in += other.frames_in;
        self.reads += other.reads;
        self.writes += other.writes;
        self.waits += other.waits;
        self.flow_pauses += other.flow_pauses;
        self.outq_high_water = self.outq_high_water.max(other.outq_high_water);
        self.metrics_connections += other.metrics_connections;
        self.metrics_refused += other.metrics_refused;
        if let Some(theirs) = &other.chat {
            let mine = self.chat.get_or_insert_with(|| ChatCounters { backend_up: true, ..ChatCounters::default() });
            // Rooms both have are one room each (see the module docs).
            let (shared, keys) = match (mine.room_keys.as_deref(), theirs.room_keys.as_deref()) {
                (Some(a), Some(b)) => {
                    let (shared, union) = overlap(a, b);
                    (shared, Some(union.into()))
                }
                _ => (0, mine.room_keys.clone().or_else(|| theirs.room_keys.clone())),
            };
            mine.room_keys = keys;
            mine.rooms = (mine.rooms + theirs.rooms).saturating_sub(shared);
            mine.members += theirs.members;
            mine.messages += theirs.messages;
            mine.throttled += theirs.throttled;
            mine.backend_up &= theirs.backend_up;
        }
    }

    /// Connections closed for this kind of reason (data aside).
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// One line for `--stats`: `key=value` pairs, grep- and awk-friendly.
    pub fn line(&self) -> String {
        let mut s = format!(
            "stats live={} accepted={} refused_full={} refused_denied={} accept_exhausted={} \
             bytes_in={} bytes_out={} frames_in={} reads={} writes={} waits={} flow_pauses={} outq_high_water={} \
             panics={} metrics_live={} metrics_refused={}",
            self.connections,
            self.accepted,
            self.refused_full,
            self.refused_denied,
            self.accept_exhausted,
            self.bytes_in,
            self.bytes_out,
            self.frames_in,
            self.reads,
            self.writes,
            self.waits,
            self.flow_pauses,
            self.outq_high_water,
            self.panics,
            self.metrics_connections,
            self.metrics_refused,
        );
        if let Some(chat) = &self.chat {
            let _ = write!(
                s,
                " rooms={} members={} messages={} throttled={} backend_up={}",
                chat.rooms, chat.members, chat.messages, chat.throttled, chat.backend_up as u8
            );
        }
        for (name, count) in CloseReason::NAMES.iter().zip(self.closed) {
            let _ = write!(s, " closed_{name}={count}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(rooms: &[&str]) -> Counters {
        let mut keys: Vec<u64> = rooms.iter().map(|r| room_key(r)).collect();
        keys.sort_unstable();
        let chat = ChatCounters { rooms: rooms.len() as u64, room_keys: Some(keys.into()), ..ChatCounters::default() };
        Counters { chat: Some(chat), ..Counters::default() }
    }

    /// A room with members on two workers is one room of the server.
    #[test]
    fn rooms_shared_by_workers_count_once() {
        let mut total = Counters::default();
        for w in [worker(&["lobby", "rust"]), worker(&["lobby", "go"]), worker(&["go", "lobby", "zig"])] {
            total.add(&w);
        }
        assert_eq!(total.chat.as_ref().map(|c| c.rooms), Some(4));
        // Without keys (one worker, no Redis) the count is the worker's.
        let mut alone = Counters::default();
        let one = ChatCounters { rooms: 3, ..ChatCounters::default() };
        alone.add(&Counters { chat: Some(one), ..Counters::default() });
        assert_eq!(alone.chat.map(|c| c.rooms), Some(3));
    }
}
