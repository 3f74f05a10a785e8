//! # edgeloop
//!
//! A hand-written, single-threaded, edge-triggered epoll reactor that gives a
//! server author what Erlang's `gen_tcp` gives — framing (`raw`, `line`,
//! 1/2/4-byte length prefix), flow control, buffered non-blocking send, send
//! timeouts, half-close — with every connection in a slab and every byte in
//! buffers you can see.
//!
//! ## How one byte flows through
//!
//! ```text
//!  peer ──TCP──▶ kernel receive queue
//!                  │  EPOLLIN edge (epoll_wait in reactor::Reactor::run)
//!                  ▼
//!   read(2) into ReadBuf (buffer.rs) — a 64 KiB buffer from the pool,
//!                  │                   taken only while bytes are pending
//!                  ▼
//!   framing::decode — memchr for '\n', or the 1/2/4-byte header; a frame
//!                  │  is a *slice* of the read buffer (no copy)
//!                  ▼
//!   Handler::on_frame(ctx, id, &[u8])  — the application (servers/echo.rs)
//!                  │  ctx.send(id, bytes): header + copy into the OutQueue,
//!                  │  or ctx.send_shared(id, Rc<[u8]>): by reference
//!                  ▼
//!   flush — after the frames of a read (the sender's replies), or from the
//!                  │  dirty list before epoll_wait (everyone else's):
//!                  │  one sendmsg(2) over every queued chunk (vectored)
//!                  ▼
//!   kernel send queue ──TCP──▶ peer
//!      (what the kernel refuses stays queued; the next EPOLLOUT edge
//!       resumes it; past max_outbuf the connection stops being read)
//! ```
//!
//! ## The modules, in reading order
//!
//! - [`sys`] — the system-call layer and the only `unsafe`: thin wrappers
//!   on `nix` (epoll, sockets, eventfd, signalfd, rlimit), and `libc` where
//!   nix has no call or would cost a copy or a system call.
//! - [`reactor`] — the loop: dispatch, draining, the ready and dirty lists,
//!   safe closing, accept with `EMFILE` handling, shutdown. Its docs are
//!   the place to learn edge-triggered epoll.
//! - [`conn`] — one connection's flags and its half-close state machine.
//! - [`buffer`] — read buffer, output queue, buffer pool.
//! - [`framing`] — the zero-copy decoder, with a diagram of each framing.
//! - [`timer`] — idle, send-timeout and linger deadlines in a lazy heap.
//! - [`handler`] — the trait an application implements.
//! - [`servers`] — echo and chat; [`load`] — the load generator.
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
//! An idle connection holds no buffer: its slab entry is a 112-byte
//! [`conn::Conn`] (plus the slab's tag), and nothing else in user space.
//! Buffers come from pools when bytes are pending and return when they are
//! gone. See the README for the measured figure.

pub mod access;
pub mod buffer;
pub mod conn;
pub mod framing;
pub mod handler;
pub mod load;
pub mod options;
pub mod reactor;
pub mod servers;
pub mod stats;
pub mod sys;
pub mod timer;

pub use access::{AccessList, Cidr};
pub use framing::Framing;
pub use handler::{CloseReason, ConnId, Handler, HandlerId, SendError};
pub use nix::errno::Errno;
pub use options::{
    AcceptFilter, Active, Config, ConnectOptions, Keepalive, ListenOptions, OutputPolicy, OverLimit, SocketOptions,
};
pub use reactor::{Ctx, Handle, Reactor};
pub use stats::Counters;
