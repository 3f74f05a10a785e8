//! Output: flushing queues, the output policy, and the close path.
//!
//! # Writes
//!
//! Output is queued by `send` and the connection marked dirty. A
//! connection's own replies are written right after the frames of each
//! read were handled — all of them in one vectored `sendmsg`, while they
//! are still in cache, and with one output chunk in use at a time. Output
//! queued for *other* connections (a chat broadcast) is flushed once per
//! iteration, just before `epoll_wait`, from the dirty list (Redis's
//! `handleClientsWithPendingWrites`), so many sends in one turn become one
//! write per recipient. Only what the kernel refuses stays queued; the
//! `EPOLLOUT` edge that comes when the send buffer drains resumes it — no
//! `EPOLL_CTL_MOD`, ever. [`super::Ctx::send_now`] skips the queue (and the
//! copy into it) when nothing is queued.
//!
//! # The output policy
//!
//! Each queue is judged by its footprint against its connection's
//! [`OutputPolicy`]: passing the high watermark calls `on_busy`, falling
//! back to the low one calls `on_ready` (gen_tcp's busy/ready); past the
//! limit, [`OverLimit`] decides — pause reading (TCP pushes back on the
//! peer), disconnect (a slow consumer), or refuse further sends. "Pending"
//! means what the kernel will not take yet: before judging a queue over
//! its limit, it is offered to the kernel, so a burst queued in one
//! iteration does not cut off a peer that reads promptly.
//!
//! # Closing
//!
//! `kill` marks a connection dead at once (errors, timeouts, refusals);
//! `abort` does too, after `SO_LINGER` 0 so that the close sends a reset
//! and drops what is queued; `close_gracefully` flushes, shuts the write
//! side, and lingers for the peer's FIN (see [`crate::conn`] for why).
//! The dead are reaped at the end of the iteration ("Closing safely").

use std::io::{self, IoSlice};
use std::os::fd::AsFd;

use log::{debug, warn};

use super::{errno, Core, Key, Notice, LINGER};
use crate::buffer::MAX_IOVECS;
use crate::conn::{flag, Closing, Conn};
use crate::handler::{CloseReason, SendError};
use crate::options::{OutputPolicy, OverLimit};
use crate::sys;

impl Core {
    /// The output policy of a connection: its own, or the reactor's.
    pub(super) fn policy(&self, conn: &Conn) -> OutputPolicy {
        conn.extra.as_ref().and_then(|e| e.policy).unwrap_or(self.config.output)
    }

    /// Close at once (errors, timeouts, refusals of policy). The slot is
    /// freed at the end of the iteration.
    pub(super) fn kill(&mut self, key: usize, reason: CloseReason) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::DEAD) {
            conn.set(flag::DEAD);
            self.dead.push((key, reason));
        }
    }

    /// Close now with a reset (`SO_LINGER` 0), dropping what is queued.
    pub(super) fn abort(&mut self, key: usize, reason: CloseReason) {
        let conn = &mut self.conns[key];
        if conn.has(flag::DEAD) {
            return;
        }
        // Without linger 0, close(2) would still send what the kernel
        // holds, then a FIN: an abort must reset.
        if let Err(e) = sys::set_linger_zero(conn.fd.as_fd()) {
            debug!("{}: SO_LINGER: {e}", Key(key));
        }
        conn.bufs.clear_output(&mut self.pools);
        self.kill(key, reason);
    }

    /// Close after flushing what is owed: see the state diagram in `conn`.
    pub(super) fn close_gracefully(&mut self, key: usize, closing: Closing) {
        let conn = &mut self.conns[key];
        if conn.has(flag::DEAD | flag::CLOSING) {
            return;
        }
        if conn.has(flag::CONNECTING) {
            // Nothing was exchanged yet: there is nothing to flush or linger for.
            return self.kill(key, closing.into());
        }
        #[cfg(feature = "ws")]
        self.ws_goodbye(key, closing);
        let conn = &mut self.conns[key];
        conn.set(flag::CLOSING);
        conn.set_closing(closing);
        if conn.bufs.output_is_empty() {
            self.output_drained(key);
        }
    }

    pub(super) fn flush_if_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key).filter(|c| c.has(flag::DIRTY)) {
            // Its entry on the dirty list stays; flushing an empty queue
            // there costs nothing.
            conn.clear(flag::DIRTY);
            self.flush(key);
        }
    }

    /// Write as much of the output queue as the kernel takes.
    pub(super) fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.has(flag::DEAD | flag::CONNECTING) || conn.bufs.output_is_empty() {
            return;
        }
        let mut progress = false;
        let mut stuck = false;
        while !conn.bufs.output_is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let (count, wanted) = conn.bufs.io_slices(&mut slices);
            // One chunk (the common ping-pong reply) needs no msghdr.
            let fd = conn.fd.as_fd();
            let sent = if count == 1 { sys::send(fd, &slices[0]) } else { sys::send_vectored(fd, &slices[..count]) };
            self.counters.writes += 1;
            match sent {
                Ok(n) => {
                    self.counters.bytes_out += n as u64;
                    conn.bufs.advance(n, &mut self.pools);
                    progress = true;
                    // Short write: the send buffer is full; the next EPOLLOUT
                    // edge resumes (no call that would return EAGAIN).
                    if n < wanted {
                        stuck = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    stuck = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EPIPE/ECONNRESET: the peer is gone.
                    debug!("{}: send: {e}", Key(key));
                    return self.kill(key, CloseReason::Error(errno(&e)));
                }
            }
        }
        if progress {
            self.touch(key);
        }
        // The send timeout measures time without progress.
        if !stuck {
            self.set_write_deadline(key, 0);
        } else if progress || self.conns[key].write_deadline == 0 {
            let deadline = self.clock.after(self.config.send_timeout);
            self.set_write_deadline(key, deadline);
        }
        if progress {
            self.drained_to(key);
        }
        if !stuck {
            self.output_drained(key);
        }
    }

    /// After a write: below the low watermark, a busy connection is ready
    /// again and a paused one is read again.
    fn drained_to(&mut self, key: usize) {
        let conn = &self.conns[key];
        if !conn.has(flag::BUSY | flag::FLOW_PAUSED) {
            return;
        }
        let low = self.policy(conn).low_watermark;
        let conn = &mut self.conns[key];
        if conn.bufs.footprint() > low {
            return;
        }
        if conn.has(flag::FLOW_PAUSED) {
            // Reading resumes; the edges missed while paused will not come
            // again, so read now.
            conn.clear(flag::FLOW_PAUSED);
            self.push_ready(key);
        }
        if self.conns[key].has(flag::BUSY) {
            self.conns[key].clear(flag::BUSY);
            self.notice(key, Notice::Ready);
        }
    }

    /// The output queue is empty: carry out a pending shutdown or close.
    pub(super) fn output_drained(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::CLOSING | flag::SHUTDOWN_WANTED) {
            return;
        }
        if !conn.has(flag::WRITE_SHUT) {
            if let Err(e) = sys::shutdown_write(conn.fd.as_fd()) {
                debug!("{}: shutdown: {e}", Key(key));
                return self.kill(key, CloseReason::Error(errno(&e)));
            }
            conn.set(flag::WRITE_SHUT);
            if !conn.has(flag::CLOSING) {
                self.notice(key, Notice::Shutdown);
            }
        }
        let conn = &self.conns[key];
        if conn.has(flag::READ_EOF) {
            self.close_if_finished(key);
        } else if conn.has(flag::CLOSING) {
            // Wait for the peer's FIN (see `conn` on why), but not forever.
            let deadline = self.clock.after(LINGER);
            self.set_write_deadline(key, deadline);
            // The FIN may already be waiting behind discarded input.
            self.push_ready(key);
        }
    }

    /// Both directions are finished (our `SHUT_WR` done, the peer's FIN
    /// read): the connection is closed, for the reason it was closing.
    pub(super) fn close_if_finished(&mut self, key: usize) {
        let conn = &self.conns[key];
        if conn.has(flag::READ_EOF) && conn.has(flag::WRITE_SHUT) {
            let reason = if conn.has(flag::CLOSING) { conn.closing().into() } else { CloseReason::PeerClosed };
            self.kill(key, reason);
        }
    }

    /// Under [`OverLimit::Refuse`], whether `incoming` more bytes may be
    /// queued. An empty queue takes any one message.
    pub(super) fn may_queue(&mut self, key: usize, incoming: usize) -> Result<(), SendError> {
        let policy = self.policy(&self.conns[key]);
        if policy.over_limit != OverLimit::Refuse {
            return Ok(());
        }
        let fits = |conn: &Conn| conn.bufs.output_is_empty() || conn.bufs.footprint() + incoming <= policy.limit;
        if fits(&self.conns[key]) {
            return Ok(());
        }
        self.flush(key);
        let conn = &mut self.conns[key];
        if conn.has(flag::DEAD) {
            return Err(SendError::Closed);
        }
        if fits(conn) {
            return Ok(());
        }
        // The caller waits for on_ready: make sure it will come.
        if !conn.has(flag::BUSY) {
            conn.set(flag::BUSY);
            self.notice(key, Notice::Busy);
        }
        Err(SendError::OverLimit { queued: self.conns[key].bufs.footprint(), limit: policy.limit })
    }

    /// Output was queued: apply the watermarks and the limit.
    pub(super) fn queued(&mut self, key: usize) {
        let policy = self.policy(&self.conns[key]);
        let len = self.conns[key].bufs.footprint();
        self.counters.outq_high_water = self.counters.outq_high_water.max(len);
        if len > policy.high_watermark && !self.conns[key].has(flag::BUSY) {
            self.conns[key].set(flag::BUSY);
            self.notice(key, Notice::Busy);
        }
        if len > policy.limit && policy.over_limit != OverLimit::Refuse {
            // Offer it to the kernel before judging (see "The output policy").
            self.flush(key);
            let conn = &mut self.conns[key];
            let len = conn.bufs.footprint();
            if conn.has(flag::DEAD) || len <= policy.limit {
                return;
            }
            match policy.over_limit {
                OverLimit::Pause => {
                    if !conn.has(flag::FLOW_PAUSED) {
                        conn.set(flag::FLOW_PAUSED);
                        self.counters.flow_pauses += 1;
                    }
                }
                OverLimit::Disconnect => {
                    if self.peer_warnings.allow(self.clock.now()) {
                        warn!("{}: {len} bytes of output pending, over the limit; disconnecting", Key(key));
                    }
                    conn.bufs.clear_output(&mut self.pools);
                    return self.kill(key, CloseReason::OutbufFull);
                }
                OverLimit::Refuse => {}
            }
        }
        self.push_dirty(key);
    }
}
