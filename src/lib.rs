//! # edgeloop
//!
//! A hand-written, single-threaded, edge-triggered epoll reactor that gives a
//! server author what Erlang's `gen_tcp` gives — framing (`raw`, `line`,
//! 1/2/4-byte length prefix), flow control, buffered non-blocking send, send
//! timeouts, half-close — with every connection in a slab and every byte in
//! buffers you can see.
//!
//! ## A whole server
//!
//! A [`Handler`] gets frames as slices of the connection's read buffer and
//! answers through [`Ctx`]; the [`Reactor`] does the rest — accepting,
//! buffering, flushing, half-close, timeouts:
//!
//! ```
//! use std::io::{BufRead, BufReader, Write};
//! use edgeloop::{Config, ConnId, Ctx, Framing, Handler, ListenOptions, Reactor};
//!
//! /// Answers every line in capitals.
//! struct Shout;
//!
//! impl Handler for Shout {
//!     fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, line: &[u8]) {
//!         // Refused only if the connection is closing: nothing to do then.
//!         let _ = ctx.send(id, &line.to_ascii_uppercase());
//!     }
//! }
//!
//! let mut reactor = Reactor::new(Config::default())?;
//! let shout = reactor.add_handler(Shout);
//! let options = ListenOptions { framing: Framing::Line, ..ListenOptions::default() };
//! let addr = reactor.listen(&"127.0.0.1:0".parse().unwrap(), shout, options)?;
//!
//! // A client on another thread, which then stops the server (a program
//! // would rather set `Config::handle_signals` and wait for SIGTERM).
//! let handle = reactor.handle();
//! let client = std::thread::spawn(move || -> std::io::Result<String> {
//!     let mut stream = std::net::TcpStream::connect(addr)?;
//!     stream.write_all(b"hello\n")?;
//!     let mut reply = String::new();
//!     BufReader::new(stream).read_line(&mut reply)?;
//!     handle.stop()?;
//!     Ok(reply)
//! });
//! reactor.run()?; // until stopped and every connection closed
//! assert_eq!(client.join().unwrap()?, "HELLO\n");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## From gen_tcp
//!
//! | gen_tcp / inet | edgeloop |
//! |---|---|
//! | `gen_tcp:listen/2`, `accept/1` | [`Reactor::listen`] (several per reactor, each with its handler); accepted connections arrive in [`Handler::on_open`] |
//! | `gen_tcp:connect/4` with a timeout | [`Ctx::connect`] with [`ConnectOptions::timeout`]; failure is [`CloseReason::ConnectFailed`] with the errno (refused, timed out, unreachable) |
//! | `{tcp, S, Data}` | [`Handler::on_frame`]: a slice of the read buffer, no copy |
//! | `{tcp_closed, S}`, `{tcp_error, S, R}` | [`Handler::on_close`] with a [`CloseReason`] |
//! | `{active, true \| false \| once \| N}` | [`Ctx::set_active`] with [`Active::On`], [`Active::Off`], [`Active::Once`], [`Active::N`] |
//! | `{tcp_passive, S}` | [`Handler::on_passive`] |
//! | `{packet, raw \| line \| 1 \| 2 \| 4}` | [`Framing`]: `Raw`, `Line`, `Len1`, `Len2`, `Len4`; per listener ([`ListenOptions::framing`]), per connect, or [`Ctx::set_framing`] at any time |
//! | `{packet_size, N}` | [`Config::max_frame`]: a longer frame is [`CloseReason::FrameTooLarge`], a longer length header is refused before any memory is reserved |
//! | `gen_tcp:recv(S, N)` | [`Framing::Exact`]`(n)`: the next n bytes as one frame |
//! | `{packet, http}`, then a WebSocket (RFC 6455; no gen_tcp counterpart) | `Framing::Ws` (the `ws` feature): the request head is the first frame (`Ctx::message_kind` says `Handshake`), `Ctx::ws_accept` upgrades (or the handler answers HTTP itself), then a frame is one whole message, unmasked and reassembled in place; `Ctx::set_send_kind` picks text or binary, one server frame per send; pings and closes are answered by the library, every violation closed with its status, `Ctx::ws_close` closes with one (see `ws`) |
//! | `gen_tcp:send/2` | [`Ctx::send`] (queued, never blocks), [`Ctx::send_now`] (no copy), [`Ctx::send_shared`] (one buffer, many recipients) |
//! | `{send_timeout, T}`, `{send_timeout_close, true}` | [`Config::send_timeout`]; the close says how much was unsent ([`CloseReason::SendTimeout`]) |
//! | `{high_watermark, H}`, `{low_watermark, L}` (busy/ready) | [`OutputPolicy`]'s watermarks with [`Handler::on_busy`] and [`Handler::on_ready`]; past the limit [`OverLimit`] pauses, disconnects or refuses; per connection with [`Ctx::set_output_policy`] |
//! | `{exit_on_close, false}` | [`Ctx::set_exit_on_close`]`(id, false)`: the peer's FIN is [`Handler::on_eof`] and the connection stays writable |
//! | `gen_tcp:shutdown(S, write)` | [`Ctx::shutdown_write`], and [`Handler::on_shutdown`] when the FIN has followed the data |
//! | `gen_tcp:close/1` | [`Ctx::close`]: flush, `SHUT_WR`, linger for the peer's FIN |
//! | `{linger, {true, 0}}` then close | [`Ctx::abort`]: reset, queued output dropped |
//! | `{show_econnreset, true}` | always: [`CloseReason::Error`]`(Errno::ECONNRESET)` |
//! | `{nodelay, true}` | [`SocketOptions::nodelay`], on by default |
//! | `{keepalive, true}` (and the `TCP_KEEP*` raw options) | [`SocketOptions::keepalive`] with idle, interval and count |
//! | `{sndbuf, N}`, `{recbuf, N}` | [`SocketOptions::send_buffer`], [`SocketOptions::recv_buffer`] |
//! | `{reuseaddr, true}` | always on listeners |
//! | `{reuseport, true}` | [`ListenOptions::reuse_port`] (several reactors on one address) |
//! | `{ipv6_v6only, B}` | [`ListenOptions::v6_only`] |
//! | `{backlog, N}` | [`ListenOptions::backlog`] |
//! | `inet:setopts/2`, `inet:getopts/2` | [`Ctx::set_socket_options`], [`Ctx::socket_options`] |
//! | `inet:peername/1`, `inet:sockname/1` | [`Ctx::peer_addr`], [`Ctx::local_addr`] |
//! | `gen_tcp:controlling_process/2` | [`Ctx::hand_over`]: no frame reaches the old handler after the call, and the new one gets `on_open` before any (gen_tcp's race, where messages already in the old owner's mailbox stay there, cannot happen) |
//! | `erlang:send_after/3` to oneself | [`Ctx::set_timer`], [`Ctx::cancel_timer`], [`Handler::on_timer`] (microseconds) |
//! | a crash of the socket's owner | a panic in a callback aborts only its connection ([`CloseReason::Panic`]); see [`Handler`] |
//! | a message from another process | [`Handle::submit`], [`Handle::stop`] from another thread |
//!
//! ## How one byte flows through
//!
//! ```text
//!  peer ──TCP──▶ kernel receive queue
//!                  │  EPOLLIN edge (epoll_wait in reactor::Reactor::run)
//!                  ▼
//!   read(2) into the read buffer (buffer.rs) — 64 KiB from the pool,
//!                  │                           taken only while bytes are pending
//!                  ▼
//!   framing::decode — memchr for '\n', or the 1/2/4-byte header; a frame
//!                  │  is a *slice* of the read buffer (no copy)
//!                  ▼
//!   Handler::on_frame(ctx, id, &[u8])  — the application (an echo server, say)
//!                  │  ctx.send(id, bytes): header + copy into the output queue,
//!                  │  or ctx.send_shared(id, Rc<[u8]>): by reference
//!                  │  from 2 KiB on (a copy below: cheaper for small lines)
//!                  ▼
//!   flush — after the frames of a read (the sender's replies), or from the
//!                  │  dirty list before epoll_wait (everyone else's):
//!                  │  one sendmsg(2) over every queued chunk (vectored)
//!                  ▼
//!   kernel send queue ──TCP──▶ peer
//!      (what the kernel refuses stays queued; the next EPOLLOUT edge
//!       resumes it; past its output limit the connection stops being read)
//! ```
//!
//! ## The modules, in reading order
//!
//! - [`sys`] — the system-call layer, the one module with `SAFETY:` blocks: thin wrappers
//!   on `nix` (epoll, sockets, eventfd, signalfd, rlimit), and `libc` where
//!   nix has no call or would cost a copy or a system call.
//! - [`reactor`] — the loop: dispatch, the ready and dirty lists, safe
//!   closing, deferred events, panics, shutdown. Its docs are the place to
//!   learn edge-triggered epoll; its files follow the loop:
//!   [`reactor::input`] (draining, delivery, end of stream),
//!   [`reactor::output`] (flushing, output policy, closing),
//!   [`reactor::accept`] (listeners, filters, `EMFILE`, connects),
//!   [`reactor::ctx`] (the application's API), [`reactor::waker`] (the
//!   cross-thread handle).
//! - [`options`] — the reactor's settings and the listener, connect,
//!   socket, output and delivery options.
//! - [`conn`] — one connection's flags and its half-close state machine.
//! - [`buffer`] — read buffer, output queue, buffer pool.
//! - [`framing`] — the zero-copy decoder, with a diagram of each framing.
//! - `ws` (the `ws` feature) — WebSocket as a framing: the handshake, the
//!   decoder that unmasks and reassembles in place, server frames; the
//!   reactor side is `reactor::ws`.
//! - [`timer`] — idle, send-timeout, connect, linger and application
//!   deadlines in one lazy heap, in microseconds.
//! - [`handler`] — the trait an application implements, and its events.
//!
//! [`conn`], [`buffer`], [`timer`] and most of [`sys`] are public so that
//! their docs can be read beside the reactor's; an application needs none
//! of them (the API is [`Reactor`], [`Ctx`], [`Handler`], [`Handle`] and the
//! option types), and their items may change in any minor release. The
//! enums that will grow ([`CloseReason`], [`SendError`], [`Framing`],
//! [`framing::FrameError`]) are `#[non_exhaustive]`.
//!
//! The programs — the echo and chat servers, the load generator, `--workers`
//! and `--metrics` — are users of this library like the examples, in the
//! `edgeloop-cli` crate (`cli/` in the repository), so that depending on the
//! reactor costs only `libc`, `nix`, `slab`, `memchr` and `log`.
//!
//! ## Why edge-triggered
//!
//! Level-triggered epoll reports a ready socket on every `epoll_wait` until
//! it is drained, so a loop that wants to stop reading a socket (flow
//! control) or stop hearing about writability (nothing to send) must tell
//! the kernel with `EPOLL_CTL_MOD` — a system call each time. Edge-triggered
//! epoll reports each change once: a socket is registered once for
//! everything and never touched again, and a ping-pong echo costs one
//! `read` and one `sendmsg` per message plus a share of one `epoll_wait`.
//!
//! The price is bookkeeping the kernel no longer does for you, and each
//! piece of it is a known source of bugs, handled and named in
//! [`reactor`]: reads must drain or be remembered (the ready list); paused
//! connections must be read at once when resumed; the listener must be
//! drained and must not spin on `EMFILE`; a connection closed mid-batch
//! must not meet its own stale event. netty dropped edge-triggering for
//! this reason; libuv and Redis stay level-triggered. This crate shows it
//! can be done plainly.
//!
//! ## Memory
//!
//! An idle connection holds no buffer: its slab entry is a 64-byte
//! [`conn::Conn`], and nothing else in user space. Buffers — and the box
//! holding a connection's read buffer and output queue — come from pools
//! when bytes are pending and return when they are gone; what few
//! connections use (an application timer, an output policy of their own)
//! is boxed apart. See the README for the measured figure.

#![warn(missing_docs)]

pub mod buffer;
pub mod conn;
pub mod framing;
pub mod handler;
pub mod options;
pub mod reactor;
pub mod stats;
pub mod sys;
pub mod timer;
#[cfg(feature = "ws")]
pub mod ws;

pub use framing::Framing;
pub use handler::{CloseReason, ConnId, Handler, HandlerId, SendError};
pub use nix::errno::Errno;
pub use options::{
    AcceptFilter, Active, Config, ConnectOptions, Keepalive, ListenOptions, OutputPolicy, OverLimit, SocketOptions,
};
pub use reactor::{Ctx, Handle, Reactor};
pub use stats::{AppCounters, CloneAppCounters, Counters};
