//! Counters: plain integers on the reactor, printed by `--stats`.
//!
//! A server's figures are its workers' added up ([`Counters::add`]). The
//! handlers of an application keep figures of their own beside the
//! reactor's ([`Counters::app_mut`], each an [`AppCounters`] of its own
//! type): they are published and summed with them, and printed on the same
//! `--stats` line, without the library knowing what they are (the chat's
//! rooms and members, say, whose sum has a rule of its own: a room on two
//! workers is one room; or a `/metrics` endpoint's connections).

use std::any::{Any, TypeId};
use std::fmt::{self, Write};

use crate::handler::CloseReason;

/// An application's own figures, kept on its reactor's [`Counters`]
/// ([`Counters::app_mut`]) and published with them. `Clone` is all the
/// copy for publishing needs ([`CloneAppCounters`] follows from it).
pub trait AppCounters: Any + Send + fmt::Debug + CloneAppCounters {
    /// Add another worker's figures of the same type to these (its own
    /// rule: counters add up, a set is a union, ...).
    fn add(&mut self, other: &dyn AppCounters);
    /// Append ` key=value` pairs to a `--stats` line.
    fn write_stats(&self, line: &mut String);
}

/// A boxed copy of any [`AppCounters`] that is `Clone` (implemented for
/// all of them): how a reactor publishes its counters.
pub trait CloneAppCounters {
    /// A copy, for publishing.
    fn clone_box(&self) -> Box<dyn AppCounters>;
}

impl<T: AppCounters + Clone> CloneAppCounters for T {
    fn clone_box(&self) -> Box<dyn AppCounters> {
        Box::new(self.clone())
    }
}

/// The concrete type behind `figures` (through `dyn Any`: asked of a
/// `Box` itself, `type_id` would name the box).
fn type_of(figures: &dyn AppCounters) -> TypeId {
    (figures as &dyn Any).type_id()
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
    /// The application's own figures, at most one of each type, in the
    /// order they were first used.
    pub app: Vec<Box<dyn AppCounters>>,
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
        for theirs in &other.app {
            let kind = type_of(theirs.as_ref());
            match self.app.iter_mut().find(|mine| type_of(mine.as_ref()) == kind) {
                Some(mine) => mine.add(theirs.as_ref()),
                None => self.app.push(theirs.clone()),
            }
        }
    }

    /// The application's figures of type `T`, if it keeps any.
    pub fn app<T: AppCounters>(&self) -> Option<&T> {
        self.app.iter().find_map(|a| (a.as_ref() as &dyn Any).downcast_ref())
    }

    /// The application's figures of type `T`, created on first use.
    pub fn app_mut<T: AppCounters + Default>(&mut self) -> &mut T {
        let at = match self.app.iter().position(|a| type_of(a.as_ref()) == TypeId::of::<T>()) {
            Some(at) => at,
            None => {
                self.app.push(Box::new(T::default()));
                self.app.len() - 1
            }
        };
        (self.app[at].as_mut() as &mut dyn Any).downcast_mut().expect("found by its type")
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
             panics={}",
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
        );
        for app in &self.app {
            app.write_stats(&mut s);
        }
        for (name, count) in CloseReason::NAMES.iter().zip(self.closed) {
            let _ = write!(s, " closed_{name}={count}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures that add up, named for the line.
    #[derive(Clone, Debug, Default)]
    struct Tally<const NAME: char>(u64);

    impl<const NAME: char> AppCounters for Tally<NAME> {
        fn add(&mut self, other: &dyn AppCounters) {
            if let Some(theirs) = (other as &dyn Any).downcast_ref::<Self>() {
                self.0 += theirs.0;
            }
        }
        fn write_stats(&self, line: &mut String) {
            let _ = write!(line, " {NAME}={}", self.0);
        }
    }

    /// Each type of figures is summed with its own kind only, and printed
    /// in the order of first use, before the closes.
    #[test]
    fn application_figures_sum_by_type() {
        let mut first = Counters::default();
        first.app_mut::<Tally<'a'>>().0 = 1;
        first.app_mut::<Tally<'b'>>().0 = 10;
        let mut second = Counters::default();
        second.app_mut::<Tally<'b'>>().0 = 20;
        second.app_mut::<Tally<'a'>>().0 += 2;
        let mut total = Counters::default();
        for worker in [&first, &second, &Counters::default()] {
            total.add(worker);
        }
        assert_eq!(total.app::<Tally<'a'>>().map(|t| t.0), Some(3));
        assert_eq!(total.app::<Tally<'b'>>().map(|t| t.0), Some(30));
        assert_eq!(total.app.len(), 2);
        assert!(total.line().contains(" panics=0 a=3 b=30 closed_"), "{}", total.line());
    }
}
