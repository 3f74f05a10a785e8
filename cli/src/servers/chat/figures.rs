//! The chat's figures for `--stats` and `/metrics`, kept on each worker's
//! reactor as its application counters ([`edgeloop::AppCounters`]).
//!
//! A server's figures are its workers' added up, with one exception: a
//! room with members on two workers is one room of the server, not two.
//! So each worker also publishes which rooms it has (hashes of their
//! names, [`ChatCounters::room_keys`]), and the sum counts the rooms two
//! workers share once (the edge case "rooms across workers").

use std::any::Any;
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use edgeloop::{AppCounters, Ctx};

/// The chat server's figures.
#[derive(Clone, Debug)]
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

impl Default for ChatCounters {
    fn default() -> ChatCounters {
        ChatCounters { rooms: 0, members: 0, messages: 0, throttled: 0, backend_up: true, room_keys: None }
    }
}

impl ChatCounters {
    /// This reactor's chat figures, created on first use.
    pub fn of<'a>(ctx: &'a mut Ctx<'_>) -> &'a mut ChatCounters {
        ctx.counters_mut().app_mut()
    }
}

impl AppCounters for ChatCounters {
    fn add(&mut self, other: &dyn AppCounters) {
        let Some(theirs) = (other as &dyn Any).downcast_ref::<ChatCounters>() else { return };
        // Rooms both have are one room each (see the module docs).
        let (shared, keys) = match (self.room_keys.as_deref(), theirs.room_keys.as_deref()) {
            (Some(a), Some(b)) => {
                let (shared, union) = overlap(a, b);
                (shared, Some(union.into()))
            }
            _ => (0, self.room_keys.clone().or_else(|| theirs.room_keys.clone())),
        };
        self.room_keys = keys;
        self.rooms = (self.rooms + theirs.rooms).saturating_sub(shared);
        self.members += theirs.members;
        self.messages += theirs.messages;
        self.throttled += theirs.throttled;
        self.backend_up &= theirs.backend_up;
    }

    fn write_stats(&self, line: &mut String) {
        let _ = write!(
            line,
            " rooms={} members={} messages={} throttled={} backend_up={}",
            self.rooms, self.members, self.messages, self.throttled, self.backend_up as u8
        );
    }
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
        match (a.get(i), b.get(j)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    use edgeloop::Counters;

    fn worker(rooms: &[&str]) -> Counters {
        let mut keys: Vec<u64> = rooms.iter().map(|r| room_key(r)).collect();
        keys.sort_unstable();
        let chat = ChatCounters { rooms: rooms.len() as u64, room_keys: Some(keys.into()), ..ChatCounters::default() };
        Counters { app: vec![Box::new(chat)], ..Counters::default() }
    }

    /// A room with members on two workers is one room of the server.
    #[test]
    fn rooms_shared_by_workers_count_once() {
        let mut total = Counters::default();
        for w in [worker(&["lobby", "rust"]), worker(&["lobby", "go"]), worker(&["go", "lobby", "zig"])] {
            total.add(&w);
        }
        assert_eq!(total.app::<ChatCounters>().map(|c| c.rooms), Some(4));
        // Without keys (one worker, no Redis) the count is the worker's.
        let mut alone = Counters::default();
        let one = ChatCounters { rooms: 3, ..ChatCounters::default() };
        alone.add(&Counters { app: vec![Box::new(one)], ..Counters::default() });
        assert_eq!(alone.app::<ChatCounters>().map(|c| c.rooms), Some(3));
    }

    /// The figures sit on the `--stats` line where the chat's always were,
    /// before the closes.
    #[test]
    fn the_stats_line_carries_the_chat_figures() {
        let chat = ChatCounters { rooms: 2, members: 5, messages: 7, throttled: 1, ..ChatCounters::default() };
        let line = Counters { app: vec![Box::new(chat)], ..Counters::default() }.line();
        assert!(line.contains(" panics=0 rooms=2 members=5 messages=7 throttled=1 backend_up=1 closed_"), "{line}");
    }
}
