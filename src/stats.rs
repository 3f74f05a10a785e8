//! Counters: plain integers on the reactor, printed by `--stats`.
//!
//! A server's figures are its workers' added up ([`Counters::add`]). An
//! application keeps figures of its own beside the reactor's
//! ([`Counters::app`], an [`AppCounters`]): they are published and summed
//! with them, and printed on the same `--stats` line, without the
//! library knowing what they are (the chat's rooms and members, say, whose
//! sum has a rule of its own: a room on two workers is one room).

use std::any::Any;
use std::fmt::{self, Write};

use crate::handler::CloseReason;

/// An application's own figures, kept on its reactor's [`Counters`]
/// (`ctx.counters_mut().app`) and published with them.
pub trait AppCounters: Any + Send + fmt::Debug {
    /// Add another worker's figures of the same application to these (its
    /// own rule: counters add up, a set is a union, ...). `other` is of
    /// the same type.
    fn add(&mut self, other: &dyn AppCounters);
    /// Append ` key=value` pairs to a `--stats` line.
    fn write_stats(&self, line: &mut String);
    /// A copy, for publishing.
    fn clone_box(&self) -> Box<dyn AppCounters>;
    /// For a downcast to the application's type.
    fn as_any(&self) -> &dyn Any;
    /// For a downcast to the application's type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl Clone for Box<dyn AppCounters> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// What one reactor counts: plain integers, touched only by its own
/// thread, read by `--stats` (and summed over workers).
#[derive(Clone, Debug, Default)]
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
    /// The application's own figures, if it keeps any.
    pub app: Option<Box<dyn AppCounters>>,
    /// Counted connections open now (a gauge, updated when published).
    pub connections: usize,
    /// Bytes waiting in output queues (a gauge, updated when published).
    pub output_queued: usize,
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
    /// Connections to the `/metrics` endpoint open now (a gauge; they
    /// are not among `connections`).
    pub metrics_connections: usize,
    /// Metrics connections refused because too many were open.
    pub metrics_refused: u64,
}

impl Counters {
    /// Add another reactor's figures to these (a server's sum over its
    /// workers): counters and gauges add up; the high-water mark is the
    /// largest.
    pub fn add(&mut self, other: &Counters) {
        self.accepted += other.accepted;
        self.refused_full += other.refused_full;
        self.refused_denied += other.refused_denied;
        self.accept_exhausted += other.accept_exhausted;
        for (mine, theirs) in self.closed.iter_mut().zip(other.closed) {
            *mine += theirs;
        }
        self.panics += other.panics;
        self.connections += other.connections;
        self.output_queued += other.output_queued;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.frames_in += other.frames_in;
        self.reads += other.reads;
        self.writes += other.writes;
        self.waits += other.waits;
        self.flow_pauses += other.flow_pauses;
        self.outq_high_water = self.outq_high_water.max(other.outq_high_water);
        self.metrics_connections += other.metrics_connections;
        self.metrics_refused += other.metrics_refused;
        match (&mut self.app, &other.app) {
            (Some(mine), Some(theirs)) => mine.add(theirs.as_ref()),
            (None, Some(theirs)) => self.app = Some(theirs.clone()),
            _ => {}
        }
    }

    /// Connections closed for this kind of reason (data aside).
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// One line for `--stats`: `key=value` pairs, grep- and awk-friendly.
    pub fn line(&self) -> String {
        let mut s = format!(
            "stats live={} accepted={} refused_full={} refused_denied={} accept_exhausted={} \
             bytes_in={} bytes_out={} frames_in={} reads={} writes={} waits={} flow_pauses={} outq_high_water={} \
             panics={} metrics_live={} metrics_refused={}",
            self.connections,
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
            self.metrics_connections,
            self.metrics_refused,
        );
        if let Some(app) = &self.app {
            app.write_stats(&mut s);
        }
        for (name, count) in CloseReason::NAMES.iter().zip(self.closed) {
            let _ = write!(s, " closed_{name}={count}");
        }
        s
    }
}
