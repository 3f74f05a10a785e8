//! The chat's state in Redis, and the Lua scripts that change it.
//!
//! Every change is one script, so every change is atomic: Redis runs a
//! script to its end before anything else. A room event increments the
//! room's sequence, appends the event to the room's history and publishes
//! it in the same step, so the order of a room's lines is the order Redis
//! ran the scripts in — one order for every subscriber, and the same order
//! in the history a returning server replays.
//!
//! # Keys and channels (all under `edgeloop:`)
//!
//! | name | type | holds |
//! |---|---|---|
//! | `guests` | counter | the last `guestN` number given out |
//! | `nick:NAME` | string | the owner of nickname NAME: `SERVER SERIAL` |
//! | `room:ROOM` | set | the nicknames in ROOM, on every server (`/who`) |
//! | `seq:ROOM` | counter | the sequence number of ROOM's last event |
//! | `hist:ROOM` | stream | ROOM's recent events, `e` = `SEQ TAG LINE`, one or more per entry |
//! | `members:SERVER` | hash | SERIAL → `ROOM NICK`, for each member of SERVER |
//! | `servers` | set | the servers that have registered |
//! | `alive:SERVER` | string with a TTL | SERVER's lease: its current generation, present while SERVER is alive |
//! | `calls:SERVER` | counter | the number of SERVER's last script call that ran in this generation |
//! | `DB:chan:ROOM` (channel) | pub/sub | ROOM's events, `SEQ TAG LINE` each, one or more per publication |
//! | `node:SERVER` (channel) | pub/sub | SERVER's liveness probe |
//!
//! Only what is live is kept: when the last member leaves a room (it
//! quits, moves, or its server is reaped), the room's set, sequence and
//! history are deleted in the same script ([`Script::Leave`] and the
//! others call `vacate`). A room nobody is in has no key; a dead server's
//! keys go when a survivor reaps it. Nothing but `alive:` has a TTL, so
//! Redis must not evict: run it with `maxmemory-policy noeviction` (an
//! evicted `nick:` or `seq:` key would break unique names or the order).
//!
//! # Sequence numbers and history (replay, gaps)
//!
//! A room's sequence starts, when the room is created, at Redis's clock in
//! microseconds, then counts by one. So numbers are consecutive within a
//! room's life (a missing number is a missing event) and never reused
//! across lives: a room deleted and created again, or a Redis restarted
//! empty, starts far above any number of an earlier life — this is
//! Centrifugo's offset plus epoch in one number. The history is a stream
//! with an entry per script call: one event, or all the messages of a
//! [`Script::Message`] call (a room's lines of one loop turn) — one
//! `XADD` per call, not per line, is most of what batching saves Redis.
//! It is trimmed (every 128 events) to the last [`HIST_MIN`] entries or
//! the last [`HIST_AGE_MS`], whichever holds more: entries older than the
//! age are dropped only while more than `HIST_MIN` remain (`XTRIM MINID ~
//! … LIMIT`).
//! [`Script::Replay`] returns the events from a sequence number on, as far
//! as the history still has them; the server compares numbers to find a
//! gap.
//!
//! # Fencing
//!
//! `alive:SERVER` holds the generation of the server's current link (a
//! number it raises each time it connects). Every script that acts for a
//! server checks it first and refuses with `FENCED` if it differs or is
//! gone: a server that was declared dead (its key expired, a survivor
//! reaped it), or a command left over on a connection the server has
//! since replaced, changes nothing. Only [`Script::Register`] sets it.
//!
//! # Exactly once
//!
//! A server pipelines its script calls, and sends again, with the
//! script's text, a call refused with `NOSCRIPT` (the script cache was
//! flushed). But a flush is a race: the calls behind the refused one were
//! already on their way, and if another server reloaded the script
//! meanwhile, some of them ran — sending them again would run them twice
//! (a line delivered twice, a `/nick` or a connect done twice). So the
//! calls of one server's generation form a chain: each carries its number,
//! `calls:SERVER` holds the number of the last one that ran, and a call
//! runs only if it is the next (else it answers `ORDER LAST`, changing
//! nothing). A call refused for any reason therefore stops every call
//! behind it, and the server, which sees the answers in order, sends the
//! refused call and everything behind it again, numbered on from the last
//! that ran: each call runs once, and in the order it was made. (An
//! error that is the call's own outcome — OOM, `LOADING` — is answered to
//! its member; the calls behind it are sent again.) `Register` starts
//! the chain at 0; only `Who` and `Replay`, which change nothing, stand
//! outside it.
//!
//! A member is named by its server's id and a serial number the server
//! gives it (connection ids are reused; serials are not). The line of an
//! event is exactly what members receive, with its `\n`. Its tag is `-`
//! (an event of no member), `R.SERVER` (a member of SERVER dropped when
//! SERVER was reaped), or `K.SERVER.CONN.SERIAL` for an event of a
//! server's own member, of kind K: `M` a message, `J`/`L` it joined/left
//! (where its delivery starts and stops), `N` its rename. Answers meant
//! for one member (`/who`, a refused `/nick`) are replies to the command,
//! never published: they cost the other servers nothing.
//!
//! Scripts build key names from the room and server names they are given
//! (names are checked to be `A-Z a-z 0-9 _ -` before they get here), so
//! they are meant for one Redis, not for Redis Cluster.

/// Entries a room's history keeps at least (so at least as many events).
pub const HIST_MIN: u64 = 10_000;
/// Age (milliseconds) of the events a room's history keeps at least.
pub const HIST_AGE_MS: u64 = 300_000;

/// Helpers every script starts with.
macro_rules! preamble {
    () => {
        r#"
local P = 'edgeloop:'
local CHAN = 'edgeloop:0:chan:'
local FENCED = {err = 'FENCED this server is not registered as alive'}
local function num(n)
  return string.format('%d', n)
end
-- Fencing, then the chain (see "Exactly once"). ARGV starts with the
-- server, its generation and the call's number; the number is taken out,
-- so a script's other arguments keep their places.
local function admit()
  local server, gen = ARGV[1], ARGV[2]
  if redis.call('GET', P .. 'alive:' .. server) ~= gen then return FENCED end
  local k = P .. 'calls:' .. server
  local last = tonumber(redis.call('GET', k) or '0')
  if last + 1 ~= tonumber(ARGV[3]) then return {err = 'ORDER ' .. num(last)} end
  redis.call('SET', k, ARGV[3])
  table.remove(ARGV, 3)
end
local function trim(h)
  local n = redis.call('XLEN', h)
  if n > 10000 then
    local t = redis.call('TIME')
    local cut = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - 300000
    redis.call('XTRIM', h, 'MINID', '~', num(cut), 'LIMIT', num(n - 10000))
  end
end
-- Number the events given as tag, line, tag, line, ... (at least one),
-- keep them in the history as one entry, and return them one after the
-- other: one INCRBY and one XADD however many there are.
local function record(room, items)
  local k = P .. 'seq:' .. room
  local n = #items / 2
  local last = redis.call('INCRBY', k, n)
  if last == n then
    local t = redis.call('TIME')
    last = tonumber(t[1]) * 1000000 + tonumber(t[2]) + n - 1
    redis.call('SET', k, num(last))
  end
  local events = {}
  for i = 1, n do
    events[i] = num(last - n + i) .. ' ' .. items[2 * i - 1] .. ' ' .. items[2 * i]
  end
  local all = table.concat(events)
  local h = P .. 'hist:' .. room
  redis.call('XADD', h, '*', 'e', all)
  if math.floor(last / 128) ~= math.floor((last - n) / 128) then trim(h) end
  return all
end
local function publish(room, tag, line)
  redis.call('PUBLISH', CHAN .. room, record(room, {tag, line}))
end
local function vacate(room)
  if redis.call('EXISTS', P .. 'room:' .. room) == 0 then
    redis.call('DEL', P .. 'seq:' .. room, P .. 'hist:' .. room)
  end
end
local function guest(owner)
  for _ = 1, 1000 do
    local nick = 'guest' .. redis.call('INCR', P .. 'guests')
    if redis.call('SET', P .. 'nick:' .. nick, owner, 'NX') then return nick end
  end
  -- A thousand numbers in a row taken by /nick: jump past them.
  redis.call('INCRBY', P .. 'guests', 1000000)
  local nick = 'guest' .. redis.call('INCR', P .. 'guests')
  if redis.call('SET', P .. 'nick:' .. nick, owner, 'NX') then return nick end
  return {err = 'ERR no free guest name'}
end
local function entry(server, serial, room, nick)
  redis.call('HSET', P .. 'members:' .. server, serial, room .. ' ' .. nick)
end
local function drop(server, serial, room, nick, tag)
  redis.call('SREM', P .. 'room:' .. room, nick)
  local key = P .. 'nick:' .. nick
  if redis.call('GET', key) == server .. ' ' .. serial then redis.call('DEL', key) end
  redis.call('HDEL', P .. 'members:' .. server, serial)
  publish(room, tag, '* ' .. nick .. ' left\n')
  vacate(room)
end
local function split(entry)
  return string.match(entry, '^(%S+) (%S+)$')
end
local function reap(server, tag)
  local all = redis.call('HGETALL', P .. 'members:' .. server)
  for i = 1, #all, 2 do
    local room, nick = split(all[i + 1])
    if room then drop(server, all[i], room, nick, tag) end
  end
  redis.call('DEL', P .. 'members:' .. server, P .. 'alive:' .. server, P .. 'calls:' .. server)
  redis.call('SREM', P .. 'servers', server)
  return #all / 2
end
"#
    };
}

/// The chat's scripts. Those that act for a server take its id and its
/// generation first (`ARGV[1]`, `ARGV[2]`) and answer `FENCED` unless that is
/// the server's current lease (see "Fencing"); all but `Register` then
/// take the call's number (see "Exactly once"), which the ARGV lists
/// below leave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// A new member: the next free `guestN`, membership of ROOM, and
    /// `* guestN joined`. ARGV: server, gen, serial, room, tag. Returns
    /// the nick.
    Connect,
    /// A room's message lines of one loop turn (see `Bus::message`):
    /// ARGV: server, gen, room, then a tag and a line for each. Each line
    /// is an event of its own (its sequence number); they are kept in one
    /// history entry and published together, the events one after the
    /// other (each ends with its line's `\n`): one call, one entry and one
    /// publication per room and turn, however many lines. Returns how
    /// many.
    Message,
    /// `/nick`: claims the new name if nobody has it (`SET NX`: one
    /// winner, whatever the servers), frees the old one, `* OLD is now
    /// NEW`. ARGV: server, gen, serial, room, old, new, tag. Returns 1, or
    /// 0 if the name is taken (nothing published: the refusal is the
    /// server's to say).
    Nick,
    /// `/join`: `* NICK left` in the old room, `* NICK joined` in the new,
    /// in one step. ARGV: server, gen, serial, nick, from, to, leave tag,
    /// join tag.
    Join,
    /// A member leaves (quits, disconnects): its room and nickname from
    /// its entry, `* NICK left`. ARGV: server, gen, serial, tag. Returns 0
    /// if there was no such member (nothing was published).
    Leave,
    /// The first step of every (re)connection: the lease taken with a new
    /// generation, the server listed, the `guests` counter raised to at
    /// least the highest number this server has seen (a Redis restarted
    /// empty must not give them out again). ARGV: server, gen, TTL in
    /// milliseconds, highest guest number. Returns the server's members as
    /// Redis has them (`HGETALL`), so that a `/join` or `/nick` whose
    /// answer was lost is known to have happened or not.
    Register,
    /// After a reconnect: a member registered again. If Redis still has
    /// its entry, its nickname and membership are claimed again (or, if
    /// someone took the name meanwhile, a fresh `guestN` and
    /// `* OLD is now guestN`). If not — the server was reaped, or Redis
    /// lost its data — the room was told it left (or knows nothing of it),
    /// so it is announced `* NICK joined` again, under a fresh `guestN` if
    /// its name was taken (then with the tag `A.SERVER.CONN.SERIAL.OLD`:
    /// the member itself, never told it left, is told `* OLD is now
    /// guestN` in its place). ARGV: server, gen, serial, room, nick, that
    /// tag. Returns the nickname it has now.
    Restore,
    /// After a reconnect, before the restores: members of this server
    /// that left while it was cut off are dropped and announced. ARGV:
    /// server, gen, then the serials of the members it still has.
    Resync,
    /// Every 2 s: the lease renewed (only if it is still ours), and a
    /// probe published on the server's own channel, which must come back
    /// through its subscription. ARGV: server, gen, TTL in milliseconds.
    Heartbeat,
    /// Every 2 s, on every server: each listed server whose lease has
    /// expired is removed, and each of its members dropped and announced
    /// (tag `R.SERVER`). One script, so the server is unlisted exactly
    /// once and exactly one survivor announces each member. ARGV: server,
    /// gen. Returns the number of members dropped.
    Reap,
    /// Shutdown: this server's members dropped and announced, the server
    /// unlisted. ARGV: server, gen.
    Retire,
    /// `/who`: the room's members on every server (`NICK NICK ...`, the
    /// server sorts them), or, past a limit of bytes, their number.
    /// ARGV: room, limit.
    Who,
    /// The events of ROOM from sequence number FROM on, oldest first, at
    /// most MAX of the newest: `[TOP, EVENT...]`, TOP the room's last
    /// number (0: the room has no sequence). ARGV: room, from, max.
    Replay,
}

impl Script {
    /// Every script, in [`Script::index`] order.
    pub const ALL: [Script; 13] = [
        Script::Connect,
        Script::Message,
        Script::Nick,
        Script::Join,
        Script::Leave,
        Script::Register,
        Script::Restore,
        Script::Resync,
        Script::Heartbeat,
        Script::Reap,
        Script::Retire,
        Script::Who,
        Script::Replay,
    ];

    /// The script's position in [`Script::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether it acts for a server: its id and generation come first.
    pub fn for_server(self) -> bool {
        !matches!(self, Script::Who | Script::Replay)
    }

    /// Whether its calls are numbered (see "Exactly once").
    pub fn chained(self) -> bool {
        self.for_server() && self != Script::Register
    }

    /// The script's Lua text for a chat on database `db`.
    pub fn body_for(self, db: u32) -> String {
        self.body().replace("local CHAN = 'edgeloop:0:chan:'", &format!("local CHAN = 'edgeloop:{db}:chan:'"))
    }

    /// The script's Lua text (for database 0).
    pub fn body(self) -> &'static str {
        match self {
            Script::Connect => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
local server, serial, room, tag = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local nick = guest(server .. ' ' .. serial)
if type(nick) == 'table' then return nick end
redis.call('SADD', P .. 'room:' .. room, nick)
entry(server, serial, room, nick)
publish(room, tag, '* ' .. nick .. ' joined\n')
return nick
"#
            ),
            // The hot path: the lease, the sequence, the history and the
            // publication.
            Script::Message => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
local room, items = ARGV[3], {}
for i = 4, #ARGV - 1, 2 do
  items[#items + 1] = ARGV[i]
  items[#items + 1] = ARGV[i + 1]
end
if #items == 0 then return 0 end
redis.call('PUBLISH', CHAN .. room, record(room, items))
return #items / 2
"#
            ),
            Script::Nick => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
local server, serial, room, old, new = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local owner = server .. ' ' .. serial
if not redis.call('SET', P .. 'nick:' .. new, owner, 'NX') then return 0 end
if redis.call('GET', P .. 'nick:' .. old) == owner then redis.call('DEL', P .. 'nick:' .. old) end
redis.call('SREM', P .. 'room:' .. room, old)
redis.call('SADD', P .. 'room:' .. room, new)
entry(server, serial, room, new)
publish(room, ARGV[7], '* ' .. old .. ' is now ' .. new .. '\n')
return 1
"#
            ),
            Script::Join => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
local server, serial, nick, from, to = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
redis.call('SREM', P .. 'room:' .. from, nick)
publish(from, ARGV[7], '* ' .. nick .. ' left\n')
vacate(from)
redis.call('SADD', P .. 'room:' .. to, nick)
entry(server, serial, to, nick)
publish(to, ARGV[8], '* ' .. nick .. ' joined\n')
return 1
"#
            ),
            Script::Leave => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
local server, serial = ARGV[1], ARGV[3]
local e = redis.call('HGET', P .. 'members:' .. server, serial)
if not e then return 0 end
local room, nick = split(e)
if not room then return 0 end
drop(server, serial, room, nick, ARGV[4])
return 1
"#
            ),
            Script::Register => concat!(
                preamble!(),
                r#"
local server, gen = ARGV[1], ARGV[2]
redis.call('SET', P .. 'alive:' .. server, gen, 'PX', ARGV[3])
redis.call('SET', P .. 'calls:' .. server, '0')
redis.call('SADD', P .. 'servers', server)
local g = tonumber(redis.call('GET', P .. 'guests') or '0')
if g < tonumber(ARGV[4]) then redis.call('SET', P .. 'guests', ARGV[4]) end
return redis.call('HGETALL', P .. 'members:' .. server)
"#
            ),
            Script::Restore => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
local server, serial, room, nick = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local owner = server .. ' ' .. serial
local e = redis.call('HGET', P .. 'members:' .. server, serial)
if e then
  -- What Redis last knew of the member: undone if it differs.
  local r, n = split(e)
  if r and (r ~= room or n ~= nick) then
    redis.call('SREM', P .. 'room:' .. r, n)
    if n ~= nick and redis.call('GET', P .. 'nick:' .. n) == owner then
      redis.call('DEL', P .. 'nick:' .. n)
    end
  end
end
local final = nick
local holder = redis.call('GET', P .. 'nick:' .. nick)
if not holder then
  redis.call('SET', P .. 'nick:' .. nick, owner)
elseif holder ~= owner then
  final = guest(owner)
  if type(final) == 'table' then return final end
end
redis.call('SADD', P .. 'room:' .. room, final)
entry(server, serial, room, final)
if not e then
  publish(room, final == nick and '-' or ARGV[6], '* ' .. final .. ' joined\n')
elseif final ~= nick then
  publish(room, '-', '* ' .. nick .. ' is now ' .. final .. '\n')
end
return final
"#
            ),
            Script::Resync => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
local server = ARGV[1]
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local all = redis.call('HGETALL', P .. 'members:' .. server)
local n = 0
for i = 1, #all, 2 do
  if not keep[all[i]] then
    local room, nick = split(all[i + 1])
    if room then drop(server, all[i], room, nick, '-') end
    n = n + 1
  end
end
return n
"#
            ),
            Script::Heartbeat => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
redis.call('SET', P .. 'alive:' .. ARGV[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', P .. 'node:' .. ARGV[1], 'ping')
return 1
"#
            ),
            Script::Reap => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
local n = 0
for _, server in ipairs(redis.call('SMEMBERS', P .. 'servers')) do
  if server ~= ARGV[1] and redis.call('EXISTS', P .. 'alive:' .. server) == 0 then
    n = n + reap(server, 'R.' .. server)
  end
end
return n
"#
            ),
            Script::Retire => concat!(
                preamble!(),
                r#"
local refused = admit()
if refused then return refused end
return reap(ARGV[1], '-')
"#
            ),
            Script::Who => concat!(
                preamble!(),
                r#"
local nicks = redis.call('SMEMBERS', P .. 'room:' .. ARGV[1])
local text = table.concat(nicks, ' ')
if #text > tonumber(ARGV[2]) then return #nicks end
return text
"#
            ),
            Script::Replay => concat!(
                preamble!(),
                r#"
local room, from, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local top = tonumber(redis.call('GET', P .. 'seq:' .. room) or '0')
local out = {num(top)}
if top < from then return out end
local n = top - from + 1
if n > max then n = max end
-- The newest n events: an entry holds one or more, so n entries hold
-- them all (if the history still has them).
local got = redis.call('XREVRANGE', P .. 'hist:' .. room, '+', '-', 'COUNT', num(n))
local newest = {}
for i = 1, #got do
  local events = {}
  for ev in string.gmatch(got[i][2][2], '[^\n]*\n') do events[#events + 1] = ev end
  for j = #events, 1, -1 do
    if #newest < n then newest[#newest + 1] = events[j] end
  end
end
for i = #newest, 1, -1 do out[#out + 1] = newest[i] end
return out
"#
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_index_order() {
        for (i, script) in Script::ALL.iter().enumerate() {
            assert_eq!(script.index(), i);
            assert!(script.body().contains("local P = 'edgeloop:'"));
            assert!(script.body_for(7).contains("local CHAN = 'edgeloop:7:chan:'"));
        }
    }
}
