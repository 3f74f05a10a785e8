//! One thread's generator as a [`Handler`]: its share of the connections,
//! the closed or the open loop, the checks, the clock of the run. See the
//! module docs of [`crate::load`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::load::latency::{self, Histograms};
use crate::load::pattern::Pattern;
use crate::load::progress::{Report, Shared};
use crate::load::schedule::{Arrival, Schedule};
mod send;

use crate::{CloseReason, ConnId, ConnectOptions, Ctx, Handler};
use send::write_messages;

/// Connects in progress at once: enough to open thousands of connections
/// per second, few enough not to overflow the server's accept queue.
const CONNECT_WINDOW: u32 = 512;
/// Up to this many new messages at once are sent by reference rather than
/// copied (beyond, one copy into one buffer is cheaper than many slices).
const SHARED_SENDS: u64 = 4;
/// Mismatches described on stderr (all are counted).
const MISMATCH_REPORTS: u64 = 5;

/// The open loop's settings.
#[derive(Clone, Copy, Debug)]
pub struct Open {
    /// Messages per second on each connection (`--rate / --conns`).
    pub rate_per_conn: f64,
    pub arrival: Arrival,
    /// `--send-window`, in nanoseconds (at least 1000): messages falling
    /// due in one window of this grid go out together at its end. See
    /// [`Generator::pump`].
    pub window_ns: u64,
}

/// What one thread runs: the command line, checked, and its share.
#[derive(Clone, Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    /// Connections over all threads.
    pub conns: u32,
    /// This thread opens the connections `first, first + stride, ...`
    /// below `conns` (their ordinals stagger schedules and patterns).
    pub first: u32,
    pub stride: u32,
    pub depth: u32,
    /// `None`: the closed loop.
    pub open: Option<Open>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Connections not up after this long count as failed.
    pub connect_timeout: Duration,
    /// Bind client sockets to 127.0.0.1 .. 127.0.0.`n` in turn (0: don't
    /// bind): one source address has only ~28 000 ephemeral ports, and
    /// only half of them are cheap to connect from.
    pub source_addrs: u8,
}

impl Plan {
    /// How many connections this thread opens.
    fn my_conns(&self) -> u32 {
        if self.first >= self.conns {
            0
        } else {
            (self.conns - self.first).div_ceil(self.stride)
        }
    }
}

/// Errors seen during the whole run (warm-up included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// Connections that never connected (refused, timed out, no
    /// descriptor or port left, ...).
    pub connect_failed: u64,
    /// Open connections reset or failed (`ECONNRESET`, `EPIPE`, ...).
    pub reset: u64,
    /// Open connections the server closed (end of stream, ...).
    pub closed: u64,
    /// Echoes that differed from what was sent (each closes its connection).
    pub mismatch: u64,
}

impl Errors {
    pub fn add(&mut self, o: &Errors) {
        self.connect_failed += o.connect_failed;
        self.reset += o.reset;
        self.closed += o.closed;
        self.mismatch += o.mismatch;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// This thread's connects have resolved; others' may not have.
    Waiting,
    Warmup,
    Measuring,
    /// The run is over; `Ctx::stop` closes what is left.
    Done,
}

/// The messages of one connection.
struct Flow {
    /// The connection (its slot is `id.index()`).
    id: ConnId,
    /// Messages sent, and messages fully echoed.
    sent: u64,
    recvd: u64,
    /// Bytes of message `recvd` already echoed and checked.
    off: usize,
    /// Template rotations of the next message to send and to receive.
    send_rot: u16,
    recv_rot: u16,
    /// (due, sent) of each message in flight, in nanoseconds since the
    /// origin, oldest first: echoes come back in order (TCP, one stream).
    /// In the closed loop at most `depth` long; in the open loop as long as
    /// the server lets it grow.
    in_flight: VecDeque<(u64, u64)>,
    /// The open loop's schedule.
    schedule: Option<Schedule>,
}

/// What the generator knows about a reactor connection id.
enum Slot {
    Free,
    Connecting {
        ordinal: u64,
    },
    Open(Flow),
    /// Not connected in time: counted as failed, closed if it ever opens.
    Abandoned,
}

/// What a thread counted; the threads' tallies add up to the run's.
#[derive(Clone, Default)]
pub struct Tally {
    pub errors: Errors,
    /// A reason connections failed to connect, when one is known.
    pub connect_error: Option<String>,
    pub opened: u32,
    /// Connections still open when the run ended.
    pub survived: u32,
    /// Messages echoed inside the measured window.
    pub messages: u64,
    /// Messages sent inside the measured window.
    pub sent: u64,
    /// Open loop: messages still unanswered when the window closed (their
    /// wait so far is recorded, a lower bound: a stall at the very end is
    /// not hidden).
    pub unanswered: u64,
    pub hist: Histograms,
    pub interrupted: bool,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.errors.add(&o.errors);
        if self.connect_error.is_none() {
            self.connect_error.clone_from(&o.connect_error);
        }
        self.opened += o.opened;
        self.survived += o.survived;
        self.messages += o.messages;
        self.sent += o.sent;
        self.unanswered += o.unanswered;
        self.hist.add(&o.hist);
        self.interrupted |= o.interrupted;
    }
}

/// One thread's measurements, read after [`crate::Reactor::run`] returns.
pub struct Outcome {
    pub tally: Tally,
    /// The measured window, on this thread's clock (zero if it never began).
    pub window: Option<(Instant, Instant)>,
    /// CPU time this thread used inside the window.
    pub cpu: Duration,
}

/// The load generator's [`Handler`] (one per thread).
pub struct Generator {
    plan: Plan,
    pattern: Pattern,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    /// Outgoing messages are assembled here, then queued in one `send`.
    scratch: Vec<u8>,
    /// Open loop: (next due time, connection) of every schedule, a
    /// min-heap with lazy deletion (an entry whose time is not its
    /// schedule's next is stale and skipped). See [`Generator::catch_up`].
    due: BinaryHeap<Reverse<(u64, usize)>>,
    phase: Phase,
    measuring: bool,
    next_ordinal: u64,
    connecting: u32,
    connect_deadline: Instant,
    live: u32,
    opened: u32,
    survived: u32,
    warmup_end: Instant,
    window_due: Instant,
    window_start: Option<Instant>,
    window_end: Option<Instant>,
    cpu_start: Duration,
    cpu: Duration,
    window_msgs: u64,
    window_sent: u64,
    /// Messages echoed in the whole run.
    total_msgs: u64,
    unanswered: u64,
    in_flight: u64,
    hist: Histograms,
    /// Response times of the current second (progress line, plot).
    second_hist: Histogram<u64>,
    second_msgs: u64,
    second: u64,
    second_at: Instant,
    errors: Errors,
    connect_error: Option<String>,
    interrupted: bool,
    done_reported: bool,
}

impl Generator {
    pub fn new(plan: Plan, pattern: Pattern, shared: Arc<Shared>) -> Generator {
        let now = Instant::now();
        Generator {
            slots: Vec::with_capacity(plan.my_conns() as usize),
            scratch: Vec::with_capacity(pattern.wire_len() * plan.depth as usize),
            due: BinaryHeap::new(),
            next_ordinal: plan.first as u64,
            plan,
            pattern,
            phase: Phase::Connecting,
            measuring: false,
            connecting: 0,
            connect_deadline: now,
            live: 0,
            opened: 0,
            survived: 0,
            warmup_end: now,
            window_due: now,
            window_start: None,
            window_end: None,
            cpu_start: Duration::ZERO,
            cpu: Duration::ZERO,
            window_msgs: 0,
            window_sent: 0,
            total_msgs: 0,
            unanswered: 0,
            in_flight: 0,
            hist: Histograms::default(),
            second_hist: latency::histogram(),
            second_msgs: 0,
            second: 1,
            second_at: shared.origin,
            shared,
            errors: Errors::default(),
            connect_error: None,
            interrupted: false,
            done_reported: false,
        }
    }

    /// The results; meaningful once the reactor's `run` has returned.
    pub fn outcome(&self) -> Outcome {
        let window = self.window_start.zip(self.window_end);
        Outcome {
            tally: Tally {
                errors: self.errors,
                connect_error: self.connect_error.clone(),
                opened: self.opened,
                survived: self.survived,
                messages: if window.is_some() { self.window_msgs } else { 0 },
                sent: if window.is_some() { self.window_sent } else { 0 },
                unanswered: self.unanswered,
                hist: self.hist.clone(),
                interrupted: self.interrupted,
            },
            window,
            cpu: self.cpu,
        }
    }

    /// Nanoseconds since the run's origin.
    #[inline]
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.shared.origin).as_nanos() as u64
    }

    fn slot_mut(&mut self, id: ConnId) -> &mut Slot {
        let i = id.index();
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || Slot::Free);
        }
        &mut self.slots[i]
    }

    fn source_for(&self, ordinal: u64) -> Option<SocketAddr> {
        let n = self.plan.source_addrs as u64;
        (n > 0).then(|| {
            let k = 1 + (ordinal % n) as u8;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)), 0)
        })
    }

    /// Start connects until the window is full or all are started.
    fn start_connects(&mut self, ctx: &mut Ctx<'_>) {
        while self.phase == Phase::Connecting
            && self.connecting < CONNECT_WINDOW
            && self.next_ordinal < self.plan.conns as u64
        {
            let ordinal = self.next_ordinal;
            self.next_ordinal += self.plan.stride as u64;
            // The connect timeout is the reactor's (a failure it reports);
            // `abandon_connects` is the backstop for the whole phase.
            let options = ConnectOptions {
                local: self.source_for(ordinal),
                timeout: Some(self.plan.connect_timeout),
                ..Default::default()
            };
            match ctx.connect(&self.plan.addr, &options) {
                Ok(id) => {
                    *self.slot_mut(id) = Slot::Connecting { ordinal };
                    self.connecting += 1;
                }
                Err(e) => {
                    self.errors.connect_failed += 1;
                    self.connect_error.get_or_insert_with(|| crate::sys::describe(&e));
                }
            }
        }
    }

    fn all_started(&self) -> bool {
        self.next_ordinal >= self.plan.conns as u64
    }

    /// Move through the phases as time passes and connections come and go.
    fn advance(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        if self.phase != Phase::Done && self.shared.stopping() {
            self.interrupted = true;
            return self.finish(ctx, now);
        }
        loop {
            match self.phase {
                Phase::Done => return,
                Phase::Connecting => {
                    if self.connecting > 0 || !self.all_started() {
                        if now < self.connect_deadline {
                            return;
                        }
                        self.abandon_connects();
                    }
                    self.phase = Phase::Waiting;
                    self.shared.resolved(now);
                }
                Phase::Waiting => {
                    let Some(go) = self.shared.go() else { return };
                    self.phase = Phase::Warmup;
                    self.warmup_end = go + self.plan.warmup;
                    self.window_due = self.warmup_end + self.plan.duration;
                }
                Phase::Warmup => {
                    if self.live == 0 {
                        return self.finish(ctx, now);
                    }
                    if now < self.warmup_end {
                        return;
                    }
                    self.phase = Phase::Measuring;
                    self.measuring = true;
                    self.window_start = Some(now);
                    self.window_msgs = 0;
                    self.window_sent = 0;
                    self.hist.reset();
                    self.cpu_start = Duration::from_micros(crate::sys::thread_cpu_micros());
                }
                Phase::Measuring => {
                    if self.live == 0 || now >= self.window_due {
                        return self.finish(ctx, now);
                    }
                    return;
                }
            }
        }
    }

    /// The connect time is up: what is not connected has failed.
    fn abandon_connects(&mut self) {
        for slot in &mut self.slots {
            if matches!(slot, Slot::Connecting { .. }) {
                *slot = Slot::Abandoned;
                self.errors.connect_failed += 1;
            }
        }
        while !self.all_started() {
            self.errors.connect_failed += 1;
            self.next_ordinal += self.plan.stride as u64;
        }
        self.connecting = 0;
        let secs = self.plan.connect_timeout.as_secs_f64();
        self.connect_error.get_or_insert_with(|| format!("not connected within {secs} s"));
    }

    /// End the run: close the window, close every connection.
    fn finish(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        if self.measuring {
            self.measuring = false;
            self.window_end = Some(now);
            self.cpu = Duration::from_micros(crate::sys::thread_cpu_micros()).saturating_sub(self.cpu_start);
            if self.plan.open.is_some() {
                self.record_unanswered(now);
            }
        }
        if self.phase == Phase::Connecting {
            // Connects not resolved yet must not hold the other threads.
            self.shared.resolved(now);
        }
        self.phase = Phase::Done;
        self.survived = self.live;
        // With -v: how the loop spent its wake-ups (a cost per message
        // that is the machine's, see BENCHMARKS.md).
        let c = ctx.counters();
        log::info!(
            "thread {}: {} messages echoed, {} waits, {} reads, {} writes",
            self.plan.first,
            self.total_msgs,
            c.waits,
            c.reads,
            c.writes
        );
        self.report_second(ctx, now);
        if !self.done_reported {
            self.done_reported = true;
            self.shared.thread_done(self.plan.first);
        }
        ctx.stop();
    }

    /// Open loop: a message still unanswered at the end of the window has
    /// waited at least until now. Leaving it out would hide a stall that
    /// is still going on when the window closes.
    fn record_unanswered(&mut self, now: Instant) {
        let end = self.ns(now);
        for slot in &self.slots {
            if let Slot::Open(flow) = slot {
                for &(due, sent) in &flow.in_flight {
                    self.hist.record(due, sent, end);
                    self.unanswered += 1;
                }
            }
        }
    }

    /// Tell the others about the second that just ended.
    fn report_second(&mut self, ctx: &Ctx<'_>, now: Instant) {
        let dt = now.saturating_duration_since(self.second_at).as_secs_f64();
        let wire = self.pattern.wire_len();
        let queued: usize = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Open(flow) => Some(ctx.pending_output(flow.id)),
                _ => None,
            })
            .sum();
        let phase = match self.phase {
            Phase::Connecting | Phase::Waiting => "  (connecting)",
            Phase::Warmup => "  (warm-up)",
            Phase::Measuring | Phase::Done => "",
        };
        self.shared.report(Report {
            thread: self.plan.first,
            second: self.second,
            dt,
            msgs: self.second_msgs,
            hist: &self.second_hist,
            live: self.live,
            in_flight: self.in_flight,
            queued: queued.div_ceil(wire) as u64,
            phase,
            measured: self.measuring || self.phase == Phase::Done && self.window_start.is_some(),
        });
        self.second_hist.reset();
        self.second_msgs = 0;
        self.second += 1;
        self.second_at = now;
    }

    /// Report a mismatch on a connection (which is then closed).
    fn mismatch(&mut self, id: ConnId, msg: u64, off: usize, detail: String) {
        self.errors.mismatch += 1;
        if self.errors.mismatch <= MISMATCH_REPORTS {
            eprintln!("edgeloop load: connection {id}: message {msg}, byte {off}: {detail}");
        }
    }
}

impl Handler for Generator {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        match std::mem::replace(self.slot_mut(id), Slot::Free) {
            Slot::Connecting { ordinal } => {
                self.connecting -= 1;
                self.live += 1;
                self.opened += 1;
                let rot = Pattern::first_rotation(ordinal);
                let now = self.ns(Instant::now());
                let schedule = self
                    .plan
                    .open
                    .map(|o| Schedule::new(o.arrival, o.rate_per_conn, ordinal, self.plan.conns as u64, now));
                let closed = schedule.is_none();
                let mut flow = Flow {
                    id,
                    sent: 0,
                    recvd: 0,
                    off: 0,
                    send_rot: rot,
                    recv_rot: rot,
                    in_flight: VecDeque::with_capacity(self.plan.depth as usize),
                    schedule,
                };
                if closed {
                    // The closed loop: `depth` messages at once.
                    let depth = self.plan.depth as u64;
                    flow.in_flight.extend((0..depth).map(|_| (now, now)));
                    write_messages(ctx, id, &mut flow, &self.pattern, &mut self.scratch, depth);
                    self.in_flight += depth;
                }
                *self.slot_mut(id) = Slot::Open(flow);
                if !closed {
                    // Sets its timer (nothing is due yet: the schedule
                    // starts at or after now).
                    self.pump(ctx, id, now, now, 0);
                }
                self.start_connects(ctx);
                if self.connecting == 0 {
                    self.advance(ctx, Instant::now());
                }
            }
            Slot::Abandoned => {
                *self.slot_mut(id) = Slot::Abandoned;
                ctx.close(id);
            }
            other => *self.slot_mut(id) = other,
        }
    }

    /// The hot path: check the echoed bytes against the pattern, count the
    /// messages they complete and record their times; in the closed loop,
    /// send as many new ones.
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        let now = self.ns(Instant::now());
        let Some(Slot::Open(flow)) = self.slots.get_mut(id.index()) else {
            return;
        };
        let pattern = &self.pattern;
        let wire = pattern.wire_len();
        let mut data = frame;
        let mut done = 0u64;
        let mut bad = None;
        while !data.is_empty() {
            let Some(&(due, sent)) = flow.in_flight.front() else {
                bad = Some((flow.recvd, 0, format!("{} bytes echoed that were never sent", data.len())));
                break;
            };
            let n = (wire - flow.off).min(data.len());
            let seg = &data[..n];
            if !pattern.matches(flow.recv_rot, flow.off, seg) {
                let (i, want) = pattern.first_difference(flow.recv_rot, flow.off, seg).unwrap_or((0, 0));
                let off = flow.off + i;
                bad = Some((flow.recvd, off, format!("expected 0x{want:02x}, got 0x{:02x}", seg[i])));
                break;
            }
            data = &data[n..];
            flow.off += n;
            if flow.off == wire {
                flow.off = 0;
                flow.recvd += 1;
                flow.recv_rot = Pattern::next_rotation(flow.recv_rot);
                flow.in_flight.pop_front();
                if self.measuring {
                    self.hist.record(due, sent, now);
                }
                latency::record(&mut self.second_hist, now.saturating_sub(due));
                done += 1;
            }
        }
        if done > 0 {
            self.in_flight -= done;
            self.second_msgs += done;
            self.total_msgs += done;
            if self.measuring {
                self.window_msgs += done;
            }
            if bad.is_none() && flow.schedule.is_none() {
                flow.in_flight.extend((0..done).map(|_| (now, now)));
                write_messages(ctx, id, flow, pattern, &mut self.scratch, done);
                self.in_flight += done;
                if self.measuring {
                    self.window_sent += done;
                }
            }
        }
        if let Some((msg, off, detail)) = bad {
            self.mismatch(id, msg, off, detail);
            ctx.close(id);
        }
        self.catch_up(ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) {
        let slot = std::mem::replace(self.slot_mut(id), Slot::Free);
        let running = self.phase != Phase::Done;
        if running && reason == CloseReason::Shutdown {
            // A signal began the shutdown: end the run where it stands, on
            // every thread.
            self.shared.stop();
            self.interrupted = true;
            self.finish(ctx, Instant::now());
        }
        match slot {
            Slot::Free | Slot::Abandoned => {}
            Slot::Connecting { .. } => {
                self.connecting -= 1;
                if reason != CloseReason::Shutdown {
                    self.errors.connect_failed += 1;
                }
                self.start_connects(ctx);
            }
            Slot::Open(flow) => {
                self.live -= 1;
                self.in_flight -= flow.in_flight.len() as u64;
                if running {
                    match reason {
                        CloseReason::Error(_) => self.errors.reset += 1,
                        // Local: closed after a mismatch, already counted.
                        CloseReason::Local | CloseReason::Shutdown => {}
                        _ => self.errors.closed += 1,
                    }
                }
            }
        }
        self.advance(ctx, Instant::now());
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        // The kernel may delay a timer by the thread's slack (50 us by
        // default) to batch wake-ups: too much for microsecond schedules.
        if let Err(e) = crate::sys::set_timer_slack_ns(1) {
            log::warn!("cannot set the timer slack: {e}");
        }
        self.connect_deadline = Instant::now() + self.plan.connect_timeout;
        self.start_connects(ctx);
        // A thread with no connection of its own still takes part.
        self.advance(ctx, Instant::now());
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        self.on_due(ctx, id);
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        let now = Instant::now();
        self.advance(ctx, now);
        if self.phase != Phase::Done && now >= self.shared.origin + Duration::from_secs(self.second) {
            self.report_second(ctx, now);
        }
    }
}
