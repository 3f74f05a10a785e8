//! Accepting: listeners, accept filters, limits, running out of
//! descriptors — and the other way a connection is born, a completed
//! `connect`.
//!
//! # Draining the listener
//!
//! A listener is edge-triggered like everything else: one edge may stand
//! for many queued connections, so each listener is accepted from until
//! `EAGAIN` or a budget; a listener with connections left waiting stays
//! `pending` and is served again before the next `epoll_wait` sleeps.
//! Accepting until `EAGAIN` needs a non-blocking socket: on a blocking
//! one the last `accept4` waits for the next client, and the whole reactor
//! with it. [`crate::Reactor::add_listener`] makes a socket bound elsewhere
//! (a `std::net::TcpListener` is blocking) non-blocking for that reason.
//!
//! # Running out of descriptors
//!
//! When `accept4` fails with `EMFILE`/`ENFILE` (or `ENOBUFS`/`ENOMEM`) the
//! pending connection stays in the kernel's backlog, and with an
//! edge-triggered listener no new edge may come for it. Retrying at once
//! would spin. The reactor instead pauses accepting (nginx does the same)
//! and retries when a connection of its own closes (a descriptor is free)
//! or after [`super::ACCEPT_RETRY`], whichever is first. Connections
//! already open keep being served meanwhile. (The alternative, a spare
//! descriptor closed to accept-and-close the pending peer, turns clients
//! away; pausing keeps them waiting in the backlog until there is room.)
//!
//! # Refusing
//!
//! A listener's [`crate::AcceptFilter`] (`--allow`/`--deny`) and the
//! reactor's `max_conns` are checked right after `accept4`, before the
//! socket is registered or any handler hears of it: a refused peer costs
//! one `accept4` and one `close`, and sees an immediate end of stream.
//! `max_conns` counts the connections of counted listeners only (a metrics
//! listener is not), and with [`crate::options::ConnCount`] it counts them
//! over several reactors: one atomic operation per accept and per close,
//! none per message, and the limit is exact for the whole server.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use log::{debug, warn};

use super::{errno, Key, Reactor, ACCEPT_RETRY, INTEREST, MAX_FRAME_LIMIT};
use crate::conn::{flag, Conn};
use crate::handler::CloseReason;
use crate::sys;

impl Reactor {
    /// Accept on every listener that has connections waiting.
    pub(super) fn accept_pending(&mut self) {
        for i in 0..self.core.listeners.len() {
            if self.core.listeners[i].pending && self.core.accept_paused_until <= self.core.clock.now() {
                self.accept(i);
            }
        }
    }

    /// Accept until `EAGAIN`, the budget, or descriptor exhaustion.
    pub(super) fn accept(&mut self, index: usize) {
        self.accept_at_most(index, self.core.config.accept_budget);
    }

    /// Accept until `EAGAIN`, `most` connections, or descriptor
    /// exhaustion; returns how many were taken from the queue (served or
    /// refused).
    pub(super) fn accept_at_most(&mut self, index: usize, most: usize) -> usize {
        self.core.accept_paused_until = 0;
        let mut taken = 0;
        while taken < most {
            let Some(listener) = self.core.listeners.get(index) else { return taken };
            match sys::accept(listener.fd.as_fd()) {
                Ok((fd, peer)) => {
                    taken += 1;
                    self.core.counters.accepted += listener.options.counted as u64;
                    self.admit(index, fd, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.core.listeners[index].pending = false;
                    return taken;
                }
                // The peer gave up before we got to it, or a signal: next.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO)) => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM (or anything unexpected):
                    // do not spin on the backlog; retry after a pause or
                    // when one of our connections closes.
                    if self.core.counters.accept_exhausted == 0 || log::log_enabled!(log::Level::Debug) {
                        warn!("accept: {e}; pausing accepts for {} ms", ACCEPT_RETRY.as_millis());
                    }
                    self.core.counters.accept_exhausted += 1;
                    self.core.accept_paused_until = self.core.clock.after(ACCEPT_RETRY);
                    return taken;
                }
            }
        }
        // Budget spent: more may wait, and no new edge will say so (it stays
        // pending).
        taken
    }

    fn admit(&mut self, index: usize, fd: OwnedFd, peer: SocketAddr) {
        let core = &mut self.core;
        let listener = &core.listeners[index];
        if listener.options.filter.as_ref().is_some_and(|permits| !permits(&peer)) {
            core.counters.refused_denied += 1;
            debug!("refused {peer}: not allowed");
            return;
        }
        let counted = listener.options.counted;
        if counted && !core.take_place() {
            core.counters.refused_full += 1;
            debug!("refused {peer}: {} connections open", core.config.max_conns);
            return;
        }
        let listener = &core.listeners[index];
        if let Err(e) = listener.options.socket.apply(fd.as_fd()) {
            debug!("{peer}: socket options: {e}");
        }
        let (framing, handler, max_frame) = (listener.options.framing, listener.handler, listener.options.max_frame);
        let mut conn = Conn::new(fd, framing, handler, core.next_generation());
        conn.set(if counted { flag::COUNTED_CONN } else { flag::QUIET });
        if let Some(max) = max_frame {
            conn.extra().max_frame = Some(max.min(MAX_FRAME_LIMIT));
        }
        let key = core.conns.insert(conn);
        // Registering a socket that already has data reports it at once:
        // epoll checks readiness on EPOLL_CTL_ADD, so no edge is lost.
        if let Err(e) = core.epoll.add(core.conns[key].fd.as_fd(), key as u64, INTEREST) {
            warn!("epoll_ctl: {e}");
            if core.conns.remove(key).has(flag::COUNTED_CONN) {
                core.release_place();
            }
            return;
        }
        core.touch(key);
        #[cfg(feature = "ws")]
        core.ws_opened(key);
        let id = core.id(key);
        self.call_conn(key, "on_open", |h, ctx| h.on_open(ctx, id));
    }

    /// `EPOLLOUT` (or an error) on a connecting socket: `SO_ERROR` says
    /// whether the connect succeeded.
    pub(super) fn finish_connect(&mut self, key: usize) {
        let conn = &mut self.core.conns[key];
        match sys::take_socket_error(conn.fd.as_fd()) {
            Ok(None) => {
                conn.clear(flag::CONNECTING);
                // The connect timeout is over.
                self.core.set_write_deadline(key, 0);
                self.core.touch(key);
                let id = self.core.id(key);
                self.call_conn(key, "on_open", |h, ctx| h.on_open(ctx, id));
            }
            Ok(Some(err)) | Err(err) => {
                debug!("{}: connect failed: {err}", Key(key));
                self.core.kill(key, CloseReason::ConnectFailed(errno(&err)));
            }
        }
    }
}
