//! The chat's state in Redis, and the Lua scripts that change it.
//!
//! Every change is one script, so every change is atomic: Redis runs a
//! script to its end before anything else. A room event increments the
//! room's sequence and publishes the event in the same step, so the order
//! of a room's lines is the order Redis ran the scripts in — one order for
//! every subscriber.
//!
//! # Keys and channels (all under `edgeloop:`)
//!
//! | name | type | holds |
//! |---|---|---|
//! | `guests` | counter | the last `guestN` number given out |
//! | `nick:NAME` | string | the owner of nickname NAME: `SERVER SERIAL` |
//! | `room:ROOM` | set | the nicknames in ROOM, on every server (`/who`) |
//! | `seq:ROOM` | counter with a TTL | the sequence number of ROOM's last event; it expires a day after that event, so room names used once do not pile up in Redis (a sequence that starts again is noticed and logged by subscribers, and costs nothing) |
//! | `members:SERVER` | hash | SERIAL → `ROOM NICK`, for each member of SERVER |
//! | `servers` | set | the servers that have registered |
//! | `alive:SERVER` | string with a TTL | present while SERVER is alive |
//! | `DB:chan:ROOM` (channel) | pub/sub | ROOM's events: `SEQ TAG LINE` |
//! | `node:SERVER` (channel) | pub/sub | SERVER's liveness probe |
//!
//! Channels, unlike keys, are not per database: two chats on two
//! databases of one Redis would hear each other's rooms, so a room's
//! channel names the database (DB) too.
//!
//! A member is named by its server's id and a serial number the server
//! gives it (connection ids are reused; serials are not). The line of an
//! event is exactly what members receive, with its `\n`. Its tag is `-`
//! (an event of no member: a reaped server's), or `K.SERVER.CONN.SERIAL`
//! for an event of a server's own member, of kind K:
//!
//! | K | event | public |
//! |---|---|---|
//! | `M` | a message | yes |
//! | `J`, `L` | the member joined, left: where its delivery starts and stops | yes |
//! | `N` | the member's rename | yes |
//! | `W` | the answer to its `/who` (`SEQ` is 0, the room's sequence unchanged) | no |
//! | `E` | a line for it alone: an error, an answer (`SEQ` 0) | no |
//! | `Q` | its `/quit` (`SEQ` 0): `* bye`, then the connection closes | no |
//!
//! A private event reaches every server subscribed to the room, and all
//! but the member's own drop it. Because a member's events come back in
//! the order they were sent, its server can tell when everything it sent
//! has come back: until then, an answer to it goes through the room as a
//! private event, behind its messages, exactly as on one server.
//!
//! Scripts build key names from the room and server names they are given
//! (names are checked to be `A-Z a-z 0-9 _ -` before they get here), so
//! they are meant for one Redis, not for Redis Cluster.

/// Helpers every script starts with.
macro_rules! preamble {
    () => {
        r#"
local P = 'edgeloop:'
local CHAN = 'edgeloop:0:chan:'
local function publish(room, tag, line)
  local seq = redis.call('INCR', P .. 'seq:' .. room)
  redis.call('EXPIRE', P .. 'seq:' .. room, 86400)
  redis.call('PUBLISH', CHAN .. room, seq .. ' ' .. tag .. ' ' .. line)
  return seq
end
local function tell(room, tag, line)
  redis.call('PUBLISH', CHAN .. room, '0 ' .. tag .. ' ' .. line)
end
local function guest(owner)
  for _ = 1, 1000 do
    local nick = 'guest' .. redis.call('INCR', P .. 'guests')
    if redis.call('SET', P .. 'nick:' .. nick, owner, 'NX') then return nick end
  end
  error('no free guest name after 1000 tries')
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
end
local function split(entry)
  return string.match(entry, '^(%S+) (%S+)$')
end
local function reap(server)
  local all = redis.call('HGETALL', P .. 'members:' .. server)
  for i = 1, #all, 2 do
    local room, nick = split(all[i + 1])
    if room then drop(server, all[i], room, nick, '-') end
  end
  redis.call('DEL', P .. 'members:' .. server, P .. 'alive:' .. server)
  redis.call('SREM', P .. 'servers', server)
  return #all / 2
end
"#
    };
}

/// The chat's scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// A new member: the next free `guestN`, membership of ROOM, and
    /// `* guestN joined`. ARGV: server, serial, room, tag. Returns the nick.
    Connect,
    /// A message: ARGV: room, tag, line. Returns its sequence number.
    Message,
    /// `/nick`: claims the new name if nobody has it (`SET NX`: one
    /// winner, whatever the servers), frees the old one, `* OLD is now
    /// NEW`; or, if the name is taken, the private answer
    /// `! nickname NEW is in use`. ARGV: server, serial, room, old, new,
    /// tag of the rename, tag of the answer. Returns 1, or 0 if the name
    /// is taken.
    Nick,
    /// `/join`: `* NICK left` in the old room, `* NICK joined` in the new,
    /// in one step. ARGV: server, serial, nick, from, to, leave tag, join
    /// tag.
    Join,
    /// A member leaves (quits, disconnects, is cut off): its room and
    /// nickname from its entry, `* NICK left`. ARGV: server, serial, tag.
    /// Returns 0 if there was no such member (nothing was published).
    Leave,
    /// After a reconnect: a member registered again — its nickname
    /// claimed again (or, if someone took it meanwhile, a fresh `guestN`
    /// and `* OLD is now guestN`), its membership and entry written again.
    /// ARGV: server, serial, room, nick. Returns the nickname it has now.
    Restore,
    /// After a reconnect, before the restores: members of this server
    /// that left while it was cut off are dropped and announced. ARGV:
    /// server, then the serials of the members it still has.
    Resync,
    /// Every 2 s: this server is alive (a key with a TTL, and the list of
    /// servers), and a probe published on its own channel, which must come
    /// back through its subscription. ARGV: server, TTL in milliseconds.
    Heartbeat,
    /// Every 2 s, on every server: each listed server whose liveness key
    /// has expired is removed, and each of its members dropped and
    /// announced. One script, so the server is unlisted exactly once and
    /// exactly one survivor announces each member. ARGV: server. Returns
    /// the number of members dropped.
    Reap,
    /// Shutdown: this server's members dropped and announced, the server
    /// unlisted. ARGV: server.
    Retire,
    /// `/who`: the room's members on every server, as a private event
    /// (`0 TAG NICK NICK ...`; the server sorts them), or, past a limit
    /// of bytes, a private refusal. ARGV: room, tag, limit, refusal tag.
    Who,
    /// A private line for one member, in the order of the room's events
    /// (`0 TAG LINE`). ARGV: room, tag, line.
    Tell,
}

impl Script {
    /// Every script, in [`Script::index`] order.
    pub const ALL: [Script; 12] = [
        Script::Connect,
        Script::Message,
        Script::Nick,
        Script::Join,
        Script::Leave,
        Script::Restore,
        Script::Resync,
        Script::Heartbeat,
        Script::Reap,
        Script::Retire,
        Script::Who,
        Script::Tell,
    ];

    /// The script's position in [`Script::ALL`].
    pub fn index(self) -> usize {
        self as usize
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
local server, serial, room, tag = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local nick = guest(server .. ' ' .. serial)
redis.call('SADD', P .. 'room:' .. room, nick)
entry(server, serial, room, nick)
publish(room, tag, '* ' .. nick .. ' joined\n')
return nick
"#
            ),
            // The hot path: nothing but the sequence and the publication.
            Script::Message => concat!(preamble!(), "\nreturn publish(ARGV[1], ARGV[2], ARGV[3])\n"),
            Script::Nick => concat!(
                preamble!(),
                r#"
local server, serial, room, old, new = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local owner = server .. ' ' .. serial
if not redis.call('SET', P .. 'nick:' .. new, owner, 'NX') then
  tell(room, ARGV[7], '! nickname ' .. new .. ' is in use\n')
  return 0
end
if redis.call('GET', P .. 'nick:' .. old) == owner then redis.call('DEL', P .. 'nick:' .. old) end
redis.call('SREM', P .. 'room:' .. room, old)
redis.call('SADD', P .. 'room:' .. room, new)
entry(server, serial, room, new)
publish(room, ARGV[6], '* ' .. old .. ' is now ' .. new .. '\n')
return 1
"#
            ),
            Script::Join => concat!(
                preamble!(),
                r#"
local server, serial, nick, from, to = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
redis.call('SREM', P .. 'room:' .. from, nick)
publish(from, ARGV[6], '* ' .. nick .. ' left\n')
redis.call('SADD', P .. 'room:' .. to, nick)
entry(server, serial, to, nick)
publish(to, ARGV[7], '* ' .. nick .. ' joined\n')
return 1
"#
            ),
            Script::Leave => concat!(
                preamble!(),
                r#"
local server, serial = ARGV[1], ARGV[2]
local e = redis.call('HGET', P .. 'members:' .. server, serial)
if not e then return 0 end
local room, nick = split(e)
if not room then return 0 end
drop(server, serial, room, nick, ARGV[3])
return 1
"#
            ),
            Script::Restore => concat!(
                preamble!(),
                r#"
local server, serial, room, nick = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local owner = server .. ' ' .. serial
local e = redis.call('HGET', P .. 'members:' .. server, serial)
if e then
  -- What Redis last knew of the member (a /nick or /join whose answer was
  -- lost with the connection may have been done): undone if it differs.
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
end
redis.call('SADD', P .. 'room:' .. room, final)
entry(server, serial, room, final)
if final ~= nick then publish(room, '-', '* ' .. nick .. ' is now ' .. final .. '\n') end
return final
"#
            ),
            Script::Resync => concat!(
                preamble!(),
                r#"
local server = ARGV[1]
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
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
redis.call('SET', P .. 'alive:' .. ARGV[1], '1', 'PX', ARGV[2])
redis.call('SADD', P .. 'servers', ARGV[1])
redis.call('PUBLISH', P .. 'node:' .. ARGV[1], 'ping')
return 1
"#
            ),
            Script::Reap => concat!(
                preamble!(),
                r#"
local n = 0
for _, server in ipairs(redis.call('SMEMBERS', P .. 'servers')) do
  if server ~= ARGV[1] and redis.call('EXISTS', P .. 'alive:' .. server) == 0 then
    n = n + reap(server)
  end
end
return n
"#
            ),
            Script::Retire => concat!(preamble!(), "\nreturn reap(ARGV[1])\n"),
            Script::Who => concat!(
                preamble!(),
                r#"
local nicks = redis.call('SMEMBERS', P .. 'room:' .. ARGV[1])
local text = table.concat(nicks, ' ')
if #text > tonumber(ARGV[3]) then
  tell(ARGV[1], ARGV[4], '! too many members to list (' .. #nicks .. ')\n')
else
  tell(ARGV[1], ARGV[2], text .. '\n')
end
return 1
"#
            ),
            Script::Tell => concat!(preamble!(), "\ntell(ARGV[1], ARGV[2], ARGV[3])\nreturn 1\n"),
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
