//! Input: reading a socket until it is drained, handing its frames to the
//! application, and the end of the stream.
//!
//! ```text
//!   EPOLLIN edge ─▶ handle_input: deliver what is buffered (a resumed or
//!                   re-framed connection), then loop:
//!                     read(2) into the pooled buffer
//!                     deliver every complete frame (Active decides how many)
//!                     write the replies to this read now (one sendmsg)
//!                     short read, and no HUP seen? drained: stop
//!                     budget spent? onto the ready list: stop
//!                   read == 0: deliver the rest under the EOF rules
//! ```
//!
//! Edge cases handled here, by name: **draining** with a per-wake-up
//! budget and the ready list (one flooding peer cannot starve the rest);
//! the **short-read** skip, and its exception once `EPOLLRDHUP`/`HUP`/`ERR`
//! was seen (the end of the stream is never announced twice); **paused**
//! connections, whose edges are lost and which are read at once when
//! re-armed; **end of stream versus reset** (`read == 0` delivers every
//! complete frame and then the EOF rules; `ECONNRESET` closes with the
//! error, after what was read before it was delivered); **slowloris**: only
//! a delivered frame counts as activity for the idle timeout, so a peer
//! dribbling a frame that never ends is idle however often it sends;
//! **urgent data**, below.
//!
//! # Urgent data (`MSG_OOB`)
//!
//! A TCP peer may mark a byte urgent (`send(..., MSG_OOB)`), and Linux
//! stops a read at that mark: `abc` then urgent `d` then `efg`, all
//! queued, read back as `abc` (short) and then `defg`. A short read is
//! then no sign of a drained socket, and the rest would wait for an edge
//! that never comes — a stalled connection. And by default the urgent
//! byte itself is taken out of the stream (only `recv(MSG_OOB)` gets it),
//! so an echo would silently drop it.
//!
//! Both are needed, and both are done: every socket has `SO_OOBINLINE`
//! (set on listeners, inherited by what they accept; set on connects), so
//! an urgent byte is an ordinary byte of the stream, in order — what a
//! byte-stream service owes its peer, and what RFC 6093 asks of
//! applications that meet urgent data; and sockets are registered for
//! `EPOLLPRI`, which the kernel raises while urgent data is pending: an
//! event carrying it marks the connection `URGENT`, and such a connection
//! is read until `EAGAIN`, as after `EPOLLRDHUP`. The cost is one `read`
//! that says `EAGAIN`, only when urgent data came. (`SO_OOBINLINE` alone
//! would not do: the read still stops at the mark. `EPOLLPRI` alone would
//! not either: the urgent byte would be lost.)

use std::io;
use std::os::fd::AsFd;

use log::{debug, warn};

use super::{errno, Key, Reactor};
use crate::conn::{flag, Closing};
use crate::framing::{self, AtEof, Decoded};
use crate::handler::{CloseReason, ConnId};
use crate::sys;

impl Reactor {
    /// Read until drained (or budget), delivering frames as they complete.
    pub(super) fn handle_input(&mut self, key: usize) {
        // Frames left buffered by a pause or a framing switch go first (and
        // what `deliver` owes a closing or finished stream). Usually there
        // is nothing: the check spares each wake-up a pass over an empty
        // buffer.
        let leftover =
            self.core.conns.get(key).is_some_and(|c| !c.bufs.input_is_empty() || c.has(flag::READ_EOF | flag::CLOSING));
        let mut need = if leftover { self.deliver(key) } else { 0 };
        let mut budget = self.core.config.read_budget;
        loop {
            let core = &mut self.core;
            let Some(conn) = core.conns.get_mut(key) else { return };
            if !conn.may_read() {
                break;
            }
            if budget == 0 {
                core.push_ready(key);
                break;
            }
            let buf = conn.bufs.prepare(&mut core.pools, need);
            let room = buf.capacity() - buf.len();
            match sys::read_into_spare(conn.fd.as_fd(), buf) {
                Ok(0) => {
                    conn.set(flag::READ_EOF);
                    core.counters.reads += 1;
                    break;
                }
                Ok(n) => {
                    core.counters.reads += 1;
                    core.counters.bytes_in += n as u64;
                    let frames = core.counters.frames_in;
                    need = self.deliver(key);
                    // Idle means no whole frame: bytes of a frame that
                    // never completes (a slowloris) do not keep it open.
                    if self.core.counters.frames_in != frames && self.core.conns.contains(key) {
                        self.core.touch(key);
                    }
                    // Write the replies to this read now, while they are in
                    // cache, rather than at the end of the iteration: one
                    // output chunk is in use at a time, not one per ready
                    // connection.
                    self.core.flush_if_dirty(key);
                    budget = budget.saturating_sub(n);
                    let read_on = self.core.conns.get(key).is_some_and(|c| c.has(flag::HUP_SEEN | flag::URGENT));
                    if n < room && !read_on {
                        break; // drained: see "Short reads"
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Really drained: an urgent mark, if any, is behind us.
                    conn.clear(flag::URGENT);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ECONNRESET and friends. Everything read before the
                    // error was delivered above.
                    debug!("{}: read: {e}", Key(key));
                    core.kill(key, CloseReason::Error(errno(&e)));
                    break;
                }
            }
        }
        // End of stream: the remaining frames, then the EOF rules.
        if self.core.conns.get(key).is_some_and(|c| c.has(flag::READ_EOF)) {
            self.deliver(key);
        }
        if let Some(conn) = self.core.conns.get_mut(key) {
            conn.bufs.settle(&mut self.core.pools);
        }
    }

    /// Hand every complete buffered frame to the application, while the
    /// connection may receive; apply the end-of-stream rules once the
    /// peer's FIN has been read. Returns the buffer size the next frame is
    /// known to need.
    fn deliver(&mut self, key: usize) -> usize {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(key) else { return 0 };
        if conn.has(flag::CLOSING) {
            // Lingering after a graceful close: input is read only to see
            // the FIN, and discarded.
            conn.bufs.discard_input(&mut core.pools);
            core.close_if_finished(key);
            return 0;
        }
        // The buffer is moved out while the application runs, so that the
        // frame (a slice of it) and `ctx` (which can reach every connection)
        // are not borrowed from the same place.
        let mut input = conn.bufs.take_input();
        let handler = conn.handler();
        let max_frame = conn.max_frame(core.config.max_frame);
        core.delivering = key;
        let mut need = 0;
        loop {
            let conn = &mut self.core.conns[key];
            // A connection handed to another handler waits for its new
            // owner's on_open (see `Ctx::hand_over`): `may_deliver` is
            // false until then, here and in later reads of this wake-up.
            if !conn.may_deliver() || conn.handler() != handler {
                break;
            }
            #[cfg(feature = "ws")]
            if conn.framing == crate::Framing::Ws {
                match self.deliver_ws(key, &mut input) {
                    Some(n) => need = n,
                    None => continue,
                }
                break;
            }
            let mut scanned = input.scanned as usize;
            match framing::decode(conn.framing, input.unread(), &mut scanned, max_frame) {
                Ok(Decoded::Frame(frame)) => {
                    self.deliver_frame(key, &input.unread()[frame.start..frame.end]);
                    input.consume(frame.end);
                }
                Ok(Decoded::Incomplete { need: n }) => {
                    input.scanned = scanned as u32;
                    need = n;
                    break;
                }
                Err(e) => {
                    if self.core.peer_warnings.allow(self.core.clock.now()) {
                        warn!("{}: protocol error: {e}; closing", Key(key));
                    }
                    self.core.kill(key, CloseReason::FrameTooLarge);
                    break;
                }
            }
        }
        let conn = &mut self.core.conns[key];
        if conn.has(flag::READ_EOF) && conn.may_deliver() && conn.handler() == handler {
            match framing::at_eof(conn.framing, input.unread()) {
                AtEof::Clean => {}
                AtEof::FinalLine => self.deliver_frame(key, input.unread()),
                AtEof::Truncated => {
                    if self.core.peer_warnings.allow(self.core.clock.now()) {
                        let discarded = input.unread().len();
                        warn!("{}: stream ended inside a frame; {discarded} bytes discarded", Key(key));
                    }
                }
            }
            input.consume(input.unread().len());
            self.end_of_stream(key);
        }
        self.core.delivering = usize::MAX;
        if let Some(conn) = self.core.conns.get_mut(key) {
            conn.bufs.put_back_input(input, &mut self.core.pools);
        }
        need
    }

    /// One frame to the application, counting it against `Active::Once`/`N`.
    pub(super) fn deliver_frame(&mut self, key: usize, frame: &[u8]) {
        self.core.counters.frames_in += 1;
        let conn = &mut self.core.conns[key];
        let mut passive = false;
        if conn.has(flag::COUNTED) {
            // Counted down before the callback, so that a callback which
            // re-arms (`{active, once}` after each message) adds to zero.
            conn.active_left -= 1;
            if conn.active_left == 0 {
                passive = !conn.has(flag::ONCE);
                conn.clear(flag::COUNTED | flag::ONCE);
                conn.set(flag::APP_PAUSED);
            }
        }
        let id = ConnId::new(key, conn.gen);
        self.call_conn(key, "on_frame", |h, ctx| h.on_frame(ctx, id, frame));
        let still_paused = self.core.conns.get(key).is_some_and(|c| c.has(flag::APP_PAUSED) && !c.has(flag::DEAD));
        if passive && still_paused {
            self.call_conn(key, "on_passive", |h, ctx| h.on_passive(ctx, id));
        }
    }

    /// Every frame is delivered and the peer sent FIN: close gracefully, or,
    /// with `exit_on_close` off, tell the application once and stay open.
    fn end_of_stream(&mut self, key: usize) {
        if !self.core.conns[key].has(flag::KEEP_OPEN) {
            // Output held back for the end of the turn is owed too.
            self.run_turn_end();
            return self.core.close_gracefully(key, Closing::PeerClosed);
        }
        let conn = &mut self.core.conns[key];
        if !conn.has(flag::EOF_TOLD) {
            conn.set(flag::EOF_TOLD);
            let id = ConnId::new(key, conn.gen);
            self.call_conn(key, "on_eof", |h, ctx| h.on_eof(ctx, id));
        }
        // Our write side already shut too: nothing is left to do.
        self.core.close_if_finished(key);
    }

    /// Serve the connections queued on the ready list before this
    /// iteration; those that re-queue themselves wait for the next one.
    pub(super) fn serve_ready_list(&mut self) {
        let queued = self.core.ready.len();
        for i in 0..queued {
            let key = self.core.ready[i];
            if let Some(conn) = self.core.conns.get_mut(key) {
                conn.clear(flag::READY);
                if !conn.has(flag::DEAD) {
                    self.handle_input(key);
                }
            }
        }
        // The lists keep their allocation from one iteration to the next.
        self.core.ready.drain(..queued);
    }
}
