//! Settings: the reactor's [`Config`], and the options of listeners,
//! outgoing connections, sockets, output queues and delivery — each the
//! counterpart of a gen_tcp/inet option (see the table in the crate docs).

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::buffer::READ_BUF_SIZE;
use crate::framing::Framing;
use crate::handler::HandlerId;
use crate::stats::Counters;
use crate::sys;

/// Settings of a reactor; the command line maps onto these one to one.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest frame payload; at most [`crate::reactor::MAX_FRAME_LIMIT`]
    /// (larger values are clamped: read-buffer offsets are 32-bit).
    /// gen_tcp's `packet_size`.
    pub max_frame: usize,
    /// Connections beyond this many are accepted and closed at once (only
    /// those of listeners that count, see [`ListenOptions::counted`]).
    pub max_conns: usize,
    /// Share the `max_conns` count with other reactors (workers), so that
    /// the limit holds for the whole server; `None`: this reactor alone.
    pub conn_count: Option<Arc<ConnCount>>,
    /// The output policy of every connection that does not set its own.
    pub output: OutputPolicy,
    /// Close a connection whose pending output makes no progress this
    /// long (gen_tcp's `send_timeout` with `send_timeout_close`). Zero
    /// disables.
    pub send_timeout: Duration,
    /// Close a connection that neither sends nor receives this long. Zero
    /// disables. Receiving means a whole frame: the bytes of a frame that
    /// never completes (a slowloris dribbling a line) do not count.
    pub idle_timeout: Duration,
    /// Publish a snapshot of the counters for other threads (`--stats`,
    /// `/metrics`); `None`: keep them to the reactor.
    pub publish: Option<Publish>,
    /// Call [`crate::Handler::on_tick`] this often; zero disables.
    pub tick: Duration,
    /// Handle SIGINT/SIGTERM with a `signalfd` (a program's only reactor;
    /// not tests, not one of several workers).
    pub handle_signals: bool,
    /// How long shutdown may spend flushing before closing everything.
    pub drain_timeout: Duration,
    /// Bytes read from one connection per wake-up before others get a turn.
    pub read_budget: usize,
    /// Connections accepted per wake-up before others get a turn.
    pub accept_budget: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame: 1 << 20,
            max_conns: 10_000,
            conn_count: None,
            output: OutputPolicy::default(),
            send_timeout: Duration::from_secs(30),
            idle_timeout: Duration::ZERO,
            publish: None,
            tick: Duration::ZERO,
            handle_signals: false,
            drain_timeout: Duration::from_secs(5),
            read_budget: 4 * READ_BUF_SIZE,
            accept_budget: 256,
        }
    }
}

/// The number of counted connections of several reactors: touched once
/// per accept and once per close, never per message.
#[derive(Debug, Default)]
pub struct ConnCount(AtomicUsize);

impl ConnCount {
    /// Take a place if fewer than `max` are taken.
    pub fn take(&self, max: usize) -> bool {
        self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Give a place back.
    pub fn release(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    /// Places taken now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Where and how often a reactor copies its counters for other threads.
/// The copy is the only thing shared: the hot path touches plain integers
/// of its own reactor.
#[derive(Clone, Debug)]
pub struct Publish {
    /// How often (and once more when the reactor stops).
    pub every: Duration,
    /// The slot the snapshot is written to.
    pub to: Arc<Mutex<Counters>>,
}

/// What happens when a connection's output queue passes its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverLimit {
    /// Stop reading the connection until its output drains to the low
    /// watermark: TCP pushes back on the peer (echo).
    Pause,
    /// Disconnect it: a slow consumer must not hold memory (chat).
    Disconnect,
    /// Refuse further sends with [`crate::SendError::OverLimit`]: the
    /// caller decides (gen_tcp's blocking `send`, without the blocking).
    Refuse,
}

/// A connection's output queue: its limit and watermarks.
///
/// A queue is judged by its footprint, its bytes plus a fixed charge per
/// queued chunk (see [`crate::buffer::Buffers::footprint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputPolicy {
    /// The most a queue may hold; past it, `over_limit` applies.
    pub limit: usize,
    /// What to do past the limit.
    pub over_limit: OverLimit,
    /// Passing this calls [`crate::Handler::on_busy`] (gen_tcp's
    /// `high_watermark`).
    pub high_watermark: usize,
    /// Falling back to this calls [`crate::Handler::on_ready`] and resumes
    /// a connection paused by [`OverLimit::Pause`] (gen_tcp's
    /// `low_watermark`).
    pub low_watermark: usize,
}

impl OutputPolicy {
    /// A limit with the watermarks at the limit and at half of it.
    pub fn new(limit: usize, over_limit: OverLimit) -> OutputPolicy {
        OutputPolicy { limit, over_limit, high_watermark: limit, low_watermark: limit / 2 }
    }
}

impl Default for OutputPolicy {
    /// 4 MiB, pausing, resuming at 2 MiB.
    fn default() -> Self {
        OutputPolicy::new(4 << 20, OverLimit::Pause)
    }
}

/// Delivery of frames, after gen_tcp's `{active, ...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Active {
    /// Deliver every frame as it arrives (`{active, true}`), the default.
    On,
    /// Deliver one frame, then pause until re-armed (`{active, once}`).
    Once,
    /// Deliver this many more frames (added to what is left, as gen_tcp
    /// does), then pause and call [`crate::Handler::on_passive`]
    /// (`{active, N}`). `N(0)` with nothing left pauses and calls
    /// `on_passive` at once (`{active, 0}`).
    N(u32),
    /// Deliver nothing and stop reading: TCP pushes back on the peer
    /// (`{active, false}`).
    Off,
}

/// TCP keepalive probes: after `idle` without traffic, a probe every
/// `interval`, and the connection fails (`ETIMEDOUT`) after `count`
/// unanswered ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe (`TCP_KEEPIDLE`), whole seconds.
    pub idle: Duration,
    /// Between probes (`TCP_KEEPINTVL`), whole seconds.
    pub interval: Duration,
    /// Unanswered probes before the connection fails (`TCP_KEEPCNT`).
    pub count: u32,
}

/// Options of a connected socket (gen_tcp's `nodelay`, `keepalive`,
/// `sndbuf`, `recbuf`). Applied on accept or connect; read back with
/// [`crate::Ctx::socket_options`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// `TCP_NODELAY`: send small writes at once (on by default: a reactor
    /// coalesces its own writes, so Nagle only adds latency).
    pub nodelay: bool,
    /// `SO_KEEPALIVE` with its timings; `None` leaves the kernel's default.
    pub keepalive: Option<Keepalive>,
    /// `SO_SNDBUF` in bytes (the kernel doubles it); `None`: the default.
    pub send_buffer: Option<usize>,
    /// `SO_RCVBUF` in bytes (the kernel doubles it); `None`: the default.
    pub recv_buffer: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions { nodelay: true, keepalive: None, send_buffer: None, recv_buffer: None }
    }
}

impl SocketOptions {
    /// Set these options on a socket: one system call per option that
    /// differs from the kernel's default (`TCP_NODELAY` only, by default).
    pub fn apply(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.nodelay {
            sys::set_nodelay(fd, true)?;
        }
        if let Some(k) = self.keepalive {
            sys::set_keepalive(fd, true)?;
            let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as u32;
            sys::set_keepalive_params(fd, secs(k.idle), secs(k.interval), k.count.max(1))?;
        }
        if let Some(bytes) = self.send_buffer {
            sys::set_send_buffer(fd, bytes)?;
        }
        if let Some(bytes) = self.recv_buffer {
            sys::set_recv_buffer(fd, bytes)?;
        }
        Ok(())
    }

    /// Read the options a socket has now.
    pub fn read(fd: BorrowedFd<'_>) -> io::Result<SocketOptions> {
        let keepalive = if sys::keepalive(fd)? {
            let (idle, interval, count) = sys::keepalive_params(fd)?;
            Some(Keepalive {
                idle: Duration::from_secs(idle.into()),
                interval: Duration::from_secs(interval.into()),
                count,
            })
        } else {
            None
        };
        Ok(SocketOptions {
            nodelay: sys::nodelay(fd)?,
            keepalive,
            send_buffer: Some(sys::send_buffer(fd)?),
            recv_buffer: Some(sys::recv_buffer(fd)?),
        })
    }
}

/// Decides, right after `accept`, whether a peer is served; `false`
/// closes the socket before it is registered or any handler hears of it.
pub type AcceptFilter = Arc<dyn Fn(&SocketAddr) -> bool + Send + Sync>;

/// Options of a listening socket and of the connections it accepts.
#[derive(Clone)]
pub struct ListenOptions {
    /// Framing of accepted connections (gen_tcp's `packet`).
    pub framing: Framing,
    /// The accept queue's length (the kernel clamps it to
    /// `net.core.somaxconn`).
    pub backlog: i32,
    /// `SO_REUSEPORT`: several sockets, in this process or others, listen
    /// on one address and the kernel spreads connections over them.
    pub reuse_port: bool,
    /// `IPV6_V6ONLY` for an IPv6 address; `None`: the system default.
    pub v6_only: Option<bool>,
    /// Options set on every accepted connection.
    pub socket: SocketOptions,
    /// Refuse peers before they are registered (`--allow`/`--deny` are
    /// one such filter). Refusals are counted.
    pub filter: Option<AcceptFilter>,
    /// Its connections count towards [`Config::max_conns`] and the
    /// `connections` figures (a metrics listener's do not).
    pub counted: bool,
    /// A frame limit of its own for the connections it accepts, instead of
    /// [`Config::max_frame`] (gen_tcp's `packet_size` per socket): a
    /// listener for small requests (an HTTP head) need not let each
    /// connection buffer a service's largest frame. Kept with the
    /// connection's rarely used state: a small allocation per connection.
    pub max_frame: Option<usize>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            framing: Framing::Raw,
            backlog: 1024,
            reuse_port: false,
            v6_only: None,
            socket: SocketOptions::default(),
            filter: None,
            counted: true,
            max_frame: None,
        }
    }
}

impl std::fmt::Debug for ListenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenOptions")
            .field("framing", &self.framing)
            .field("backlog", &self.backlog)
            .field("reuse_port", &self.reuse_port)
            .field("v6_only", &self.v6_only)
            .field("socket", &self.socket)
            .field("filter", &self.filter.as_ref().map(|_| ".."))
            .field("counted", &self.counted)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

/// Options of an outgoing connection ([`crate::Ctx::connect`]).
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Framing of the connection.
    pub framing: Framing,
    /// Bind to this local address first (to pick a source address).
    pub local: Option<SocketAddr>,
    /// Give up after this long: `on_close` with
    /// `ConnectFailed(ETIMEDOUT)`. `None`: the kernel's own (minutes).
    pub timeout: Option<Duration>,
    /// Options set once connected.
    pub socket: SocketOptions,
    /// The handler the connection belongs to; `None`: the handler whose
    /// callback is running (or the first handler, outside callbacks).
    pub handler: Option<HandlerId>,
    /// A frame limit of its own, instead of [`Config::max_frame`]: a link
    /// to a backend whose replies have their own sizes (the chat's Redis
    /// links) need not follow the limit set for clients. As
    /// [`ListenOptions::max_frame`].
    pub max_frame: Option<usize>,
}
