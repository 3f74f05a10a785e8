//! Where Redis is: the `--redis` URL forms (a password or an ACL user,
//! a database, Sentinels), the probe at start, and asking the Sentinels
//! for the master's address on every (re)connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::redis::CONNECT_TIMEOUT;
use super::resp::{Builder, Encoder, Limits, Reader, Reply};

/// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, as given to `--redis`.
/// The password is kept out of every message: `text` shows `***` in its
/// place, and `Debug` prints `text`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The URL as given, the password masked, for messages.
    pub text: String,
    /// A name or an address (an IPv6 address without its brackets).
    pub host: String,
    /// 6379 unless given.
    pub port: u16,
    /// The database (`SELECT`); 0 unless given.
    pub db: u32,
    /// An ACL user (`AUTH USER PASSWORD`), if given.
    pub user: Option<String>,
    /// The password (`AUTH`), if given.
    password: Option<String>,
    /// With `redis-sentinel://`: the Sentinels.
    pub sentinels: Vec<(String, u16)>,
    /// With `redis-sentinel://`: the master's name.
    pub master: Option<String>,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `%XX` escapes decoded (a password may hold `@`, `:` or `/`).
fn percent_decoded(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `HOST[:PORT]` (an IPv6 address in brackets) → host and port.
fn host_port(authority: &str, default: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        match after.strip_prefix(':') {
            Some(port) => (host, port.parse().ok()?),
            None if after.is_empty() => (host, default),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (authority, default),
        }
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

impl FromStr for RedisUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let sentinel = s.starts_with("redis-sentinel://");
        let scheme = if sentinel { "redis-sentinel://" } else { "redis://" };
        // What messages show: the credentials masked.
        let shown = match s.rsplit_once('@') {
            Some((_, after)) => format!("{scheme}***@{after}"),
            None => s.to_string(),
        };
        let usage = || {
            format!(
                "'{shown}' is not a Redis URL (expected redis://[[USER]:PASSWORD@]HOST:PORT[/DB] or \
                 redis-sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB])"
            )
        };
        let rest = s.strip_prefix(scheme).ok_or_else(usage)?;
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = u.split_once(':').ok_or_else(usage)?;
                let user = percent_decoded(user).ok_or_else(usage)?;
                let pass = percent_decoded(pass).ok_or_else(usage)?;
                if pass.is_empty() {
                    return Err(usage());
                }
                ((!user.is_empty()).then_some(user), Some(pass))
            }
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (master, db) = if sentinel {
            let (master, db) = path.split_once('/').unwrap_or((path, ""));
            if master.is_empty() {
                return Err(usage());
            }
            (Some(master.to_string()), db)
        } else {
            (None, path)
        };
        let db = if db.is_empty() { 0 } else { db.parse().map_err(|_| usage())? };
        let sentinels = if sentinel {
            authority.split(',').map(|a| host_port(a, 26379)).collect::<Option<Vec<_>>>().ok_or_else(usage)?
        } else {
            Vec::new()
        };
        let (host, port) = match sentinels.first() {
            Some(first) => first.clone(),
            None => host_port(authority, 6379).ok_or_else(usage)?,
        };
        let text = match (&user, &password) {
            (Some(user), Some(_)) => format!("{scheme}{user}:***@{rest}"),
            (None, Some(_)) => format!("{scheme}:***@{rest}"),
            _ => s.to_string(),
        };
        Ok(RedisUrl { text, host, port, db, user, password, sentinels, master })
    }
}

impl RedisUrl {
    /// The `AUTH` command's arguments, if credentials were given.
    pub fn auth(&self) -> Option<Vec<&[u8]>> {
        let password = self.password.as_deref()?;
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = &self.user {
            args.push(user.as_bytes());
        }
        args.push(password.as_bytes());
        Some(args)
    }
}

/// Check, before the reactor starts, that Redis answers at `url`
/// (`SELECT` if a database is given, then `PING`), retrying for up to
/// `within`; returns its address. Blocking, with short timeouts: it runs
/// once, before anything else is served. The error names the reason.
pub fn probe(url: &RedisUrl, within: Duration) -> Result<SocketAddr, String> {
    let until = Instant::now() + within;
    loop {
        let why = match probe_once(url, until) {
            Ok(addr) => return Ok(addr),
            Err(why) => why,
        };
        if Instant::now() + Duration::from_millis(100) >= until {
            return Err(why);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where the Redis of `url` is now: its address, or with Sentinels, the
/// master's address as the first Sentinel that answers says. Blocking,
/// with short timeouts: called before the reactor starts, and by the bus
/// on a thread of its own.
pub fn locate(url: &RedisUrl) -> Result<SocketAddr, String> {
    let resolve = |host: &str, port: u16| -> Result<SocketAddr, String> {
        (host, port)
            .to_socket_addrs()
            .map_err(|e| edgeloop::sys::describe(&e))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))
    };
    let Some(master) = &url.master else { return resolve(&url.host, url.port) };
    let mut why = String::from("no Sentinel given");
    for (host, port) in &url.sentinels {
        match resolve(host, *port).and_then(|addr| ask_sentinel(addr, master)) {
            Ok((host, port)) => return resolve(&host, port),
            Err(e) => why = format!("Sentinel {host}:{port}: {e}"),
        }
    }
    Err(why)
}

/// `SENTINEL get-master-addr-by-name MASTER` at one Sentinel.
fn ask_sentinel(addr: SocketAddr, master: &str) -> Result<(String, u16), String> {
    let io = |e: std::io::Error| edgeloop::sys::describe(&e);
    let timeout = Duration::from_millis(500);
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut enc = Encoder::default();
    enc.command(&[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()]);
    (&stream).write_all(&enc.buf).map_err(io)?;
    let mut lines = BufReader::new(&stream);
    let mut reader = Reader::new(Limits { frame: 4096, bulk: 4096, array: 16 });
    let mut builder = Builder::default();
    loop {
        let mut line = Vec::new();
        lines.read_until(b'\n', &mut line).map_err(io)?;
        if line.is_empty() {
            return Err("the connection was closed".into());
        }
        // Bulk strings are short here: read whole with their line.
        if line.starts_with(b"$") && line.len() > 3 && line[1] != b'-' {
            lines.read_until(b'\n', &mut line).map_err(io)?;
        }
        let mut rest = &line[..];
        while !rest.is_empty() {
            let cut = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let (frame, tail) = rest.split_at(cut);
            rest = tail;
            let item = reader.feed(frame).map_err(|e| e.to_string())?;
            match item.and_then(|item| builder.push(&item)) {
                Some(Reply::Array(parts)) => {
                    let host = parts.first().and_then(Reply::text).ok_or("no master address")?;
                    let port = parts.get(1).and_then(Reply::text).and_then(|p| p.parse().ok()).ok_or("no port")?;
                    return Ok((host.to_string(), port));
                }
                Some(Reply::Nil) => return Err(format!("no master named {master}")),
                Some(Reply::Error(e)) => return Err(format!("Sentinel answered: {e}")),
                Some(_) => return Err("an unexpected answer".into()),
                None => {}
            }
        }
    }
}

fn probe_once(url: &RedisUrl, until: Instant) -> Result<SocketAddr, String> {
    let addr = locate(url)?;
    let left = until.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(100), CONNECT_TIMEOUT);
    let io = |e: std::io::Error| edgeloop::sys::describe(&e);
    let stream = TcpStream::connect_timeout(&addr, left).map_err(io)?;
    stream.set_read_timeout(Some(left)).map_err(io)?;
    stream.set_write_timeout(Some(left)).map_err(io)?;
    let mut enc = Encoder::default();
    if let Some(auth) = url.auth() {
        enc.command(&auth);
    }
    if url.db != 0 {
        enc.command(&[b"SELECT", url.db.to_string().as_bytes()]);
    }
    enc.command(&[b"PING"]);
    (&stream).write_all(&enc.buf).map_err(io)?;
    let mut lines = BufReader::new(&stream);
    let mut reader = Reader::new(Limits { frame: 4096, bulk: 4096, array: 16 });
    let expected = [url.auth().map(|_| "OK"), (url.db != 0).then_some("OK"), Some("PONG")];
    for expected in expected.into_iter().flatten() {
        let mut line = Vec::new();
        lines.read_until(b'\n', &mut line).map_err(io)?;
        if line.is_empty() {
            return Err("the connection was closed".into());
        }
        match reader.feed(&line).map_err(|e| e.to_string())?.map(|item| Builder::default().push(&item)) {
            Some(Some(Reply::Simple(s))) if s == expected.as_bytes() => {}
            Some(Some(Reply::Error(e))) => return Err(format!("Redis answered: {e}")),
            _ => return Err(format!("unexpected answer {:?}", String::from_utf8_lossy(&line))),
        }
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url: RedisUrl = "redis://127.0.0.1:6380/2".parse().unwrap();
        assert_eq!((url.host.as_str(), url.port, url.db), ("127.0.0.1", 6380, 2));
        let url: RedisUrl = "redis://localhost".parse().unwrap();
        assert_eq!((url.host.as_str(), url.port, url.db), ("localhost", 6379, 0));
        let url: RedisUrl = "redis://[::1]:7000/".parse().unwrap();
        assert_eq!((url.host.as_str(), url.port, url.db), ("::1", 7000, 0));
        for bad in ["http://x:1", "redis://", "redis://h:port", "redis://h:1/x", "redis://p@h:1", "redis://[::1"] {
            assert!(bad.parse::<RedisUrl>().is_err(), "{bad}");
        }
        let url: RedisUrl = "redis://:s3cret@127.0.0.1:6380/2".parse().unwrap();
        assert_eq!((url.user.as_deref(), url.password.as_deref(), url.db), (None, Some("s3cret"), 2));
        assert_eq!(url.text, "redis://:***@127.0.0.1:6380/2");
        assert_eq!(format!("{url:?}"), url.text);
        let url: RedisUrl = "redis://chat:p%40ss@h:1".parse().unwrap();
        assert_eq!((url.user.as_deref(), url.password.as_deref()), (Some("chat"), Some("p@ss")));
        assert_eq!(url.auth().unwrap(), [&b"AUTH"[..], b"chat", b"p@ss"]);
        let url: RedisUrl = "redis-sentinel://:pw@h1:1,[::1]:2/mymaster/3".parse().unwrap();
        assert_eq!(url.sentinels, [("h1".to_string(), 1), ("::1".to_string(), 2)]);
        assert_eq!((url.master.as_deref(), url.db, url.password.as_deref()), (Some("mymaster"), 3, Some("pw")));
        assert_eq!(url.text, "redis-sentinel://:***@h1:1,[::1]:2/mymaster/3");
        let url: RedisUrl = "redis-sentinel://h1/m".parse().unwrap();
        assert_eq!((url.sentinels[0].1, url.db), (26379, 0));
        assert!("redis-sentinel://h1:1".parse::<RedisUrl>().is_err());
        let err = "redis://u:hunter2@h:port".parse::<RedisUrl>().unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
