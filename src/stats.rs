//! Counters: plain integers on the reactor, printed by `--stats`.

use std::fmt::Write;

use crate::handler::CloseReason;

#[derive(Clone, Debug, Default)]
/// What one reactor counts: plain integers, touched only by its own
/// thread, read by `--stats` (and summed over workers).
pub struct Counters {
    /// Connections accepted by `accept4` (including those refused after).
    pub accepted: u64,
    /// Refused because `--max-conns` connections were open.
    pub refused_full: u64,
    /// Refused by `--allow`/`--deny`.
    pub refused_denied: u64,
    /// `accept4` failures for lack of descriptors or memory
    /// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): each pauses accepting.
    pub accept_exhausted: u64,
    /// Connections closed, by [`CloseReason::index`].
    pub closed: [u64; CloseReason::NAMES.len()],
    /// Callbacks that panicked (each aborted its connection, if any).
    pub panics: u64,
    /// Chat: times a client was paused for exceeding `--chat-rate`.
    pub throttled: u64,
    /// Payload bytes read.
    pub bytes_in: u64,
    /// Payload bytes written.
    pub bytes_out: u64,
    /// Frames delivered to handlers.
    pub frames_in: u64,
    /// System calls of the data path.
    pub reads: u64,
    /// `send`/`sendmsg` calls.
    pub writes: u64,
    /// `epoll_wait` calls.
    pub waits: u64,
    /// Times a connection was paused because its output passed the limit.
    pub flow_pauses: u64,
    /// The largest output queue seen on any connection, in bytes.
    pub outq_high_water: usize,
}

impl Counters {
    /// Connections closed for this kind of reason (data aside).
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// One line for `--stats`: `key=value` pairs, grep- and awk-friendly.
    pub fn line(&self, live: usize) -> String {
        let mut s = format!(
            "stats live={live} accepted={} refused_full={} refused_denied={} accept_exhausted={} \
             bytes_in={} bytes_out={} frames_in={} reads={} writes={} waits={} flow_pauses={} outq_high_water={} \
             panics={} throttled={}",
            self.accepted,
            self.refused_full,
            self.refused_denied,
            self.accept_exhausted,
            self.bytes_in,
            self.bytes_out,
            self.frames_in,
            self.reads,
            self.writes,
            self.waits,
            self.flow_pauses,
            self.outq_high_water,
            self.panics,
            self.throttled,
        );
        for (name, count) in CloseReason::NAMES.iter().zip(self.closed) {
            let _ = write!(s, " closed_{name}={count}");
        }
        s
    }
}
